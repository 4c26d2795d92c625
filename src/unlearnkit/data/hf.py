"""``hf:PATH?image=COL&label=COL`` — a Hugging Face ``datasets`` data set kept on disk, read offline.

PATH is either a ``DatasetDict`` written by ``save_to_disk`` (splits ``train`` and ``test``), or a folder of
parquet files (a file belongs to the split its name starts with, or the split-named folder it is in, as in
the Hub's ``data/train-00000-of-00001.parquet``). The image column (default ``image``) may be an ``Image``
feature (decoded by Pillow, as for image folders) or arrays (N x H x W, N x H x W x C or N x C x H x W); the label
column (default ``label``) holds integers — with a ``ClassLabel`` feature its names are the class names.
``-1`` ("no label" in ``datasets``) and any label outside 0..K-1 are errors.
Options: ``image=``, ``label=``, ``train=`` and ``test=`` (split names), ``resize=HxW``, ``layout=nhwc|nchw``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..errors import UnlearnKitError
from .images import SPLITS, Plan, channels_of, check_labels, parse_resize, pil_to_array, uint8_to_float

OPTIONS = {"image": "image column (default image)", "label": "label column (default label)",
           "train": "train split name (default train)", "test": "test split name (default test)",
           "resize": "HxW: resize every image", "layout": "nhwc or nchw, for array columns"}


def _datasets():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never reach for the network
    try:
        import datasets
    except ImportError:
        raise UnlearnKitError("hf: data sets need the `datasets` package: pip install 'unlearnkit[hf]'") from None
    datasets.disable_progress_bars()
    return datasets


def _open_splits(root: Path, split_names: dict[str, str]):
    datasets = _datasets()
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(root))
        except Exception as exc:  # datasets raises many types for damaged folders
            raise UnlearnKitError(f"cannot read the datasets folder {root}: {exc}") from None
        if not isinstance(loaded, datasets.DatasetDict):
            raise UnlearnKitError(f"{root} holds one split; save a DatasetDict with train and test splits")
        missing = [name for name in split_names.values() if name not in loaded]
        if missing:
            raise UnlearnKitError(f"{root} has no split {missing[0]!r} (it has {', '.join(loaded)}); "
                                  f"name them with ?train=...&test=...")
        return {s: loaded[split_names[s]] for s in SPLITS}
    if not root.is_dir():
        raise UnlearnKitError(f"hf: {root} does not exist (give a save_to_disk folder or a folder of parquet files)")
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise UnlearnKitError(f"{root} is neither a save_to_disk folder nor a folder of parquet files")
    out = {}
    for split, name in split_names.items():
        mine = [f for f in files if name in f.relative_to(root).parts[:-1] or f.name.startswith(name)]
        if not mine:
            raise UnlearnKitError(
                f"{root} has no parquet file for split {name!r} (named {name}*.parquet or in {name}/)"
            )
        try:
            table = pa.concat_tables([pq.read_table(f) for f in mine])
        except (pa.ArrowException, OSError) as exc:
            raise UnlearnKitError(f"cannot read parquet files of split {name!r} in {root}: {exc}") from None
        out[split] = datasets.Dataset(table)
    return out


def plan(path: str | Path, options: dict[str, str]) -> Plan:
    datasets = _datasets()
    root = Path(path).resolve()
    image_col, label_col = options.get("image", "image"), options.get("label", "label")
    resize = parse_resize(options.get("resize"))
    splits = _open_splits(root, {s: options.get(s, s) for s in SPLITS})
    for split, ds in splits.items():
        for col in (image_col, label_col):
            if col not in ds.column_names:
                raise UnlearnKitError(
                    f"{root} {split} split has no column {col!r} (it has {', '.join(ds.column_names)}); "
                    f"name the columns with ?image=...&label=..."
                )
    feature = splits["train"].features[label_col]
    labels_raw = {s: np.asarray(ds.with_format("numpy")[label_col]) for s, ds in splits.items()}
    if isinstance(feature, datasets.ClassLabel):
        class_names = tuple(feature.names)
    else:
        y = labels_raw["train"]
        check_labels(y, np.iinfo(np.int64).max, f"{root.name} train {label_col}")  # integers, not negative
        class_names = tuple(str(i) for i in range(int(y.max()) + 1 if y.size else 0))
    if not class_names:
        raise UnlearnKitError(f"{root}: no classes (empty train split)")
    labels = {s: check_labels(labels_raw[s], len(class_names), f"{root.name} {s} {label_col}") for s in SPLITS}

    is_image = isinstance(splits["train"].features[image_col], datasets.Image)
    if is_image:
        raw = {s: ds.cast_column(image_col, datasets.Image(decode=False)) for s, ds in splits.items()}
        from PIL import Image, UnidentifiedImageError

        def open_image(split: str, i: int, entry: dict):
            try:
                if entry.get("bytes") is not None:
                    return Image.open(io.BytesIO(entry["bytes"]))
                return Image.open(root / entry["path"] if not os.path.isabs(entry["path"]) else entry["path"])
            except (UnidentifiedImageError, OSError, ValueError, TypeError) as exc:
                raise UnlearnKitError(f"cannot read image {i} of the {split} split of {root}: {exc}") from None

        modes, first = set(), None
        for split in SPLITS:
            for i, entry in enumerate(raw[split][image_col]):
                with open_image(split, i, entry) as image:
                    modes.add(image.mode)
                    size = (image.height, image.width)
                if first is None:
                    first = (f"{split}[{i}]", size)
                elif resize is None and size != first[1]:
                    raise UnlearnKitError(f"images of mixed sizes: {first[0]} is {first[1][0]}x{first[1][1]} but "
                                          f"{split}[{i}] is {size[0]}x{size[1]}; pass --resize HxW (or &resize=HxW)")
        if first is None:
            raise UnlearnKitError(f"{root}: no images")
        channels = channels_of(modes, str(root))
        shape = (channels, *(resize or first[1]))

        def read(split: str, start: int, stop: int) -> np.ndarray:
            out = np.empty((stop - start, *shape), dtype=np.uint8)
            for j, entry in enumerate(raw[split][start:stop][image_col]):
                with open_image(split, start + j, entry) as image:
                    try:
                        image.load()
                        out[j] = pil_to_array(image, channels, resize)
                    except (OSError, ValueError, SyntaxError) as exc:
                        raise UnlearnKitError(
                            f"cannot decode image {start + j} of the {split} split of {root}: {exc}"
                        ) from None
            return uint8_to_float(out)
    else:
        from .npz import _as_pixels, _to_nchw

        arrays = {s: ds.with_format("numpy") for s, ds in splits.items()}
        probe = _to_nchw(np.asarray(arrays["train"][:1][image_col]), options.get("layout"), f"{root.name} {image_col}")
        shape = tuple(int(v) for v in probe.shape[1:])

        def read(split: str, start: int, stop: int) -> np.ndarray:
            where = f"{root.name} {split}[{start}:{stop}] {image_col}"
            block = arrays[split][start:stop][image_col]
            if block.dtype == object:
                raise UnlearnKitError(f"{where}: arrays of mixed shapes")
            block = _to_nchw(block, options.get("layout"), where)
            if block.shape[1:] != shape:
                raise UnlearnKitError(f"{where}: images are {block.shape[1:]}, the first is {shape}")
            block = _as_pixels(block, where)
            return uint8_to_float(block) if block.dtype == np.uint8 else np.ascontiguousarray(block, dtype=np.float32)

    query = "&".join(f"{k}={options[k]}" for k in sorted(options))
    return Plan(name=f"hf:{root}" + (f"?{query}" if query else ""), source=str(root), class_names=class_names,
                shape=tuple(shape), labels=labels, read=read)


def signature_files(root: str | Path) -> list[Path]:
    root = Path(root)
    return [root] + (sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [])
