"""One training across several processes (data-parallel, PyTorch DDP): the launcher and a worker's process group.

``unlearnkit train --nproc N`` (and ``unlearn --method retrain --nproc N``) starts N copies of the same command
through ``torch.distributed.run`` (torchrun) with a standalone rendezvous on this machine. Each copy finds itself a
*worker* (torchrun's environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``TORCHELASTIC_RUN_ID``), joins the
process group — gloo on the CPU, NCCL with one GPU per process on CUDA — and trains; :func:`unlearnkit.training.fit`
sees the group and trains data-parallel. Rank 0 alone writes the checkpoint (atomically, as every checkpoint).
Several machines: start ``torchrun --nnodes ... -m unlearnkit train ...`` on each yourself (docs/scale.md); the
workers it starts are the same workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch

from ._util import resolve_device
from .errors import UnlearnKitError

WORKER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")


def in_worker() -> bool:
    """Whether this process was started by torchrun (``unlearnkit ... --nproc N`` or ``torchrun ... -m unlearnkit``)."""
    return all(name in os.environ for name in WORKER_ENV)


def check_launch(nproc: int, device: str) -> None:
    """Refuse, before anything starts, ``nproc`` processes that the device cannot hold (one GPU per process)."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if resolved.index is not None:
            raise UnlearnKitError(f"--nproc {nproc} puts one process on each GPU; pass --device cuda (or auto), "
                                  f"not {device}")
        if nproc > torch.cuda.device_count():
            raise UnlearnKitError(f"--nproc {nproc} needs one GPU per process; this machine has "
                                  f"{torch.cuda.device_count()}")
    elif resolved.type != "cpu":
        raise UnlearnKitError(f"--nproc trains on the CPU (gloo) or on CUDA GPUs (NCCL), not on {resolved.type}")


def launch(argv: list[str], nproc: int) -> int:
    """Run ``python -m unlearnkit ARGV`` in ``nproc`` processes through ``torch.distributed.run`` on this machine
    and wait for them; 0 when every process succeeded. A failed process has printed its own error; this raises one
    line naming it (exit 2)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "unlearnkit"])
    args.training_script_args = list(argv)  # as given: torchrun's own parser would read --nproc as its own flag
    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    elastic.setLevel(logging.CRITICAL)  # the workers print their own errors; torchrun's report would repeat them
    try:
        run(args)
    except ChildFailedError as failed:
        rank, failure = min(failed.failures.items())
        raise UnlearnKitError(f"the {nproc}-process run failed: process {rank} exited with status "
                              f"{failure.exitcode}{' (its message is above)' if failure.exitcode == 2 else ''}")
    finally:
        elastic.setLevel(level)
    return 0


@contextlib.contextmanager
def worker(device: str) -> Iterator[tuple[int, int, torch.device]]:
    """Join the process group of a torchrun worker: ``(rank, world size, device)`` — the process's own GPU
    (``LOCAL_RANK``) with NCCL, or the CPU with gloo. Left (destroyed) at the end."""
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UnlearnKitError(f"process {local_rank} of this machine has no GPU of its own "
                                  f"({torch.cuda.device_count()} GPUs); start at most that many per machine")
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
        dist.init_process_group("nccl", device_id=resolved)
    else:
        dist.init_process_group("gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), resolved
    finally:
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in this run's group (1 outside one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
