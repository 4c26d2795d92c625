"""Benchmark suites, the resumable runner with its model cache, and paper-style reports."""

from .report import provenance, stats, summarise, write_report
from .runner import load_records, run_suite
from .suite import Suite, Variant, load_suite, parse_variant, suite_from_dict, with_prune

__all__ = [
    "Suite",
    "Variant",
    "load_suite",
    "parse_variant",
    "suite_from_dict",
    "with_prune",
    "run_suite",
    "load_records",
    "summarise",
    "write_report",
    "stats",
    "provenance",
]
