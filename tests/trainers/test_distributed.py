"""Multi-process training through Accelerate's DDP on the CPU (gloo): evaluation counts every test sample once, and
two processes train as one with the same global batch.

`accelerate launch --num_processes 2 --cpu` starts ONE process (accelerate's simple launcher; multi-CPU through
`accelerate launch` otherwise needs mpirun: huggingface/accelerate#2741), so two CPU processes are launched as
`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`, which goes through torchrun and makes every
process an `Accelerator` of type MULTI_CPU with the gloo backend. The single-process reference is the same command
with `--num_processes 1 --cpu`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, write_image_dataset


ACCELERATE = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(launcher_args, script_args, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               HF_HOME=str(tmp_path / "hf-home"))  # no user accelerate config file
    env.pop("ACCELERATE_USE_CPU", None)
    if "--multi_gpu" in launcher_args:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [ACCELERATE, "launch", *launcher_args, "--main_process_port", str(_free_port()),
               os.path.join(REPO_ROOT, "trainers", "train_capt.py"), *script_args]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


@pytest.mark.slow
@pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command-line tool is not installed")
def test_two_cpu_processes_evaluate_every_sample_once_and_train_as_one(tmp_path, tiny_clip_dir):
    # 3 base classes x 3 test images = 9 base and 9 novel test samples: odd, and batches of 4 leave a padded last
    # batch on one process, so a duplicate kept by the gather would change the counts.
    paths = write_image_dataset(tmp_path / "data", per_class_train=4, per_class_test=3)
    # CAPT without MGDE: MGDE's router noise and dropout are drawn per process, so only the rest of CAPT is
    # deterministic across process counts. Two epochs take the learning rate through warmup and the cosine.
    script = [
        "--model_name_or_path", tiny_clip_dir, "--method", "capt", "--no_use_mgde",
        "--train_dir", os.path.dirname(paths["train"]), "--test_dir", os.path.dirname(paths["test"]),
        "--shots", "4", "--num_train_epochs", "2",
        "--per_device_eval_batch_size", "4", "--heatmap", "false", "--save_every_epochs", "0",
    ]
    runs = {}
    for processes, launcher in ((1, ["--num_processes", "1", "--cpu"]), (2, ["--multi_gpu", "--num_processes", "2"])):
        out = tmp_path / f"out-{processes}"
        # the same global batch of 4: one process with 4 images, or two with 2 each (DDP averages their gradients)
        _launch(launcher, script + ["--output_dir", str(out), "--per_device_train_batch_size", str(4 // processes)],
                tmp_path)
        runs[processes] = json.loads((out / "metrics.json").read_text())
        assert runs[processes]["num_processes"] == processes

    single, double = runs[1], runs[2]
    for metrics in (single, double):
        for name in ("zeroshot", "capt"):
            assert np.array(metrics[name]["confusion_matrix"]).sum() == 9
            assert np.array(metrics[name]["novel_confusion_matrix"]).sum() == 9
            assert 0.0 <= metrics[name]["hm"] <= 100.0
    # Zero-shot CLIP is not trained: its evaluation must not depend on the number of processes. The trained model
    # saw the same global batches with the same learning rate per optimizer step, so its metrics are equal too.
    for name in ("zeroshot", "capt"):
        for key in ("accuracy", "base_accuracy", "novel_accuracy", "hm", "confusion_matrix", "novel_confusion_matrix",
                    "per_class_accuracy"):
            assert double[name][key] == single[name][key], (name, key, double[name][key], single[name][key])
    assert double["capt"]["correction_rate"] == single["capt"]["correction_rate"]
    # ... and so are the trained weights, and the running alpha (the inference alpha), which each process folds every
    # process's samples into: 2 epochs x 12 training images, each counted once
    from safetensors.torch import load_file

    weights = {processes: load_file(tmp_path / f"out-{processes}" / "model" / "model.safetensors") for processes in runs}
    assert weights[1].keys() == weights[2].keys()
    for name in weights[1]:
        torch.testing.assert_close(weights[2][name], weights[1][name], rtol=1e-4, atol=1e-6, msg=name)
    counts = [name for name in weights[1] if name.endswith("alpha_count")]
    assert counts and all(int(weights[2][name]) == int(weights[1][name]) == 2 * 12 for name in counts)
