"""Bad-input cases for the real ``unlearnkit`` command line, and the harness that runs them.

Shared by ``tests/test_bad_input.py`` (a subset, in the default test run) and ``benchmarks/bad_input_fuzz.py``
(every case, with its table committed under ``benchmarks/results/bad-input/``).

Every case runs the CLI in a fresh subprocess inside its own sandbox folder holding copies of the fixtures (a
trained digits checkpoint, a small SISA model, a user's folder with a file, ...). A case that must be refused
passes when: the exit status is 2; stderr is exactly one line starting with ``unlearnkit:`` (or argparse's usage
lines and one ``error:`` line); there is no Python traceback; and no file or folder in the sandbox was created,
changed or removed -- so the inputs' bytes are unchanged. Cases may also require that their output contains no
secret from an input file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

CLI = [sys.executable, "-m", "unlearnkit.cli"]
SECRET = "API_KEY=sk-live-9f8e7d6c5b4a"


@dataclasses.dataclass
class Case:
    name: str
    klass: str
    argv: list[str]
    setup: Callable[[Path], None] | None = None
    needs: tuple[str, ...] = ()  # fixtures beyond the light ones: "sisa"
    check: Callable[[Path], str | None] | None = None  # an extra condition on the sandbox after the run
    secret: str | None = None  # text that must appear in no output
    quick: bool = False  # part of the default test run
    # The refusal can only come after work that reports progress on stderr (a device that fills up, a loss that
    # diverges): progress lines may precede the one `unlearnkit:` line, which must be the last.
    after_progress: bool = False
    expect_in: str | None = None  # the refusal must name this (the option that was wrong)
    timeout: float = 180.0


@dataclasses.dataclass
class Outcome:
    case: str
    klass: str
    argv: list[str]
    exit_code: int | None
    traceback: bool
    one_line: bool
    accepted: bool  # exit status 0: a must-refuse input went through
    changed: list[str]
    leaked: bool
    extra: str | None
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 2
            and not self.traceback
            and self.one_line
            and not self.changed
            and not self.leaked
            and self.extra is None
        )

    def problems(self) -> str:
        out = []
        if self.exit_code != 2:
            out.append(f"exit {self.exit_code}")
        if self.traceback:
            out.append("traceback")
        if not self.one_line:
            out.append("stderr is not one unlearnkit: line")
        if self.changed:
            out.append(f"changed {self.changed[:5]}")
        if self.leaked:
            out.append("leaked a secret")
        if self.extra:
            out.append(self.extra)
        return "; ".join(out) + f"\nstderr:\n{self.stderr[-2000:]}"


# -- sandbox snapshots -----------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """relative path -> what it is (file hash, link target or 'dir'), without following symbolic links."""
    state: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        for name in dirs + files:
            path = base / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                state[rel] = "dir"
            else:
                try:
                    with open(path, "rb") as handle:
                        state[rel] = hashlib.sha256(handle.read()).hexdigest()
                except OSError as exc:
                    state[rel] = f"unreadable:{exc.errno}"
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
    return state


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    changed = []
    for key in sorted(set(before) | set(after)):
        if key not in after:
            changed.append(f"-{key}")
        elif key not in before:
            changed.append(f"+{key}")
        elif before[key] != after[key]:
            changed.append(f"~{key}")
    return changed


def stderr_is_one_error(text: str, after_progress: bool = False) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if after_progress and lines and lines[-1].startswith("unlearnkit:"):
        return sum(line.startswith("unlearnkit:") for line in lines) == 1
    if len(lines) == 1:
        return lines[0].startswith("unlearnkit:")
    # argparse: "usage: ..." (possibly wrapped over several lines) then "unlearnkit ...: error: ..."
    return (
        bool(lines)
        and lines[0].startswith("usage:")
        and ": error: " in lines[-1]
        and sum(": error: " in line for line in lines) == 1
    )


# -- fixtures ------------------------------------------------------------------------------------------
SUITE = """name = "bad-input-suite"
dataset = "digits"
model = "mlp"
requests = ["random:0.1"]
methods = ["finetune"]
seeds = [0]

[train]
epochs = 1
"""


def build_fixtures(root: Path) -> Path:
    """Train what the cases need once (a digits MLP checkpoint, a 2 x 2 SISA model) under ``root``."""
    import torch

    import unlearnkit as uk
    from unlearnkit.recipes import default_recipe
    from unlearnkit.sisa.model import default_stage_config, train_sisa

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    light = root / "light"
    if not (light / "ck" / "manifest.json").exists():
        shutil.rmtree(light, ignore_errors=True)
        light.mkdir()
        data = uk.load_dataset("digits")
        uk.train(data, "mlp", config=default_recipe("digits", "mlp").replace(epochs=1), out=light / "ck")
        (light / "mydata").mkdir()
        (light / "mydata" / "notes.txt").write_text("a user's own file\n")
        (light / "plain.txt").write_text("a regular file\n")
        (light / "ids.txt").write_text("1\n2\n3\n")
        (light / "suite.toml").write_text(SUITE)
        gan = light / "gan"  # another kind of artefact (an SPD-GAN folder, as far as its manifest says)
        gan.mkdir()
        (gan / "manifest.json").write_text(json.dumps({"format": "unlearnkit-spdgan/1"}))
    heavy = root / "sisa"
    if not (heavy / "sisa" / "sisa.json").exists():
        shutil.rmtree(heavy, ignore_errors=True)
        heavy.mkdir()
        data = uk.load_dataset("digits")
        config = default_stage_config(data, "mlp", 2).replace(epochs=1)
        train_sisa(data, "mlp", out=heavy / "sisa", shards=2, slices=2, config=config, seed=0, workers=1, threads=1)
    return root


def make_sandbox(fixtures: Path, where: Path, needs: tuple[str, ...]) -> Path:
    shutil.copytree(fixtures / "light", where, symlinks=True)
    if "sisa" in needs:
        shutil.copytree(fixtures / "sisa" / "sisa", where / "sisa", symlinks=True)
    return where


# -- running ---------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }


def _prepare(case: Case, fixtures: Path, workdir: Path) -> tuple[Path, dict[str, str]]:
    sandbox = make_sandbox(fixtures, workdir / case.name, case.needs)
    if case.setup is not None:
        case.setup(sandbox)
    return sandbox, snapshot(sandbox)


def _finish(
    case: Case, sandbox: Path, before: dict[str, str], code: int | None, out: str, err: str, seconds: float
) -> Outcome:
    after = snapshot(sandbox)
    extra = case.check(sandbox) if case.check is not None else None
    if extra is None and case.expect_in is not None and code == 2 and case.expect_in not in err:
        extra = f"the refusal does not name {case.expect_in}"
    leaked = case.secret is not None and (case.secret in out or case.secret in err)
    outcome = Outcome(
        case.name,
        case.klass,
        case.argv,
        code,
        "Traceback (most recent call last)" in err,
        stderr_is_one_error(err, case.after_progress),
        code == 0,
        diff(before, after),
        leaked,
        extra,
        err,
        round(seconds, 2),
    )
    _cleanup(sandbox)
    return outcome


def run_case(case: Case, fixtures: Path, workdir: Path) -> Outcome:
    """Run one case as ``python -m unlearnkit.cli ARGV`` in a fresh interpreter."""
    sandbox, before = _prepare(case, fixtures, workdir)
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            CLI + case.argv,
            cwd=sandbox,
            env=_env(),
            capture_output=True,
            timeout=case.timeout,
            stdin=subprocess.DEVNULL,
        )
        code, out, err = proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as exc:
        code, out, err = (
            None,
            (exc.stdout or b"").decode(errors="replace"),
            "timeout\n" + (exc.stderr or b"").decode(errors="replace"),
        )
    return _finish(case, sandbox, before, code, out, err, time.perf_counter() - started)


def _child(argv: list[str], cwd: Path, out_path: Path, err_path: Path) -> None:
    """In a forked process: run the CLI's ``main`` as the interpreter would (uncaught exception: traceback, exit 1)."""
    code = 1
    try:
        os.chdir(cwd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        sys.argv = ["unlearnkit", *argv]
        try:
            from unlearnkit.cli import main

            result = main(argv)
            code = 0 if result is None else int(result)
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_forked(
    cases: list[Case],
    fixtures: Path,
    workdir: Path,
    workers: int = 2,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every case in a process forked from this one after unlearnkit and torch are imported (the same CLI
    code and entry point as ``python -m unlearnkit``, without paying the interpreter start per case)."""
    import unlearnkit.cli  # noqa: F401 - imported once, before forking

    workdir.mkdir(parents=True, exist_ok=True)
    pending = list(cases)
    running: dict[int, tuple] = {}
    outcomes = []
    while pending or running:
        while pending and len(running) < workers:
            case = pending.pop(0)
            sandbox, before = _prepare(case, fixtures, workdir)
            logs = workdir / f".{case.name}.out", workdir / f".{case.name}.err"
            pid = os.fork()
            if pid == 0:
                _child(case.argv, sandbox, *logs)
            running[pid] = (case, sandbox, before, logs, time.perf_counter())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.perf_counter()
            for child, (case, _, _, _, started) in list(running.items()):
                if now - started > case.timeout:
                    os.kill(child, 9)
            time.sleep(0.02)
            continue
        case, sandbox, before, logs, started = running.pop(pid)
        seconds = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        timed_out = code == -9 and seconds > case.timeout
        out, err = (p.read_bytes().decode(errors="replace") for p in logs)
        for p in logs:
            p.unlink()
        outcome = _finish(
            case, sandbox, before, None if timed_out else code, out, ("timeout\n" if timed_out else "") + err, seconds
        )
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    order = {c.name: i for i, c in enumerate(cases)}
    return sorted(outcomes, key=lambda o: order[o.case])


def _cleanup(sandbox: Path) -> None:
    for mount in (sandbox / "full",):
        if os.path.ismount(mount):
            subprocess.run(["umount", str(mount)], capture_output=True)
    shutil.rmtree(sandbox, ignore_errors=True)


def run_all(
    cases: list[Case],
    fixtures: Path,
    workdir: Path,
    workers: int = 2,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every case in its own ``python -m unlearnkit.cli`` subprocess, ``workers`` at a time."""
    workdir.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(run_case, case, fixtures, workdir): case for case in cases}
        outcomes = []
        for future in concurrent.futures.as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    order = {c.name: i for i, c in enumerate(cases)}
    return sorted(outcomes, key=lambda o: order[o.case])


# -- the cases -------------------------------------------------------------------------------------------
def _write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        path = sandbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return setup


def _chain(*steps: Callable[[Path], None] | None) -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        for step in steps:
            if step is not None:
                step(sandbox)

    return setup


def _copy(src: str, dst: str) -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        (sandbox / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(sandbox / src, sandbox / dst)

    return setup


def _symlink(target: str, link: str) -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        os.symlink(target, sandbox / link)

    return setup


def _mount_full(sandbox: Path) -> None:
    (sandbox / "full").mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(sandbox / "full")], check=True, capture_output=True
    )
    (sandbox / "full" / "filler").write_bytes(b"\0" * 12000)


def can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/unlearnkit-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe)], capture_output=True
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True)
        return ok
    finally:
        probe.rmdir()


# The writing commands, each with its output as OUT.
WRITERS: dict[str, list[str]] = {
    "train": ["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--out", "OUT"],
    "unlearn": ["unlearn", "--checkpoint", "ck", "--method", "finetune", "--request", "class:0", "--out", "OUT"],
    "prune": ["prune", "--checkpoint", "ck", "--method", "omp", "--sparsity", "0.5", "--out", "OUT"],
    "spdgan": [
        "spdgan",
        "train",
        "--checkpoint",
        "ck",
        "--request",
        "class:0",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        "OUT",
    ],
    "sisa": [
        "sisa",
        "train",
        "--dataset",
        "digits",
        "--shards",
        "2",
        "--slices",
        "2",
        "--epochs",
        "1",
        "--workers",
        "1",
        "--no-calibrate",
        "--out",
        "OUT",
    ],
    "bench": ["bench", "--suite", "suite.toml", "--cache", "cache", "--no-report", "--out", "OUT"],
    "audit": ["audit", "--suite", "suite.toml", "--models", "3", "--workers", "1", "--cache", "cache", "--out", "OUT"],
    "unlearn-pruned-out": [
        "unlearn",
        "--checkpoint",
        "ck",
        "--method",
        "finetune",
        "--request",
        "class:0",
        "--prune",
        "omp:0.5",
        "--out",
        "o",
        "--pruned-out",
        "OUT",
    ],
}
# Which artefact of the same kind a writer's OUT may already hold (a copy of the fixture), if any is cheap to make.
SAME_KIND = {"train": "ck", "unlearn": "ck", "prune": "ck", "unlearn-pruned-out": "ck", "spdgan": "gan"}


def _argv(writer: str, out: str, extra: list[str] | None = None) -> list[str]:
    return [out if a == "OUT" else a for a in WRITERS[writer]] + (extra or [])


def out_cases() -> list[Case]:
    """Point 1: every writing command refuses every kind of output that would destroy or is impossible."""
    cases = []
    quick = {
        ("train", "user-folder"),
        ("unlearn", "is-input"),
        ("unlearn", "contains-input"),
        ("prune", "inside-input"),
        ("spdgan", "regular-file"),
        ("sisa", "user-folder"),
        ("bench", "user-folder"),
        ("audit", "other-kind"),
        ("train", "same-kind-no-overwrite"),
        ("unlearn-pruned-out", "is-input"),
        ("train", "dot"),
        ("unlearn", "symlink-to-input"),
        ("train", "below-file"),
    }
    for writer in WRITERS:
        variants: list[tuple[str, str, Callable | None]] = [
            ("user-folder", "mydata", None),
            ("regular-file", "plain.txt", None),
            ("dot", ".", None),
            ("dotdot", "..", None),
            ("empty", "", None),
            ("slash-dot", "mydata/.", None),
            ("name-too-long", "x" * 300, None),
            ("below-file", "plain.txt/sub", None),
            ("proc", "/proc/unlearnkit-bad-input", None),
            ("sys", "/sys/unlearnkit-bad-input", None),
            ("broken-symlink", "dangling", _symlink("nowhere/at/all", "dangling")),
            ("other-kind", "gan" if writer != "spdgan" else "ck", None),
        ]
        if writer not in ("train", "sisa", "bench", "audit"):
            variants += [
                ("is-input", "ck", None),
                ("inside-input", "ck/sub", None),
                ("contains-input", "runs", _copy("ck", "runs/ck")),
                ("symlink-to-input", "link", _symlink("ck", "link")),
            ]
        else:
            variants += [("data-dir-is-out", "mydata", None)]
        if writer in SAME_KIND:
            variants.append(("same-kind-no-overwrite", "prior", _copy(SAME_KIND[writer], "prior")))
        for variant, out, setup in variants:
            argv = _argv(writer, out)
            if variant == "contains-input":
                argv = [("runs/ck" if a == "ck" else a) for a in argv]
            if variant == "data-dir-is-out":
                # train/sisa with their data read from OUT's own folder; bench/audit with the suite file inside OUT
                if writer in ("train", "sisa"):
                    argv = [("mnist" if a == "digits" else a) for a in argv] + ["--data-dir", "mydata"]
                    setup = _chain(
                        *[
                            _write(f"mydata/{n}", b"")
                            for n in (
                                "train-images-idx3-ubyte",
                                "train-labels-idx1-ubyte",
                                "t10k-images-idx3-ubyte",
                                "t10k-labels-idx1-ubyte",
                            )
                        ]
                    )
                else:
                    argv = [("mydata/suite.toml" if a == "suite.toml" else a) for a in argv]
                    setup = _write("mydata/suite.toml", SUITE)
            cases.append(Case(f"out-{writer}-{variant}", "out", argv, setup=setup, quick=(writer, variant) in quick))
    # report writes into a results folder only
    for variant, target, setup in [
        ("user-folder", "mydata", None),
        ("regular-file", "plain.txt", None),
        ("checkpoint", "ck", None),
        ("missing", "nothing-here", None),
    ]:
        cases.append(
            Case(f"out-report-{variant}", "out", ["report", target], setup=setup, quick=variant == "checkpoint")
        )
    if can_mount():
        for writer in ("train", "unlearn", "prune"):
            cases.append(
                Case(
                    f"out-{writer}-full-device",
                    "out",
                    _argv(writer, "full/out"),
                    setup=_mount_full,
                    after_progress=True,
                )
            )
    return cases


def _manifest_edit(edit: Callable[[dict], None], folder: str = "ck") -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        path = sandbox / folder / "manifest.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))

    return setup


def _set(path: str, value) -> Callable[[dict], None]:
    keys = path.split(".")

    def edit(manifest: dict) -> None:
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value

    return edit


_DELETE = object()


def confinement_cases() -> list[Case]:
    """Point 4: a path read from a manifest or store file must resolve inside its folder."""
    outside = _chain(lambda s: shutil.copy(s / "ck" / "model.safetensors", s / "outside.safetensors"))
    cases = []
    for name, value, extra in [
        ("absolute", "ABS", None),
        ("parent", "../outside.safetensors", None),
        ("nested-parent", "sub/../../outside.safetensors", None),
        (
            "subfolder",
            "sub/model.safetensors",
            _chain(
                lambda s: (s / "ck" / "sub").mkdir(),
                lambda s: shutil.copy(s / "ck" / "model.safetensors", s / "ck" / "sub"),
            ),
        ),
        ("dot", ".", None),
        ("empty", "", None),
        ("not-a-string", 7, None),
    ]:

        def setup(sandbox: Path, value=value, extra=extra) -> None:
            outside(sandbox)
            if extra is not None:
                extra(sandbox)
            v = str(sandbox / "outside.safetensors") if value == "ABS" else value
            _manifest_edit(_set("weights.file", v))(sandbox)

        cases.append(
            Case(
                f"confine-weights-{name}",
                "confine",
                ["evaluate", "--checkpoint", "ck"],
                setup=setup,
                quick=name in ("absolute", "parent"),
            )
        )

    def symlinked(sandbox: Path) -> None:
        outside(sandbox)
        (sandbox / "ck" / "model.safetensors").unlink()
        os.symlink("../outside.safetensors", sandbox / "ck" / "model.safetensors")

    cases.append(
        Case("confine-weights-symlink-out", "confine", ["evaluate", "--checkpoint", "ck"], setup=symlinked, quick=True)
    )

    def lock_link(sandbox: Path) -> None:
        (sandbox / "victim.txt").write_text("do not touch\n")
        (sandbox / "sisa" / ".lock").unlink(missing_ok=True)
        os.symlink("../victim.txt", sandbox / "sisa" / ".lock")

    cases.append(
        Case(
            "confine-sisa-lock-symlink",
            "confine",
            ["forget", "--model", "sisa", "--ids", "ids.txt", "--mode", "exact"],
            setup=lock_link,
            needs=("sisa",),
            quick=True,
        )
    )

    def version_name(name: str) -> Callable[[Path], None]:
        def setup(sandbox: Path) -> None:
            path = sandbox / "sisa" / "versions" / "v000000" / "version.json"
            record = json.loads(path.read_text())
            files = record["files"]
            files[name] = files.pop("weights.safetensors")
            path.write_text(json.dumps(record))

        return setup

    for label, name in [("absolute", "/etc/hostname"), ("parent", "../../../plain.txt"), ("device", "/dev/zero")]:
        cases.append(
            Case(
                f"confine-sisa-version-file-{label}",
                "confine",
                ["sisa", "info", "--model", "sisa"],
                setup=version_name(name),
                needs=("sisa",),
                quick=label == "device",
                timeout=90,
            )
        )
    return cases


def leak_cases() -> list[Case]:
    """Point 5: no file content in errors; bounded reads; hostile bytes and numbers are one-line errors."""
    unlearn = ["unlearn", "--checkpoint", "ck", "--method", "finetune", "--out", "o", "--request"]
    forget = ["forget", "--model", "sisa", "--mode", "exact", "--ids"]
    cases = []
    files = {
        "secret-line": ("ids_bad.txt", f"1\n2\n{SECRET}\n"),
        "secret-first": ("ids_bad.txt", f"{SECRET}\n"),
        "non-utf8": ("ids_bad.txt", b"1\n\xff\xfe\x00\x81\n"),
        "beyond-int64": ("ids_bad.txt", "1\n99999999999999999999999999\n"),
        "beyond-n-train": ("ids_bad.txt", "1\n1437\n"),
        "negative": ("ids_bad.txt", "-5\n"),
        "float": ("ids_bad.txt", "1.5\n"),
        "hex": ("ids_bad.txt", "0x10\n"),
        "only-comments": ("ids_bad.txt", "# nothing\n\n"),
        "duplicates": ("ids_bad.txt", "3\n3\n"),
        "huge": ("ids_bad.txt", "1\n" * 700_000),
        "nul-bytes": ("ids_bad.txt", b"1\n\x00\x00\x00\n"),
        "unicode-digits": ("ids_bad.txt", "\u0663\n"),
        "control-chars": ("ids_bad.txt", "\x1b[31m1\n"),
    }
    for label, (name, content) in files.items():
        secret = SECRET if "secret" in label else None
        cases.append(
            Case(
                f"leak-unlearn-ids-{label}",
                "leak",
                unlearn + [f"ids:{name}"],
                setup=_write(name, content),
                secret=secret,
                quick=label in ("secret-line", "huge", "beyond-int64"),
            )
        )
        cases.append(
            Case(
                f"leak-forget-ids-{label}",
                "leak",
                forget + [name],
                setup=_write(name, content),
                needs=("sisa",),
                secret=secret,
                quick=label == "secret-first",
            )
        )
    for label, path in [
        ("dev-zero", "/dev/zero"),
        ("dev-urandom", "/dev/urandom"),
        ("folder", "mydata"),
        ("missing", "no-such-file.txt"),
    ]:
        cases.append(Case(f"leak-unlearn-ids-{label}", "leak", unlearn + [f"ids:{path}"], quick=label == "dev-zero"))
    cases.append(
        Case(
            "leak-forget-request-id-escape",
            "leak",
            ["forget", "--model", "sisa", "--ids", "ids.txt", "--mode", "exact", "--request-id", "a\x1b[2Jb\rc"],
            needs=("sisa",),
            quick=True,
        )
    )
    cases.append(
        Case(
            "leak-manifest-secret",
            "leak",
            ["evaluate", "--checkpoint", "ck"],
            setup=_write("ck/manifest.json", '{"format": "' + SECRET + '"'),
            secret=SECRET,
        )
    )
    cases.append(
        Case(
            "leak-suite-secret",
            "leak",
            ["bench", "--suite", "secret.toml", "--out", "r"],
            setup=_write("secret.toml", f"{SECRET}\n"),
            secret=SECRET,
        )
    )
    return cases


def manifest_cases() -> list[Case]:
    """Point 6: a manifest is validated (types, ranges, a parameter cap) before anything is built."""
    edits = {
        "model-null": _set("model", None),
        "model-list": _set("model", ["mlp"]),
        "model-no-name": _set("model", {"args": {}}),
        "model-name-int": _set("model.name", 12),
        "model-unknown": _set("model.name", "gpt-17"),
        "args-list": _set("model.args", [1, 2]),
        "args-width-huge": _set("model.args.width", 10**12),
        "args-width-negative": _set("model.args.width", -5),
        "args-width-string": _set("model.args.width", "wide"),
        "args-depth-huge": _set("model.args.depth", 10**9),
        "args-image-size-huge": _set("model.args.image_size", 10**9),
        "args-in-channels-string": _set("model.args.in_channels", "1"),
        "args-num-classes-zero": _set("model.args.num_classes", 0),
        "args-mean-short": _set("model.args.mean", []),
        "args-mean-nan": _set("model.args.mean", ["nan"]),
        "args-unknown-option": _set("model.args.colour", 3),
        "args-nested-object": _set("model.args.width", {"a": 1}),
        "dataset-null": _set("dataset", None),
        "dataset-no-fingerprint": _set("dataset.fingerprint", _DELETE),
        "weights-null": _set("weights", None),
        "weights-bytes-string": _set("weights.bytes", "many"),
        "weights-no-sha": _set("weights.sha256", _DELETE),
        "request-list": _set("request", ["class:0"]),
        "seed-string": _set("seed", "zero"),
        "format-other": _set("format", "unlearnkit-checkpoint/99"),
        "no-model": _set("model", _DELETE),
    }
    cases = [
        Case(
            f"manifest-{label}",
            "manifest",
            ["evaluate", "--checkpoint", "ck"],
            setup=_manifest_edit(edit),
            quick=label in ("model-null", "args-width-huge", "request-list"),
        )
        for label, edit in edits.items()
    ]
    for label, content in [
        ("not-json", "{not json"),
        ("array", "[1, 2]"),
        ("binary", b"\x00\xff" * 10),
        ("huge-number", '{"format": "unlearnkit-checkpoint/1", "model": 1e999999}'),
    ]:
        cases.append(
            Case(
                f"manifest-{label}",
                "manifest",
                ["evaluate", "--checkpoint", "ck"],
                setup=_write("ck/manifest.json", content),
            )
        )
    # the same checks guard every command that loads a checkpoint
    for command in (
        ["unlearn", "--checkpoint", "ck", "--method", "finetune", "--request", "class:0", "--out", "o"],
        ["prune", "--checkpoint", "ck", "--method", "omp", "--sparsity", "0.5", "--out", "o"],
        ["spdgan", "train", "--checkpoint", "ck", "--request", "class:0", "--out", "o"],
    ):
        cases.append(
            Case(
                f"manifest-{command[0]}-width-huge",
                "manifest",
                command,
                setup=_manifest_edit(_set("model.args.width", 10**12)),
            )
        )
    return cases


def _idx(shape: tuple[int, ...], dtype_code: int = 0x08) -> bytes:
    header = bytes([0, 0, dtype_code, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    n = 1
    for d in shape:
        n *= d
    return header + bytes(n)


def _mnist(train_images: tuple, test_images: tuple, n_train_labels: int, n_test_labels: int) -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        d = sandbox / "mnist"
        d.mkdir()
        (d / "train-images-idx3-ubyte").write_bytes(_idx(train_images))
        (d / "train-labels-idx1-ubyte").write_bytes(_idx((n_train_labels,)))
        (d / "t10k-images-idx3-ubyte").write_bytes(_idx(test_images))
        (d / "t10k-labels-idx1-ubyte").write_bytes(_idx((n_test_labels,)))

    return setup


def _cifar(payload: bytes | None = None, protocol: int = 2) -> Callable[[Path], None]:
    def setup(sandbox: Path) -> None:
        import pickle

        import numpy as np

        d = sandbox / "cifar"
        d.mkdir()
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
            (d / name).write_bytes(
                payload if payload is not None and name == "data_batch_1" else pickle.dumps(batch, protocol=protocol)
            )

    return setup


def data_cases() -> list[Case]:
    """Points 8 and 10: bad data sets, divergence, a --data-dir that is a file."""
    train = ["train", "--epochs", "1", "--no-progress", "--out", "o"]
    cases = [
        Case("data-dir-is-a-file", "data", train + ["--dataset", "mnist", "--data-dir", "plain.txt"], quick=True),
        Case("data-dir-missing", "data", train + ["--dataset", "mnist", "--data-dir", "nowhere"]),
        Case("data-dir-for-digits", "data", train + ["--dataset", "digits", "--data-dir", "mydata"]),
        Case(
            "data-zero-train-images",
            "data",
            train + ["--dataset", "mnist", "--data-dir", "mnist"],
            setup=_mnist((0, 28, 28), (10, 28, 28), 0, 10),
            quick=True,
        ),
        Case(
            "data-test-shape-differs",
            "data",
            train + ["--dataset", "mnist", "--data-dir", "mnist"],
            setup=_mnist((10, 28, 28), (10, 32, 32), 10, 10),
            quick=True,
        ),
        Case(
            "data-labels-count-differs",
            "data",
            train + ["--dataset", "mnist", "--data-dir", "mnist"],
            setup=_mnist((10, 28, 28), (10, 28, 28), 9, 10),
        ),
        Case(
            "data-idx-truncated",
            "data",
            train + ["--dataset", "mnist", "--data-dir", "mnist"],
            setup=_chain(
                _mnist((10, 28, 28), (10, 28, 28), 10, 10),
                _write("mnist/train-images-idx3-ubyte", _idx((10, 28, 28))[:100]),
            ),
        ),
        Case(
            "data-idx-bad-magic",
            "data",
            train + ["--dataset", "mnist", "--data-dir", "mnist"],
            setup=_chain(_mnist((10, 28, 28), (10, 28, 28), 10, 10), _write("mnist/t10k-labels-idx1-ubyte", b"junk")),
        ),
        Case("data-bad-subset-name", "data", train + ["--dataset", "digits[abc,1]"]),
        Case("data-subset-zero", "data", train + ["--dataset", "digits[0,10]"]),
        Case(
            "diverged-train",
            "data",
            ["train", "--dataset", "digits", "--epochs", "2", "--lr", "1e6", "--no-progress", "--out", "o"],
            quick=True,
            after_progress=True,
        ),
        Case(
            "diverged-unlearn",
            "data",
            [
                "unlearn",
                "--checkpoint",
                "ck",
                "--method",
                "finetune",
                "--request",
                "class:0",
                "--set",
                "lr=1e8",
                "--out",
                "o",
            ],
            quick=True,
            after_progress=True,
        ),
    ]
    exploit = b"cos\nsystem\n(S'touch pwned'\ntR."
    cases.append(
        Case(
            "data-cifar-pickle-exploit",
            "data",
            train + ["--dataset", "cifar10", "--data-dir", "cifar"],
            setup=_cifar(exploit),
            check=lambda s: "pwned" if (s / "pwned").exists() else None,
            quick=True,
        )
    )
    builtins_exploit = (
        b"\x80\x04\x95\x1b\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval"
        b"\x94\x93\x94\x8c\x011\x94\x85\x94R\x94."
    )
    cases.append(
        Case(
            "data-cifar-pickle-builtins-eval",
            "data",
            train + ["--dataset", "cifar10", "--data-dir", "cifar"],
            setup=_cifar(builtins_exploit),
        )
    )
    cases.append(
        Case(
            "data-cifar-not-a-pickle",
            "data",
            train + ["--dataset", "cifar10", "--data-dir", "cifar"],
            setup=_cifar(b"hello"),
        )
    )
    cases.append(
        Case(
            "data-cifar-labels-strings",
            "data",
            train + ["--dataset", "cifar10", "--data-dir", "cifar"],
            setup=_cifar(
                __import__("pickle").dumps(
                    {b"data": __import__("numpy").zeros((4, 3072), "uint8"), b"labels": ["a", "b", "c", "d"]}
                )
            ),
        )
    )
    return cases


def _no_ledger(sandbox: Path) -> str | None:
    return "ledger.sqlite was created" if (sandbox / "sisa" / "ledger.sqlite").exists() else None


def ledger_cases() -> list[Case]:
    """Point 10: a refused forget/requests creates no empty ledger.sqlite on a model that had none."""
    return [
        Case(
            "ledger-forget-missing-ids",
            "ledger",
            ["forget", "--model", "sisa", "--ids", "nothing.txt"],
            needs=("sisa",),
            check=_no_ledger,
            quick=True,
        ),
        Case(
            "ledger-forget-bad-request",
            "ledger",
            ["forget", "--model", "sisa", "--request", "class:99"],
            needs=("sisa",),
            check=_no_ledger,
        ),
        Case(
            "ledger-requests-show-unknown",
            "ledger",
            ["requests", "show", "nope", "--model", "sisa"],
            needs=("sisa",),
            check=_no_ledger,
            quick=True,
        ),
        Case("ledger-forget-not-a-model", "ledger", ["forget", "--model", "mydata", "--ids", "ids.txt"]),
        Case("ledger-requests-list-not-a-model", "ledger", ["requests", "list", "--model", "mydata"]),
        Case("ledger-forget-model-is-file", "ledger", ["forget", "--model", "plain.txt", "--ids", "ids.txt"]),
    ]


# Where each owner of declared options (unlearnkit.options) is set on the command line: the base command and
# how one value is passed. A new owner without an entry here fails test_every_declared_option_owner_is_covered.
_SET = "--set"
OPTION_BASES: dict[tuple[str, str], tuple[list[str], str, tuple[str, ...]]] = {
    # (kind, owner) -> (argv without the option, "--set" / "--model-option" / "flag", fixtures)
    ("train", "the training recipe"): (["train", "--dataset", "digits", "--no-progress", "--out", "o"], _SET, ()),
    ("accel", "the device settings"): (["train", "--dataset", "digits", "--no-progress", "--out", "o"], "flag", ()),
    ("spdgan", "SPD-GAN"): (
        ["spdgan", "train", "--checkpoint", "ck", "--request", "class:0", "--no-progress", "--out", "o"],
        _SET,
        (),
    ),
    ("prune", "pruning spec"): (
        ["prune", "--checkpoint", "ck", "--method", "omp", "--sparsity", "0.5", "--out", "o"],
        _SET,
        (),
    ),
    ("policy", "the hybrid policy"): (
        ["forget", "--model", "sisa", "--ids", "ids.txt", "--plan-only"],
        "flag",
        ("sisa",),
    ),
    ("backend", "execution backend"): (["sisa", "train", "--dataset", "digits", "--out", "o"], "flag", ()),
}
COMMAND_BASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "unlearnkit": (["info"], ()),
    "train": (["train", "--dataset", "digits", "--no-progress", "--out", "o"], ()),
    "unlearn": (["unlearn", "--checkpoint", "ck", "--method", "finetune", "--request", "class:0", "--out", "o"], ()),
    "evaluate": (["evaluate", "--checkpoint", "ck"], ()),
    "demo": (["demo", "--out", "o"], ()),
    "prune": (["prune", "--checkpoint", "ck", "--method", "omp", "--sparsity", "0.5", "--out", "o"], ()),
    "sisa train": (["sisa", "train", "--dataset", "digits", "--out", "o"], ()),
    "forget": (["forget", "--model", "sisa", "--ids", "ids.txt", "--plan-only"], ("sisa",)),
    "requests list": (["requests", "list", "--model", "sisa"], ("sisa",)),
    "sisa retention": (["sisa", "retention", "--model", "sisa"], ("sisa",)),
    "report": (["report", "r"], ()),
    "bench": (["bench", "--suite", "suite.toml", "--out", "r"], ()),
    "audit": (["audit", "--suite", "suite.toml", "--out", "r"], ()),
    "spdgan train": (["spdgan", "train", "--checkpoint", "ck", "--request", "class:0", "--out", "o"], ()),
}


def _option_argv(d) -> tuple[list[str], str, tuple[str, ...]] | None:
    """(argv before the value, how the value is passed, fixtures) for a declared option, or None if unknown."""
    if d.kind == "method":
        return (["unlearn", "--checkpoint", "ck", "--method", d.owner, "--request", "class:0", "--out", "o"], _SET, ())
    if d.kind == "model":
        model = d.owner.split(" ", 1)[1] if d.owner.startswith("model ") else d.owner
        return (["train", "--dataset", "digits", "--model", model, "--no-progress", "--out", "o"], "--model-option", ())
    if d.kind == "command":
        if d.owner not in COMMAND_BASES:
            return None
        argv, needs = COMMAND_BASES[d.owner]
        return (argv, "flag", needs)
    return OPTION_BASES.get((d.kind, d.owner))


def option_cases() -> list[Case]:
    """Point 7 (declared options): every declared option with every value it must refuse (wrong type, below or
    above its range, non-finite, not a choice), generated from ``unlearnkit.options`` when it exists."""
    try:
        import unlearnkit.cli  # noqa: F401 - registers the commands' flags
        from unlearnkit.options import declared
    except ImportError:
        return []
    cases = []
    for d in declared():
        base = _option_argv(d)
        if base is None:
            continue
        argv, how, needs = base
        flag = d.flag or "--" + d.name.replace("_", "-")
        if how == "flag" and d.type.base is bool and d.default is False:
            continue  # a switch (--compile) takes no value, so no value of it is bad
        for why, word in d.bad_texts():
            if (
                how == "flag"
                or (d.kind == "spdgan" and d.name in ("epsilon", "epochs"))
                or (d.kind == "prune" and d.name in ("sparsity", "scope", "layers"))
            ):
                if d.kind == "command" and d.owner == "unlearnkit":
                    full = [f"{flag}={word}", *argv]
                else:
                    full = [*argv, f"{flag}={word}"]
                named = flag
            else:
                full = [*argv, how, f"{d.name}={word}"]
                named = d.name
            label = f"{d.kind}-{d.owner}-{d.name}-{why}".replace(" ", "-")
            cases.append(Case(f"option-{label}", "options", full, needs=needs, expect_in=named))
    for i, case in enumerate(cases):
        case.quick = i % 100 == 0
    return cases


def sampled_option_cases(stride: int) -> list[Case]:
    """Every ``stride``-th generated option case, plus the first case of every declared option (so each option
    is tried at least once)."""
    cases, seen = [], set()
    for i, case in enumerate(option_cases()):
        option = (*case.argv[:-1], case.expect_in)
        if i % stride == 0 or option not in seen:
            cases.append(case)
        seen.add(option)
    return cases


def uncovered_option_owners() -> list[str]:
    try:
        import unlearnkit.cli  # noqa: F401
        from unlearnkit.options import declared
    except ImportError:
        return []
    return sorted({f"{d.kind} {d.owner}" for d in declared() if _option_argv(d) is None})


def all_cases() -> list[Case]:
    cases = (
        out_cases()
        + confinement_cases()
        + leak_cases()
        + manifest_cases()
        + data_cases()
        + ledger_cases()
        + option_cases()
    )
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
