"""Shared by the service tests and benchmarks/service_*.py: a real `unlearnkit serve` in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*argv, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "unlearnkit", "--threads", "1", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"unlearnkit {' '.join(map(str, argv))} exited {result.returncode}: {result.stderr[-2000:]}"
        )
    return result


# The tiny SISA model the CLI, service and kill tests share: digits, MLP, 2 shards x 3 slices, 3 epochs, one process.
TINY_SISA_TRAIN = ["sisa", "train", "--dataset", "digits", "--model", "mlp", "--shards", "2", "--slices", "3",
                   "--epochs", "3", "--workers", "1", "--shard-threads", "1"]


def train_tiny(out: Path, calibrate: bool = False) -> Path:
    cli(*TINY_SISA_TRAIN, *([] if calibrate else ["--no-calibrate"]), "--out", out)
    return out


def make_token(model: Path, scope: str, name: str = "") -> str:
    return cli("tokens", "create", "--model", model, "--scope", scope, "--name", name).stdout.strip()


class Server:
    """`unlearnkit serve` on a free loopback port; ``kill()`` is SIGKILL, ``start()`` starts it again."""

    def __init__(self, model: Path, *extra: str, log: Path | None = None) -> None:
        self.model, self.extra = Path(model), [str(e) for e in extra]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid_file = self.model.parent / f"worker-{self.port}.pid"
        self.log = log or self.model.parent / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "Server":
        self.pid_file.unlink(missing_ok=True)
        handle = open(self.log, "a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "unlearnkit",
                "--threads",
                "1",
                "serve",
                "--model",
                str(self.model),
                "--port",
                str(self.port),
                "--worker-pid-file",
                str(self.pid_file),
                *self.extra,
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v1/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"the server did not become ready in {timeout} s: {self.log.read_text()[-3000:]}")

    def worker_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        pid = self.worker_pid()  # dies with the server (PR_SET_PDEATHSIG); wait until it has
        deadline = time.monotonic() + 10
        while pid is not None and time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_done(http: httpx.Client, request_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = http.get(f"/v1/deletions/{request_id}").json()
        if record.get("state") in ("done", "failed"):
            return record
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} did not finish in {timeout} s")
