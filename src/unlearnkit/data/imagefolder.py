"""``imagefolder:PATH`` — images in class folders, the layout most people keep: ``PATH/train/<class>/*.png``
and ``PATH/test/<class>/*`` (PNG, JPEG, BMP, GIF, WebP, TIFF; decoded by Pillow; sub-folders of a class folder
count as that class).

* Classes are the train split's sub-folder names in sorted order; a class in ``test/`` that is not in
  ``train/`` is an error (a model cannot be measured on a class it never saw).
* Sample ids are positions in the sorted list of relative paths (``<class>/<file>``) of a split, so they
  are stable however the files were copied; :func:`sample_paths` gives that list.
* Every image must have the same size, unless ``?resize=HxW`` (``--resize HxW``) asks for them to be resized.
  All-grey folders give one channel, anything else three (alpha is dropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UnlearnKitError
from .images import SPLITS, Plan, channels_of, parse_resize, pil_to_array, uint8_to_float

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
OPTIONS = {"resize": "HxW: resize every image to H x W (bilinear)"}


def _visible(path: Path | str) -> bool:
    return not (path.name if isinstance(path, Path) else path).startswith(".")


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and _visible(d)), key=lambda d: d.name)


def _images_in(class_dir: Path) -> list[Path]:
    return [p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS
            and all(_visible(part) for part in p.relative_to(class_dir).parts)]


def scan(root: str | Path) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
    """Class names and, per split, the (relative path, label) of each image in sample-id order."""
    root = Path(root)
    if not root.is_dir():
        raise UnlearnKitError(f"image folder {root} does not exist or is not a directory")
    split_dirs = {s: root / s for s in SPLITS}
    for split, d in split_dirs.items():
        if not d.is_dir():
            raise UnlearnKitError(f"image folder {root} has no {split}/ folder; the layout is "
                                  f"{root}/train/<class>/*.png and {root}/test/<class>/*.png")
    class_names: tuple[str, ...] = ()
    samples: dict[str, list[tuple[str, int]]] = {}
    for split, d in split_dirs.items():
        classes = _class_dirs(d)
        stray = sorted(p.name for p in d.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in EXTENSIONS)
        if not classes:
            raise UnlearnKitError(f"{d} has no class sub-folders (the layout is {d}/<class>/<image>)")
        if stray:
            raise UnlearnKitError(f"{d / stray[0]} is not inside a class folder (the layout is {d}/<class>/<image>)")
        names = [c.name for c in classes]
        if split == "train":
            class_names = tuple(names)
        else:
            unknown = sorted(set(names) - set(class_names))
            if unknown:
                raise UnlearnKitError(f"{d} has class(es) {', '.join(unknown[:5])} that {root / 'train'} lacks")
        index = {name: i for i, name in enumerate(class_names)}
        entries = []
        for c in classes:
            files = _images_in(c)
            if not files and split == "train":
                raise UnlearnKitError(f"class folder {c} holds no images ({', '.join(sorted(EXTENSIONS))})")
            entries += [(p.relative_to(d).as_posix(), index[c.name]) for p in files]
        entries.sort()
        samples[split] = entries
    return class_names, samples


def sample_paths(root: str | Path, split: str = "train") -> list[str]:
    """The relative paths of a split's images; a sample's id is its position in this list."""
    return [path for path, _ in scan(root)[1][split]]


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnlearnKitError(f"cannot read image {path}: {exc}") from None


def plan(root: str | Path, options: dict[str, str]) -> Plan:
    root = Path(root).resolve()
    resize = parse_resize(options.get("resize"))
    class_names, samples = scan(root)
    # Headers only (Pillow reads the size and mode without decoding): sizes agree, channels are known.
    modes: set[str] = set()
    first: tuple[str, tuple[int, int]] | None = None
    for split in SPLITS:
        for rel, _ in samples[split]:
            path = root / split / rel
            with _open(path) as image:
                modes.add(image.mode)
                size = (image.height, image.width)
            if first is None:
                first = (f"{split}/{rel}", size)
            elif resize is None and size != first[1]:
                raise UnlearnKitError(
                    f"images of mixed sizes: {first[0]} is {first[1][0]}x{first[1][1]} but {split}/{rel} is "
                    f"{size[0]}x{size[1]}; pass --resize HxW (or ?resize=HxW) to resize them all")
    if first is None:
        raise UnlearnKitError(f"image folder {root} holds no images")
    channels = channels_of(modes, str(root))
    height, width = resize or first[1]

    def read(split: str, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, channels, height, width), dtype=np.uint8)
        for i, (rel, _) in enumerate(samples[split][start:stop]):
            path = root / split / rel
            with _open(path) as image:
                try:
                    image.load()
                    out[i] = pil_to_array(image, channels, resize)
                except (OSError, ValueError, SyntaxError) as exc:
                    raise UnlearnKitError(f"cannot decode image {path}: {exc}") from None
        return uint8_to_float(out)

    labels = {s: np.array([label for _, label in samples[s]], dtype=np.int64) for s in SPLITS}
    name = f"imagefolder:{root}" + (f"?resize={resize[0]}x{resize[1]}" if resize else "")
    return Plan(name=name, source=str(root), class_names=class_names, shape=(channels, height, width),
                labels=labels, read=read)


def signature_files(root: str | Path) -> list[Path]:
    """The files whose sizes/mtimes key the in-process cache (a changed image invalidates it)."""
    root = Path(root)
    return [root] + sorted(p for s in SPLITS if (root / s).is_dir() for p in (root / s).rglob("*"))
