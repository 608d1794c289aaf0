#!/usr/bin/env python
"""Zero-shot vs CoOp vs CAPT and CAPT's ablations (paper Tables 5-10), base-to-novel over seeds, in one table.

    python trainers/run_ablations.py --output_dir runs/ablations                  # embedded default, seeds 1 2 3
    python trainers/run_ablations.py --variants capt coop --seeds 1 -- --num_train_epochs 5

Each variant is a base-to-novel protocol run (`trainers/run_protocol.py`) with its own flags, so finished runs are
reused and an interrupted table resumes. The table reports mean ± std over seeds (population std: ddof 0, as
`run_protocol.py`) of base, novel and HM accuracy, and for CAPT variants the correction rate on the bank's
misclassified training images and the test correction / break rates (test images the zero-shot model got wrong that
are now right; right before and wrong now).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts.atomic_io import write_text_atomic  # noqa: E402
from trainers import run_protocol  # noqa: E402


logger = logging.getLogger("capt.ablations")

# name -> (method, trainer flags, what the paper calls it)
VARIANTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "coop": ("coop", (), "CoOp"),
    "capt": ("capt", (), "CAPT (SEM + SAM + MGDE)"),
    "sem_only": ("capt", ("--no_use_sam", "--no_use_mgde"), "SEM only (Table 5)"),
    "sam_only": ("capt", ("--no_use_sem", "--no_use_mgde"), "SAM only (Table 5)"),
    "sem_sam": ("capt", ("--no_use_mgde",), "SEM + SAM (Table 5)"),
    "no_statistics": ("capt", ("--no_confusion_statistics",), "w/o confusion statistics (Table 6)"),
    "real_gt": ("capt", ("--no_pseudo_gt",), "real GT instead of pseudo-GT (Table 7)"),
    "random_samples": ("capt", ("--random_samples",), "random instead of representative samples (Table 8)"),
    "k_pairs_1": ("capt", ("--k_pairs", "1"), "1 confusion pair per sample (Table 9)"),
    "k_pairs_2": ("capt", ("--k_pairs", "2"), "2 confusion pairs per sample (Table 9)"),
    "global_only": ("capt", ("--adapter_branches", "global"), "adapter: global branch only (Table 10)"),
    "local_only": ("capt", ("--adapter_branches", "local"), "adapter: local branch only (Table 10)"),
    "anprompt": ("anprompt", (), "ANPrompt"),
    "anprompt_no_text_noise": ("anprompt", ("--noise_alpha", "0"), "ANPrompt w/o text noise (alpha = 0)"),
    "anprompt_no_anti_noise": ("anprompt", ("--anti_noise_eps", "0"), "ANPrompt w/o anti-noise prompt (eps = 0)"),
    "anprompt_no_waloss": ("anprompt", ("--no_use_waloss",), "ANPrompt w/o WALoss"),
}


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_args = []
    if "--" in argv:
        position = argv.index("--")
        argv, trainer_args = argv[:position], argv[position + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--output_dir", default="runs/ablations")
    parser.add_argument("--dataset_name", default=None, help="A datasets source instead of the embedded default")
    parser.add_argument("--table_only", action="store_true", help="Tabulate the finished runs only")
    return parser.parse_args(argv), trainer_args


def _cell(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def _variant_records(result: dict, runs_dir: str) -> list[tuple[dict, dict]]:
    records = []
    for path in result["runs"]:
        record = run_protocol.read_record(path)
        if record is None:
            continue
        with open(os.path.join(runs_dir, record["metrics_file"]), encoding="utf-8") as handle:
            records.append((record, json.load(handle)))
    return records


def run_ablations(argv=None) -> dict:
    args, trainer_args = parse_args(argv)
    data = ["--dataset_name", args.dataset_name] if args.dataset_name else ["--embedded"]
    rows = {}
    zero_shot = []
    for name in args.variants:
        method, flags, _ = VARIANTS[name]
        runs_dir = os.path.join(args.output_dir, name)
        result = run_protocol.run_protocol(
            ["--protocol", "base2novel", *data, "--method", method, "--seeds", *map(str, args.seeds),
             "--shots", str(args.shots),
             "--output_dir", runs_dir, *(["--table_only"] if args.table_only else []), "--", *flags, *trainer_args]
        )
        rows[name] = _variant_records(result, runs_dir)
        if not zero_shot:
            zero_shot = rows[name]
    lines = [
        f"Base-to-novel, mean ± population std over seeds {' '.join(map(str, args.seeds))}"
        + (f" (trainer flags: {' '.join(trainer_args)})" if trainer_args else ""),
        "",
        "| variant | base | novel | HM | bank correction | test correction | test break |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(label, entries, key):
        metrics = [m[key] for _, m in entries]
        get = lambda field: [entry.get(field) for entry in metrics]  # noqa: E731
        lines.append(
            f"| {label} | {_cell(get('base_accuracy'))} | {_cell(get('novel_accuracy'))} | {_cell(get('hm'))} | "
            f"{_cell(get('correction_rate'))} | {_cell(get('test_correction_rate'))} | {_cell(get('test_break_rate'))} |"
        )

    if zero_shot:
        row("zero-shot CLIP", zero_shot, "zeroshot")
    for name in args.variants:
        if rows[name]:
            row(VARIANTS[name][2], rows[name], VARIANTS[name][0])
    table = "\n".join(lines) + "\n"
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "ablations.md")
    write_text_atomic(path, table)
    return {"table": table, "path": path, "rows": rows}


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    result = run_ablations(argv)
    print(result["table"])
    return result


if __name__ == "__main__":
    main()
