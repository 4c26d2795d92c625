"""Trained SPD-GAN generators on disk: a directory with ``generator.safetensors`` and ``manifest.json`` (ε, the
architecture, the training options and history, the data set's fingerprint, the request, the original model's
weights hash, cost, versions), written atomically like a checkpoint and verified on load. Nothing is unpickled.

A generator is trained once per (original model, request) and reused by every evaluation of every method on that
request: :meth:`SpdGan.perturb_forget` checks that the data, the request and (when given) the original model are
the ones it was trained for, then returns the perturbed forget images for a fixed noise seed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._util import atomic_path, read_json_record, sha256_file, sha256_tensors, versions
from ..data import Dataset
from ..errors import UnlearnKitError
from ..requests import Request
from .core import Generator, SpdGanConfig, TrainedSpdGan, perturb, train_spdgan

FORMAT = "unlearnkit-spdgan/1"
WEIGHTS = "generator.safetensors"
MANIFEST = "manifest.json"


def model_hash(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and bytes): identifies the original a generator serves."""
    state = model.state_dict()
    names = sorted(state)
    return sha256_tensors(*(torch.tensor(list(name.encode()), dtype=torch.uint8) for name in names),
                          *(state[name] for name in names))


@dataclass
class SpdGan:
    generator: Generator
    manifest: dict
    path: Path | None = None

    @property
    def epsilon(self) -> float:
        return float(self.manifest["epsilon"])

    def check(self, data: Dataset, request: Request, original: nn.Module | None = None) -> None:
        """Refuse (one clear line) to perturb data, a request or an original this generator was not trained for."""
        where = self.path or "this SPD-GAN"
        trained_on = self.manifest["dataset"]
        if data.fingerprint != trained_on["fingerprint"]:
            raise UnlearnKitError(
                f"{where} was trained on data set {trained_on['name']} ({trained_on['fingerprint'][:12]}), "
                f"not {data.name} ({data.fingerprint[:12]}); train one for this data set"
            )
        record = self.manifest["request"]
        if request.forget_hash != record["forget_hash"]:
            raise UnlearnKitError(f"{where} was trained for request {record['spec']} (seed {record['seed']}), not "
                                  f"{request.spec} (seed {request.seed}); train one with `unlearnkit spdgan train`")
        if original is not None and model_hash(original) != self.manifest["original"]["state_sha256"]:
            raise UnlearnKitError(
                f"{where} was trained against a different original model "
                f"({self.manifest['original'].get('path') or 'in memory'}); train one for this original"
            )

    def perturb_forget(self, data: Dataset, request: Request, *, original: nn.Module | None = None,
                       seed: int | None = None, device=None) -> torch.Tensor:
        """The forget images (as the original saw them) passed through the generator with a fixed noise seed."""
        self.check(data, request, original)
        x, _ = request.training_data(data)
        noise_seed = int(self.manifest.get("noise_seed", 0)) if seed is None else seed
        return perturb(self.generator, x[request.forget], seed=noise_seed, device=device)

    def perturb(self, x: torch.Tensor, *, seed: int | None = None, device=None) -> torch.Tensor:
        noise_seed = int(self.manifest.get("noise_seed", 0)) if seed is None else seed
        return perturb(self.generator, x, seed=noise_seed, device=device)


def train_for_request(
    original: nn.Module,
    data: Dataset,
    request: Request,
    config: SpdGanConfig | None = None,
    *,
    seed: int = 0,
    device="auto",
    progress: bool = False,
    echo: bool = False,
    original_path: str | os.PathLike | None = None,
    original_file_sha256: str | None = None,
) -> SpdGan:
    """Train an SPD-GAN on ``request``'s forget set against ``original`` and return it with its manifest."""
    x, _ = request.training_data(data)
    trained = train_spdgan(original, x, request.forget, config, seed=seed, device=device, progress=progress, echo=echo)
    return SpdGan(
        trained.generator, _manifest(trained, data, request, original, seed, original_path, original_file_sha256)
    )


def _manifest(trained: TrainedSpdGan, data: Dataset, request: Request, original: nn.Module, seed: int,
              original_path, original_file_sha256) -> dict:
    final = trained.history[-1] if trained.history else {}
    return {
        "format": FORMAT,
        "epsilon": trained.config.epsilon,
        "architecture": trained.generator.arguments(),
        "config": trained.config.to_dict(),
        "seed": seed,
        "noise_seed": 0,
        "dataset": data.describe(),
        "request": request.describe(),
        "original": {"path": None if original_path is None else str(original_path),
                     "weights_sha256": original_file_sha256, "state_sha256": model_hash(original)},
        "history": trained.history,
        "final": final,
        "cost": trained.cost.to_dict(),
    }


def save_spdgan(path: str | os.PathLike, gan: SpdGan) -> Path:
    """Write the generator's weights and manifest atomically to the directory ``path``."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in gan.generator.state_dict().items()}
    with atomic_path(path) as staged:
        staged.mkdir()
        save_file(state, str(staged / WEIGHTS))
        manifest = {
            **gan.manifest,
            "weights": {
                "file": WEIGHTS,
                "sha256": sha256_file(staged / WEIGHTS),
                "bytes": (staged / WEIGHTS).stat().st_size,
            },
            "versions": versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    gan.path, gan.manifest = path, manifest
    return path


# What a saved generator's architecture may ask for (checked before anything is built).
_ARCHITECTURE_LIMITS = {"channels": 64, "width": 4096, "noise_channels": 1024}


def _check_architecture(manifest: dict, where: Path) -> None:
    import math

    args = manifest["architecture"]
    for key, limit in _ARCHITECTURE_LIMITS.items():
        value = args.get(key)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 <= value <= limit
            or (key != "noise_channels" and value == 0)
        ):
            raise UnlearnKitError(f"damaged model directory: {where} has architecture {key}={str(value)[:40]}; "
                                  f"it must be an integer in {0 if key == 'noise_channels' else 1}..{limit}")
    for value in (args.get("epsilon"), manifest.get("epsilon")):
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not 0 < value <= 1
        ):
            raise UnlearnKitError(f"damaged model directory: {where} has an ε that is not a number in (0, 1]")


def load_spdgan(path: str | os.PathLike) -> SpdGan:
    """Load and verify a saved generator; every problem is one :class:`UnlearnKitError` naming the file."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir() or not manifest_path.is_file():
        raise UnlearnKitError(f"{path} is not an SPD-GAN directory (it needs {MANIFEST} and {WEIGHTS}; "
                              f"train one with `unlearnkit spdgan train`)")
    manifest = read_json_record(manifest_path, FORMAT, "an SPD-GAN manifest")
    from ..checkpoint import confined

    if not isinstance(manifest.get("weights"), dict) or not isinstance(manifest.get("architecture"), dict):
        raise UnlearnKitError(f"damaged model directory: {manifest_path} lacks its 'weights' or 'architecture' record")
    weights = confined(path, manifest["weights"].get("file", WEIGHTS), f"{manifest_path}'s weights.file")
    _check_architecture(manifest, manifest_path)
    if not weights.is_file():
        raise UnlearnKitError(f"{path} has no weights file {weights.name}")
    if sha256_file(weights) != manifest["weights"].get("sha256"):
        raise UnlearnKitError(
            f"{weights} does not match the SHA-256 in its manifest: the file is corrupted or was changed"
        )
    args = manifest["architecture"]
    generator = Generator(
        int(args["channels"]), float(args["epsilon"]), int(args["width"]), int(args["noise_channels"])
    )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnlearnKitError(f"{weights} cannot be read as safetensors: {exc}") from None
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UnlearnKitError(
            f"weights in {path} do not fit the recorded generator architecture: {str(exc).splitlines()[0]}"
        ) from None
    if abs(float(generator.epsilon) - float(manifest["epsilon"])) > 1e-6 * float(manifest["epsilon"]):  # float32 buffer
        raise UnlearnKitError(
            f"{path}: the weights' ε {float(generator.epsilon)} differs from the manifest's {manifest['epsilon']}"
        )
    generator.eval()
    return SpdGan(generator, manifest, path)
