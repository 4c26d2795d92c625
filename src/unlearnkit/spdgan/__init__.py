"""SPD-GAN (Zuo et al., TKDE 2025): a small generator that slightly perturbs the forget set within an L∞ budget ε,
trained
adversarially against a discriminator while keeping the original model's labels; the *unlearning degree* of
:func:`unlearnkit.evaluate` compares models on its outputs. See ``docs/perturbation.md``.

``unlearnkit spdgan train --checkpoint C --request SPEC --out G`` trains and saves one;
``unlearnkit evaluate ... --spdgan G`` reuses it.
"""

from .core import Discriminator, Generator, SpdGanConfig, TrainedSpdGan, perturb, train_spdgan
from .store import SpdGan, load_spdgan, model_hash, save_spdgan, train_for_request

__all__ = ["Discriminator", "Generator", "SpdGanConfig", "TrainedSpdGan", "perturb", "train_spdgan", "SpdGan",
           "load_spdgan", "model_hash", "save_spdgan", "train_for_request"]
