"""trainers/evaluation.py: what the trainer prints under its accuracy table."""

from __future__ import annotations

from trainers.evaluation import print_table, summarize_results


def _entry(base, novel):
    return {"base_accuracy": base, "novel_accuracy": novel, "hm": 2 * base * novel / (base + novel),
            "top_confused_pairs": [{"true": "pullover", "predicted": "coat", "count": 79}],
            "novel_top_confused_pairs": [{"true": "shirt", "predicted": "t-shirt", "count": 63}]}


def test_rates_print_with_their_denominator_and_novel_confusions_beside_the_base_ones(capsys):
    capt = dict(_entry(84.0, 85.0), correction_rate=100 * 11 / 17, correction_rate_counts=[11, 17],
                test_break_rate=None, test_break_rate_counts=[0, 0], test_correction_rate=47.5)
    summary = {"dataset": "d", "shots": 16, "seed": 1, "zeroshot": _entry(76.0, 82.4), "capt": capt}
    print_table(summary, "capt", ("correction_rate", "test_correction_rate", "test_break_rate"))
    out = capsys.readouterr().out
    assert "correction_rate: 64.71 % (11/17)\n" in out
    assert "test_correction_rate: 47.50 %\n" in out  # no counts recorded: the rate alone
    assert "test_break_rate: n/a (0/0)\n" in out
    assert "top confusions, zero-shot: pullover->coat (79)" in out
    assert "top confusions (novel classes), capt: shirt->t-shirt (63)" in out


def test_summary_holds_the_novel_top_confusions_by_novel_class_name():
    result = {"base": {"accuracy": 50.0, "per_class_accuracy": [50.0, 50.0], "confusion_matrix": [[1, 1], [1, 1]]},
              "novel": {"accuracy": 50.0, "confusion_matrix": [[2, 0], [3, 1]]}}
    entry = summarize_results(result, ["a", "b"], ["c", "d"])
    assert entry["novel_top_confused_pairs"][0] == {"true": "d", "predicted": "c", "count": 3}
