"""The protocol runner: one JSON per run, mean ± std tables with paper differences, resume, cross-dataset evaluation."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from unittest import mock

import pytest
import torch
from fixtures_coop import make_dtd, make_eurosat, make_imagenet, make_imagenet_a, make_oxford_pets

from trainers import evaluate_capt, paper_results, run_protocol, train_capt
from trainers.metrics import harmonic_mean
from trainers.run_protocol import format_cell

from conftest import write_image_dataset


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run several times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def count_trainer_runs(monkeypatch):
    """Counts the trainer runs started by the runner (the trainer itself still runs)."""
    calls = []
    real_main = train_capt.main

    def counting_main(argv):
        calls.append(list(argv))
        return real_main(argv)

    monkeypatch.setattr(train_capt, "main", counting_main)
    return calls


def quick(tiny_clip_dir):
    """Trainer flags for a run of a second or two."""
    return ["--", "--model_name_or_path", tiny_clip_dir, "--num_train_epochs", "1", "--heatmap", "false",
            "--per_device_eval_batch_size", "16"]


def read(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def table_row(table: str, section: str, label: str) -> list[str]:
    """The cells of row `label` in the table whose heading starts with `section`."""
    part = table.split(f"### {section}", 1)[1].split("###", 1)[0]
    line = next(line for line in part.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


# --------------------------------------------------------------------------------------------------- base-to-novel
def test_base2novel_jsons_tables_and_resume(tmp_path, tiny_clip_dir, count_trainer_runs):
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    for make in (make_oxford_pets, make_dtd, make_eurosat):
        make(data)
    argv = ["--protocol", "base2novel", "--datasets", "oxford_pets", "dtd", "eurosat", "--data_dir", data,
            "--seeds", "1", "2", "--output_dir", runs] + quick(tiny_clip_dir)
    result = run_protocol.run_protocol(argv)

    assert (result["run"], result["skipped"]) == (6, 0) and len(count_trainer_runs) == 6
    for dataset in ("oxford_pets", "dtd", "eurosat"):
        for seed in (1, 2):
            record = read(os.path.join(runs, "base2novel", dataset, f"seed{seed}.json"))
            assert record["config"]["subsample_classes"] == "base" and record["config"]["shots"] == 16
            for method in ("capt", "zeroshot"):
                entry = record["results"][method]
                assert entry["hm"] == pytest.approx(harmonic_mean(entry["base"], entry["novel"]))
            run_dir = os.path.join(runs, "base2novel", dataset, f"seed{seed}")
            assert os.path.isfile(os.path.join(run_dir, "metrics.json"))
            # finished: epoch checkpoints and the full model copy are gone, the adapter export stays
            assert not os.path.exists(os.path.join(run_dir, "checkpoints"))
            assert not os.path.exists(os.path.join(run_dir, "model"))
            assert record["checkpoint"] == os.path.join("base2novel", dataset, f"seed{seed}", "adapter")
    assert not [name for _, _, files in os.walk(runs) for name in files if name.endswith(".tmp")]
    with open(os.path.join(runs, "base2novel", "results.md"), encoding="utf-8") as handle:
        assert handle.read() == result["table"]

    # a cell by hand, from the JSONs (edited so that the seeds differ)
    paths = [os.path.join(runs, "base2novel", "dtd", f"seed{seed}.json") for seed in (1, 2)]
    records = [read(path) for path in paths]
    records[1]["results"]["capt"].update(base=40.0, hm=harmonic_mean(40.0, records[1]["results"]["capt"]["novel"]))
    with open(paths[1], "w", encoding="utf-8") as handle:
        json.dump(records[1], handle)
    split = argv.index("--")
    table = run_protocol.run_protocol(argv[:split] + ["--table_only"] + argv[split:])["table"]
    bases = [record["results"]["capt"]["base"] for record in records]
    mean, std = statistics.fmean(bases), statistics.pstdev(bases)
    paper = paper_results.BASE2NOVEL["capt"]["dtd"]["base"]
    assert std > 0
    assert table_row(table, "CAPT", "DTD")[0] == f"{mean:.2f} ± {std:.2f} ({mean - paper:+.2f})"
    # Average HM: per seed, the HM of the mean base and novel over the three datasets
    per_seed = []
    for seed in (1, 2):
        entries = [read(os.path.join(runs, "base2novel", d, f"seed{seed}.json"))["results"]["capt"]
                   for d in ("oxford_pets", "dtd", "eurosat")]
        per_seed.append(harmonic_mean(statistics.fmean(e["base"] for e in entries),
                                      statistics.fmean(e["novel"] for e in entries)))
    average = statistics.fmean(per_seed)
    # (3 of the paper's 11 datasets: the Average is not compared with the paper's)
    assert table_row(table, "CAPT", "Average")[2] == f"{average:.2f} ± {statistics.pstdev(per_seed):.2f}"
    # zero-shot rows are compared with the zero-shot CLIP numbers (ANPrompt Table I)
    zs = statistics.fmean(read(p)["results"]["zeroshot"]["novel"] for p in paths)
    assert table_row(table, "zero-shot CLIP", "DTD")[1].endswith(f"({zs - 59.90:+.2f})")

    # resume: nothing is run again; a deleted result is run again, alone
    count_trainer_runs.clear()
    again = run_protocol.run_protocol(argv)
    assert (again["run"], again["skipped"], len(count_trainer_runs)) == (0, 6, 0)
    os.remove(os.path.join(runs, "base2novel", "eurosat", "seed2.json"))
    assert run_protocol.run_protocol(argv)["run"] == 1
    assert len(count_trainer_runs) == 1 and "eurosat" in count_trainer_runs[0]
    # a result made with other settings is not mixed in
    with pytest.raises(ValueError, match="other settings"):
        run_protocol.run_protocol(argv[:-1] + ["2"])
    with pytest.raises(ValueError, match="other settings"):  # nor by a table of what exists
        run_protocol.run_protocol(argv[:split] + ["--table_only"] + argv[split:-1] + ["2"])


# --------------------------------------------------------------------------------------------------- cross-dataset
def test_cross_dataset_and_domain_generalization_use_the_targets_classes(
    tmp_path, tiny_clip_dir, count_trainer_runs, monkeypatch
):
    data, runs = str(tmp_path / "data"), str(tmp_path / "runs")
    make_imagenet(data)
    dtd = make_dtd(data)
    imagenet_a = make_imagenet_a(data)
    loaded = []
    real_load = evaluate_capt.load_checkpoint

    def spying_load(checkpoint, class_names, template):
        model, tokenizer, image_processor = real_load(checkpoint, class_names, template)
        loaded.append((list(model.config.id2label.values()), model.config.template))
        return model, tokenizer, image_processor

    monkeypatch.setattr(evaluate_capt, "load_checkpoint", spying_load)
    common = ["--data_dir", data, "--seeds", "1", "--output_dir", runs] + quick(tiny_clip_dir)

    cross = run_protocol.run_protocol(["--protocol", "cross_dataset", "--datasets", "dtd"] + common)
    assert cross["run"] == 2 and len(count_trainer_runs) == 1
    train_argv = count_trainer_runs[0]
    assert train_argv[train_argv.index("--dataset") + 1] == "imagenet"
    assert train_argv[train_argv.index("--subsample_classes") + 1] == "all"
    source = read(os.path.join(runs, "cross_dataset", "imagenet", "seed1.json"))
    assert os.path.isfile(os.path.join(runs, source["checkpoint"], "config.json"))  # kept for the evaluations
    target = read(os.path.join(runs, "cross_dataset", "dtd", "seed1.json"))
    assert target["class_names"] == dtd.classnames and target["template"] == "{} texture."
    assert loaded[-1] == (dtd.classnames, "{} texture.")
    assert target["num_samples"] == dtd.num_examples["test"]
    accuracy = target["results"]["capt"]["accuracy"]
    assert table_row(cross["table"], "CAPT", "DTD")[0] == f"{accuracy:.2f} ± 0.00 ({accuracy - 57.21:+.2f})"
    assert table_row(cross["table"], "CAPT", "Average")[0] == f"{accuracy:.2f} ± 0.00"  # 1 of the 10 targets
    imagenet = source["results"]["capt"]["accuracy"]
    # the same checkpoint rebuilt from its small adapter export on the base CLIP gives the same predictions
    adapter_dir = os.path.join(runs, "cross_dataset", "imagenet", "seed1", "adapter")
    from_adapter = evaluate_capt.evaluate_checkpoint(adapter_dir, "dtd", data)
    assert from_adapter["method"] == "capt" and from_adapter["accuracy"] == accuracy
    assert table_row(cross["table"], "CAPT", "ImageNet (source)")[0].startswith(f"{imagenet:.2f} ± 0.00")

    # domain generalisation reuses the ImageNet run; ImageNet-A is evaluated on its subset of ImageNet's classes
    dg = run_protocol.run_protocol(["--protocol", "domain_generalization", "--datasets", "imagenet_a"] + common)
    assert dg["run"] == 2 and len(count_trainer_runs) == 1
    reused = read(os.path.join(runs, "domain_generalization", "imagenet", "seed1.json"))
    assert reused["reused_from"] == os.path.join("cross_dataset", "imagenet", "seed1.json")
    record = read(os.path.join(runs, "domain_generalization", "imagenet_a", "seed1.json"))
    assert record["class_names"] == imagenet_a.classnames == ["goldfish", "tiger shark"]
    assert loaded[-1] == (imagenet_a.classnames, "a photo of a {}.")
    accuracy = record["results"]["capt"]["accuracy"]
    assert table_row(dg["table"], "CAPT", "ImageNet-A")[0] == f"{accuracy:.2f} ± 0.00 ({accuracy - 57.73:+.2f})"

    # ImageNet trained again (both of its JSONs deleted): the evaluations of the old checkpoint are made again
    for protocol in ("cross_dataset", "domain_generalization"):
        os.remove(os.path.join(runs, protocol, "imagenet", "seed1.json"))
    count_trainer_runs.clear()
    again = run_protocol.run_protocol(["--protocol", "cross_dataset", "--datasets", "dtd"] + common)
    assert (again["run"], again["skipped"], len(count_trainer_runs)) == (2, 0, 1)
    again = run_protocol.run_protocol(["--protocol", "domain_generalization", "--datasets", "imagenet_a"] + common)
    assert (again["run"], again["skipped"], len(count_trainer_runs)) == (2, 0, 1)  # ImageNet reused, A re-scored
    assert run_protocol.run_protocol(["--protocol", "cross_dataset", "--datasets", "dtd"] + common)["skipped"] == 2


def test_evaluate_checkpoint_on_plain_clip(tmp_path, tiny_clip_dir):
    data = str(tmp_path / "data")
    dtd = make_dtd(data)
    zero_shot = evaluate_capt.evaluate_checkpoint(tiny_clip_dir, "dtd", data, max_eval_samples=4)
    assert zero_shot["method"] == "zeroshot" and zero_shot["num_samples"] == 4
    assert zero_shot["class_names"] == dtd.classnames and zero_shot["template"] == "{} texture."
    assert sum(map(sum, zero_shot["confusion_matrix"])) == 4
    with pytest.raises(ValueError, match="one target"):
        evaluate_capt.evaluate_checkpoint(tiny_clip_dir)


def test_evaluate_a_checkpoint_saved_without_tokenizer_takes_its_base_clips(tmp_path, tiny_clip_dir):
    """A CAPT folder without tokenizer or image processor files (say saved with `model.save_pretrained` alone) is
    evaluated with those of the CLIP it names as its base; its own folder's config is CAPT's, unknown to AutoTokenizer."""
    from modeling_capt import CaptForImageClassification

    data = str(tmp_path / "data")
    dtd = make_dtd(data)
    model = CaptForImageClassification.from_clip(tiny_clip_dir, dtd.classnames, template="{} texture.")
    model.tokenizer = model.image_processor = None  # save_pretrained then writes neither
    model.save_pretrained(tmp_path / "bare")
    assert not (tmp_path / "bare" / "tokenizer_config.json").exists()
    bare = evaluate_capt.evaluate_checkpoint(str(tmp_path / "bare"), "dtd", data, max_eval_samples=4)
    reference = evaluate_capt.evaluate_checkpoint(tiny_clip_dir, "dtd", data, max_eval_samples=4)
    assert bare["confusion_matrix"] == reference["confusion_matrix"] and bare["num_samples"] == 4


def test_evaluate_checkpoint_on_a_local_multi_config_benchmark(tmp_path, tiny_clip_dir):
    """A folder built by build_benchmark.py with several configs: --dataset_config_name picks one, and its template."""
    from dataset_scripts.build_benchmark import build_benchmark

    data = str(tmp_path / "data")
    make_oxford_pets(data)
    make_dtd(data)
    for name in ("oxford_pets", "dtd"):
        build_benchmark(name, data, str(tmp_path / "OUT"), show_progress=False)
    from_folders = evaluate_capt.evaluate_checkpoint(tiny_clip_dir, "dtd", data)
    from_parquet = evaluate_capt.evaluate_checkpoint(tiny_clip_dir, dataset_name=str(tmp_path / "OUT"),
                                                     dataset_config_name="dtd")
    assert from_parquet["template"] == from_folders["template"] == "{} texture."
    for key in ("class_names", "num_samples", "accuracy", "confusion_matrix"):
        assert from_parquet[key] == from_folders[key], key


# --------------------------------------------------------------------------------------------------- Parquet data
def test_runner_on_parquet_and_embedded_data(tmp_path, tiny_clip_dir, monkeypatch):
    folder = tmp_path / "fashion-like"
    paths = write_image_dataset(tmp_path / "raw", class_names=["shirt", "shoe", "bag", "coat"], per_class_train=3,
                                per_class_test=2)
    folder.mkdir()
    for split, path in paths.items():  # flat train.parquet / test.parquet, like embedded/fashion-subset
        shutil.move(path, folder / f"{split}.parquet")
    runs = str(tmp_path / "runs")

    few_shot = run_protocol.run_protocol(
        ["--protocol", "few_shot", "--dataset_name", str(folder), "--shots", "1", "2", "--seeds", "1",
         "--output_dir", runs] + quick(tiny_clip_dir)
    )
    records = [read(os.path.join(runs, "few_shot", "fashion-like", f"seed1_shots{n}.json")) for n in (1, 2)]
    assert [r["config"]["subsample_classes"] for r in records] == ["all", "all"]
    assert [r["results"]["capt"]["accuracy"] is not None for r in records] == [True, True]
    assert "| Dataset | 1 shots | 2 shots |" in few_shot["table"]
    one_shot = records[0]["results"]["capt"]["accuracy"]
    assert table_row(few_shot["table"], "CAPT", "fashion-like") == [f"{one_shot:.2f} ± 0.00", mock.ANY]
    assert table_row(few_shot["table"], "CAPT", "Average")[0] == f"{one_shot:.2f} ± 0.00"  # no paper cell

    # the evaluation script reads the same kind of folder, with its class names and the default template
    evaluated = evaluate_capt.evaluate_checkpoint(tiny_clip_dir, dataset_name=str(folder))
    assert evaluated["class_names"] == ["shirt", "shoe", "bag", "coat"] and evaluated["num_samples"] == 8
    assert evaluated["template"] == "a photo of a {}."

    # --embedded: the trainer's default data source (pointed here at the small Parquet folder)
    monkeypatch.setattr("dataset_scripts.data.EMBEDDED_DATA", str(folder))
    embedded = run_protocol.run_protocol(
        ["--protocol", "base2novel", "--embedded", "--method", "zeroshot", "--seeds", "1", "--output_dir", runs]
        + quick(tiny_clip_dir)
    )
    record = read(os.path.join(runs, "base2novel", "fashion-subset", "seed1.json"))
    assert record["config"]["data"] == "embedded" and set(record["results"]) == {"zeroshot"}
    assert "| fashion-subset |" in embedded["table"]


# --------------------------------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    "argv, error",
    [
        (["--protocol", "base2novel", "--", "--seed", "3"], "sets --seed itself"),
        (["--protocol", "base2novel", "--", "--output-dir=x"], "sets --output_dir itself"),
        (["--protocol", "cross_dataset"], "needs the CoOp datasets"),
        (["--protocol", "base2novel", "--shots", "4", "16"], "one --shots value"),
        (["--protocol", "base2novel", "--datasets", "dtd"], "needs --data_dir"),
        (["--protocol", "cross_dataset", "--datasets", "imagenet", "--data_dir", "x"], "not a target"),
        (["--protocol", "few_shot", "--", "--no_such_flag", "1"], "not used"),
    ],
)
def test_bad_invocations_fail_before_any_run(argv, error, tmp_path):
    with pytest.raises(ValueError, match=error):
        run_protocol.run_protocol(argv[:2] + ["--output_dir", str(tmp_path)] + argv[2:])


def test_average_is_compared_over_the_papers_datasets_only(tmp_path):
    """Few-shot: the paper gives the average over the 11 datasets only; tables are built from the JSONs alone."""
    runs = tmp_path / "runs"
    accuracies = {}
    for index, dataset in enumerate(run_protocol.TRAINING_DATASETS):
        for seed in (1, 2):
            accuracies[dataset, seed] = 60.0 + index + seed
            path = runs / "few_shot" / dataset / f"seed{seed}_shots1.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"results": {"capt": {"accuracy": accuracies[dataset, seed]}}}))
    argv = ["--protocol", "few_shot", "--data_dir", str(tmp_path), "--shots", "1", "--seeds", "1", "2",
            "--output_dir", str(runs), "--table_only"]
    table = run_protocol.run_protocol(argv)["table"]
    per_seed = [statistics.fmean(v for (_, seed), v in accuracies.items() if seed == s) for s in (1, 2)]
    mean = statistics.fmean(per_seed)
    assert table_row(table, "CAPT", "Average") == [f"{mean:.2f} ± 0.50 ({mean - 73.11:+.2f})"]
    assert table_row(table, "CAPT", "DTD") == ["69.50 ± 0.50"]
    assert "| Flowers102 |" in table and (runs / "few_shot" / "results.md").read_text() == table


def test_format_cell():
    assert format_cell([80.0, 82.0], None, 2) == "81.00 ± 1.00"
    assert format_cell([80.0, 82.0], 80.51, 3) == "81.00 ± 1.00 (+0.49) [2/3 seeds]"
    assert format_cell([], 80.51, 3) == "–"


def test_paper_numbers_are_consistent():
    """Re-derive what the transcription can be checked against (HM, averages); the printed typos are listed."""
    # see trainers/paper_results.py
    printed_inconsistencies = {("capt", "average"), ("coop", "imagenet"), ("anprompt", "eurosat")}
    for method, rows in paper_results.BASE2NOVEL.items():
        for dataset, cell in rows.items():
            if (method, dataset) not in printed_inconsistencies:
                assert harmonic_mean(cell["base"], cell["novel"]) == pytest.approx(cell["hm"], abs=0.015)
        for column in ("base", "novel"):
            mean = statistics.fmean(cell[column] for dataset, cell in rows.items() if dataset != "average")
            tolerance = 0.2 if method in ("capt", "coop") and column == "novel" else 0.01
            assert mean == pytest.approx(rows["average"][column], abs=tolerance)
    for rows in paper_results.CROSS_DATASET.values():
        targets = [value for dataset, value in rows.items() if dataset not in ("imagenet", "average")]
        assert len(targets) == 10 and statistics.fmean(targets) == pytest.approx(rows["average"], abs=0.01)
    for rows in paper_results.DOMAIN_GENERALIZATION.values():
        targets = [value for dataset, value in rows.items() if dataset not in ("imagenet", "average")]
        assert len(targets) == 4
        if "average" in rows:  # CAPT's Table 3 has none
            assert statistics.fmean(targets) == pytest.approx(rows["average"], abs=0.01)
    assert paper_results.CROSS_DATASET["capt"]["imagenet"] == paper_results.DOMAIN_GENERALIZATION["capt"]["imagenet"]
    assert paper_results.FEW_SHOT["capt"]["average"][16] == paper_results.BASE2NOVEL["capt"]["average"]["base"]
    assert paper_results.paper_value("base2novel", "capt", "dtd", "hm") == 79.51
    assert paper_results.paper_value("few_shot", "capt", "dtd", 4) is None


def test_coop_benchmarks_train_for_the_papers_epochs_unless_told(tmp_path):
    def epochs(runner_args, trainer_args):
        args, trainer = run_protocol.parse_runner_args(runner_args + ["--output_dir", str(tmp_path / "runs"), "--"]
                                                       + trainer_args)
        found = {}
        for run in run_protocol.plan_runs(args, trainer):
            argv = run.trainer_argv
            flags = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--num_train_epochs"]
            found[run.source.key] = (flags, run.config["trainer_args"])
        return found

    coop = ["--protocol", "base2novel", "--datasets", "dtd", "eurosat", "--data_dir", str(tmp_path), "--seeds", "1"]
    found = epochs(coop, [])
    assert found["dtd"] == (["25"], ["--num_train_epochs", "25"])  # METHODS.md: 25 epochs, 50 on EuroSAT
    assert found["eurosat"] == (["50"], ["--num_train_epochs", "50"])
    assert epochs(coop, ["--num_train_epochs", "3"])["eurosat"][0] == ["3"]
    config = tmp_path / "run.yaml"
    config.write_text("num_train_epochs: 4\n")
    assert epochs(coop, ["--config", str(config)])["dtd"][0] == []  # the file's value stands
    embedded = ["--protocol", "base2novel", "--embedded", "--seeds", "1"]
    assert [flags for flags, _ in epochs(embedded, []).values()] == [[]]  # not a CoOp benchmark: the trainer's default


def test_cross_dataset_average_is_over_the_ten_targets_and_compared_with_the_paper(tmp_path):
    """The source (ImageNet) has its own row, outside the Average; the Average of the 10 targets has the paper's cell."""
    runs = tmp_path / "runs"
    targets = [name for name in run_protocol.TRAINING_DATASETS if name != "imagenet"]
    assert len(targets) == 10
    accuracies = {"imagenet": 90.0, **{name: 50.0 + index for index, name in enumerate(targets)}}
    for name, accuracy in accuracies.items():
        path = runs / "cross_dataset" / name / "seed1.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"results": {"capt": {"accuracy": accuracy}}}))
    table = run_protocol.run_protocol(["--protocol", "cross_dataset", "--data_dir", str(tmp_path), "--seeds", "1",
                                       "--output_dir", str(runs), "--table_only"])["table"]
    mean = statistics.fmean(accuracies[name] for name in targets)  # 54.5: ImageNet's 90 is not in it
    assert table_row(table, "CAPT", "Average") == [f"{mean:.2f} ± 0.00 ({mean - 71.95:+.2f})"]
    assert table_row(table, "CAPT", "ImageNet (source)") == [f"90.00 ± 0.00 ({90.0 - 72.69:+.2f})"]


@pytest.mark.parametrize(
    "protocol, shots", [("base2novel", [16]), ("few_shot", [1, 2, 4, 8, 16]), ("cross_dataset", [16])]
)
def test_protocol_defaults_seeds_and_shots(tmp_path, protocol, shots):
    """PROTOCOL.md: seeds 1, 2, 3; few-shot 1/2/4/8/16 shots; 16 shots elsewhere."""
    args, trainer_args = run_protocol.parse_runner_args(["--protocol", protocol, "--data_dir", str(tmp_path)])
    assert (args.seeds, args.shots, trainer_args) == ([1, 2, 3], shots, [])


def _planned(tmp_path, runner_args, trainer_args):
    """`{dataset: (trainer argv, recorded trainer flags)}` of the runs the runner plans (nothing is trained)."""
    args, trainer = run_protocol.parse_runner_args(runner_args + ["--output_dir", str(tmp_path / "runs"), "--"]
                                                   + trainer_args)
    return {run.source.key: (run.trainer_argv, run.config["trainer_args"])
            for run in run_protocol.plan_runs(args, trainer) if run.train_run is None}


def _flag(argv, name):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_anprompt_runs_get_its_per_dataset_settings_and_epochs_unless_told(tmp_path):
    from trainers.methods.anprompt import DATASET_SETTINGS, AnpromptArguments

    assert sorted(DATASET_SETTINGS) == sorted(run_protocol.TRAINING_DATASETS)
    for settings in DATASET_SETTINGS.values():
        AnpromptArguments(**settings)  # valid flag values
    runner = ["--protocol", "base2novel", "--method", "anprompt", "--datasets", "oxford_pets", "eurosat",
              "--data_dir", str(tmp_path), "--seeds", "1"]
    planned = _planned(tmp_path, runner, [])
    argv, recorded = planned["oxford_pets"]
    assert (_flag(argv, "--lambda_sim"), _flag(argv, "--vision_beta")) == (["0.2"], ["0.7"])
    assert recorded == ["--lambda_sim", "0.2", "--vision_beta", "0.7"]  # the paper's 10 epochs, not CAPT's 25
    assert (_flag(planned["eurosat"][0], "--lambda_sim"), _flag(planned["eurosat"][0], "--vision_beta")) == (
        ["0.001"], ["0.2"])
    run_protocol.parse_args(argv)  # the trainer accepts the argv

    argv = _planned(tmp_path, runner, ["--lambda_sim", "3"])["oxford_pets"][0]  # the user's flag wins
    assert (_flag(argv, "--lambda_sim"), _flag(argv, "--vision_beta")) == (["3"], ["0.7"])
    config = tmp_path / "run.yaml"
    config.write_text("vision_beta: 1.0\n")
    argv = _planned(tmp_path, runner, ["--config", str(config)])["oxford_pets"][0]
    assert (_flag(argv, "--lambda_sim"), _flag(argv, "--vision_beta")) == (["0.2"], [])

    imagenet = _planned(tmp_path, ["--protocol", "cross_dataset", "--method", "anprompt", "--data_dir", str(tmp_path),
                                   "--seeds", "1"], [])["imagenet"][0]  # the source run: ImageNet's values
    assert (_flag(imagenet, "--lambda_sim"), _flag(imagenet, "--vision_beta")) == (["0.5"], ["0.9"])
    capt = _planned(tmp_path, runner[:3] + ["capt"] + runner[4:], [])["oxford_pets"][0]
    assert _flag(capt, "--lambda_sim") == [] and _flag(capt, "--num_train_epochs") == ["25"]
    embedded = _planned(tmp_path, ["--protocol", "base2novel", "--method", "anprompt", "--embedded", "--seeds", "1"],
                        [])
    assert [recorded for _, recorded in embedded.values()] == [[]]  # not a CoOp benchmark: the flags' defaults
