"""The benchmark scripts run end to end on the embedded model (tiny settings) and print their ratio line; the
statistics helpers they share are checked by hand. Timings themselves are never asserted."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from benchmark_utils import median_interval, paired_ratios, synthetic_image_dataset  # noqa: E402


def test_median_interval_uses_binomial_order_statistics():
    values = list(range(1, 21))  # n = 20: P(Bin(20, 1/2) <= 5) = 0.0207 <= 0.025 < P(<= 6): k = 6
    assert median_interval(values) == (6, 15)
    assert median_interval(list(reversed(values))) == (6, 15)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few rounds: the whole range
    assert median_interval([5.0]) == (5.0, 5.0)
    assert paired_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]


def test_synthetic_photos_are_jpeg_of_the_asked_size():
    data = synthetic_image_dataset(2, 2, 28, photo_size=(50, 30))
    image = data[0]["image"]
    assert image.format == "JPEG" and image.size == (50, 30)
    assert data.features["label"].names == ["class0", "class1"] and data["label"] == [0, 0, 1, 1]
    assert synthetic_image_dataset(2, 1, 28)[0]["image"].size == (28, 28)


def run_benchmark(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", script), "--model", "embedded", "--device", "cpu",
         "--threads", "1", *args],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


@pytest.mark.parametrize(
    "script, args, last",
    [
        ("bench_inference.py", ["--repeats", "3", "--batch_size", "8"], "inference_ratio"),
        ("bench_cache.py", ["--repeats", "3", "--photo_size", "60x40"], "cache_speedup"),
        ("bench_bank.py", ["--repeats", "1", "--num_images", "40", "--sizes", "1000,3000"], "retrieval_loglog_slope"),
        ("bench_memory.py", ["--quick", "--num_classes", "20", "--batch_size", "4"], "peak_memory_gb"),
    ],
)
def test_benchmark_scripts_print_their_ratio(script, args, last):
    lines = run_benchmark(script, *args)
    match = re.fullmatch(rf"{last}=([0-9.]+)", lines[-1])
    assert match, lines[-5:]
    value = float(match.group(1))
    assert math.isfinite(value) and value > 0
