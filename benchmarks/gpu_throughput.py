"""Epoch throughput of unlearnkit's training loop against a plain DataLoader loop, for a ResNet-18 on CIFAR-shaped data
(written to benchmarks/results/gpu-throughput/). Meant for a machine with a CUDA GPU; on a CPU it runs as a smoke test
only (``--device cpu`` with a tiny configuration), and its output is labelled so.

The data are made here: ``--n`` random 32x32 RGB images (uint8, like CIFAR-10's files) with ten labels. Nothing is
downloaded. Each variant trains a freshly seeded ``resnet18`` (unlearnkit's CIFAR variant, the same for every
variant) with SGD (lr 0.1, momentum 0.9, weight decay 5e-4) for ``--epochs`` epochs, one run each, side by side in
this process; the figure is the last epoch's samples per second (the first pays for cuDNN's autotuning and any
compilation), and the ratio is against the plain loop.

Variants:

- ``plain``: the loop of the papers' reference code: a ``torch.utils.data.Dataset`` that holds uint8 HWC arrays and
  builds each sample in ``__getitem__`` (PIL image, random crop after 4-pixel padding, random horizontal flip, to a
  float tensor), a ``DataLoader`` (shuffled, ``--workers`` worker processes, ``pin_memory``), ``.cuda()`` per batch,
  full fp32, and ``loss.item()`` plus an accuracy read every step.
- ``source-loop``: a hand-written loop over unlearnkit's ``Source`` (the same batches and augmentation as ``fit``),
  with no metrics at all: what ``fit``'s bookkeeping (cost meter, sums on the device, checks) costs over nothing.
- ``fit-fp32``: ``unlearnkit.training.fit`` with ``--precision fp32`` (the plain loop's arithmetic).
- ``fit-fast``: ``fit`` with ``--precision bf16 --cudnn-benchmark --tf32`` (add ``--compile`` for ``fit-compile``).

Usage (GPU):  python benchmarks/gpu_throughput.py --device cuda [--n 50000 --batch-size 256 --epochs 2 --compile]
Smoke (CPU):  python benchmarks/gpu_throughput.py --device cpu --n 256 --batch-size 64 --epochs 1 --workers 0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from unlearnkit.data import Augment, Dataset, Source
from unlearnkit.models import new_model
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic
from unlearnkit.training import Accel, Phase, TrainConfig, fit, lr_factor, make_optimizer, prepare_model

OUT = Path(__file__).resolve().parent / "results" / "gpu-throughput"


def cifar_shaped(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.int64)


class PaperStyle(torch.utils.data.Dataset):
    """Per-sample work as torchvision's CIFAR10 + RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor does it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = ImageOps.expand(Image.fromarray(self.images[i]), border=4, fill=0)
        top, left = np.random.randint(0, 9, size=2)
        img = img.crop((left, top, left + 32, top + 32))
        if np.random.rand() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return x, int(self.labels[i])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model, data: PaperStyle, config: TrainConfig, device, workers: int) -> list[float]:
    loader = torch.utils.data.DataLoader(data, batch_size=config.batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    optimizer = make_optimizer(list(model.parameters()), config)
    seconds = []
    for _ in range(config.epochs):
        model.train()
        sync(device)
        start = time.perf_counter()
        losses, correct = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses += loss.item() * len(y)  # what the reference code's AverageMeter does every step
            correct += int((out.argmax(1) == y).sum())
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def source_loop(model, source: Source, config: TrainConfig, device, seed: int) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    aug = generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    optimizer = make_optimizer(list(model.parameters()), config)
    total, step, seconds = config.epochs * source.num_batches(), 0, []
    for _ in range(config.epochs):
        model.train()
        sync(device)
        start = time.perf_counter()
        for batch in source.batches(generator, device, augment_generator=aug):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(config, step, total)
            x = batch.x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--n", type=int, default=50_000, help="training images (CIFAR-10: 50,000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2, help="epochs per variant; the last one is the figure")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes of the plain loop")
    p.add_argument("--compile", action="store_true", help="also run fit with --compile (fit-compile)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU smoke runs: 1)")
    p.add_argument("--name", default=None, help="result file name (default: gpu on CUDA, cpu-smoke on the CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, labels = cifar_shaped(args.n)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()
    y = torch.from_numpy(labels)
    data = Dataset("cifar-shaped", x, y, x[:10], y[:10], num_classes=10, class_names=tuple(map(str, range(10))),
                   crop_padding=4, horizontal_flip=True)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.1, schedule="constant")
    source = Source(x, y, batch_size=args.batch_size, augment=Augment(4, True), name="train")

    def fresh():
        model, _ = new_model("resnet18", data, seed=0)
        return prepare_model(model, device)

    variants: dict[str, list[float]] = {}
    torch.manual_seed(0)
    np.random.seed(0)
    variants["plain"] = plain_loop(fresh(), PaperStyle(images, labels), config, device, args.workers)
    variants["source-loop"] = source_loop(fresh(), source, config, device, seed=0)
    runs = {"fit-fp32": Accel(precision="fp32"), "fit-fast": Accel(precision="bf16", cudnn_benchmark=True, tf32=True)}
    if args.compile:
        runs["fit-compile"] = Accel(precision="bf16", cudnn_benchmark=True, tf32=True, compile=True)
    for name, accel in runs.items():
        report = fit(fresh(), Phase(source), config, seed=0, device=device, accel=accel)
        variants[name] = [r["seconds"] for r in report.history]

    rows = {name: {"epoch_seconds": [round(s, 3) for s in secs], "samples_per_s": round(args.n / secs[-1], 1)}
            for name, secs in variants.items()}
    for row in rows.values():
        row["ratio_to_plain"] = round(row["samples_per_s"] / rows["plain"]["samples_per_s"], 3)
    gpu = device.type == "cuda"
    name = args.name or ("gpu" if gpu else "cpu-smoke")
    record = {
        "what": "epoch throughput, ResNet-18 on CIFAR-shaped data: unlearnkit's loop vs a plain DataLoader loop"
                + ("" if gpu else " — CPU SMOKE RUN (proves the script works; not a GPU result)"),
        "command": "python " + " ".join([sys.argv[0], *argv]),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if gpu else None,
        "settings": {"n": args.n, "batch_size": args.batch_size, "epochs": args.epochs, "workers": args.workers,
                     "compile": args.compile},
        "variants": rows, "machine": machine(), "versions": versions(),
        "load_average": [round(v, 2) for v in os.getloadavg()],  # at the end of the run (1, 5, 15 minutes)
    }
    OUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT / f"{name}.json", record)
    lines = [f"# GPU throughput: {name}", ""]
    if not gpu:
        lines += ["**CPU smoke run: proves the script runs end to end; these are not GPU figures.**", ""]
    lines += [f"`{record['command']}`", "",
              f"Device {device}{' (' + record['gpu'] + ')' if gpu else ''}; {args.n} images, batch {args.batch_size}, "
              f"{args.epochs} epoch(s) per variant, one run each; the figure is the last epoch.", "",
              "| variant | epoch seconds | samples/s (last epoch) | × plain |", "| --- | --- | --- | --- |"]
    for variant, row in rows.items():
        lines.append(f"| {variant} | {', '.join(map(str, row['epoch_seconds']))} | {row['samples_per_s']} | "
                     f"{row['ratio_to_plain']} |")
    lines += ["", f"Machine: {record['machine']}", f"Versions: {record['versions']}",
              f"Load average at the end (1, 5, 15 min): {record['load_average']}", ""]
    write_text_atomic(OUT / f"{name}.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
