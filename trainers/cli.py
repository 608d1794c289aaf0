"""The console scripts that installing `capt` puts on the PATH (declared in setup.py).

A console script calls its function and hands the return value to `sys.exit`. The scripts' `main(argv=None)` return
what they produced to Python callers (a run summary, a bank, the written paths), which `sys.exit` would print and turn
into exit status 1; so each command here runs one script's `main` and exits with status 0 when it returns (an `int`
it returns is kept as the status). Errors still raise, and `--help` still exits 0. The script module is imported only
when its command runs.

    capt-train             trainers/train_capt.py
    capt-evaluate          trainers/evaluate_capt.py
    capt-build-bank        dataset_scripts/build_confusion_bank.py
    capt-build-benchmark   dataset_scripts/build_benchmark.py (its main already returns an exit status)
    capt-protocol          trainers/run_protocol.py
    capt-ablations         trainers/run_ablations.py
    capt-build-embedded    dataset_scripts/build_embedded_default.py
"""

from __future__ import annotations

import importlib


def run_main(module: str, argv: list[str] | None = None) -> int:
    """Run `module.main(argv)`; its return value if that is an exit status (an int), else 0."""
    result = importlib.import_module(module).main(argv)
    return result if type(result) is int else 0


def train(argv: list[str] | None = None) -> int:
    return run_main("trainers.train_capt", argv)


def evaluate(argv: list[str] | None = None) -> int:
    return run_main("trainers.evaluate_capt", argv)


def build_bank(argv: list[str] | None = None) -> int:
    return run_main("dataset_scripts.build_confusion_bank", argv)


def protocol(argv: list[str] | None = None) -> int:
    return run_main("trainers.run_protocol", argv)


def ablations(argv: list[str] | None = None) -> int:
    return run_main("trainers.run_ablations", argv)


def build_embedded(argv: list[str] | None = None) -> int:
    return run_main("dataset_scripts.build_embedded_default", argv)


__all__ = ["ablations", "build_bank", "build_embedded", "evaluate", "protocol", "run_main", "train"]
