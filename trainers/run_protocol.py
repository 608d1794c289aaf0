#!/usr/bin/env python
"""Run a whole evaluation protocol of the CoOp family (one trainer run per dataset and seed) and tabulate it.

    python trainers/run_protocol.py --protocol base2novel --data_dir $DATA --method capt --seeds 1 2 3 \\
        --output_dir runs -- --model_name_or_path openai/clip-vit-base-patch16
    python trainers/run_protocol.py --protocol few_shot --datasets dtd eurosat --data_dir $DATA --shots 1 2 4 8 16 \\
        --output_dir runs -- --model_name_or_path openai/clip-vit-base-patch16
    python trainers/run_protocol.py --protocol cross_dataset --data_dir $DATA --output_dir runs -- ...
    python trainers/run_protocol.py --protocol domain_generalization --data_dir $DATA --output_dir runs -- ...
    python trainers/run_protocol.py --protocol base2novel --embedded --seeds 1 2 3 --output_dir runs
    python trainers/run_protocol.py --protocol label_noise --embedded --output_dir runs   # trainers/label_noise_protocol.py

Protocols (`PROTOCOL.md`):

- `base2novel`: per dataset and seed, train on the base classes (16 shots), evaluate on base and novel; HM.
- `few_shot`: per dataset, seed and number of shots, train and evaluate on all classes.
- `cross_dataset`: per seed, train on ImageNet (all classes, 16 shots), then evaluate that checkpoint with
  `evaluate_capt.py` on the other 10 datasets (their own class names and templates).
- `domain_generalization`: the same ImageNet checkpoint, evaluated on ImageNet-V2, -Sketch, -A and -R (A and R with
  their 200 classes). A finished ImageNet run of either of these two protocols is reused by the other.

Flags after `--` go to `trainers/train_capt.py` unchanged (model, epochs, CAPT options, ...); the runner sets the
data, seed, shots, class subsampling, method and output folder itself. On the CoOp benchmarks it trains for the
CAPT paper's 25 epochs (50 on EuroSAT) unless those flags set `--num_train_epochs` or the method has its own paper's
length (ANPrompt: 10), and gives a method the values its paper sets per dataset (`Method.dataset_defaults`: ANPrompt's
`--lambda_sim` and `--vision_beta`) unless those flags set them. Model selection never sees test data: the trainer
keeps the last epoch.

Layout under `--output_dir RUNS`:

    RUNS/<protocol>/<dataset>/seed<k>[_shots<n>].json   one finished run (written atomically, last)
    RUNS/<protocol>/<dataset>/seed<k>[_shots<n>]/       the trainer's output (metrics.json, adapter/, ...)
    RUNS/<protocol>/results.md                          the tables (also printed)
    RUNS/fewshot_indices/                               the sampled few-shot indices (JSON), shared by protocols

Resumable: a run whose JSON exists is not run again (a JSON made with other settings is an error, not silently
mixed into the tables; an evaluation of an ImageNet run trained again since is made again), and an interrupted run
resumes from its last epoch checkpoint. Once a run's JSON is
written, its epoch checkpoints and image caches are deleted, and so is its full `model/` copy unless a later
evaluation needs it or `--keep_models` is given; the small `adapter/` export stays (see `evaluate_capt.py`).

The trainer runs in this process, one run after another, so launch the runner with `python` (one process);
between runs Accelerate's singleton state is reset.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field

from accelerate.state import AcceleratorState, GradientState

if __package__ in (None, ""):  # `python trainers/run_protocol.py` runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts.coop_datasets import get_dataset_info, list_datasets  # noqa: E402
from trainers import evaluate_capt, train_capt  # noqa: E402
from dataset_scripts.data import EMBEDDED_DATA  # noqa: E402
from trainers.args import parse_args, read_config_file, split_config_flag  # noqa: E402
from trainers.methods import METHODS  # noqa: E402
from trainers.metrics import harmonic_mean  # noqa: E402
from trainers.paper_results import DISPLAY_NAMES, METHOD_NAMES, SOURCES, paper_value  # noqa: E402
from dataset_scripts.atomic_io import write_json_atomic  # noqa: E402


logger = logging.getLogger(__name__)

PROTOCOLS = ("base2novel", "cross_dataset", "domain_generalization", "few_shot")
TITLES = {
    "base2novel": "base-to-novel generalisation",
    "cross_dataset": "cross-dataset transfer (trained on ImageNet)",
    "domain_generalization": "domain generalisation (trained on ImageNet)",
    "few_shot": "few-shot learning",
}
#: The dataset trained on for cross-dataset transfer and domain generalisation.
SOURCE_DATASET = "imagenet"
#: The 11 datasets with a training split, and the 4 test-only ImageNet variants, in the papers' order.
TRAINING_DATASETS = tuple(name for name in list_datasets() if not get_dataset_info(name).test_only)
VARIANT_DATASETS = tuple(name for name in list_datasets() if get_dataset_info(name).test_only)
DEFAULT_SHOTS = {"few_shot": (1, 2, 4, 8, 16)}
#: The datasets each paper table averages over: an Average over other datasets is not compared with it.
PAPER_AVERAGED_DATASETS = {
    "base2novel": TRAINING_DATASETS,
    "few_shot": TRAINING_DATASETS,
    "cross_dataset": tuple(name for name in TRAINING_DATASETS if name != SOURCE_DATASET),
    "domain_generalization": VARIANT_DATASETS,
}
#: The shots of the papers' base-to-novel, cross-dataset and domain-generalisation tables.
PAPER_SHOTS = 16
#: Trainer flags the runner sets itself; giving them after `--` is an error.
RUNNER_FLAGS = (
    "--dataset", "--data_dir", "--dataset_name", "--train_dir", "--test_dir", "--seed", "--shots",
    "--subsample_classes", "--method", "--output_dir",
)
#: METHODS.md's training length for the CoOp benchmarks (the CAPT paper's): given to the trainer when the flags after
#: `--` set no `--num_train_epochs` (other data keeps the trainer's default).
PAPER_EPOCHS, PAPER_EPOCHS_BY_DATASET = 25, {"eurosat": 50}

#: Trainer outputs needed only while a run is unfinished (epoch checkpoints, image caches): deleted once it is done.
TRANSIENT_OUTPUTS = ("checkpoints", "prefix_cache")


@dataclass(frozen=True)
class DataSource:
    """Where a table row's data comes from.

    Attributes:
        key: the row's name and folder name (a CoOp registry key, or derived from a `datasets` source).
        trainer_args: the trainer flags that select this data.
        identity: what the results depend on (recorded in each run's JSON; a CoOp root may move).
        coop: whether it is a CoOp benchmark read from `--data_dir` (needed for evaluation on another dataset).
    """

    key: str
    trainer_args: tuple[str, ...]
    identity: str
    coop: bool = False


def coop_source(name: str, data_dir: str) -> DataSource:
    name = get_dataset_info(name).name
    return DataSource(name, ("--dataset", name, "--data_dir", data_dir), name, coop=True)


def datasets_source(name_or_path: str) -> DataSource:
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(name_or_path))).strip("_") or "dataset"
    return DataSource(key, ("--dataset_name", name_or_path), f"dataset_name={name_or_path}")


def embedded_source() -> DataSource:
    return DataSource(os.path.basename(EMBEDDED_DATA), (), "embedded")


@dataclass
class Run:
    """One unit of work: a trainer run, or the evaluation of a trainer run's checkpoint on another dataset."""

    protocol: str
    source: DataSource
    seed: int
    shots: int
    config: dict
    trainer_argv: list[str] = field(default_factory=list)
    train_run: Run | None = None  # for an evaluation: the trainer run whose checkpoint is evaluated

    @property
    def name(self) -> str:
        return f"seed{self.seed}" + (f"_shots{self.shots}" if self.protocol == "few_shot" else "")

    @property
    def relative_dir(self) -> str:
        return os.path.join(self.protocol, self.source.key, self.name)

    def json_path(self, runs_dir: str) -> str:
        return os.path.join(runs_dir, self.relative_dir + ".json")

    def output_dir(self, runs_dir: str) -> str:
        return os.path.join(runs_dir, self.relative_dir)


# --------------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run a CoOp-family evaluation protocol with trainers/train_capt.py and tabulate mean ± std.",
        epilog="Flags after `--` go to trainers/train_capt.py (e.g. -- --model_name_or_path X --num_train_epochs 25).",
    )
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="CoOp benchmarks (registry keys) read from --data_dir. Default: the protocol's datasets "
                             "(the 11 training datasets; the 10 targets of cross_dataset; the 4 ImageNet variants).")
    parser.add_argument("--data_dir", default=None, help="Root of the CoOp dataset folders ($DATA).")
    parser.add_argument("--dataset_name", nargs="+", default=None,
                        help="Instead: `datasets` sources (Hub ids or local Parquet folders), one table row each.")
    parser.add_argument("--embedded", action="store_true",
                        help="The embedded default data (the default when no dataset and no --data_dir is given).")
    parser.add_argument("--method", default="capt", choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--shots", nargs="+", type=int, default=None,
                        help="Shots per class: the columns of few_shot (default 1 2 4 8 16); one value elsewhere "
                             "(default 16).")
    parser.add_argument("--output_dir", default="runs", help="RUNS: where run results and tables are written.")
    parser.add_argument("--keep_models", action="store_true",
                        help="Keep every finished run's full model/ copy (by default only those still needed).")
    parser.add_argument("--table_only", action="store_true", help="Run nothing: tabulate the runs already finished.")
    return parser


def parse_runner_args(argv: list[str] | None = None):
    """Split `argv` at `--` into the runner's arguments and the trainer flags, and check them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_args: list[str] = []
    if "--" in argv:
        position = argv.index("--")
        argv, trainer_args = argv[:position], argv[position + 1 :]
    args = build_parser().parse_args(argv)
    reserved = [flag for flag in RUNNER_FLAGS if _has_flag(trainer_args, flag)]
    if reserved:
        raise ValueError(f"The runner sets {', '.join(reserved)} itself; remove them from the flags after `--`")
    if args.shots is None:
        args.shots = list(DEFAULT_SHOTS.get(args.protocol, (PAPER_SHOTS,)))
    if args.protocol != "few_shot" and len(args.shots) != 1:
        raise ValueError(f"--protocol {args.protocol} takes one --shots value, got {args.shots}")
    if any(shots < 1 for shots in args.shots):
        raise ValueError(f"--shots must be positive, got {args.shots}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds has duplicates: {args.seeds}")
    if sum([bool(args.datasets), bool(args.dataset_name), args.embedded]) > 1:
        raise ValueError("Give one of --datasets, --dataset_name and --embedded")
    if args.datasets and not args.data_dir:
        raise ValueError("--datasets needs --data_dir (the root of the CoOp dataset folders)")
    if args.protocol in ("cross_dataset", "domain_generalization"):
        if args.dataset_name or args.embedded or not args.data_dir:
            raise ValueError(f"--protocol {args.protocol} trains on ImageNet: it needs the CoOp datasets (--data_dir)")
    return args, trainer_args


def _sets(trainer_args: list[str], name: str) -> bool:
    """Whether the trainer flags set `--name`, directly or in a `--config` file."""
    if _has_flag(trainer_args, "--" + name):
        return True
    path, _ = split_config_flag(trainer_args)
    return path is not None and name in read_config_file(path)


def _has_flag(argv: list[str], flag: str) -> bool:
    """Whether `argv` gives `flag` (as `--flag value` or `--flag=value`; `HfArgumentParser` also reads `-` for `_`)."""
    names = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    return flag in {"--" + name[2:].replace("-", "_") for name in names}


def data_sources(args) -> list[DataSource]:
    """The table rows: evaluation targets for cross-dataset / domain generalisation, trained datasets otherwise."""
    if args.dataset_name:
        return [datasets_source(name) for name in args.dataset_name]
    if args.embedded or (not args.datasets and not args.data_dir):
        return [embedded_source()]
    if args.datasets:
        names = args.datasets
    elif args.protocol == "cross_dataset":
        names = [name for name in TRAINING_DATASETS if name != SOURCE_DATASET]
    elif args.protocol == "domain_generalization":
        names = list(VARIANT_DATASETS)
    else:
        names = list(TRAINING_DATASETS)
    sources = [coop_source(name, args.data_dir) for name in names]
    keys = [source.key for source in sources]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--datasets names a dataset twice: {args.datasets}")
    if args.protocol in ("cross_dataset", "domain_generalization") and SOURCE_DATASET in keys:
        raise ValueError(f"{SOURCE_DATASET} is the training dataset of --protocol {args.protocol}, not a target")
    return sources


# --------------------------------------------------------------------------------------------------- planning
def _train_run(protocol, source, seed, shots, method, subsample, trainer_args, runs_dir) -> Run:
    # Settings added here are recorded in the config: they decide the results.
    own_epochs = "num_train_epochs" in METHODS[method].training_defaults  # its paper's training length
    if source.coop and not own_epochs and not _sets(trainer_args, "num_train_epochs"):
        epochs = PAPER_EPOCHS_BY_DATASET.get(source.key, PAPER_EPOCHS)
        trainer_args = [*trainer_args, "--num_train_epochs", str(epochs)]
    if source.coop:  # the method paper's per-dataset values, unless the user's flags set them
        for name, value in METHODS[method].dataset_defaults.get(source.key, {}).items():
            if not _sets(trainer_args, name):
                trainer_args = [*trainer_args, f"--{name}", str(value)]
    config = {
        "kind": "train",
        "data": source.identity,
        "method": method,
        "seed": seed,
        "shots": shots,
        "subsample_classes": subsample,
        "trainer_args": list(trainer_args),
    }
    run = Run(protocol, source, seed, shots, config)
    defaults = []
    if not _has_flag(trainer_args, "--fewshot_cache_dir"):  # one JSON cache of the sampled indices for all protocols
        defaults += ["--fewshot_cache_dir", os.path.join(runs_dir, "fewshot_indices")]
    if not _has_flag(trainer_args, "--resume_from_checkpoint"):  # an interrupted run goes on from its last epoch
        defaults += ["--resume_from_checkpoint", "latest"]
    run.trainer_argv = [
        *trainer_args, *defaults, *source.trainer_args, "--method", method, "--seed", str(seed),
        "--shots", str(shots), "--subsample_classes", subsample, "--output_dir", run.output_dir(runs_dir),
    ]
    return run


def plan_runs(args, trainer_args: list[str]) -> list[Run]:
    """Every run of the protocol, in execution order (an evaluation comes after the trainer run it evaluates)."""
    runs_dir = args.output_dir
    sources = data_sources(args)
    runs = []
    for seed in args.seeds:
        if args.protocol in ("cross_dataset", "domain_generalization"):
            imagenet = coop_source(SOURCE_DATASET, args.data_dir)
            train = _train_run(args.protocol, imagenet, seed, args.shots[0], args.method, "all", trainer_args, runs_dir)
            runs.append(train)
            for target in sources:
                config = {"kind": "evaluate", "target": target.identity, "trained": train.config}
                runs.append(Run(args.protocol, target, seed, train.shots, config, train_run=train))
            continue
        subsample = "base" if args.protocol == "base2novel" else "all"
        for source in sources:
            for shots in args.shots:
                runs.append(
                    _train_run(args.protocol, source, seed, shots, args.method, subsample, trainer_args, runs_dir)
                )
    return runs


# --------------------------------------------------------------------------------------------------- execution
def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide singletons, so the next in-process run builds its own `Accelerator`."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def read_record(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _finished_record(run: Run, runs_dir: str) -> dict | None:
    """The run's JSON if it exists; an error if it was made with other settings."""
    record = read_record(run.json_path(runs_dir))
    if record is not None:
        _check_settings(run, record, runs_dir)
    return record


def _check_settings(run: Run, record: dict, runs_dir: str) -> None:
    """An error naming both settings if the run's JSON `record` was made with other settings than `run`'s."""
    if record.get("config") != run.config:
        raise ValueError(
            f"{run.json_path(runs_dir)} was made with other settings than this invocation's:\n"
            f"  recorded: {json.dumps(record.get('config'), sort_keys=True)}\n"
            f"  now:      {json.dumps(run.config, sort_keys=True)}\n"
            "Use another --output_dir, or delete the file (and its folder) to run it again."
        )


def _result_columns(protocol: str, entry: dict) -> dict:
    if protocol == "base2novel":
        return {"base": entry["base_accuracy"], "novel": entry["novel_accuracy"], "hm": entry["hm"]}
    return {"accuracy": entry["accuracy"]}


def _reusable_source_record(run: Run, runs_dir: str) -> dict | None:
    """A finished ImageNet run with the same settings made for the other protocol (cross-dataset <-> domain gen.)."""
    if run.protocol not in ("cross_dataset", "domain_generalization"):
        return None
    for protocol in ("cross_dataset", "domain_generalization"):
        if protocol == run.protocol:
            continue
        path = os.path.join(runs_dir, protocol, run.source.key, run.name + ".json")
        record = read_record(path)
        if (record is not None and record.get("config") == run.config and record.get("checkpoint")
                and os.path.isdir(os.path.join(runs_dir, record["checkpoint"]))):
            return dict(record, protocol=run.protocol, reused_from=os.path.relpath(path, runs_dir))
    return None


def _tidy_output(run: Run, runs_dir: str, keep_model: bool) -> str | None:
    """Delete what a finished run no longer needs; return the checkpoint kept (relative to `runs_dir`)."""
    output_dir = run.output_dir(runs_dir)
    for name in TRANSIENT_OUTPUTS:
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    model_dir, adapter_dir = os.path.join(output_dir, "model"), os.path.join(output_dir, "adapter")
    if not keep_model:  # the adapter export (if any: zero-shot has none) rebuilds the model on its base CLIP
        shutil.rmtree(model_dir, ignore_errors=True)
    for folder in (model_dir, adapter_dir):
        if os.path.isdir(folder):
            return os.path.relpath(folder, runs_dir)
    return None


def execute_train_run(run: Run, runs_dir: str, keep_model: bool) -> dict:
    record = _reusable_source_record(run, runs_dir)
    if record is not None:
        logger.info("%s: reusing %s", run.relative_dir, record["reused_from"])
        return record
    started = time.time()
    reset_accelerate_state()
    try:
        summary = train_capt.main(run.trainer_argv)
    finally:
        reset_accelerate_state()
    method = run.config["method"]
    output_dir = run.output_dir(runs_dir)
    return {
        "protocol": run.protocol,
        "dataset": run.source.key,
        "seed": run.seed,
        "shots": run.shots,
        "method": method,
        "config": run.config,
        "results": {name: _result_columns(run.protocol, summary[name]) for name in dict.fromkeys(["zeroshot", method])},
        "metrics_file": os.path.relpath(os.path.join(output_dir, "metrics.json"), runs_dir),
        "checkpoint": _tidy_output(run, runs_dir, keep_model),
        "run_id": uuid.uuid4().hex,  # evaluations of this checkpoint record it: a retrained run invalidates them
        "wall_time_s": round(time.time() - started, 1),
    }


def execute_evaluation(run: Run, runs_dir: str, data_dir: str) -> dict:
    trained = read_record(run.train_run.json_path(runs_dir))
    if trained is None or not trained.get("checkpoint"):
        raise FileNotFoundError(f"{run.relative_dir}: no trained checkpoint recorded by {run.train_run.relative_dir}")
    # The evaluation follows the trainer run's own settings (batch size, test subset, precision).
    _, data_args, _, train_args = parse_args(run.train_run.trainer_argv)
    started = time.time()
    reset_accelerate_state()
    try:
        result = evaluate_capt.evaluate_checkpoint(
            os.path.join(runs_dir, trained["checkpoint"]), run.source.key, data_dir,
            max_eval_samples=data_args.max_eval_samples,
            per_device_eval_batch_size=train_args.per_device_eval_batch_size,
            num_workers=train_args.num_workers,
            mixed_precision=train_args.mixed_precision,
        )
    finally:
        reset_accelerate_state()
    return {
        "protocol": run.protocol,
        "dataset": run.source.key,
        "seed": run.seed,
        "shots": run.shots,
        "method": trained["method"],
        "config": run.config,
        "results": {trained["method"]: {"accuracy": result["accuracy"]}},
        "trained_run": os.path.relpath(run.train_run.json_path(runs_dir), runs_dir),
        "trained_run_id": trained.get("run_id"),
        "checkpoint": trained["checkpoint"],
        "template": result["template"],
        "class_names": result["class_names"],
        "num_samples": result["num_samples"],
        "top_confused_pairs": result["top_confused_pairs"],
        "wall_time_s": round(time.time() - started, 1),
    }


def execute_runs(runs: list[Run], runs_dir: str, data_dir: str | None, keep_models: bool = False) -> dict[str, int]:
    """Run what is not finished yet; each result is written atomically to its JSON once the run is over."""
    needed_later = {id(run.train_run) for run in runs if run.train_run is not None}
    counts = {"run": 0, "skipped": 0}
    for position, run in enumerate(runs, 1):
        path = run.json_path(runs_dir)
        record = _finished_record(run, runs_dir)
        if record is not None and run.train_run is not None:
            trained = read_record(run.train_run.json_path(runs_dir)) or {}
            if trained.get("run_id") != record.get("trained_run_id"):  # the checkpoint it scored was retrained
                logger.info("[%d/%d] %s: %s was trained again since, evaluating again", position, len(runs),
                            run.relative_dir, run.train_run.relative_dir)
                record = None
        if record is not None:
            counts["skipped"] += 1
            logger.info("[%d/%d] %s: finished earlier, skipped", position, len(runs), run.relative_dir)
            continue
        logger.info("[%d/%d] %s: running", position, len(runs), run.relative_dir)
        if run.train_run is None:
            record = execute_train_run(run, runs_dir, keep_models or id(run) in needed_later)
        else:
            record = execute_evaluation(run, runs_dir, data_dir)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, record)
        counts["run"] += 1
    return counts


# --------------------------------------------------------------------------------------------------- tables
def _mean_std(values: list[float]) -> tuple[float, float]:
    # Population standard deviation over seeds (ddof=0, like `numpy.std`).
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def format_cell(values: list[float], paper: float | None, num_seeds: int) -> str:
    """`mean ± std`, then `(ours − paper)` where the paper has the cell, then `[n/N seeds]` if seeds are missing."""
    if not values:
        return "–"
    mean, std = _mean_std(values)
    cell = f"{mean:.2f} ± {std:.2f}"
    if paper is not None:
        cell += f" ({mean - paper:+.2f})"
    if len(values) < num_seeds:
        cell += f" [{len(values)}/{num_seeds} seeds]"
    return cell


def _average_per_seed(protocol: str, values: dict, rows: list[str], column, seeds: list[int]) -> list[float]:
    """Per seed with every row present: the mean over the rows (for HM: the HM of the mean base and novel)."""
    averages = []
    for seed in seeds:
        def mean_of(col):
            cells = [values.get((row, col, seed)) for row in rows]
            return None if not rows or any(cell is None for cell in cells) else statistics.fmean(cells)

        if protocol == "base2novel" and column == "hm":
            base, novel = mean_of("base"), mean_of("novel")
            average = None if base is None or novel is None else harmonic_mean(base, novel)
        else:
            average = mean_of(column)
        if average is not None:
            averages.append(average)
    return averages


def render_table(protocol: str, method: str, records: dict, args) -> str:
    """One Markdown table shaped like the paper's (rows: datasets + Average) for one method's numbers."""
    sources = data_sources(args)
    seeds = list(args.seeds)
    if protocol == "base2novel":
        columns, headers = ["base", "novel", "hm"], ["Base", "Novel", "HM"]
    elif protocol == "few_shot":
        columns, headers = list(args.shots), [f"{shots} shots" for shots in args.shots]
    else:
        columns, headers = ["accuracy"], ["Accuracy"]
    values = {}  # (row, column, seed) -> accuracy; a few-shot column is the number of shots
    for (row, seed, shots), record in records.items():
        entry = record["results"].get(method)
        if entry is None:
            continue
        if protocol == "few_shot":
            values[(row, shots, seed)] = entry["accuracy"]
        else:
            values.update({(row, column, seed): entry[column] for column in columns})

    averaged = [source.key for source in sources]

    def paper(row, column):
        if protocol != "few_shot" and args.shots[0] != PAPER_SHOTS:
            return None  # the papers' tables are 16-shot
        if row == "average" and sorted(averaged) != sorted(PAPER_AVERAGED_DATASETS.get(protocol, ())):
            return None
        return paper_value(protocol, method, row, column)

    rows = averaged
    if protocol in ("cross_dataset", "domain_generalization"):
        rows = [SOURCE_DATASET] + averaged  # the source's own test accuracy, outside the average
    lines = [
        f"### {METHOD_NAMES.get(method, method)}: {TITLES[protocol]}"
        + ("" if protocol == "few_shot" else f", {args.shots[0]} shots")
        + f", seeds {', '.join(map(str, seeds))}",
        "",
        "| Dataset | " + " | ".join(headers) + " |",
        "|---|" + "---|" * len(headers),
    ]
    for row in rows:
        label = DISPLAY_NAMES.get(row, row) + (" (source)" if row == SOURCE_DATASET and row not in averaged else "")
        cells = [
            format_cell([values[(row, c, s)] for s in seeds if (row, c, s) in values], paper(row, c), len(seeds))
            for c in columns
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    average_cells = [
        format_cell(_average_per_seed(protocol, values, averaged, c, seeds), paper("average", c), len(seeds))
        for c in columns
    ]
    lines.append("| Average | " + " | ".join(average_cells) + " |")
    return "\n".join(lines)


def render_tables(args, runs: list[Run]) -> str:
    """Every table of the protocol, from the run JSONs on disk, with a note on how the cells are computed."""
    records = {}
    for run in runs:
        record = read_record(run.json_path(args.output_dir))
        if record is not None and "config" in record:  # a run of other settings is an error, with --table_only too
            _check_settings(run, record, args.output_dir)
        if record is not None and run.train_run is None and args.protocol in ("cross_dataset", "domain_generalization"):
            records[(SOURCE_DATASET, run.seed, run.shots)] = record
        elif record is not None:
            records[(run.source.key, run.seed, run.shots)] = record
    methods = [args.method] + (["zeroshot"] if args.protocol == "base2novel" and args.method != "zeroshot" else [])
    tables = [render_table(args.protocol, method, records, args) for method in methods]
    average = {
        "base2novel": "Average: per seed, the mean over the datasets (HM: the HM of the mean base and novel)",
        "few_shot": "Average: per seed, the mean over the datasets",
    }.get(args.protocol, "Average: per seed, the mean over the target datasets (the source is not in it)")
    note = (
        f"Cells: mean ± std over seeds (population std). {average}, then mean ± std over the seeds that have every "
        f"dataset. In parentheses: ours − paper, where the paper has the cell ({SOURCES[args.protocol]}; shown for "
        f"the papers' shots only, for the Average only over the papers' datasets; the papers use CLIP ViT-B/16)."
    )
    title = TITLES[args.protocol]
    return f"## {title[0].upper()}{title[1:]}\n\n" + "\n\n".join(tables) + f"\n\n{note}\n"


# --------------------------------------------------------------------------------------------------- entry point
def run_protocol(argv: list[str] | None = None) -> dict:
    """Run (or resume) a protocol and write its tables.

    Args:
        argv (`list[str]`, *optional*):
            The command line (see `--help`); flags after `--` go to the trainer.

    Returns:
        `dict` with `protocol`, `runs` (JSON paths), `run` / `skipped` (counts of this invocation), `table`
        (Markdown) and `results_file`.
    """
    args, trainer_args = parse_runner_args(argv)
    if trainer_args:
        # bad trainer flags fail now, not after hours of earlier runs (checked against the method's own flags)
        parse_args([*trainer_args, "--method", args.method])
    runs = plan_runs(args, trainer_args)
    logger.info("%s: %d run(s) under %s", args.protocol, len(runs), args.output_dir)
    counts = {"run": 0, "skipped": 0}
    if not args.table_only:
        counts = execute_runs(runs, args.output_dir, args.data_dir, keep_models=args.keep_models)
    table = render_tables(args, runs)
    results_file = os.path.join(args.output_dir, args.protocol, "results.md")
    os.makedirs(os.path.dirname(results_file), exist_ok=True)
    with open(results_file + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(table)
    os.replace(results_file + ".tmp", results_file)
    logger.info("%s: %d run(s) done, %d finished earlier; tables in %s",
                args.protocol, counts["run"], counts["skipped"], results_file)
    return {
        "protocol": args.protocol,
        "runs": [run.json_path(args.output_dir) for run in runs],
        **counts,
        "table": table,
        "results_file": results_file,
    }


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    runner_argv = argv[: argv.index("--")] if "--" in argv else argv
    if any(a == "--protocol=label_noise" or (a == "--protocol" and runner_argv[i + 1:i + 2] == ["label_noise"])
           for i, a in enumerate(runner_argv)):  # its own grid of methods and noise settings
        from trainers.label_noise_protocol import run_label_noise

        result = run_label_noise(argv)
    else:
        result = run_protocol(argv)
    print(result["table"])
    return result


if __name__ == "__main__":
    main()
