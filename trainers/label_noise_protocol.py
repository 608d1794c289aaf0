"""The label-noise benchmark (VisPrompt, NLPrompt): accuracy under symmetric and asymmetric label noise, per method.

    python trainers/run_protocol.py --protocol label_noise --embedded --output_dir runs
    python trainers/run_protocol.py --protocol label_noise --data_dir $DATA --output_dir runs \\
        -- --model_name_or_path openai/clip-vit-base-patch16

One trainer run (`trainers/train_capt.py`, in this process) per data source, method, noise type, noise rate and seed;
16 shots, all classes (`--subsample_classes all`), the noise on the training labels only (`--noise_rate`,
`--noise_type`, `dataset_scripts/label_noise.py`). The methods (`--methods`):

- `coop`: CoOp (`--method coop`, 4 context tokens from "a photo of a");
- `coop_gce`: CoOp trained with GCE (q = 0.5) on every sample (`--method visprompt` without image guidance, OT or
  CE; the same 4-token context as CoOp);
- `nlprompt`: NLPrompt, VisPrompt with image guidance off and MAE on the noisy samples (16 random context tokens);
- `visprompt`: VisPrompt.

`--table_only` tabulates the finished runs without running the others. Noise rate 0 is one run per method and seed (the same for every noise type). On `--embedded` the runner uses the
embedded default; with `--data_dir` the VisPrompt datasets that exist there (`--datasets` to choose). Resumable: a run
whose JSON exists is not run again. Writes, under `--output_dir RUNS`:

    RUNS/label_noise/<data>/<method>/<type>_<rate>/seed<k>.json   one finished run
    RUNS/label_noise/results.md                                   the tables, mean ± std over seeds (also printed)
    RUNS/label_noise/<data>_accuracy_vs_noise.png                 accuracy vs noise rate, a line per method
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics

from PIL import Image, ImageDraw, ImageFont

from dataset_scripts.atomic_io import write_json_atomic, write_text_atomic
from dataset_scripts.coop_datasets import MissingDataError, get_dataset_info, load_coop_dataset
from dataset_scripts.label_noise import check_noise_options


logger = logging.getLogger(__name__)

#: Trainer flags of each method of the table.
METHOD_FLAGS = {
    "coop": ["--method", "coop"],
    "coop_gce": ["--method", "visprompt", "--image_guidance", "false", "--use_ot", "false", "--clean_loss", "gce",
                 "--n_ctx", "4", "--ctx_init", "a photo of a"],
    "nlprompt": ["--method", "visprompt", "--image_guidance", "false", "--noisy_loss", "mae"],
    "visprompt": ["--method", "visprompt"],
}
TITLES = {"coop": "CoOp", "coop_gce": "CoOp + GCE", "nlprompt": "NLPrompt", "visprompt": "VisPrompt"}
#: The VisPrompt paper's datasets (Food-101N: its real-noise set).
VISPROMPT_DATASETS = ("caltech101", "oxford_flowers", "oxford_pets", "ucf101", "dtd", "eurosat", "food101n")
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
#: What a finished run no longer needs (the model copy stays out of the benchmark's disk use).
TRANSIENT_OUTPUTS = ("checkpoints", "prefix_cache", "model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The label-noise benchmark: accuracy vs noise rate per method.")
    parser.add_argument("--protocol", choices=("label_noise",), default="label_noise")
    parser.add_argument("--embedded", action="store_true", help="Run on the embedded default.")
    parser.add_argument("--data_dir", help="Root of the CoOp dataset folders (the VisPrompt datasets found there).")
    parser.add_argument("--datasets", nargs="+", default=None, help=f"Default: {' '.join(VISPROMPT_DATASETS)}.")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_FLAGS), choices=list(METHOD_FLAGS))
    parser.add_argument("--noise_rates", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--noise_types", nargs="+", default=["sym", "asym"],
                        help="sym, asym, or JSON maps (e.g. dataset_scripts/noise_maps/fashion_subset_asym.json).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--output_dir", default="runs")
    parser.add_argument("--table_only", action="store_true", help="Tabulate the finished runs; run nothing.")
    return parser


def data_sources(args) -> list[tuple[str, list[str]]]:
    """`(name, trainer flags)` per data source; a VisPrompt dataset missing under `--data_dir` is skipped (logged)."""
    if args.embedded == bool(args.data_dir):
        raise ValueError("Give --embedded or --data_dir")
    if args.embedded:
        return [("fashion-subset", [])]
    sources = []
    for name in args.datasets or VISPROMPT_DATASETS:
        name = get_dataset_info(name).name
        try:
            load_coop_dataset(name, args.data_dir, verify_images=False)
        except MissingDataError as err:
            logger.warning("skipping %s: %s", name, err)
            continue
        sources.append((name, ["--dataset", name, "--data_dir", args.data_dir]))
    return sources


def _type_key(noise_type: str) -> str:
    return noise_type if noise_type in ("sym", "asym") else os.path.splitext(os.path.basename(noise_type))[0] or "map"


def plan(args, trainer_args: list[str]) -> list[dict]:
    for rate in args.noise_rates:
        if not 0 <= rate < 1:
            raise ValueError(f"--noise_rates must be in [0, 1), got {rate}")
    for noise_type in args.noise_types:  # a misspelt type or an unreadable map fails now, not after the clean runs
        check_noise_options(0.0, noise_type, 0)
    runs = []
    for data, data_flags in data_sources(args):
        for method in args.methods:
            for seed in args.seeds:
                settings = [("none", 0.0)] if 0.0 in args.noise_rates else []
                settings += [(t, r) for t in args.noise_types for r in args.noise_rates if r > 0]
                for noise_type, rate in settings:
                    folder = os.path.join(args.output_dir, "label_noise", data, method,
                                          f"{_type_key(noise_type)}_{rate:g}")
                    argv = [*trainer_args, *data_flags, *METHOD_FLAGS[method], "--seed", str(seed),
                            "--shots", str(args.shots), "--subsample_classes", "all", "--heatmap", "false",
                            "--save_every_epochs", "0", "--output_dir", os.path.join(folder, f"seed{seed}"),
                            "--fewshot_cache_dir", os.path.join(args.output_dir, "fewshot_indices")]
                    if rate > 0:
                        argv += ["--noise_rate", str(rate), "--noise_type", noise_type]
                    runs.append({"data": data, "method": method, "seed": seed, "noise_type": noise_type,
                                 "rate": rate, "json": os.path.join(folder, f"seed{seed}.json"), "argv": argv})
    if trainer_args:  # a bad trainer flag fails now, against each method's own flags, not at its first run
        from trainers.args import parse_args

        for method in args.methods:
            parse_args(next(run["argv"] for run in runs if run["method"] == method))
    return runs


def execute(run: dict) -> dict:
    from accelerate.state import AcceleratorState, GradientState

    from trainers import train_capt

    if os.path.isfile(run["json"]):
        with open(run["json"], encoding="utf-8") as handle:
            return json.load(handle)
    summary = train_capt.main(run["argv"])
    # the next in-process run builds its own Accelerator (as run_protocol.reset_accelerate_state does; importing it
    # here would make the two modules import each other)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    entry = summary[summary["method"]]
    record = {key: run[key] for key in ("data", "method", "seed", "noise_type", "rate")}
    record.update(accuracy=entry["accuracy"], argv=run["argv"], wall_time_s=summary["wall_time_s"],
                  **{k: entry[k] for k in ("clean_precision", "clean_recall") if k in entry})
    write_json_atomic(run["json"], record)
    output = run["argv"][run["argv"].index("--output_dir") + 1]
    for name in TRANSIENT_OUTPUTS:
        shutil.rmtree(os.path.join(output, name), ignore_errors=True)
    return record


def _mean_std(values: list[float], expected: int) -> str:
    """`mean ± population std`, with the number of seeds when it is fewer than the table's."""
    if not values:
        return "–"
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    partial = f" ({len(values)} of {expected} seeds)" if len(values) < expected else ""
    return f"{statistics.mean(values):.2f} ± {std:.2f}{partial}"


def tables(records: list[dict], args) -> tuple[str, dict]:
    """The Markdown tables (one per data source) and the curves `{data: {type: {method: [(rate, mean)]}}}`."""
    lines, curves = [], {}
    types = [t for t in args.noise_types]
    rates = [r for r in args.noise_rates if r > 0]
    for data in dict.fromkeys(r["data"] for r in records):
        rows = [r for r in records if r["data"] == data]
        seeds = sorted({r["seed"] for r in rows})
        lines += [f"### {data}: accuracy (%) under label noise, 16 shots, seeds {', '.join(map(str, seeds))}", ""]
        header = ["method"] + (["0 %"] if 0.0 in args.noise_rates else [])
        header += [f"{_type_key(t)} {100 * r:g} %" for t in types for r in rates]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in args.methods:
            cells = [TITLES[method]]
            pick = lambda t, r: [x["accuracy"] for x in rows if x["method"] == method and x["noise_type"] == t
                                 and x["rate"] == r]
            clean = pick("none", 0.0)
            if 0.0 in args.noise_rates:
                cells.append(_mean_std(clean, len(seeds)))
            for t in types:
                points = [(0.0, statistics.mean(clean))] if clean else []
                for r in rates:
                    values = pick(t, r)
                    cells.append(_mean_std(values, len(seeds)))
                    if values:
                        points.append((r, statistics.mean(values)))
                curves.setdefault(data, {}).setdefault(_type_key(t), {})[method] = points
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines), curves


def draw_curves(path: str, title: str, panels: dict) -> str:
    """Accuracy vs noise rate, one panel per noise type, one line per method (Pillow only)."""
    font = ImageFont.load_default()
    width, height, margin = 420, 320, 50
    legend = 20 * len(TITLES) + 10
    image = Image.new("RGB", (width * max(1, len(panels)), height + legend + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 5), title, fill="black", font=font)
    values = [a for methods in panels.values() for points in methods.values() for _, a in points]
    low, high = (min(values), max(values)) if values else (0.0, 100.0)
    low, high = max(0.0, low - 5), min(100.0, high + 5)
    for index, (noise_type, methods) in enumerate(panels.items()):
        left, top, right, bottom = index * width + margin, 30 + 20, index * width + width - 20, height
        draw.rectangle((left, top, right, bottom), outline="black")
        draw.text((left, top - 15), f"{noise_type} noise", fill="black", font=font)
        x_of = lambda rate: left + (right - left) * rate / 0.8
        y_of = lambda acc: bottom - (bottom - top) * (acc - low) / max(1e-9, high - low)
        for tick in (0.0, 0.25, 0.5, 0.75):
            draw.line((x_of(tick), bottom, x_of(tick), bottom + 4), fill="black")
            draw.text((x_of(tick) - 8, bottom + 6), f"{100 * tick:g}%", fill="black", font=font)
        for step in range(5):
            acc = low + (high - low) * step / 4
            draw.line((left - 4, y_of(acc), left, y_of(acc)), fill="black")
            draw.text((left - 40, y_of(acc) - 6), f"{acc:.0f}", fill="black", font=font)
        for colour, (method, points) in zip(COLOURS, methods.items()):
            xy = [(x_of(r), y_of(a)) for r, a in points]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    for row, (colour, method) in enumerate(zip(COLOURS, next(iter(panels.values()), {}))):
        y = height + 30 + 20 * row
        draw.line((margin, y + 6, margin + 30, y + 6), fill=colour, width=3)
        draw.text((margin + 40, y), TITLES[method], fill="black", font=font)
    draw.text((width * max(1, len(panels)) - 200, height + 30), "x: noise rate, y: accuracy (%)", fill="black",
              font=font)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image.save(path)
    return path


def run_label_noise(argv: list[str]) -> dict:
    if "--" in argv:
        split = argv.index("--")
        argv, trainer_args = argv[:split], argv[split + 1:]
    else:
        trainer_args = []
    args = build_parser().parse_args(argv)
    runs = plan(args, trainer_args)
    if args.table_only:
        runs = [run for run in runs if os.path.isfile(run["json"])]
    records = [execute(run) for run in runs]
    table, curves = tables(records, args)
    root = os.path.join(args.output_dir, "label_noise")
    os.makedirs(root, exist_ok=True)
    write_text_atomic(os.path.join(root, "results.md"), table)
    plots = [draw_curves(os.path.join(root, f"{data}_accuracy_vs_noise.png"), f"{data}: accuracy vs label noise",
                         panels) for data, panels in curves.items()]
    return {"table": table, "records": records, "plots": plots}


__all__ = ["METHOD_FLAGS", "VISPROMPT_DATASETS", "draw_curves", "plan", "run_label_noise", "tables"]
