"""``unlearnkit import`` (a model trained elsewhere becomes a checkpoint) and ``unlearnkit data prepare | show``
(users' data sets: imagefolder:, npz:, hf:, and their disk-backed prepared: copies). See docs/your-own-model.md."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UnlearnKitError
from .common import Command, add_overwrite_arg, check_output, data_inputs


def with_resize(spec: str, resize: str | None) -> str:
    """``--resize HxW`` as the spec's ``resize`` option (image folders and hf: data only)."""
    if resize is None:
        return spec
    from ..data.images import parse_resize

    parse_resize(resize)  # a bad value fails here, before anything is read
    kind = spec.partition(":")[0]
    if kind not in ("imagefolder", "hf") or ":" not in spec:
        raise UnlearnKitError(f"--resize applies to imagefolder:PATH and hf:PATH data, not {spec!r}")
    return f"{spec}{'&' if '?' in spec else '?'}resize={resize}"


def _import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--factory", required=True, metavar="MODULE:FUNCTION",
                   help="importable function (or class) that builds your nn.Module, e.g. my_package.models:build; "
                        "imported from the installed packages or the current directory")
    p.add_argument("--factory-args", default="{}", metavar="JSON",
                   help='its keyword arguments as a JSON object, e.g. \'{"num_classes": 10}\' (recorded, so Retrain '
                        "builds a fresh copy the same way)")
    p.add_argument(
        "--weights", required=True, help="model.safetensors (or a .pt state dict, read with weights_only=True)"
    )
    p.add_argument("--dataset", required=True,
                   help="imagefolder:PATH, npz:PATH, hf:PATH?image=COL&label=COL, prepared:DIR or a built-in name")
    p.add_argument("--data-dir", default=None, help="for built-in data sets: the folder with their files")
    p.add_argument("--resize", default=None, metavar="HxW", help="resize every image (image folders and hf: data)")
    p.add_argument("--classifier-layer", default=None, metavar="NAME",
                   help="the final linear layer (default: `classifier`, else the last nn.Linear; used by FF's class "
                        "rows, SAPS/last-layer selections, pruning's --exclude-classifier)")
    p.add_argument(
        "--recipe",
        default=None,
        metavar="FILE.toml",
        help="training options Retrain uses (epochs, batch_size, lr, optimizer, schedule, ...; the fields of "
        "the built-in recipes); default: 10 epochs SGD lr 0.05 momentum 0.9, cosine, batch 128",
    )
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    add_overwrite_arg(p, "an existing checkpoint")
    p.add_argument("--device", default="auto")


def _import(args: argparse.Namespace) -> int:
    from ..importing import import_model

    try:
        factory_args = json.loads(args.factory_args)
    except json.JSONDecodeError as exc:
        raise UnlearnKitError(f"--factory-args is not JSON: {exc}") from None
    if not isinstance(factory_args, dict):
        raise UnlearnKitError(f"--factory-args must be a JSON object of keyword arguments, got {args.factory_args!r}")
    dataset = with_resize(args.dataset, args.resize)
    check_output(args.out, "checkpoint", args, [args.weights, *data_inputs(dataset, args.data_dir),
                                                *([args.recipe] if args.recipe else [])])
    ckpt = import_model(args.factory, args.weights, dataset, factory_args=factory_args,
                        classifier_layer=args.classifier_layer, recipe=args.recipe, out=args.out, device=args.device,
                        data_dir=args.data_dir, overwrite=args.overwrite, echo=True)
    print(f"checkpoint written to {ckpt.path}")
    return 0


def _data_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    prepare = sub.add_parser("prepare", help="decode a data set once into memory-mapped arrays (prepared:DIR)",
                             description="Decode DATASET chunk by chunk into memory-mapped float32 arrays in OUT; "
                                         "then use --dataset prepared:OUT anywhere. Memory stays bounded by one chunk.")
    prepare.add_argument("--dataset", required=True, help="imagefolder:PATH, npz:PATH or hf:PATH?...")
    prepare.add_argument(
        "--resize", default=None, metavar="HxW", help="resize every image (image folders and hf: data)"
    )
    prepare.add_argument("--out", required=True, help="folder to write (new, or a prepared data set with --overwrite)")
    add_overwrite_arg(prepare, "an existing prepared data set")
    show = sub.add_parser("show", help="read a data set and print what unlearnkit sees (classes, shape, fingerprint)")
    show.add_argument("dataset", help="a data set name or spec")
    show.add_argument("--resize", default=None, metavar="HxW")
    show.add_argument("--data-dir", default=None)
    show.add_argument("--json", action="store_true")


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "prepare":
        from ..data.prepared import prepare
        from ..data.readers import parse_spec, plan_spec

        spec = with_resize(args.dataset, args.resize)
        if parse_spec(spec)[0] == "prepared":
            raise UnlearnKitError(f"{args.dataset} is already prepared")
        check_output(args.out, "prepared", args, [parse_spec(spec)[1]])  # before decoding anything
        path = prepare(plan_spec(spec), args.out, overwrite=args.overwrite, echo=sys.stderr.isatty())
        meta = json.loads((path / "prepared.json").read_text())
        print(f"prepared {meta['n_train']} training and {meta['n_test']} test images of {meta['name']} "
              f"({meta['bytes'] / 2**20:.1f} MiB, fingerprint {meta['fingerprint']}) in {path}")
        print(f"use it as --dataset prepared:{path}")
        return 0
    if args.data_command == "show":
        from ..data import load_dataset

        info = load_dataset(with_resize(args.dataset, args.resize), args.data_dir).describe()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key, value in info.items():
                print(f"{key:<12} {', '.join(map(str, value)) if isinstance(value, list) else value}")
        return 0
    raise UnlearnKitError("use `unlearnkit data prepare ...` or `unlearnkit data show SPEC`")


COMMANDS = [
    Command("import", "import a model trained elsewhere (your factory + safetensors weights) as a checkpoint",
            _import_arguments, _import),
    Command("data", "your own data sets: prepare a disk-backed copy, or show what is read", _data_arguments, _data),
]
