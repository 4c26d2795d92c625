"""``npz:PATH`` — a NumPy ``.npz`` archive with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optionally
``class_names``), read with ``allow_pickle=False``.

Images are N x H x W (grey), N x H x W x C or N x C x H x W with C in {1, 3, 4}; the layout is inferred from
where the channel axis is and may be given as ``?layout=nhwc|nchw`` when both readings are possible. uint8
images are divided by 255; float images must already lie in [0, 1]. Labels are integers in
0..K-1 where K is the number of ``class_names`` (or ``?num_classes=K``, or the largest training label + 1).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import UnlearnKitError
from .images import Plan, check_labels, uint8_to_float

OPTIONS = {
    "layout": "nhwc or nchw (when the shape allows both)",
    "num_classes": "K (default: from class_names or the labels)",
}
KEYS = ("x_train", "y_train", "x_test", "y_test")


def _to_nchw(x: np.ndarray, layout: str | None, where: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise UnlearnKitError(f"{where}: images must be N x H x W, N x H x W x C or N x C x H x W, got shape {x.shape}")
    if layout is None:
        # A channel axis of 1 or 3 beats one of 4 (RGBA is rarer than 4-pixel-wide images); a tie is ambiguous.
        score = {axis: 2 if x.shape[axis] in (1, 3) else 1 if x.shape[axis] == 4 else 0 for axis in (1, 3)}
        if score[1] == score[3] > 0 and x.shape[1] != x.shape[3]:
            raise UnlearnKitError(f"{where}: shape {x.shape} could be N x H x W x C or N x C x H x W; "
                                  f"add ?layout=nhwc or ?layout=nchw")
        if not max(score.values()):
            raise UnlearnKitError(f"{where}: shape {x.shape} has no channel axis of size 1, 3 or 4")
        layout = "nhwc" if score[3] >= score[1] else "nchw"
    if layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    elif layout != "nchw":
        raise UnlearnKitError(f"layout must be nhwc or nchw, got {layout!r}")
    if x.shape[1] == 4:  # RGBA: drop alpha, as for image files
        x = x[:, :3]
    return x


def _as_pixels(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 as is; other integers when they lie in 0..255 (as uint8); floats when they lie in [0, 1]."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if lo < 0 or hi > 255:
            raise UnlearnKitError(f"{where}: integer images must lie in 0..255 (found {lo}..{hi})")
        return x.astype(np.uint8)
    if x.dtype.kind != "f":
        raise UnlearnKitError(f"{where}: images must be uint8 (0..255) or float (0..1), got {x.dtype}")
    lo, hi = (float(np.nanmin(x)), float(np.nanmax(x))) if x.size else (0.0, 0.0)
    if not np.isfinite(x).all() or lo < 0.0 or hi > 1.0:
        raise UnlearnKitError(f"{where}: float images must lie in [0, 1] (found {lo:g}..{hi:g}); "
                              f"divide by 255 or save them as uint8")
    return x


def plan(path: str | Path, options: dict[str, str]) -> Plan:
    path = Path(path).resolve()
    if not path.is_file():
        raise UnlearnKitError(f"npz file {path} does not exist")
    layout = options.get("layout")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in KEYS if k not in archive.files]
            if missing:
                raise UnlearnKitError(
                    f"{path} lacks {', '.join(missing)} (it has {', '.join(archive.files) or 'nothing'})"
                )
            arrays = {k: archive[k] for k in KEYS}
            names = archive["class_names"] if "class_names" in archive.files else None
    except UnlearnKitError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UnlearnKitError(f"cannot read npz file {path}: {exc}") from None
    xs = {}
    for split in ("train", "test"):
        where = f"{path.name} x_{split}"
        xs[split] = _as_pixels(_to_nchw(arrays[f"x_{split}"], layout, where), where)
        if arrays[f"y_{split}"].shape[:1] != xs[split].shape[:1]:
            raise UnlearnKitError(f"{path.name}: x_{split} has {xs[split].shape[0]} images but y_{split} has "
                                  f"{arrays[f'y_{split}'].shape[0] if arrays[f'y_{split}'].ndim else 0} labels")
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise UnlearnKitError(
            f"{path.name}: train images are {xs['train'].shape[1:]} but test images {xs['test'].shape[1:]}"
        )
    if names is not None:
        class_names = tuple(str(n) for n in np.asarray(names).reshape(-1))
    elif "num_classes" in options:
        try:
            k = int(options["num_classes"])
        except ValueError:
            raise UnlearnKitError(f"num_classes must be an integer, got {options['num_classes']!r}") from None
        class_names = tuple(str(i) for i in range(k))
    else:
        y = np.asarray(arrays["y_train"])
        if y.dtype.kind not in "iu" or y.ndim != 1:
            check_labels(y, 1, f"{path.name} y_train")  # raises the type/shape error
        class_names = tuple(str(i) for i in range(int(y.max()) + 1 if y.size else 0))
    if not class_names:
        raise UnlearnKitError(f"{path.name}: no classes (empty y_train)")
    labels = {s: check_labels(arrays[f"y_{s}"], len(class_names), f"{path.name} y_{s}") for s in ("train", "test")}

    def read(split: str, start: int, stop: int) -> np.ndarray:
        block = xs[split][start:stop]
        return uint8_to_float(block) if block.dtype == np.uint8 else np.ascontiguousarray(block, dtype=np.float32)

    query = "&".join(f"{k}={options[k]}" for k in sorted(options))
    return Plan(name=f"npz:{path}" + (f"?{query}" if query else ""), source=str(path), class_names=class_names,
                shape=tuple(int(v) for v in xs["train"].shape[1:]), labels=labels, read=read)
