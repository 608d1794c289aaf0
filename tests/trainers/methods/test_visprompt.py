"""VisPrompt's training method on a tiny CLIP: flags, the per-epoch OT pass, its logs, and bad input."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from conftest import small_run_args
from trainers.args import parse_args
from trainers.methods.visprompt import VisPromptTrainingConfig
from trainers.train_capt import main


@pytest.mark.parametrize("bad", [{"ot_scope": "epoch"}, {"noisy_loss": "l2"}, {"combine": "mix"}, {"gce_q": 0},
                                 {"ot_reg": 0.0}, {"curriculum_start": 0.0}])
def test_training_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        VisPromptTrainingConfig(**bad)


def test_flags_come_from_the_config_dataclasses(tmp_path, tiny_clip_dir):
    argv = small_run_args(tmp_path, tiny_clip_dir) + ["--method", "visprompt", "--film_mode", "global",
                                                      "--noisy_loss", "mae", "--image_guidance", "false"]
    _, data_args, method_args, _ = parse_args(argv)
    assert method_args.n_ctx == 16 and method_args.ctx_init is None
    assert method_args.film_mode == "global" and method_args.noisy_loss == "mae" and not method_args.image_guidance
    with pytest.raises(ValueError):
        parse_args(argv + ["--film_update", "mul"])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        parse_args(argv + ["--noise_rate", "1.0"])


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--curriculum", "true", "--combine", "weighted", "--image_tokens", "global"]])
def test_a_noisy_run_logs_the_ot_split_and_saves_the_noisy_labels(tmp_path, tiny_clip_dir, extra):
    out = tmp_path / "out"
    argv = small_run_args(tmp_path, tiny_clip_dir) + [
        "--method", "visprompt", "--n_ctx", "4", "--subsample_classes", "all", "--noise_rate", "0.5",
        "--output_dir", str(out), "--save_every_epochs", "0"] + extra
    summary = main(argv)
    history = summary["visprompt"]["ot_history"]
    assert [entry["epoch"] for entry in history] == [1, 2]
    for entry in history:
        assert 0 <= entry["clean_precision"] <= 100 and 0 <= entry["clean_recall"] <= 100
        # the mean gate of each group, None only for an empty group (a random tiny CLIP may find no clean sample)
        groups = {"gate_clean": entry["clean_fraction"] > 0, "gate_noisy": entry["clean_fraction"] < 100}
        for name, populated in groups.items():
            assert (0 < entry[name] < 1) if populated else entry[name] is None, (name, entry)
    saved = json.loads((out / "noisy_labels.json").read_text())
    assert saved["num_flipped"] == int(0.5 * len(saved["labels"])) == summary["label_noise"]["num_flipped"]
    assert os.path.isdir(out / "model")


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given: the step's loss is then checked by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.logits[: len(pixel_values)])


def _step(logits, labels, clean, keep=None, **options):
    from trainers.methods.visprompt import VisPromptArguments, VisPromptMethod

    method = VisPromptMethod(VisPromptArguments(**options))
    method.model, method.prefix_cache = _FixedLogits(logits), None
    method.clean = clean
    method.keep = torch.ones(len(labels), dtype=torch.bool) if keep is None else keep
    batch = {"pixel_values": torch.zeros(len(labels), 3, 2, 2), "labels": labels, "indices": torch.arange(len(labels))}
    return method.training_step(batch)[0]


def test_the_step_trains_clean_rows_with_ce_and_noisy_rows_with_gce():
    """The OT split decides each row's loss: CE on the given label for clean rows, GCE (q = 0.5) for noisy ones;
    `sequential` adds the two groups' means, `weighted` takes one mean; the curriculum leaves rows out."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    clean = torch.tensor([True, False, True, False, False])
    ce = F.cross_entropy(logits, labels, reduction="none")
    gce = (1 - logits.softmax(-1).gather(1, labels[:, None]).squeeze(1) ** 0.5) / 0.5
    torch.testing.assert_close(_step(logits, labels, clean), ce[clean].mean() + gce[~clean].mean())
    torch.testing.assert_close(_step(logits, labels, clean, combine="weighted"),
                               torch.where(clean, ce, gce).mean())
    keep = torch.tensor([True, True, False, True, False])
    torch.testing.assert_close(_step(logits, labels, clean, keep), ce[clean & keep].mean() + gce[~clean & keep].mean())
    # no clean row (OT found none): every row trains with the noisy loss
    torch.testing.assert_close(_step(logits, labels, torch.zeros(5, dtype=torch.bool)), gce.mean())
    # NLPrompt's noisy loss
    mae = 2 * (1 - logits.softmax(-1).gather(1, labels[:, None]).squeeze(1))
    torch.testing.assert_close(_step(logits, labels, clean, noisy_loss="mae"), ce[clean].mean() + mae[~clean].mean())
