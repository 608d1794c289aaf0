"""The benchmark scripts run end to end on the embedded model (tiny settings) and print their ratio line; the
statistics helpers they share are checked by hand. Timings themselves are never asserted."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT as REPO
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, last",
    [
        ("bench_inference.py", ["--repeats", "3", "--batch_size", "8"], "inference_ratio"),
        ("bench_cache.py", ["--repeats", "3", "--photo_size", "60x40"], "cache_speedup"),
        ("bench_bank.py", ["--repeats", "1", "--num_images", "40", "--sizes", "1000,3000"], "retrieval_loglog_slope"),
        pytest.param("bench_memory.py", ["--quick", "--num_classes", "20", "--batch_size", "4"], "peak_memory_gb",
                     marks=pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                                              reason="CPU memory is read through /proc/self/clear_refs (Linux; not "
                                                     "in every sandbox, e.g. gVisor)")),
        pytest.param("bench_visprompt.py", ["--repeats", "1", "--batch_size", "2", "--num_classes", "3",
                                            "--memory_classes", "40", "--memory_batch_size", "2"],
                     "visprompt_peak_memory_gb",
                     marks=pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                                              reason="CPU memory is read through /proc/self/clear_refs")),
    ],
)
def test_benchmark_scripts_print_their_ratio(script, args, last):
    lines = run_benchmark(script, *args)
    match = re.fullmatch(rf"{last}=(-?[0-9.]+)", lines[-1])
    assert match, lines[-5:]
    value = float(match.group(1))
    assert math.isfinite(value)
    if last != "retrieval_loglog_slope":  # a slope over two tiny banks timed once is noise and may be negative
        assert value > 0


# --------------------------------------------------------------------------------------------------- run_all.py
CACHE_OUTPUT = """\
training step                            ms (cpu)
compute speed-up (batch pixels ready): median 3.627 over 10 rounds; 95 % interval of the median [2.939, 3.911]; range [2.709, 4.772]
speed-up with the batch's decoding: median 3.631 over 10 rounds; 95 % interval of the median [2.944, 3.917]; range [2.714, 4.777]
cache_speedup=3.63
"""


def test_run_all_parses_results_and_judges_goals():
    import run_all

    parsed = run_all.parse_output(CACHE_OUTPUT)
    assert parsed["results"] == {"cache_speedup": 3.63}
    assert [i["low"] for i in parsed["intervals"]] == [2.939, 2.944]
    record = {"benchmark": "cache", "model": "vit-b16", "returncode": 0, **parsed}
    assert run_all.table([record], "cpu") == [
        ["cache_speedup", "vit-b16", "3.63", "[2.944, 3.917] (10 rounds)", ">= 2.5x on cpu", "met"]]
    assert run_all.table([record], "cuda")[0][-2:] == [">= 5x on cuda", "missed"]
    assert run_all.table([dict(record, model="embedded")], "cpu")[0][-1] == "-"
    bank = run_all.parse_output("bank_build_ratio=0.976\nretrieval_loglog_slope=1.095\n")
    rows = run_all.table([{"benchmark": "bank", "model": "vit-b16", "returncode": 0, **bank}], "cpu")
    assert rows == [["bank_build_ratio", "vit-b16", "0.976", "", "", ""],
                    ["retrieval_loglog_slope", "vit-b16", "1.095", "", "<= 1 (linear or better)", "missed"]]
    assert run_all.table([{"benchmark": "memory", "model": "vit-b16", "returncode": 2}], "cpu")[0][2] == "failed"


@pytest.mark.slow
def test_run_all_runs_the_scripts_and_saves_json(tmp_path):
    output = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "run_all.py"), "--benchmarks", "inference",
         "--models", "embedded", "--device", "cpu", "--output", str(output), "--",
         "--repeats", "3", "--batch_size", "8", "--threads", "1"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(output.read_text())
    (run,) = summary["runs"]
    assert run["returncode"] == 0 and run["results"]["inference_ratio"] > 0
    assert run["intervals"][0]["rounds"] == 3
    assert summary["table"][0][:2] == ["inference_ratio", "embedded"]
    assert "| inference_ratio | embedded |" in result.stdout


def test_run_all_keeps_each_output_and_saves_after_every_script(tmp_path, monkeypatch, capsys):
    """A one-shot GPU run must bring back the scripts' own tables, a failure's traceback, and what finished before a
    time limit stopped it."""
    import run_all

    output = tmp_path / "results.json"
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text('print("clip  12.5 ms / batch")\nprint("inference_ratio=0.5")\n')
    second.write_text(f"import json\nprint('runs_saved=%d' % len(json.load(open({str(output)!r}))['runs']))\n"
                      "raise RuntimeError('boom on the device')\n")
    monkeypatch.setattr(run_all, "BENCHMARKS", {"first": str(first), "second": str(second)})
    argv = ["--benchmarks", "first,second", "--models", "embedded", "--device", "cpu", "--output", str(output)]
    assert run_all.main(argv + ["--verbose"]) == 1
    summary = json.loads(output.read_text())
    assert summary["complete"] is True
    first_run, second_run = summary["runs"]
    assert first_run["stdout"] == ["clip  12.5 ms / batch", "inference_ratio=0.5"]
    assert second_run["results"] == {"runs_saved": 1.0}  # the JSON held the first record while the second ran
    assert second_run["returncode"] == 1 and second_run["error"] == ["RuntimeError: boom on the device"]
    assert second_run["stderr_tail"][0].startswith("Traceback")
    printed = capsys.readouterr().out
    assert "    clip  12.5 ms / batch" in printed and "    Traceback (most recent call last):" in printed


def test_run_all_rejects_unknown_names():
    result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run_all.py"), "--models", "vit-l14"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "vit-l14" in result.stderr


# ------------------------------------------------------------------------------------------------ benchmarks/gpu
GPU_SCRIPT = os.path.join(REPO, "benchmarks", "gpu", "run_on_gpu.sh")


def test_gpu_script_refuses_an_unknown_stage_before_doing_anything(tmp_path):
    result = subprocess.run(["bash", GPU_SCRIPT, "tests", "nonsense"], capture_output=True, text=True,
                            env=dict(os.environ, OUT=str(tmp_path)), timeout=60)
    assert result.returncode == 2 and "unknown stage 'nonsense'" in result.stderr
    assert os.listdir(tmp_path) == []  # not even the setup ran


def test_gpu_script_stops_at_setup_without_the_wheels(tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    out = tmp_path / "out"
    result = subprocess.run(["bash", GPU_SCRIPT], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, OUT=str(out), CAPT_GPU_WHEELS=str(empty)))
    assert result.returncode == 1
    assert "fetch_wheels.sh" in result.stdout and "setup failed: stopping" in result.stdout
    assert sorted(os.listdir(out)) == ["setup.log"]  # neither the tests nor the benchmarks started
