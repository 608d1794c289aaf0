"""What a run with `--report_to tensorboard` writes, read back from the events file with TensorBoard's own reader:
the loss and learning rate of every step, the run's hyperparameters, and every final metric."""

from __future__ import annotations

import glob
import json

import pytest

from trainers.tracking import final_metrics, tracker_config
from trainers.train_capt import main

from conftest import small_run_args


def test_tracker_config_keeps_scalars_and_writes_the_rest_as_text():
    config = tracker_config({"seed": 1, "lr": 0.002, "augment": False, "layers": [-2, -1], "cache": None}, out="x")
    assert config == {"seed": 1, "lr": 0.002, "augment": False, "layers": "[-2, -1]", "cache": "None", "out": "x"}


def test_final_metrics_are_every_number_of_the_summary():
    summary = {"method": "capt", "zeroshot": {"base_accuracy": 76.0, "novel_accuracy": 82.4, "hm": 79.07},
               "capt": {"base_accuracy": 84.0, "novel_accuracy": 85.0, "hm": 84.5, "correction_rate": 64.71,
                        "test_correction_rate": 47.5, "test_break_rate": 4.47, "confusion_matrix": [[1]]}}
    assert final_metrics(summary) == {
        "final/zeroshot/base_accuracy": 76.0, "final/zeroshot/novel_accuracy": 82.4, "final/zeroshot/hm": 79.07,
        "final/capt/base_accuracy": 84.0, "final/capt/novel_accuracy": 85.0, "final/capt/hm": 84.5,
        "final/capt/correction_rate": 64.71, "final/capt/test_correction_rate": 47.5,
        "final/capt/test_break_rate": 4.47,
    }


@pytest.mark.slow
def test_tensorboard_events_hold_the_steps_the_hyperparameters_and_the_final_metrics(tmp_path, tiny_clip_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    summary = main(small_run_args(tmp_path, tiny_clip_dir) + [
        "--method", "capt", "--output_dir", str(out), "--report_to", "tensorboard", "--save_every_epochs", "0",
        "--per_device_train_batch_size", "4"])
    (events,) = glob.glob(str(out / "capt" / "events.out.tfevents.*"))  # the scalars (hparams go to a subfolder)
    scalars = EventAccumulator(events)
    scalars.Reload()
    tags = set(scalars.Tags()["scalars"])

    steps = [event.step for event in scalars.Scalars("train/loss")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 6  # 12 images, batch 4, 2 epochs
    learning_rates = [event.value for event in scalars.Scalars("train/learning_rate")]
    assert learning_rates[:3] == pytest.approx([1e-5] * 3)  # CoOp's warmup epoch, then the peak of the cosine
    assert learning_rates[3] == pytest.approx(0.002)
    for name, value in final_metrics(summary).items():
        assert name in tags
        assert scalars.Scalars(name)[-1].value == pytest.approx(value, rel=1e-5)
    assert {"final/capt/hm", "final/capt/correction_rate", "final/capt/test_break_rate"} <= tags

    # the hyperparameters: TensorBoard's hparams plugin data, in the events file accelerate writes beside
    (hparams_events,) = glob.glob(str(out / "capt" / "*" / "events.out.tfevents.*"))
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    run = EventAccumulator(hparams_events)
    run.Reload()
    start = [HParamsPluginData.FromString(content).session_start_info
             for content in run.PluginTagToContent("hparams").values()
             if HParamsPluginData.FromString(content).HasField("session_start_info")]
    hparams = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
               for name, value in start[0].hparams.items()}
    assert hparams["method"] == "capt" and hparams["seed"] == 1 and hparams["shots"] == 4
    assert hparams["learning_rate"] == pytest.approx(0.002) and hparams["output_dir"] == str(out)
    assert json.loads(open(out / "metrics.json").read())["capt"]["hm"] == summary["capt"]["hm"]
