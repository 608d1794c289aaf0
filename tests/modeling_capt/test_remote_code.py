"""The saved checkpoint is self-contained remote code: it loads in a process that cannot import this repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from modeling_capt import CaptAdapterConfig, CaptForImageClassification, PromptCLIPForImageClassification

from conftest import CLASS_NAMES, REPO_ROOT, random_images

CHILD = textwrap.dedent(
    """
    import importlib.abc, json, os, sys
    repo = os.environ["CAPT_REPO"]
    # the repository itself must not be on the path (a virtual environment inside it may: it holds only packages)
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != repo]
    assert not any(os.path.isdir(os.path.join(p, "modeling_capt")) for p in sys.path), sys.path

    class BlockRepo(importlib.abc.MetaPathFinder):  # the editable install's finder must not help either
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_capt", "trainers", "dataset_scripts"):
                raise ImportError(f"{name} must not be importable here")
            return None

    sys.meta_path.insert(0, BlockRepo())
    assert os.path.abspath(os.getcwd()) != repo
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageClassification, pipeline

    ckpt, out = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    classifier = pipeline("image-classification", model=ckpt, trust_remote_code=True)
    pixel_values = classifier.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        a = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()(pixel_values=pixel_values).logits
        b = AutoModelForImageClassification.from_pretrained(ckpt, trust_remote_code=True).eval()(pixel_values=pixel_values).logits
    labels = classifier(images[0], top_k=3)
    zero_shot = pipeline("zero-shot-image-classification", model=ckpt, trust_remote_code=True)
    zs = zero_shot(images[0], candidate_labels=["zebra", "car", "violin"])
    json.dump({
        "auto_model": a.tolist(), "auto_cls": b.tolist(), "module": type(classifier.model).__module__,
        "labels": [x["label"] for x in labels], "zero_shot": sorted(x["label"] for x in zs),
        "zero_shot_scores": sum(x["score"] for x in zs),
    }, open(out, "w"))
    """
)


CAPT_FILES = ["configuration_capt.py", "configuration_prompt_clip.py", "diff_manner.py", "mgde.py", "modeling_capt.py",
              "modeling_prompt_clip.py"]
PROMPT_CLIP_FILES = ["configuration_prompt_clip.py", "modeling_prompt_clip.py"]


def _capt(tiny_clip, tokenizer, image_processor):
    model = CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, image_processor=image_processor,
        adapter_config=CaptAdapterConfig(mgde_num_clusters=3),
    )
    with torch.no_grad():  # make the adapters and MGDE non-trivial so the check covers them
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
        model.mgde.expert_gates.fill_(0.5)
    return model


def _coop(tiny_clip, tokenizer, image_processor):
    model = PromptCLIPForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, image_processor=image_processor, use_learnable_context=True,
    )
    with torch.no_grad():
        model.prompt_context.ctx.add_(0.1 * torch.randn_like(model.prompt_context.ctx))
    model.clear_text_cache()
    return model


@pytest.mark.slow
@pytest.mark.parametrize(
    "build, files, prefix",
    [(_capt, CAPT_FILES, "modeling_capt.Capt"), (_coop, PROMPT_CLIP_FILES, "modeling_prompt_clip.PromptCLIP")],
    ids=["capt", "prompt_clip"],
)
def test_remote_code_round_trip_in_fresh_process(tmp_path, tiny_clip, tokenizer, image_processor, build, files,
                                                 prefix):
    """Each checkpoint ships the files its class reaches by relative imports, and only those: a PromptCLIP
    (zero-shot / CoOp) checkpoint carries no CAPT code."""
    model = build(tiny_clip, tokenizer, image_processor)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    assert config["auto_map"]["AutoModel"].startswith(prefix)
    assert sorted(p.name for p in ckpt.glob("*.py")) == files

    pixel_values = image_processor(images=random_images(3, seed=7), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CAPT_REPO=REPO_ROOT, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    result_file = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt), str(result_file)], cwd=workdir, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["module"].startswith("transformers_modules"), result["module"]
    torch.testing.assert_close(torch.tensor(result["auto_model"]), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(result["auto_cls"]), expected, atol=1e-5, rtol=0)
    top3 = [CLASS_NAMES[i] for i in expected[0].topk(3).indices.tolist()]
    assert result["labels"] == top3
    assert result["zero_shot"] == ["car", "violin", "zebra"]
    assert abs(result["zero_shot_scores"] - 1.0) < 1e-4
