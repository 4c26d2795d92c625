"""Data sets (read from their standard files), index batching, and augmentation."""

from .datasets import DATASET_INFO, DATASETS, FASHION_MNIST_DIR, Dataset, as_dataset, load_dataset
from .loader import Augment, Batch, Source, augment_for
from .text import TextDataset, is_text  # registers the text data sets (fortunes, text)

__all__ = [
    "DATASETS",
    "DATASET_INFO",
    "FASHION_MNIST_DIR",
    "Dataset",
    "load_dataset",
    "as_dataset",
    "Augment",
    "Batch",
    "Source",
    "augment_for",
    "TextDataset",
    "is_text",
]
