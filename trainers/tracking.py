"""What a run reports to its trackers (`--report_to tensorboard`, through `accelerator.log`) besides the per-step loss
and learning rate the training loop logs: the run's hyperparameters at the start and every final metric at the end.
"""

from __future__ import annotations

import json

FINAL_METRICS = ("accuracy", "base_accuracy", "novel_accuracy", "hm", "correction_rate", "test_correction_rate",
                 "test_break_rate")


def tracker_config(settings: dict, **extra) -> dict:
    """The run's flags as tracker hyperparameters: trackers (TensorBoard's hparams) take only numbers, strings and
    booleans, so a list is written as JSON and a missing value as the string 'None'."""
    config = {}
    for name, value in {**settings, **extra}.items():
        if isinstance(value, (bool, int, float, str)):
            config[name] = value
        else:
            config[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return config


def final_metrics(summary: dict) -> dict:
    """`final/<model>/<metric>` for zero-shot CLIP and the trained method: accuracy (or base, novel and HM) and
    CAPT's correction and break rates, in %, as `metrics.json` holds them."""
    logged = {}
    for model in dict.fromkeys(["zeroshot", summary["method"]]):
        for metric in FINAL_METRICS:
            value = summary.get(model, {}).get(metric)
            if isinstance(value, (int, float)):
                logged[f"final/{model}/{metric}"] = float(value)
    return logged


__all__ = ["final_metrics", "tracker_config"]
