"""The label-noise benchmark runner: its grid, resuming, tables and plot (the trainer is replaced by a stub)."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from trainers import label_noise_protocol, run_protocol, train_capt


def fake_main(argv):
    method = argv[argv.index("--method") + 1]
    rate = float(argv[argv.index("--noise_rate") + 1]) if "--noise_rate" in argv else 0.0
    bonus = 5.0 if "--image_guidance" not in argv and method == "visprompt" else 0.0
    seed = int(argv[argv.index("--seed") + 1])
    fake_main.calls.append(argv)
    return {"method": method, "wall_time_s": 1.0, method: {"accuracy": 80 - 40 * rate + bonus + seed}}


def test_grid_tables_plot_and_resume(tmp_path, monkeypatch):
    fake_main.calls = []
    monkeypatch.setattr(train_capt, "main", fake_main)
    argv = ["--protocol", "label_noise", "--embedded", "--seeds", "1", "2", "--noise_rates", "0", "0.5",
            "--output_dir", str(tmp_path), "--", "--num_train_epochs", "1"]
    result = run_protocol.main(argv)
    # 4 methods x 2 seeds x (clean + sym + asym)
    assert len(fake_main.calls) == 24
    assert all(call[:2] == ["--num_train_epochs", "1"] for call in fake_main.calls)
    assert all("--subsample_classes" in call and "all" in call for call in fake_main.calls)
    noisy = [call for call in fake_main.calls if "--noise_rate" in call]
    assert {call[call.index("--noise_type") + 1] for call in noisy} == {"sym", "asym"}
    table = result["table"]
    assert "| VisPrompt | 86.50 ± 0.50 | 66.50 ± 0.50 | 66.50 ± 0.50 |" in table
    assert "| CoOp | 81.50 ± 0.50 |" in table
    assert (tmp_path / "label_noise" / "results.md").read_text() == table
    image = Image.open(result["plots"][0])
    assert image.size[0] > 400
    record = json.loads(next((tmp_path / "label_noise").rglob("seed1.json")).read_text())
    assert {"accuracy", "argv", "rate", "noise_type"} <= set(record)
    run_protocol.main(argv)  # every run is finished: nothing runs again
    assert len(fake_main.calls) == 24
    partial = run_protocol.main(argv[:argv.index("--output_dir")] + ["--seeds", "3", "--table_only", "--output_dir",
                                                                      str(tmp_path)])
    assert len(fake_main.calls) == 24 and partial["records"] == []


def test_bad_grid_settings_fail_before_any_run(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        label_noise_protocol.run_label_noise(["--embedded", "--noise_rates", "1.0", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--embedded or --data_dir"):
        label_noise_protocol.run_label_noise(["--output_dir", str(tmp_path)])


def test_a_bad_noise_type_fails_before_the_first_run(tmp_path, monkeypatch):
    """The clean (0 %) runs come first in the grid: a misspelt --noise_types or a missing map file failed only after
    them."""
    monkeypatch.setattr(train_capt, "main", lambda argv: pytest.fail("a run started"))
    for noise_type, message in (("sideways", "sym, asym"), (str(tmp_path / "no_such_map.json"), "sym, asym"),
                                ("{not json", "not valid JSON")):
        with pytest.raises(ValueError, match=message):
            label_noise_protocol.run_label_noise(["--embedded", "--noise_rates", "0", "0.5", "--noise_types", noise_type,
                                                  "--output_dir", str(tmp_path)])


def test_a_bad_trainer_flag_fails_before_the_first_run(tmp_path, monkeypatch):
    """Flags after `--` are checked against each method's own flags when the grid is planned, as run_protocol.py does
    for its protocols: VisPrompt's OT flag is refused for CoOp, an unknown flag for every method."""
    monkeypatch.setattr(train_capt, "main", lambda argv: pytest.fail("a run started"))
    for methods, flags, message in ((["coop"], ["--ot_reg", "0.1"], "ot_reg"),
                                    (["visprompt"], ["--no_such_flag", "1"], "no_such_flag")):
        with pytest.raises(ValueError, match=message):
            label_noise_protocol.run_label_noise(["--embedded", "--methods", *methods, "--noise_rates", "0",
                                                  "--output_dir", str(tmp_path), "--", *flags])


def test_a_failed_table_write_keeps_the_previous_results(tmp_path, monkeypatch):
    """results.md is written beside and moved into place (docs/reliability.md): a write that fails part-way (here an
    unencodable character) leaves the previous table, not an empty file."""
    results = tmp_path / "label_noise" / "results.md"
    results.parent.mkdir(parents=True)
    results.write_text("previous table")
    monkeypatch.setattr(label_noise_protocol, "tables", lambda records, args: ("| broken \ud800 |", {}))
    with pytest.raises(UnicodeEncodeError):
        label_noise_protocol.run_label_noise(["--embedded", "--table_only", "--output_dir", str(tmp_path)])
    assert results.read_text() == "previous table"
    assert sorted(os.listdir(results.parent)) == ["results.md"]


def test_missing_visprompt_datasets_are_skipped(tmp_path):
    args = label_noise_protocol.build_parser().parse_args(["--data_dir", str(tmp_path)])
    assert label_noise_protocol.data_sources(args) == []
