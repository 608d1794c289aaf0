"""ANPrompt's published tables (trainers/paper_results.py) and their use by the protocol runner's tables."""

from __future__ import annotations

import json
import statistics

import pytest

from trainers import paper_results, run_protocol
from trainers.metrics import harmonic_mean


ANPROMPT = paper_results.PAPERS["anprompt"]
#: HM cells that do not fit their base and novel as printed (listed in trainers/paper_results.py).
PRINTED_HM_TYPOS = {("anprompt", "eurosat"), ("coop", "caltech101")}


def test_anprompt_table_i_hms_and_averages_fit_the_rows():
    for method, rows in ANPROMPT["base2novel"].items():
        assert len(rows) == 12, method  # 11 datasets and the average
        for dataset, cell in rows.items():
            if (method, dataset) not in PRINTED_HM_TYPOS:  # printed to 2 decimals: within 0.01 of the exact HM
                assert harmonic_mean(cell["base"], cell["novel"]) == pytest.approx(cell["hm"], abs=0.01), dataset
        for column in ("base", "novel"):
            mean = statistics.fmean(cell[column] for dataset, cell in rows.items() if dataset != "average")
            assert mean == pytest.approx(rows["average"][column], abs=0.01), (method, column)
    typo = ANPROMPT["base2novel"]["anprompt"]["eurosat"]
    assert harmonic_mean(typo["base"], typo["novel"]) == pytest.approx(91.25, abs=0.005)  # printed 91.21


def test_anprompt_headline_numbers():
    """METHODS.md: base-to-novel 86.15 / 77.70 / HM 81.70; cross-dataset 67.14; domain generalisation 60.40."""
    rows = ANPROMPT["base2novel"]["anprompt"]
    assert rows["average"] == {"base": 86.15, "novel": 77.70, "hm": 81.70}
    base = statistics.fmean(cell["base"] for dataset, cell in rows.items() if dataset != "average")
    novel = statistics.fmean(cell["novel"] for dataset, cell in rows.items() if dataset != "average")
    assert round(harmonic_mean(base, novel), 2) == 81.70
    for protocol, headline, targets in (("cross_dataset", 67.14, 10), ("domain_generalization", 60.40, 4)):
        for method, row in ANPROMPT[protocol].items():
            values = [value for dataset, value in row.items() if dataset not in ("imagenet", "average")]
            assert len(values) == targets and round(statistics.fmean(values), 2) == row["average"], (protocol, method)
        assert ANPROMPT[protocol]["anprompt"]["average"] == headline
    assert ANPROMPT["cross_dataset"]["anprompt"]["imagenet"] == ANPROMPT["domain_generalization"]["anprompt"]["imagenet"]


def test_each_method_is_compared_with_its_papers_rows():
    assert paper_results.paper_value("base2novel", "anprompt", "dtd", "novel") == 65.10
    assert paper_results.paper_value("base2novel", "zeroshot", "dtd", "base") == 53.24
    assert paper_results.paper_value("base2novel", "coop", "imagenet", "novel") == 68.78  # CAPT's Table 1
    assert paper_results.paper_value("cross_dataset", "anprompt", "eurosat", "accuracy") == 51.97
    assert paper_results.paper_value("domain_generalization", "zeroshot", "imagenet_r", "accuracy") == 73.96
    assert paper_results.paper_value("few_shot", "anprompt", "average", 16) is None  # Fig. 6 is a plot


def _write_records(folder, method, accuracies):
    for name, accuracy in accuracies.items():
        path = folder / name / "seed1.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"results": {method: accuracy}}))


def _row(table, section, label):
    part = table.split(f"### {section}", 1)[1].split("###", 1)[0]
    line = next(line for line in part.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_an_anprompt_protocol_table_shows_the_papers_numbers(tmp_path):
    """Base-to-novel: each ANPrompt cell carries `(ours - ANPrompt Table I)`, the zero-shot table CLIP's row."""
    runs = tmp_path / "runs"
    entry = {"base": 80.0, "novel": 70.0, "hm": harmonic_mean(80.0, 70.0)}
    for name in run_protocol.TRAINING_DATASETS:
        path = runs / "base2novel" / name / "seed1.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"results": {"anprompt": entry, "zeroshot": entry}}))
    table = run_protocol.run_protocol(["--protocol", "base2novel", "--data_dir", str(tmp_path), "--method", "anprompt",
                                       "--seeds", "1", "--output_dir", str(runs), "--table_only"])["table"]
    assert _row(table, "ANPrompt", "EuroSAT") == ["80.00 ± 0.00 (-15.53)", "70.00 ± 0.00 (-17.33)",
                                                  f"{entry['hm']:.2f} ± 0.00 ({entry['hm'] - 91.21:+.2f})"]
    assert _row(table, "ANPrompt", "Average")[2] == f"{entry['hm']:.2f} ± 0.00 ({entry['hm'] - 81.70:+.2f})"
    assert _row(table, "zero-shot CLIP", "DTD")[0] == "80.00 ± 0.00 (+26.76)"
    assert "ANPrompt Table I" in table


def test_an_anprompt_domain_generalization_average_is_compared(tmp_path):
    runs = tmp_path / "runs"
    accuracies = {"imagenet": {"accuracy": 70.0}, **{name: {"accuracy": 50.0 + index}
                                                     for index, name in enumerate(run_protocol.VARIANT_DATASETS)}}
    _write_records(runs / "domain_generalization", "anprompt", accuracies)
    table = run_protocol.run_protocol(["--protocol", "domain_generalization", "--data_dir", str(tmp_path),
                                       "--method", "anprompt", "--seeds", "1", "--output_dir", str(runs),
                                       "--table_only"])["table"]
    assert _row(table, "ANPrompt", "Average") == [f"51.50 ± 0.00 ({51.5 - 60.40:+.2f})"]
    assert _row(table, "ANPrompt", "ImageNet (source)") == [f"70.00 ± 0.00 ({70.0 - 71.13:+.2f})"]
