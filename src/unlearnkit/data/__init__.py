"""Data sets (read from their standard files), index batching, and augmentation."""

from .datasets import DATASET_INFO, DATASETS, FASHION_MNIST_DIR, Dataset, load_dataset
from .loader import Augment, Batch, Source

__all__ = ["DATASETS", "DATASET_INFO", "FASHION_MNIST_DIR", "Dataset", "load_dataset", "Augment", "Batch", "Source"]
