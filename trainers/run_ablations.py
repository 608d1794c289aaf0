#!/usr/bin/env python
"""Zero-shot vs CoOp vs CAPT and CAPT's ablations (paper Tables 5-10, Figure 9), over seeds, in two tables.

    python trainers/run_ablations.py --output_dir runs/ablations                  # embedded default, seeds 1 2 3
    python trainers/run_ablations.py --variants capt coop --seeds 1 -- --num_train_epochs 5

Each variant is a protocol run (`trainers/run_protocol.py`) with its own flags, so finished runs are reused and an
interrupted table resumes. Two settings:

- base-to-novel (every variant): train on the base classes, evaluate base and novel;
- all classes (`--protocol few_shot`, `--subsample_classes all`, the variants whose confusion-class ranking can
  matter): with 5 base classes and `k_pairs=5` every other class is a confusion class, so the ranking rules (Tables
  6-7, Figure 9) can only differ where there are more classes than pairs, e.g. all 10 classes of the embedded default
  (5 of 9 other classes).

The bank-base-model rows (Table 9) train CAPT from a bank built by the same seed's CoOp or CAPT checkpoint (those
variants run first and keep their models). The tables report mean ± std over seeds (population std: ddof 0, as
`run_protocol.py`) of the accuracies, and for CAPT variants the correction rate on the bank's misclassified training
images and the test correction / break rates (test images the zero-shot model got wrong that are now right; right
before and wrong now).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import statistics
import sys
from dataclasses import dataclass

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts.atomic_io import write_text_atomic  # noqa: E402
from trainers import run_protocol  # noqa: E402


logger = logging.getLogger("capt.ablations")

BASE2NOVEL, ALL_CLASSES = "base2novel", "few_shot"
SETTINGS = {BASE2NOVEL: "base-to-novel", ALL_CLASSES: "all classes"}
BOTH = (BASE2NOVEL, ALL_CLASSES)


@dataclass(frozen=True)
class Variant:
    """One row: the method, its trainer flags, the paper's name for it, the settings it runs in, and (Table 9) the
    variant whose same-seed checkpoint builds its Confusion Bank."""

    method: str
    flags: tuple[str, ...]
    label: str
    settings: tuple[str, ...] = (BASE2NOVEL,)
    bank_from: str | None = None


VARIANTS: dict[str, Variant] = {
    "coop": Variant("coop", (), "CoOp", BOTH),
    "capt": Variant("capt", (), "CAPT (SEM + SAM + MGDE)", BOTH),
    "sem_only": Variant("capt", ("--no_use_sam",), "SEM only: prompts + MGDE, no adapters (Table 5)"),
    "sam_only": Variant("capt", ("--no_use_sem", "--no_use_mgde"), "SAM only: samples + adapters (Table 5)"),
    "sem_sam": Variant("capt", ("--no_use_mgde",), "SEM + SAM, no MGDE (Table 5)"),
    "no_statistics": Variant("capt", ("--no_confusion_statistics",), "w/o confusion statistics (Table 6)", BOTH),
    "real_gt": Variant("capt", ("--no_pseudo_gt",), "real GT instead of pseudo-GT (Table 7)", BOTH),
    "paper_rule": Variant("capt", ("--confusion_rule", "paper"),
                          "pseudo-GT, the paper's literal rule (own label may be picked) (Table 7)", BOTH),
    "random_samples": Variant("capt", ("--random_samples",), "random instead of representative samples (Table 8)",
                              BOTH),
    "bank_coop": Variant("capt", (), "bank from CoOp (Table 9)", bank_from="coop"),
    "bank_capt": Variant("capt", (), "bank from CAPT (Table 9)", bank_from="capt"),
    "k_pairs_1": Variant("capt", ("--k_pairs", "1"), "1 confusion pair per sample (Figure 9)", BOTH),
    "k_pairs_2": Variant("capt", ("--k_pairs", "2"), "2 confusion pairs per sample (Figure 9)", BOTH),
    "samples_2": Variant("capt", ("--samples_per_class", "2"), "2 representative samples per class (Figure 9)", BOTH),
    "alpha_per_rep": Variant("capt", ("--alpha_per_representative",), "alpha per representative, s * c_i^gamma (Eq. 13)"),
    "global_only": Variant("capt", ("--adapter_branches", "global"), "adapter: global branch only (Table 10)"),
    "local_only": Variant("capt", ("--adapter_branches", "local", "--layers_to_transform=-3,-2"),
                          "adapter: local branch only, layers -3 and -2 (Table 10)"),
    "anprompt": Variant("anprompt", (), "ANPrompt"),
    "anprompt_no_text_noise": Variant("anprompt", ("--noise_alpha", "0"), "ANPrompt w/o text noise (alpha = 0)"),
    "anprompt_no_anti_noise": Variant("anprompt", ("--anti_noise_eps", "0"), "ANPrompt w/o anti-noise prompt (eps = 0)"),
    "anprompt_no_waloss": Variant("anprompt", ("--no_use_waloss",), "ANPrompt w/o WALoss"),
    **{f"anprompt_{mode}": Variant("anprompt", ("--strong_perturbation", mode),
                                   f"ANPrompt, strong perturbation of the main sentences: {mode} (Table X)")
       for mode in ("drop", "mask", "shuffle", "synonym")},
}
#: The CAPT paper's ablations run by default; ANPrompt's rows are asked for by name (`--variants anprompt ...`).
DEFAULT_VARIANTS = [name for name, variant in VARIANTS.items() if variant.method != "anprompt"]


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_args = []
    if "--" in argv:
        position = argv.index("--")
        argv, trainer_args = argv[:position], argv[position + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                        help="the rows to run (default: the CAPT paper's ablations; the anprompt* rows on request)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                        help="base2novel (base-to-novel) and/or few_shot (all classes); each variant runs in those "
                             "of its settings that are asked for")
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


def _bank_checkpoint(output_dir: str, source: str, setting: str, seed: int) -> str:
    """The checkpoint of variant `source`'s run for (setting, seed), which a Table 9 row builds its bank from."""
    for path in _records_dir(output_dir, source, setting):
        record = run_protocol.read_record(path)
        if record is not None and record["seed"] == seed and record.get("checkpoint"):
            folder = os.path.join(output_dir, source, record["checkpoint"])
            if os.path.isfile(os.path.join(folder, "config.json")) and os.path.basename(folder) == "model":
                return folder
    raise FileNotFoundError(
        f"No kept model of variant {source!r} (seed {seed}) under {output_dir}/{source}: run that variant first "
        "(run_ablations.py keeps its models; delete its runs to retrain them if they were made without)."
    )


def _records_dir(output_dir: str, name: str, setting: str) -> list[str]:
    """The run records (`<setting>/<data>/<run>.json`) of one variant."""
    return sorted(glob.glob(os.path.join(glob.escape(os.path.join(output_dir, name, setting)), "*", "*.json")))


def _table(setting: str, args, entries_by_row: list[tuple[str, list, str]]) -> list[str]:
    accuracy = ["base", "novel", "HM"] if setting == BASE2NOVEL else ["accuracy"]
    keys = ["base_accuracy", "novel_accuracy", "hm"] if setting == BASE2NOVEL else ["accuracy"]
    lines = [
        f"{SETTINGS[setting].capitalize()}, mean ± population std over seeds {' '.join(map(str, args.seeds))}",
        "",
        "| variant | " + " | ".join(accuracy) + " | bank correction | test correction | test break |",
        "|---|" + "---|" * (len(accuracy) + 3),
    ]
    for label, entries, key in entries_by_row:
        metrics = [m[key] for _, m in entries]
        get = lambda field: [entry.get(field) for entry in metrics]  # noqa: E731
        cells = [_cell(get(k)) for k in keys + ["correction_rate", "test_correction_rate", "test_break_rate"]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def run_ablations(argv=None) -> dict:
    args, trainer_args = parse_args(argv)
    data = ["--dataset_name", args.dataset_name] if args.dataset_name else ["--embedded"]
    sources = {VARIANTS[name].bank_from for name in args.variants} - {None}
    missing = sorted(sources - set(args.variants))
    if missing:
        raise ValueError(f"The Table 9 rows need the variants {missing} too (their checkpoints build the banks)")
    rows: dict[str, list] = {}
    tables = []
    for setting in args.settings:
        names = [name for name in args.variants if setting in VARIANTS[name].settings]
        zero_shot = []
        for name in names:
            variant = VARIANTS[name]
            runs_dir = os.path.join(args.output_dir, name)
            keep = ["--keep_models"] if name in sources else []
            common = ["--protocol", setting, *data, "--method", variant.method, "--shots", str(args.shots),
                      "--output_dir", runs_dir, *keep, *(["--table_only"] if args.table_only else [])]
            if variant.bank_from is None:
                results = [run_protocol.run_protocol(
                    [*common, "--seeds", *map(str, args.seeds), "--", *variant.flags, *trainer_args])]
            else:  # a bank per seed, from that seed's checkpoint of the source variant
                results = []
                for seed in args.seeds:
                    bank = ["--bank_base_model", _bank_checkpoint(args.output_dir, variant.bank_from, setting, seed)]
                    results.append(run_protocol.run_protocol(
                        [*common, "--seeds", str(seed), "--", *variant.flags, *bank, *trainer_args]))
            records = [record for result in results for record in _variant_records(result, runs_dir)]
            rows[name if setting == BASE2NOVEL else f"{name}@{setting}"] = records
            if not zero_shot:
                zero_shot = records
        entries = [("zero-shot CLIP", zero_shot, "zeroshot")] if zero_shot else []
        entries += [(VARIANTS[name].label, rows[name if setting == BASE2NOVEL else f"{name}@{setting}"],
                     VARIANTS[name].method) for name in names]
        entries = [entry for entry in entries if entry[1]]
        if entries:
            tables.append("\n".join(_table(setting, args, entries)))
    header = f"Trainer flags: {' '.join(trainer_args)}\n\n" if trainer_args else ""
    table = header + "\n\n".join(tables) + "\n"
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
