"""Where a command may write: the one check every writing command makes before any expensive work.

The rule (docs/safety.md):

* an output that is, contains or lies inside one of the command's inputs is always refused (symlinks are
  resolved first, so a link cannot smuggle the output into an input);
* an existing output that is not empty must be an unlearnkit artefact of the same kind (a checkpoint for
  ``train``/``unlearn``/``prune``, a generator for ``spdgan train``, a results folder of the same suite for
  ``bench``/``audit``, ...); anything else -- a user's folder, a regular file, another kind of artefact -- is
  refused, ``--overwrite`` or not;
* replacing an existing artefact needs ``overwrite=True`` (``--overwrite``); it is replaced only once the new one
  is complete (writers stage it in a ``.tmp-NAME-*`` sibling and rename it into place);
* every OS error met on the way (no permission, a read-only or pseudo file system, a name too long, a path below
  a regular file, a full device, an empty name or ``.``) is an :class:`UnlearnKitError` one-liner.

``.tmp-NAME-PID-*`` folders left by a killed writer are removed by the next write of ``NAME`` (and by
``unlearnkit gc``): the name carries the writer's pid (and an ``.owner`` file inside its start time, against pid
reuse), and only folders whose process is gone are removed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from .errors import UnlearnKitError

TMP_PREFIX = ".tmp-"
OWNER = ".owner"
# A temporary folder without an owner file (its writer was killed between creating it and naming itself) is
# stale once it is this old.
UNOWNED_GRACE_S = 30.0
# Small JSON files read to recognise an artefact are read at most this far.
_MARKER_BYTES = 1 << 20


# -- recognising artefacts ----------------------------------------------------------------------------
def _json_head(path: Path) -> dict | None:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MARKER_BYTES + 1)
    except OSError:
        return None
    if len(raw) > _MARKER_BYTES:
        return None
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _format_is(path: Path, fmt: str) -> bool:
    record = _json_head(path)
    return record is not None and record.get("format") == fmt


def _results_suite(path: Path) -> str | None:
    """The suite a ``bench`` results folder belongs to (from its run logs or a record), or None."""
    candidates = sorted((path / "runs").glob("*.json"))[:1] if (path / "runs").is_dir() else []
    if not candidates and (path / "records").is_dir():
        candidates = [next(iter(sorted((path / "records").glob("*/*/*.json"))), None)]
    for candidate in candidates:
        record = _json_head(candidate) if candidate is not None else None
        if record is not None and isinstance(record.get("suite"), str):
            return record["suite"]
    return None


def _audit_suite(path: Path) -> str | None:
    record = _json_head(path / "results.json")
    if record is not None and isinstance(record.get("suite"), str) and isinstance(record.get("requests"), dict):
        return record["suite"]
    return None


# kind -> (what it is called, detector(path) -> None when not this kind, else a detail such as the suite name)
ARTEFACT_KINDS: dict[str, tuple[str, Callable[[Path], str | None]]] = {
    "checkpoint": (
        "an unlearnkit checkpoint",
        lambda p: "" if _format_is(p / "manifest.json", "unlearnkit-checkpoint/1") else None,
    ),
    "spdgan": (
        "an SPD-GAN generator",
        lambda p: "" if _format_is(p / "manifest.json", "unlearnkit-spdgan/1") else None,
    ),
    "sisa": ("a SISA model", lambda p: "" if _format_is(p / "sisa.json", "unlearnkit-sisa/1") else None),
    "bench": ("a benchmark results folder", _results_suite),
    "audit": ("an audit results folder", _audit_suite),
    "prepared": (
        "a prepared data set",
        lambda p: "" if _format_is(p / "prepared.json", "unlearnkit-prepared/1") else None,
    ),
}


def artefact_kind(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(kind, detail)`` of the unlearnkit artefact in the folder ``path`` (detail: the suite of a results
    folder, else ""), or None when it is not one."""
    path = Path(path)
    if not path.is_dir():
        return None
    for kind, (_, detect) in ARTEFACT_KINDS.items():
        detail = detect(path)
        if detail is not None:
            return kind, detail
    return None


# -- the check ----------------------------------------------------------------------------------------
def _oserror(action: str, path: Path | str, exc: OSError) -> UnlearnKitError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENAMETOOLONG:
        reason = "the name is too long"
    return UnlearnKitError(f"cannot {action} {path}: {reason}")


def _resolved(path: str | os.PathLike) -> Path:
    try:
        return Path(os.path.realpath(os.path.abspath(os.fspath(path))))
    except (OSError, ValueError) as exc:
        raise UnlearnKitError(f"cannot use the path {os.fspath(path)!r}: {exc}") from None


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_name(path: str | os.PathLike, option: str = "--out") -> Path:
    """The output as given, refusing names that cannot be a new folder: '', '.', '..', a trailing '/.'."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip():
        raise UnlearnKitError(f"{option} is empty; give the folder to write")
    if "\x00" in text:
        raise UnlearnKitError(f"{option} contains a NUL character")
    name = Path(text).name
    if name in ("", ".", "..") or text.rstrip("/").endswith(("/.", "/..")) or text.strip("/") in (".", ".."):
        raise UnlearnKitError(f"{option} {text!r} names no new folder (it is '.', '..' or a root); give a folder name")
    for part in Path(text).parts:
        if len(os.fsencode(part)) > 255:
            raise UnlearnKitError(f"cannot write {option} {text[:60]}...: a path component is longer than 255 bytes")
    return Path(text)


def overlaps(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> str | None:
    """The first input that ``output`` is, contains or lies inside (symlinks resolved), or None."""
    out = _resolved(output)
    for item in inputs:
        if item is None or os.fspath(item) == "":
            continue
        other = _resolved(item)
        if _inside(out, other) or _inside(other, out):
            return os.fspath(item)
    return None


def _probe_parent(path: Path, option: str) -> None:
    """Check that the folder that will hold ``path`` can be created and written, without leaving anything."""
    absolute = Path(os.path.abspath(path))
    first, ancestor = absolute, absolute.parent  # the first folder that would be created, and where it would be
    while not ancestor.exists() and not ancestor.is_symlink():
        first, ancestor = ancestor, ancestor.parent
    if ancestor.is_symlink() and not ancestor.exists():
        raise UnlearnKitError(f"cannot write {option} {path}: {ancestor} is a broken symbolic link")
    if not ancestor.is_dir():
        raise UnlearnKitError(f"cannot write {option} {path}: {ancestor} is a file, not a folder")
    try:
        # Named like the output's own temporary folders, so a kill right here is cleaned up by the next run.
        remove_stale_temps(first)
        probe = tempfile.mkdtemp(prefix=temp_prefix(first.name), dir=ancestor)
    except OSError as exc:
        raise _oserror(f"write {option}", path, exc) from None
    os.rmdir(probe)


def prepare_output(
    path: str | os.PathLike,
    kind: str,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    resume: bool = False,
    detail: str | None = None,
    option: str = "--out",
) -> Path:
    """Check that ``path`` may receive an artefact of ``kind`` (see the module docstring) and return it.

    ``resume``: an existing artefact of the same kind (and ``detail``, e.g. the suite name of a results folder)
    is continued rather than replaced, so it needs no ``overwrite`` (``bench`` adds records to its folder).
    Nothing is created; stale ``.tmp-*`` siblings of ``path`` left by killed writers are removed.
    """
    if kind not in ARTEFACT_KINDS:
        raise ValueError(f"unknown artefact kind {kind!r}")
    what = ARTEFACT_KINDS[kind][0]
    path = check_output_name(path, option)
    inputs = list(inputs)
    clash = overlaps(path, inputs)
    if clash is not None:
        raise UnlearnKitError(
            f"{option} {path} is, contains or lies inside the input {clash}; "
            "write the output somewhere else (an input is never replaced)"
        )
    try:
        exists = path.exists() or path.is_symlink()
        if exists and not path.exists():
            raise UnlearnKitError(f"{option} {path} is a broken symbolic link; remove it or choose another {option}")
        if exists and not path.is_dir():
            raise UnlearnKitError(f"{option} {path} exists and is a file, not a folder; choose another {option}")
        if exists:
            if not os.access(path, os.R_OK | os.X_OK):
                raise UnlearnKitError(f"cannot write {option} {path}: permission denied")
            found = artefact_kind(path)
            if found is None:
                entries = [e for e in os.listdir(path) if not e.startswith(TMP_PREFIX)]
                if entries:
                    raise UnlearnKitError(
                        f"{option} {path} is a folder that holds other files ({len(entries)} entries) and "
                        f"not {what}; unlearnkit never writes over them: choose another {option}"
                    )
            elif found[0] != kind:
                raise UnlearnKitError(
                    f"{option} {path} holds {ARTEFACT_KINDS[found[0]][0]}, not {what}; choose another {option}"
                )
            elif detail is not None and found[1] and found[1] != detail:
                raise UnlearnKitError(
                    f"{option} {path} holds {what} of {found[1]!r}, not of {detail!r}; choose another {option}"
                )
            elif not (overwrite or resume):
                raise UnlearnKitError(
                    f"{option} {path} already holds {what}; pass --overwrite to replace it "
                    "(it is replaced only once the new one is complete)"
                )
        _probe_parent(path, option)
    except OSError as exc:
        raise _oserror(f"write {option}", path, exc) from None
    remove_stale_temps(path)
    return path


# -- temporary folders of killed writers ----------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: field 22 of /proc/PID/stat), '' where unknown, None if gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_record() -> str:
    """What a writer puts in its temporary folder's ``.owner`` file: its pid and start time."""
    pid = os.getpid()
    return f"{pid} {_process_start(pid) or ''}\n"


def temp_prefix(name: str) -> str:
    """The prefix of a writer's temporary folder for ``name``: ``.tmp-NAME-PID-`` (mkdtemp adds a random suffix
    without hyphens), so its owner is known from the moment it exists."""
    return f"{TMP_PREFIX}{name}-{os.getpid()}-"


def _pid_in_name(entry: str) -> int | None:
    parts = entry.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    return None


def is_stale(tmp: Path, now: float | None = None) -> bool:
    """Whether the temporary folder ``tmp`` belongs to no running writer."""
    try:
        text = (tmp / OWNER).read_text()[:100]
    except FileNotFoundError:
        text = None
    except OSError:
        return False
    if text is not None:
        parts = text.split()
        try:
            pid = int(parts[0])
        except (IndexError, ValueError):
            return True
        started = _process_start(pid)
        if started is None:
            return True
        recorded = parts[1] if len(parts) > 1 else ""
        return bool(started and recorded and started != recorded)  # the pid now belongs to another process
    pid = _pid_in_name(tmp.name)
    if pid is not None and _process_start(pid) is None:
        return True  # killed before it wrote its .owner file
    try:
        age = (now or time.time()) - tmp.stat().st_mtime
    except OSError:
        return False
    return age > UNOWNED_GRACE_S


def stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Stale ``.tmp-NAME-*`` folders directly in ``folder`` (of any NAME when ``name`` is None)."""
    folder = Path(folder)
    prefix = TMP_PREFIX + (f"{name}-" if name is not None else "")
    try:
        entries = [folder / e for e in os.listdir(folder) if e.startswith(prefix)]
    except OSError:
        return []
    now = time.time()
    return [e for e in sorted(entries) if e.is_dir() and not e.is_symlink() and is_stale(e, now)]


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove the stale temporary siblings of ``target`` left by killed writers; return what was removed."""
    target = Path(os.path.abspath(target))
    removed = []
    for tmp in stale_temps(target.parent, target.name):
        staged, old = tmp / target.name, tmp / (target.name + ".old")
        if old.exists() and staged.exists() and not (target.exists() or target.is_symlink()):
            # Killed between moving the old artefact aside and renaming the new one in: the new one was
            # complete (the old one is only moved once it is), so finish the replacement.
            os.replace(staged, target)
        shutil.rmtree(tmp, ignore_errors=True)
        if not tmp.exists():
            removed.append(tmp)
    return removed


def collect_garbage(root: str | os.PathLike, *, dry_run: bool = False) -> list[Path]:
    """Every stale ``.tmp-*`` folder under ``root`` (``unlearnkit gc``); removed unless ``dry_run``."""
    root = Path(root)
    if not root.is_dir():
        raise UnlearnKitError(f"{root} is not a folder")
    found: list[Path] = []
    for folder, dirs, _ in os.walk(root):
        stale = set(stale_temps(folder))
        found.extend(sorted(stale))
        dirs[:] = [d for d in dirs if Path(folder) / d not in stale and not d.startswith(TMP_PREFIX)]
    if not dry_run:
        for tmp in found:
            for old in tmp.glob("*.old"):
                name = old.name[: -len(".old")]
                if (tmp / name).exists() and not os.path.lexists(tmp.parent / name):
                    remove_stale_temps(tmp.parent / name)  # finishes the replacement
            shutil.rmtree(tmp, ignore_errors=True)
    return found


__all__ = [
    "prepare_output",
    "temp_prefix",
    "artefact_kind",
    "overlaps",
    "check_output_name",
    "remove_stale_temps",
    "collect_garbage",
    "stale_temps",
    "owner_record",
    "ARTEFACT_KINDS",
]
