"""What a benchmark script needs to record its results next to the figures: where and with what they were
measured (:func:`machine`, :func:`versions`), writers that never leave a half-written file (:func:`write_json_atomic`,
:func:`write_text_atomic`, :func:`save_figure`), the content hash data sets are fingerprinted with
(:func:`sha256_tensors`) and global seeding (:func:`seed_everything`). The scripts under ``benchmarks/`` use this
module rather than unlearnkit's private helpers (``tests/test_layers.py`` checks)."""

from ._util import machine, save_figure, seed_everything, sha256_tensors, versions, write_json_atomic, write_text_atomic

__all__ = ["machine", "versions", "write_json_atomic", "write_text_atomic", "save_figure", "seed_everything",
           "sha256_tensors"]
