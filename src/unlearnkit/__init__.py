"""unlearnkit: remove the influence of chosen training data from a trained PyTorch classifier, and
measure how well it was removed."""

from ._version import __version__  # noqa: E402
from .api import accuracy_report, train  # noqa: E402
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from .data import Dataset, load_dataset  # noqa: E402
from .errors import UnlearnKitError  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .importing import import_model  # noqa: E402
from .methods import METHODS, unlearn  # noqa: E402
from .models import build_model  # noqa: E402
from .relearn import RelearnConfig, relearning_attack  # noqa: E402
from .requests import Request, build_request  # noqa: E402
from .training import TrainConfig, fit  # noqa: E402

__all__ = [
    "__version__",
    "train",
    "import_model",
    "unlearn",
    "evaluate",
    "METHODS",
    "accuracy_report",
    "load_checkpoint",
    "save_checkpoint",
    "Dataset",
    "load_dataset",
    "UnlearnKitError",
    "build_model",
    "Request",
    "build_request",
    "TrainConfig",
    "fit",
    "RelearnConfig",
    "relearning_attack",
]
