"""Readers of users' own data (imagefolder:, npz:, hf:) and the disk-backed prepared: path, each on small data
written by the test in its real format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unlearnkit._util import sha256_tensors
from unlearnkit.data import Source, load_dataset
from unlearnkit.data.datasets import USER_DATA_CACHE as _CACHE
from unlearnkit.data.datasets import _to_uint8
from unlearnkit.data.imagefolder import sample_paths
from unlearnkit.data.prepared import prepare
from unlearnkit.data.readers import plan_spec
from unlearnkit.errors import UnlearnKitError
from unlearnkit.requests import build_request


def write_folder(root: Path, *, classes=("cat", "dog", "emu"), n_train=(5, 4, 3), n_test=(2, 2, 1), size=(6, 5),
                 mode="L", ext=".png", seed=0) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Random images as files; returns, per split, (relative path, uint8 C x H x W) in sorted-path order."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, counts in (("train", n_train), ("test", n_test)):
        items = []
        for name, count in zip(classes, counts):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape = size if mode == "L" else (*size, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                rel = f"{name}/img{i:02d}{ext}"
                Image.fromarray(pixels, mode).save(root / split / rel)
                items.append((rel, pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)))
        written[split] = sorted(items, key=lambda t: t[0])
    return written


def fresh(spec: str, data_dir=None):
    _CACHE.clear()
    return load_dataset(spec, data_dir)


def test_imagefolder_png_pixels_labels_ids_and_stable_fingerprint(tmp_path):
    written = write_folder(tmp_path / "f")
    data = fresh(f"imagefolder:{tmp_path / 'f'}")
    assert data.class_names == ("cat", "dog", "emu") and data.num_classes == 3
    assert data.name == f"imagefolder:{(tmp_path / 'f').resolve()}"
    assert tuple(data.x_train.shape) == (12, 1, 6, 5) and tuple(data.x_test.shape) == (5, 1, 6, 5)
    # ids are positions in the sorted relative paths; pixels are the PNGs' exact values / 255
    assert sample_paths(tmp_path / "f") == [rel for rel, _ in written["train"]]
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        expected = torch.from_numpy(np.stack([p for _, p in written[split]])).float() / 255
        assert torch.equal(x, expected)
        assert y.tolist() == [("cat", "dog", "emu").index(rel.split("/")[0]) for rel, _ in written[split]]
    # the fingerprint is the built-in one (decoded pixels + labels) and stable across loads
    assert data.fingerprint == sha256_tensors(_to_uint8(data.x_train), data.y_train, _to_uint8(data.x_test),
                                              data.y_test)[:16]
    assert fresh(f"imagefolder:{tmp_path / 'f'}").fingerprint == data.fingerprint
    assert data.describe()["class_names"] == ["cat", "dog", "emu"]


def test_imagefolder_jpeg_rgb_and_resize(tmp_path):
    write_folder(tmp_path / "f", mode="RGB", ext=".jpg")
    data = fresh(f"imagefolder:{tmp_path / 'f'}")
    assert tuple(data.x_train.shape) == (12, 3, 6, 5) and len(data.mean) == 3
    again = fresh(f"imagefolder:{tmp_path / 'f'}")
    assert again.fingerprint == data.fingerprint and torch.equal(again.x_train, data.x_train)
    resized = fresh(f"imagefolder:{tmp_path / 'f'}?resize=8x8")
    assert tuple(resized.x_train.shape) == (12, 3, 8, 8) and resized.name.endswith("?resize=8x8")


@pytest.mark.parametrize("damage, message", [
    ("no_classes", "has no class sub-folders"),
    ("corrupt", "cannot read image"),
    ("truncated", "cannot decode image"),
    ("mixed", "images of mixed sizes"),
    ("test_only_class", "that"),
    ("stray", "is not inside a class folder"),
    ("no_test", "has no test/ folder"),
    ("sixteen_bit", "not supported"),
])
def test_imagefolder_bad_input_is_one_line(tmp_path, damage, message):
    root = tmp_path / "f"
    write_folder(root)
    if damage == "no_classes":
        for d in (root / "train").iterdir():
            for f in d.iterdir():
                f.rename(root / "train" / f"{d.name}-{f.name}")
            d.rmdir()
    elif damage == "corrupt":
        (root / "train" / "dog" / "img01.png").write_bytes(b"not a png at all")
    elif damage == "truncated":
        path = root / "train" / "dog" / "img01.png"
        path.write_bytes(path.read_bytes()[:50])  # the header survives, the pixel data does not
    elif damage == "mixed":
        Image.fromarray(np.zeros((7, 5), np.uint8)).save(root / "test" / "cat" / "odd.png")
    elif damage == "test_only_class":
        (root / "test" / "yak").mkdir()
        Image.fromarray(np.zeros((6, 5), np.uint8)).save(root / "test" / "yak" / "a.png")
    elif damage == "stray":
        Image.fromarray(np.zeros((6, 5), np.uint8)).save(root / "train" / "loose.png")
    elif damage == "no_test":
        import shutil

        shutil.rmtree(root / "test")
    elif damage == "sixteen_bit":
        Image.fromarray(np.zeros((6, 5), np.uint16) + 300).save(root / "train" / "cat" / "deep.png")
    with pytest.raises(UnlearnKitError, match=message) as err:
        fresh(f"imagefolder:{root}")
    assert "\n" not in str(err.value)
    if damage == "mixed":  # resizing on request makes the same folder readable
        assert fresh(f"imagefolder:{root}?resize=6x5").n_train == 12


def test_npz_layouts_dtypes_and_bad_labels(tmp_path):
    rng = np.random.default_rng(1)
    x_tr, x_te = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8), rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)
    y_tr, y_te = np.arange(10) % 3, np.array([0, 1, 2, 1])
    np.savez(tmp_path / "nhwc.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
             class_names=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "nchw.npz", x_train=x_tr.transpose(0, 3, 1, 2), y_train=y_tr,
             x_test=x_te.transpose(0, 3, 1, 2), y_test=y_te)
    np.savez(tmp_path / "float.npz", x_train=x_tr.transpose(0, 3, 1, 2).astype(np.float32) / 255, y_train=y_tr,
             x_test=x_te.transpose(0, 3, 1, 2).astype(np.float64) / 255, y_test=y_te)
    a, b, c = (fresh(f"npz:{tmp_path / n}.npz") for n in ("nhwc", "nchw", "float"))
    assert a.class_names == ("a", "b", "c") and b.class_names == ("0", "1", "2")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert a.fingerprint == b.fingerprint == c.fingerprint == fresh(f"npz:{tmp_path}/nhwc.npz").fingerprint
    assert torch.allclose(a.x_train, c.x_train, atol=1e-6)
    np.savez(tmp_path / "grey.npz", x_train=x_tr[..., 0], y_train=y_tr, x_test=x_te[..., 0], y_test=y_te)
    assert tuple(fresh(f"npz:{tmp_path}/grey.npz").x_train.shape) == (10, 1, 4, 4)

    bad = {
        "range": dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=np.array([0, 1, 3, 1])),
        "negative": dict(x_train=x_tr, y_train=y_tr - 1, x_test=x_te, y_test=y_te),
        "names": dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, class_names=np.array(["a", "b"])),
        "float_labels": dict(x_train=x_tr, y_train=y_tr.astype(float), x_test=x_te, y_test=y_te),
        "pixels": dict(x_train=x_tr.astype(np.float32), y_train=y_tr, x_test=x_te.astype(np.float32), y_test=y_te),
        "missing": dict(x_train=x_tr, y_train=y_tr, x_test=x_te),
        "count": dict(x_train=x_tr, y_train=y_tr[:9], x_test=x_te, y_test=y_te),
        "ambiguous": dict(x_train=rng.integers(0, 256, (5, 3, 4, 1), dtype=np.uint8), y_train=np.zeros(5, int),
                          x_test=rng.integers(0, 256, (2, 3, 4, 1), dtype=np.uint8), y_test=np.zeros(2, int)),
    }
    messages = {"range": "outside 0..2", "negative": "label -1", "names": "outside 0..1", "float_labels": "integers",
                "pixels": r"\[0, 1\]", "missing": "lacks y_test", "count": "9 labels", "ambiguous": "layout="}
    for name, arrays in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(UnlearnKitError, match=messages[name]):
            fresh(f"npz:{tmp_path}/{name}.npz")
    assert fresh(f"npz:{tmp_path}/ambiguous.npz?layout=nchw").x_train.shape[1] == 3
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 junk")
    with pytest.raises(UnlearnKitError, match="cannot read npz"):
        fresh(f"npz:{tmp_path}/junk.npz")
    obj = np.empty(2, dtype=object)
    np.savez(tmp_path / "pickled.npz", x_train=obj, y_train=y_tr, x_test=x_te, y_test=y_te)
    with pytest.raises(UnlearnKitError, match="cannot read npz"):
        fresh(f"npz:{tmp_path}/pickled.npz")


def _hf_dataset(n_train=9, n_test=4, seed=0, label_feature=True, bad_label=False):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = [Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8)) for _ in range(n)]
        labels = [i % 3 for i in range(n)]
        if bad_label and split == "test":
            labels[1] = -1 if label_feature else 7
        features = datasets.Features({"img": datasets.Image(),
                                      "label": datasets.ClassLabel(names=["x", "y", "z"]) if label_feature
                                      else datasets.Value("int64")})
        splits[split] = datasets.Dataset.from_dict({"img": imgs, "label": labels}, features=features)
    return datasets.DatasetDict(splits)


def test_hf_save_to_disk_and_parquet_agree(tmp_path):
    dd = _hf_dataset()
    dd.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "pq" / "data").mkdir(parents=True)
    dd["train"].to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"))
    dd["test"].to_parquet(str(tmp_path / "pq" / "data" / "test-00000-of-00001.parquet"))
    a = fresh(f"hf:{tmp_path / 'saved'}?image=img&label=label")
    b = fresh(f"hf:{tmp_path / 'pq'}?image=img")
    assert a.class_names == ("x", "y", "z") == b.class_names and a.n_train == 9
    assert a.fingerprint == b.fingerprint == fresh(f"hf:{tmp_path / 'saved'}?image=img").fingerprint
    first = np.asarray(dd["train"][0]["img"], dtype=np.float32) / 255
    assert torch.equal(a.x_train[0, 0], torch.from_numpy(first))
    assert a.y_train.tolist() == [i % 3 for i in range(9)]


def test_hf_array_column_and_bad_input(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(2)
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(
        {"pixels": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), "target": np.arange(n) % 2})
        for s, n in (("train", 6), ("test", 2))})
    dd.save_to_disk(str(tmp_path / "arr"))
    data = fresh(f"hf:{tmp_path / 'arr'}?image=pixels&label=target")
    assert tuple(data.x_train.shape) == (6, 3, 4, 4) and data.class_names == ("0", "1")
    with pytest.raises(UnlearnKitError, match="no column 'image'"):
        fresh(f"hf:{tmp_path / 'arr'}")
    _hf_dataset(bad_label=True).save_to_disk(str(tmp_path / "neg"))
    with pytest.raises(UnlearnKitError, match="label -1"):
        fresh(f"hf:{tmp_path / 'neg'}?image=img")
    _hf_dataset(bad_label=True, label_feature=False).save_to_disk(str(tmp_path / "big"))
    with pytest.raises(UnlearnKitError, match="label 7 .* outside 0..2"):
        fresh(f"hf:{tmp_path / 'big'}?image=img")
    with pytest.raises(UnlearnKitError, match="no option 'colour'"):
        fresh(f"hf:{tmp_path / 'arr'}?colour=red")


def test_prepared_gives_the_same_batches_as_memory_and_views_cost_no_copies(tmp_path):
    write_folder(tmp_path / "f", n_train=(40, 30, 20), n_test=(5, 5, 5))
    spec = f"imagefolder:{tmp_path / 'f'}"
    memory = fresh(spec)
    prepare(plan_spec(spec), tmp_path / "prep")
    disk = fresh(f"prepared:{tmp_path / 'prep'}")
    assert disk.fingerprint == memory.fingerprint and disk.mean == memory.mean and disk.std == memory.std
    assert disk.source == memory.name and disk.class_names == memory.class_names
    # the images are file-backed memory maps of the prepared files, not copies
    assert _mapped_file(disk.x_train.data_ptr()).endswith("x_train.npy")
    assert _mapped_file(disk.x_test.data_ptr()).endswith("x_test.npy")
    request = build_request("random:0.2", memory, seed=0)
    assert torch.equal(request.forget, build_request("random:0.2", disk, seed=0).forget)
    for data in (memory, disk):
        x, y = request.training_data(data)
        assert x.data_ptr() == data.x_train.data_ptr()  # a remove request trains on the data set itself
        forget = Source(x, y, request.forget, batch_size=7)
        retain = Source(x, y, request.retain, batch_size=7)
        assert forget.x.data_ptr() == retain.x.data_ptr() == data.x_train.data_ptr()
    for ids in (request.forget, request.retain, None):
        a = list(Source(memory.x_train, memory.y_train, ids, batch_size=16).batches(torch.Generator().manual_seed(3)))
        b = list(Source(disk.x_train, disk.y_train, ids, batch_size=16).batches(torch.Generator().manual_seed(3)))
        assert len(a) == len(b) > 0
        for p, q in zip(a, b):
            assert torch.equal(p.x, q.x) and torch.equal(p.y, q.y) and torch.equal(p.index, q.index)


def _mapped_file(address: int) -> str:
    """The file mapped at ``address`` in this process (Linux /proc/self/maps), or ''."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= address < hi:
            return parts[5] if len(parts) > 5 else ""
    return ""


def test_prepared_refuses_changed_arrays_and_writes_nothing_on_bad_input(tmp_path):
    write_folder(tmp_path / "f")
    prepare(plan_spec(f"imagefolder:{tmp_path / 'f'}"), tmp_path / "prep")
    x = np.load(tmp_path / "prep" / "x_train.npy", mmap_mode="r+")
    x[0, 0, 0, 0] = 1.0 - x[0, 0, 0, 0]
    x.flush()
    del x
    with pytest.raises(UnlearnKitError, match="changed since"):
        fresh(f"prepared:{tmp_path / 'prep'}")
    path = tmp_path / "f" / "train" / "emu" / "img02.png"  # the last image: found only while writing
    path.write_bytes(path.read_bytes()[:50])
    plan = plan_spec(f"imagefolder:{tmp_path / 'f'}")  # headers are fine
    with pytest.raises(UnlearnKitError, match="cannot decode image"):
        prepare(plan, tmp_path / "prep2")
    assert not (tmp_path / "prep2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "prep"]
    with pytest.raises(UnlearnKitError, match="not a prepared data set"):
        fresh(f"prepared:{tmp_path / 'f'}")
