#!/usr/bin/env python
"""Run every benchmark on both model shapes, then print one table of the ratios against the goals and save it as JSON.

Each benchmark runs as its own process (as from the command line), so one failing script does not stop the others;
its `name=value` result lines and its `... 95 % interval of the median [low, high]` lines are collected. Goals (issue
7) are judged on the ViT-B/16 shape only; the embedded model's numbers are reported without a verdict.

    python benchmarks/run_all.py --quick                       # minutes on 2 CPU cores
    python benchmarks/run_all.py --device cuda --output benchmarks/results-gpu.json
    python benchmarks/run_all.py --benchmarks inference,cache --models vit-b16 -- --repeats 20
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from dataset_scripts.atomic_io import write_json_atomic  # noqa: E402


BENCHMARKS = {
    "inference": "bench_inference.py",
    "cache": "bench_cache.py",
    "bank": "bench_bank.py",
    "memory": "bench_memory.py",
    "visprompt": "bench_visprompt.py",  # VisPrompt / CoOp step time, 1000-class step memory (no goal set)
    "anprompt": "bench_anprompt.py",  # ANPrompt's prefix caches (no goal set)
}
MODELS = ("vit-b16", "embedded")
STDERR_TAIL_LINES = 40
RESULT_LINE = re.compile(r"^([a-z_]+)=([-+0-9.eE]+|nan|inf)$")
INTERVAL_LINE = re.compile(r"^(?P<label>.+?): median [-0-9.]+ over (?P<rounds>\d+) rounds; 95 % interval of the "
                           r"median \[(?P<low>[-0-9.]+), (?P<high>[-0-9.]+)\]")


def goal(metric: str, device: str):
    """`(description, test)` of the issue's goal for a result, or `None` where it sets none."""
    if metric == "inference_ratio":
        return ">= 0.95", lambda value: value >= 0.95
    if metric == "cache_speedup":
        target = 5.0 if device == "cuda" else 2.5
        return f">= {target:g}x on {device}", lambda value: value >= target
    if metric == "retrieval_loglog_slope":
        return "<= 1 (linear or better)", lambda value: value <= 1.0
    if metric == "peak_memory_gb":
        return "<= 8 GB", lambda value: value <= 8.0
    return None


def parse_output(stdout: str) -> dict:
    """`{"results": {name: value}, "intervals": [{label, rounds, low, high}]}` from a benchmark's output."""
    results, intervals = {}, []
    for line in stdout.splitlines():
        line = line.strip()
        match = RESULT_LINE.match(line)
        if match:
            results[match.group(1)] = float(match.group(2))
            continue
        match = INTERVAL_LINE.match(line)
        if match:
            intervals.append({"label": match.group("label"), "rounds": int(match.group("rounds")),
                              "low": float(match.group("low")), "high": float(match.group("high"))})
    return {"results": results, "intervals": intervals}


def interval_for(metric: str, intervals: list[dict]):
    """The interval that belongs to `metric`: the last printed one (each script prints its headline ratio's last)."""
    if metric in ("inference_ratio", "cache_speedup") and intervals:
        return intervals[-1]
    return None


def run_one(benchmark: str, model: str, args, extra: list[str]) -> dict:
    command = [sys.executable, os.path.join(HERE, BENCHMARKS[benchmark]), "--model", model, "--device", args.device]
    if args.quick:
        command.append("--quick")
    command += extra
    start = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shown = ["python", os.path.relpath(command[1], os.path.dirname(HERE))] + command[2:]
    record = {"benchmark": benchmark, "model": model, "command": " ".join(shown), "returncode": process.returncode,
              "seconds": round(seconds, 1), **parse_output(process.stdout),
              "stdout": process.stdout.splitlines()}  # the script's own tables (times, images/s, per-size rows)
    print(f"$ {record['command']}", flush=True)
    if args.verbose:
        print("\n".join("    " + line for line in record["stdout"]), flush=True)
    if process.returncode != 0:
        stderr = process.stderr.strip().splitlines()
        record["error"] = stderr[-1:] or ["(no output)"]
        record["stderr_tail"] = stderr[-STDERR_TAIL_LINES:]  # the traceback: a one-shot GPU run must show why
        print(f"  failed ({process.returncode}): {record['error'][0]}", flush=True)
        print("\n".join("    " + line for line in record["stderr_tail"]), flush=True)
    else:
        print("  " + ", ".join(f"{k}={v:g}" for k, v in record["results"].items()) + f"  ({seconds:.0f} s)", flush=True)
    return record


def table(records: list[dict], device: str) -> list[list[str]]:
    rows = []
    for record in records:
        if record["returncode"] != 0:
            rows.append([record["benchmark"], record["model"], "failed", "", "", ""])
            continue
        for metric, value in record["results"].items():
            interval = interval_for(metric, record["intervals"])
            spread = f"[{interval['low']:.3f}, {interval['high']:.3f}] ({interval['rounds']} rounds)" if interval else ""
            target = goal(metric, device)
            if target is None:
                verdict, text = "", ""
            elif record["model"] != "vit-b16":
                verdict, text = "-", target[0]
            else:
                verdict, text = ("met" if target[1](value) else "missed"), target[0]
            rows.append([metric, record["model"], f"{value:g}", spread, text, verdict])
    return rows


def markdown(rows: list[list[str]]) -> str:
    header = ["result", "model", "value", "95 % interval", "goal", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:  # everything after `--` goes to every benchmark script
        extra = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Pass --quick to every script.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="Comma list of " + ", ".join(BENCHMARKS))
    parser.add_argument("--models", default=",".join(MODELS), help="Comma list of " + ", ".join(MODELS))
    parser.add_argument("--output", default=None,
                        help="JSON file of every result and each script's full output (written atomically).")
    parser.add_argument("--verbose", action="store_true", help="Print each script's own output as it finishes.")
    args = parser.parse_args(argv)
    benchmarks = [name.strip() for name in args.benchmarks.split(",") if name.strip()]
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(benchmarks) - set(BENCHMARKS)) + sorted(set(models) - set(MODELS))
    if unknown or not benchmarks or not models:
        parser.error(f"unknown or empty --benchmarks/--models: {unknown or 'nothing selected'}")

    import torch  # only to name the device; the scripts pick it themselves

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "extra_args": extra,
        "complete": False,
        "runs": [],
        "table": [],
    }
    records = summary["runs"]
    for benchmark in benchmarks:
        for model in models:
            records.append(run_one(benchmark, model, args, extra))
            if args.output:  # after every script: a run stopped at a time limit keeps what it measured
                summary["table"] = table(records, device)
                write_json_atomic(args.output, summary)
    rows = summary["table"] = table(records, device)
    summary["complete"] = True
    print()
    print(markdown(rows))
    if args.output:
        write_json_atomic(args.output, summary)
        print(f"\nsaved {args.output}")
    failed = [f"{r['benchmark']}/{r['model']}" for r in records if r["returncode"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
