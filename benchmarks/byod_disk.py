"""The disk-backed data path against the in-memory one, on Fashion-MNIST written as an image folder.

For each training-set size (default 15,000 and 60,000 images; the test split is the first 2,000 test
images, as it plays no part in an epoch) the script writes Fashion-MNIST as PNG files in class folders, prepares it
once with
``unlearnkit data prepare`` (memory-mapped float32 arrays), and then, each in a fresh process:

* ``memory``: ``imagefolder:PATH`` decoded into memory, one training epoch of the small CNN (after a warm-up
  on 1,024 images with a throwaway model, as in the disk process, so one-time costs are not counted);
* ``disk``: ``prepared:DIR`` memory-mapped, the OS page cache of its files dropped first
  (``posix_fadvise(DONTNEED)``), one epoch ("cold": the images come from disk), then a second ("warm").

Throughput is training samples per second of the epoch (the model, recipe, seed and batch order are the
same, so the batches are identical); the ratio is disk / memory measured side by side in one run. Memory:
a thread samples /proc/self/status every 5 ms; ``peak_anon_mb`` is the process's own memory (heap, tensors:
what grows with the data when it is held in memory), ``peak_rss_mb`` adds the file pages it has mapped
(page cache the kernel reclaims under pressure, so not a bound on what the process needs).

    PYTHONPATH=src python benchmarks/byod_disk.py                     # ~10 min on a shared 2-core CPU
    PYTHONPATH=src python benchmarks/byod_disk.py --sizes 2000 --quick # smoke test of this script
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class MemorySampler:
    """Peak VmRSS / RssAnon / RssFile of this process, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> dict[str, int]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peak:
                out[key] = int(value.split()[0])  # kB
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in self._read().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in self._read().items():
            self.peak[key] = max(self.peak[key], value)

    def megabytes(self) -> dict[str, float]:
        return {
            "peak_rss_mb": round(self.peak["VmRSS"] / 1024, 1),
            "peak_anon_mb": round(self.peak["RssAnon"] / 1024, 1),
            "peak_file_mb": round(self.peak["RssFile"] / 1024, 1),
        }


def drop_page_cache(folder: Path) -> None:
    for path in folder.glob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child(mode: str, spec: str, model_name: str, batch_size: int) -> dict:
    """One measurement in this (fresh) process; prints a JSON object."""
    import torch

    from unlearnkit.data import load_dataset
    from unlearnkit.models import new_model
    from unlearnkit.results import sha256_tensors
    from unlearnkit.training import TrainConfig, train_classifier

    torch.set_num_threads(1)
    result: dict = {"mode": mode, "spec": spec}
    with MemorySampler() as whole:
        if mode == "disk":
            drop_page_cache(Path(spec.split(":", 1)[1]))
        started = time.perf_counter()
        data = load_dataset(spec)
        result["load_seconds"] = round(time.perf_counter() - started, 2)
        result["n_train"] = data.n_train
        config = TrainConfig(epochs=1, batch_size=batch_size, lr=0.05, augment=False)
        # Warm-up (one-time kernel and allocator costs) on a throwaway model, so the timed epochs compare data paths.
        warm, _ = new_model(model_name, data, seed=1)
        train_classifier(warm, data.x_train, data.y_train, torch.arange(min(1024, data.n_train)), config, seed=1,
                         device="cpu")
        model, _ = new_model(model_name, data, seed=0)
        epochs = {}
        passes = ("cold", "warm") if mode == "disk" else ("memory",)
        for name in passes:
            if name == "cold":
                drop_page_cache(Path(spec.split(":", 1)[1]))
            started = time.perf_counter()
            train_classifier(
                model, data.x_train, data.y_train, torch.arange(data.n_train), config, seed=0, device="cpu"
            )
            seconds = time.perf_counter() - started
            epochs[name] = {"seconds": round(seconds, 2), "samples_per_s": round(data.n_train / seconds, 1),
                            # the same batches from the same start give the same weights, bit for bit
                            "weights_sha256": sha256_tensors(*model.state_dict().values())[:16]}
        result["epochs"] = epochs
    result.update(whole.megabytes())
    result["data_mb_float32"] = round((data.x_train.numel() + data.x_test.numel()) * 4 / 2**20, 1)
    return result


TEST_IMAGES = 2000  # the test split plays no part in a training epoch; kept small to bound the run


def write_folder(root: Path, n_train: int) -> None:
    """Fashion-MNIST's first ``n_train`` training and first TEST_IMAGES test images as PNGs in class folders."""
    from PIL import Image

    from unlearnkit.data import load_dataset

    if (root / ".complete").is_file():
        return
    data = load_dataset("fashion-mnist")
    names = [n.replace("/", "-") for n in data.class_names]
    for split, x, y, n in (
        ("train", data.x_train, data.y_train, n_train),
        ("test", data.x_test, data.y_test, TEST_IMAGES),
    ):
        pixels = (x[:n] * 255).round().byte().numpy()[:, 0]
        labels = y[:n].numpy()
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(pixels, labels)):
            Image.fromarray(image).save(root / split / names[label] / f"{i:05d}.png")
    (root / ".complete").write_text("")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="15000,60000", help="training-set sizes (comma list)")
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--work", default="runs/byod-disk", help="where the image folders and prepared arrays go")
    parser.add_argument("--out", default="benchmarks/results/byod")
    parser.add_argument("--quick", action="store_true", help="smoke test: write results under --work instead")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.model, args.batch_size)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from unlearnkit.data.prepared import prepare
    from unlearnkit.data.readers import plan_spec
    from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic

    work, out = Path(args.work), Path(args.work) / "results" if args.quick else Path(args.out)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        folder, prepared = work / f"fmnist-{n}", work / f"fmnist-{n}-prepared"
        started = time.perf_counter()
        write_folder(folder, n)
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        if not (prepared / "prepared.json").is_file():
            prepare(plan_spec(f"imagefolder:{folder}"), prepared)
        prepare_s = time.perf_counter() - started
        log(f"{n}: folder written in {write_s:.0f} s, prepared in {prepare_s:.0f} s")
        row = {"n_train": n, "write_folder_s": round(write_s, 1), "prepare_s": round(prepare_s, 1)}
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
            ),
        }
        for mode, spec in (("memory", f"imagefolder:{folder}"), ("disk", f"prepared:{prepared}")):
            command = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
                       "--child", mode, spec]
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                log(done.stderr[-2000:])
                return 1
            row[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            log(f"{n} {mode}: {json.dumps(row[mode]['epochs'])}, peak anon {row[mode]['peak_anon_mb']} MB, "
                f"peak rss {row[mode]['peak_rss_mb']} MB")
        memory = row["memory"]["epochs"]["memory"]["samples_per_s"]
        row["ratio_cold"] = round(row["disk"]["epochs"]["cold"]["samples_per_s"] / memory, 3)
        row["ratio_warm"] = round(row["disk"]["epochs"]["warm"]["samples_per_s"] / memory, 3)
        row["same_weights_after_one_epoch"] = (row["disk"]["epochs"]["cold"]["weights_sha256"]
                                               == row["memory"]["epochs"]["memory"]["weights_sha256"])
        rows.append(row)

    record = {
        "benchmark": "byod-disk",
        "command": "PYTHONPATH=src python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {**machine(), "torch_threads": 1, "note": "a 2-core CPU shared with other jobs during the run"},
        "versions": versions(),
        "model": args.model,
        "batch_size": args.batch_size,
        "rows": rows,
    }
    write_json_atomic(out / "results.json", record)
    write_text_atomic(out / "report.md", report(record))
    log(f"wrote {out}/results.json and report.md")
    return 0


def report(record: dict) -> str:
    lines = [
        "# Disk-backed data (`data prepare`, memory-mapped) against in-memory data",
        "",
        f"Fashion-MNIST written as PNG image folders; one training epoch of `{record['model']}` (batch "
        f"{record['batch_size']}, 1 thread). Command: `{record['command']}`.",
        f"Machine: {record['machine']['processor']}, {record['machine']['cpu_count']} cores — "
        f"{record['machine']['note']}; torch {record['versions']['torch']}.",
        "",
        "| train images | data (float32) | in-memory samples/s | disk cold samples/s | disk warm samples/s | "
        "ratio cold | ratio warm | peak anon MB memory / disk | peak RSS MB memory / disk | prepare s | same weights |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for row in record["rows"]:
        m, d = row["memory"], row["disk"]
        lines.append(
            f"| {row['n_train']:,} | {m['data_mb_float32']} MB | {m['epochs']['memory']['samples_per_s']:.0f} | "
            f"{d['epochs']['cold']['samples_per_s']:.0f} | {d['epochs']['warm']['samples_per_s']:.0f} | "
            f"{row['ratio_cold']:.2f}x | {row['ratio_warm']:.2f}x | {m['peak_anon_mb']} / {d['peak_anon_mb']} | "
            f"{m['peak_rss_mb']} / {d['peak_rss_mb']} | {row['prepare_s']} | "
            f"{'yes' if row['same_weights_after_one_epoch'] else 'NO'} |")
    lines += [
        "",
        "Peak anon = the process's own memory (what it needs); peak RSS adds mapped file pages (page cache, "
        "reclaimable). \"cold\" drops the page cache of the prepared files before the epoch. \"same weights\": the "
        "in-memory epoch and the cold disk epoch end with bitwise identical weights (same batches).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
