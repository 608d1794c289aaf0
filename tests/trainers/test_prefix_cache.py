"""The frozen-prefix cache: same training with and without it, the disk round trip, and invalidation."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from modeling_capt import CaptAdapterConfig, CaptForImageClassification
from dataset_scripts.atomic_io import current_umask
from dataset_scripts.data import IndexedImageDataset
from trainers.prefix_cache import (
    CACHE_INFO_NAME, FrozenPrefixCache, TextPrefixCache, compute_prefix, prefix_dropout_modules, prefix_fingerprint,
    prefix_start_layer,
)
from trainers.train_capt import main

from conftest import CLASS_NAMES, make_tiny_clip, write_image_dataset, reset_accelerate


@pytest.fixture
def train_rows(tmp_path):
    import datasets

    paths = write_image_dataset(tmp_path / "data", per_class_train=3, per_class_test=1)
    return datasets.load_dataset("parquet", data_files=paths["train"])["train"]


def _capt_model(tiny_clip, tokenizer, image_processor, layers=(1,)):
    adapter = CaptAdapterConfig(layers_to_transform=list(layers), use_mgde=True, mgde_num_clusters=2)
    return CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, image_processor=image_processor, adapter_config=adapter
    )


# --------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", ["capt", "coop", "visprompt"])  # visprompt: every final token cached
def test_training_is_identical_with_and_without_the_cache(tmp_path, tiny_clip_dir, method):
    paths = write_image_dataset(tmp_path / "data")
    common = [
        "--model_name_or_path", tiny_clip_dir, "--method", method,
        "--train_dir", os.path.dirname(paths["train"]), "--test_dir", os.path.dirname(paths["test"]),
        "--shots", "4", "--num_train_epochs", "2", "--per_device_eval_batch_size", "5", "--heatmap", "false",
        "--save_every_epochs", "0", "--warmup_epochs", "0", "--learning_rate", "0.05",
    ] + (["--layers_to_transform", "1"] if method == "capt" else [])
    runs = {}
    for mode in ("off", "memory", "disk") if method == "capt" else ("off", "memory"):
        out = tmp_path / f"out-{mode}"
        reset_accelerate()
        main(common + ["--output_dir", str(out), "--prefix_cache", mode])
        runs[mode] = (load_file(out / "adapter" / "adapter_model.safetensors"),
                      json.loads((out / "metrics.json").read_text()))
    assert not os.path.exists(tmp_path / "out-off" / "prefix_cache")
    weights_off, metrics_off = runs.pop("off")
    for mode, (weights, metrics) in runs.items():
        assert weights.keys() == weights_off.keys()
        for key in weights_off:
            torch.testing.assert_close(weights[key], weights_off[key], rtol=0, atol=1e-6, msg=f"{mode}: {key}")
        for name in ("zeroshot", method):
            for key in ("accuracy", "base_accuracy", "novel_accuracy", "confusion_matrix"):
                assert metrics[name][key] == metrics_off[name][key], (mode, name, key)
    if method == "capt":
        assert os.path.isfile(tmp_path / "out-disk" / "prefix_cache" / CACHE_INFO_NAME)


# --------------------------------------------------------------------------------------------------- the cache
def test_cached_prefix_resumes_to_the_same_logits(tiny_clip, tokenizer, image_processor, train_rows):
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    assert prefix_start_layer(model) == 1
    cache = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory", batch_size=4)
    assert len(cache) == len(train_rows) and not cache.on_disk
    indices = torch.tensor([5, 0, 11, 5])
    pixel_values = IndexedImageDataset(train_rows, "train").pixel_values(indices.tolist(), image_processor)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
        resumed = model(**cache.model_inputs(indices)).logits
    torch.testing.assert_close(resumed, expected, rtol=0, atol=1e-6)


def test_coop_caches_only_the_final_cls_token(tiny_clip, tokenizer, image_processor, train_rows):
    model = CaptForImageClassification.from_clip(
        tiny_clip, CLASS_NAMES, tokenizer=tokenizer, image_processor=image_processor, use_learnable_context=True,
        n_ctx=4,
    )
    num_layers = len(model.clip.vision_model.encoder.layers)
    assert prefix_start_layer(model) == num_layers
    cache = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory")
    assert cache.fetch(torch.tensor([0, 1])).shape == (2, 1, model.config.clip_config.vision_config.hidden_size)
    pixel_values = IndexedImageDataset(train_rows, "train").pixel_values([0, 1], image_processor)
    with torch.no_grad():
        torch.testing.assert_close(model(**cache.model_inputs(torch.tensor([0, 1]))).logits,
                                   model(pixel_values=pixel_values).logits, rtol=0, atol=1e-6)


def test_disk_cache_round_trip_and_reuse(tmp_path, tiny_clip, tokenizer, image_processor, train_rows, caplog):
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    memory = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory")
    cache_dir = str(tmp_path / "cache")
    disk = FrozenPrefixCache.build(model, train_rows, image_processor, mode="disk", cache_dir=cache_dir,
                                   shard_bytes=5 * 1024)  # several shards
    info = json.loads(open(os.path.join(cache_dir, CACHE_INFO_NAME)).read())
    assert disk.on_disk and info["num_shards"] > 1 and info["fingerprint"] == memory.fingerprint
    for name in os.listdir(cache_dir):  # the umask's permissions (safetensors alone writes 0600)
        assert os.stat(os.path.join(cache_dir, name)).st_mode & 0o777 == 0o666 & ~current_umask(), name
    everything = torch.arange(len(train_rows)).flip(0)
    assert torch.equal(disk.fetch(everything), memory.fetch(everything))
    stamp = os.path.getmtime(os.path.join(cache_dir, "prefix-00000.safetensors"))
    with caplog.at_level("INFO", logger="trainers.prefix_cache"):
        again = FrozenPrefixCache.build(model, train_rows, image_processor, mode="disk", cache_dir=cache_dir)
    assert "reusing" in caplog.text
    assert os.path.getmtime(os.path.join(cache_dir, "prefix-00000.safetensors")) == stamp
    assert torch.equal(again.fetch(everything), memory.fetch(everything))


def test_auto_goes_to_disk_above_the_memory_limit(tmp_path, tiny_clip, tokenizer, image_processor, train_rows):
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    small = FrozenPrefixCache.build(model, train_rows, image_processor, mode="auto", cache_dir=str(tmp_path / "c"))
    large = FrozenPrefixCache.build(model, train_rows, image_processor, mode="auto", cache_dir=str(tmp_path / "c"),
                                    memory_limit_bytes=1)
    assert not small.on_disk and large.on_disk
    with pytest.raises(ValueError, match="prefix_cache_dir"):
        FrozenPrefixCache.build(model, train_rows, image_processor, mode="disk")


def _rebuilt(cache_dir, model, rows, image_processor, caplog) -> bool:
    caplog.clear()
    with caplog.at_level("INFO", logger="trainers.prefix_cache"):
        FrozenPrefixCache.build(model, rows, image_processor, mode="disk", cache_dir=cache_dir)
    return "stale" in caplog.text


def test_disk_cache_is_invalidated_by_what_it_depends_on(tmp_path, tiny_clip, tokenizer, image_processor, train_rows,
                                                         caplog):
    cache_dir = str(tmp_path / "cache")
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    FrozenPrefixCache.build(model, train_rows, image_processor, mode="disk", cache_dir=cache_dir)
    assert not _rebuilt(cache_dir, model, train_rows, image_processor, caplog)

    # another backbone: a changed weight below the first adapted layer
    other = _capt_model(make_tiny_clip(tokenizer, seed=1), tokenizer, image_processor)
    assert _rebuilt(cache_dir, other, train_rows, image_processor, caplog)
    fresh = FrozenPrefixCache.build(other, train_rows, image_processor, mode="memory")
    stored = FrozenPrefixCache.build(other, train_rows, image_processor, mode="disk", cache_dir=cache_dir)
    assert torch.equal(stored.fetch(torch.arange(len(train_rows))), fresh.fetch(torch.arange(len(train_rows))))

    # another image processor
    processor = type(image_processor).from_dict({**image_processor.to_dict(), "image_mean": [0.5, 0.5, 0.5]})
    assert _rebuilt(cache_dir, other, train_rows, processor, caplog)
    # other adapted layers (the prefix ends elsewhere)
    moved = _capt_model(make_tiny_clip(tokenizer, seed=1), tokenizer, processor, layers=(0, 1))
    assert prefix_start_layer(moved) == 0
    assert _rebuilt(cache_dir, moved, train_rows, processor, caplog)
    # another training set
    assert _rebuilt(cache_dir, moved, train_rows.select(range(5)), processor, caplog)
    # a weight above the prefix (an adapted layer) does not matter
    FrozenPrefixCache.build(other, train_rows, image_processor, mode="disk", cache_dir=cache_dir)
    with torch.no_grad():
        other.clip.vision_model.encoder.layers[1].base_layer.mlp.fc1.weight.add_(1.0)
    assert not _rebuilt(cache_dir, other, train_rows, image_processor, caplog)


def test_disk_cache_is_invalidated_by_the_mixed_precision(tmp_path, tiny_clip, tokenizer, image_processor, train_rows,
                                                           caplog):
    """Activations computed under bf16 autocast are not those of an fp32 run: the fp32 run rebuilds the cache."""
    from accelerate import Accelerator

    cache_dir = str(tmp_path / "cache")
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    everything = torch.arange(len(train_rows))
    try:
        reset_accelerate()
        FrozenPrefixCache.build(model, train_rows, image_processor, mode="disk", cache_dir=cache_dir,
                                accelerator=Accelerator(mixed_precision="bf16", cpu=True))
        reset_accelerate()
        fp32 = Accelerator(mixed_precision="no", cpu=True)
        fresh = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory", accelerator=fp32)
        caplog.clear()
        with caplog.at_level("INFO", logger="trainers.prefix_cache"):
            stored = FrozenPrefixCache.build(model, train_rows, image_processor, mode="disk", cache_dir=cache_dir,
                                             accelerator=fp32)
    finally:
        reset_accelerate()
    assert "stale" in caplog.text
    assert torch.equal(stored.fetch(everything), fresh.fetch(everything))


def test_cache_refuses_augmentation_and_trainable_prefixes(tiny_clip, tokenizer, image_processor, train_rows):
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    assert FrozenPrefixCache.build(model, train_rows, image_processor, mode="auto", augment=True) is None
    with pytest.raises(ValueError, match="augmentation"):
        FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory", augment=True)
    assert FrozenPrefixCache.build(model, train_rows, image_processor, mode="off") is None
    model.clip.vision_model.embeddings.patch_embedding.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen prefix"):
        prefix_start_layer(model)


def test_compute_prefix_matches_the_uncached_tower(tiny_clip, tokenizer, image_processor, train_rows):
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    pixel_values = IndexedImageDataset(train_rows, "train").pixel_values([0, 1, 2], image_processor)
    with torch.no_grad():
        prefix = compute_prefix(model, pixel_values, 1)
        full = model.encode_image_hidden(pixel_values)
        resumed = model.encode_image_hidden(hidden_states=prefix, start_layer=1)
    assert torch.equal(resumed, full)


def _with_vision_settings(clip, **settings):
    """A copy of `clip` with the same weights and other vision config settings."""
    import copy

    from transformers import CLIPModel

    config = copy.deepcopy(clip.config)
    for key, value in settings.items():
        setattr(config.vision_config, key, value)
    other = CLIPModel(config).eval()
    other.load_state_dict(clip.state_dict())
    return other


@pytest.mark.parametrize("settings", [{"hidden_act": "gelu"}, {"layer_norm_eps": 1e-2}])
def test_disk_cache_is_invalidated_by_the_vision_config(tmp_path, tiny_clip, tokenizer, image_processor, train_rows,
                                                        caplog, settings):
    """The same weights under another activation or layer-norm epsilon give other activations: no stale reuse."""
    cache_dir = str(tmp_path / "cache")
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    FrozenPrefixCache.build(model, train_rows, image_processor, mode="disk", cache_dir=cache_dir)
    other = _capt_model(_with_vision_settings(tiny_clip, **settings), tokenizer, image_processor)
    assert _rebuilt(cache_dir, other, train_rows, image_processor, caplog)
    everything = torch.arange(len(train_rows))
    fresh = FrozenPrefixCache.build(other, train_rows, image_processor, mode="memory")
    stored = FrozenPrefixCache.build(other, train_rows, image_processor, mode="disk", cache_dir=cache_dir)
    assert torch.equal(stored.fetch(everything), fresh.fetch(everything))


def _truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def _swap_in_a_foreign_shard(cache_dir, other_dir):  # another run's shard, as two writers sharing a folder may leave
    os.replace(os.path.join(other_dir, "prefix-00001.safetensors"), os.path.join(cache_dir, "prefix-00001.safetensors"))


@pytest.mark.parametrize("damage", ["truncated", "missing", "foreign", "garbled description"])
def test_a_damaged_disk_cache_is_rebuilt(tmp_path, tiny_clip, tokenizer, image_processor, train_rows, caplog, damage):
    """A shard cut short, deleted or written by another run, or an unreadable description, reads as stale: the cache
    is rebuilt (rather than failing the run, or feeding it another run's activations)."""
    cache_dir, other_dir = str(tmp_path / "cache"), str(tmp_path / "other")
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    build = dict(mode="disk", shard_bytes=5 * 1024)
    FrozenPrefixCache.build(model, train_rows, image_processor, cache_dir=cache_dir, **build)
    shard = os.path.join(cache_dir, "prefix-00001.safetensors")
    if damage == "truncated":
        _truncate(shard)
    elif damage == "missing":
        os.remove(shard)
    elif damage == "foreign":
        other = _capt_model(make_tiny_clip(tokenizer, seed=1), tokenizer, image_processor)
        FrozenPrefixCache.build(other, train_rows, image_processor, cache_dir=other_dir, **build)
        _swap_in_a_foreign_shard(cache_dir, other_dir)
    else:
        with open(os.path.join(cache_dir, CACHE_INFO_NAME), "w") as handle:
            handle.write("[1, 2]")  # valid JSON, but no description
    caplog.clear()
    with caplog.at_level("INFO", logger="trainers.prefix_cache"):
        stored = FrozenPrefixCache.build(model, train_rows, image_processor, cache_dir=cache_dir, **build)
    assert "reusing" not in caplog.text
    everything = torch.arange(len(train_rows))
    fresh = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory")
    assert torch.equal(stored.fetch(everything), fresh.fetch(everything))


def test_cache_steps_aside_for_dropout_in_the_frozen_layers(tiny_clip, tokenizer, image_processor, train_rows):
    """With `attention_dropout > 0` the frozen layers' training-mode outputs differ at every step, so cached ones
    would change the training: `auto` runs without the cache, an explicit mode is refused."""
    dropping = _with_vision_settings(tiny_clip, attention_dropout=0.5)
    model = _capt_model(dropping, tokenizer, image_processor)
    assert prefix_dropout_modules(model, 1) == ["encoder.layers.0.self_attn"]
    pixel_values = IndexedImageDataset(train_rows, "train").pixel_values([0, 1], image_processor)
    model.train()
    with torch.no_grad():  # the uncached training forward is random: the cache could not stand in for it
        assert not torch.equal(model(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)
    assert FrozenPrefixCache.build(model, train_rows, image_processor, mode="auto") is None
    with pytest.raises(ValueError, match="drop out"):
        FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory")
    # every vision layer adapted: the prefix is only the embeddings, which do not drop out
    whole = _capt_model(dropping, tokenizer, image_processor, layers=(0, 1))
    assert prefix_dropout_modules(whole, 0) == []
    assert FrozenPrefixCache.build(whole, train_rows, image_processor, mode="auto") is not None


def test_disk_cache_is_invalidated_by_other_rows_of_the_same_count(tmp_path, tiny_clip, tokenizer, image_processor,
                                                                  train_rows, caplog):
    """Another few-shot draw has as many rows as the last one: the rows themselves key the cache, not their count."""
    cache_dir = str(tmp_path / "cache")
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    FrozenPrefixCache.build(model, train_rows, image_processor, mode="disk", cache_dir=cache_dir)
    reordered = train_rows.select(list(reversed(range(len(train_rows)))))
    assert _rebuilt(cache_dir, model, reordered, image_processor, caplog)
    stored = FrozenPrefixCache.build(model, reordered, image_processor, mode="disk", cache_dir=cache_dir)
    fresh = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory")
    assert torch.equal(stored.fetch(torch.tensor([0])), fresh.fetch(torch.tensor([len(train_rows) - 1])))


def test_model_inputs_are_moved_to_the_device(tiny_clip, tokenizer, image_processor, train_rows):
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    cache = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory")
    inputs = cache.model_inputs(torch.tensor([2, 3]), "meta")  # any device other than the CPU the cache lives on
    assert inputs["hidden_states"].device.type == "meta" and inputs["start_layer"] == 1
    assert cache.model_inputs(torch.tensor([2, 3]))["hidden_states"].device.type == "cpu"


def test_an_interrupted_rebuild_keeps_the_previous_cache(tmp_path, tiny_clip, tokenizer, image_processor, train_rows,
                                                         caplog, monkeypatch):
    """The shards are written to a staging folder and swapped in at the end: a build that fails half-way leaves the
    previous cache whole (still reused by its run) and no half cache or staging folder behind."""
    import trainers.prefix_cache as prefix_cache

    cache_dir = str(tmp_path / "cache")
    model = _capt_model(tiny_clip, tokenizer, image_processor)
    build = dict(mode="disk", cache_dir=cache_dir, shard_bytes=5 * 1024)
    FrozenPrefixCache.build(model, train_rows, image_processor, **build)
    before = sorted(os.listdir(cache_dir))
    written, save_file = [], prefix_cache.save_file

    def failing_save(*args, **kwargs):
        if written:
            raise OSError("disk full")
        written.append(args[1])
        return save_file(*args, **kwargs)

    monkeypatch.setattr(prefix_cache, "save_file", failing_save)
    other = _capt_model(make_tiny_clip(tokenizer, seed=1), tokenizer, image_processor)
    with pytest.raises(OSError, match="disk full"):
        FrozenPrefixCache.build(other, train_rows, image_processor, **build)
    monkeypatch.setattr(prefix_cache, "save_file", save_file)
    assert sorted(os.listdir(cache_dir)) == before
    caplog.clear()
    with caplog.at_level("INFO", logger="trainers.prefix_cache"):
        FrozenPrefixCache.build(model, train_rows, image_processor, **build)
    assert "reusing" in caplog.text


def test_the_cache_is_computed_under_the_runs_autocast(tiny_clip, tokenizer, image_processor, train_rows):
    """Under bf16 mixed precision the uncached forward runs the frozen layers in autocast: so must the cache."""
    from accelerate import Accelerator

    model = _capt_model(tiny_clip, tokenizer, image_processor)
    pixel_values = IndexedImageDataset(train_rows, "train").pixel_values([0, 1], image_processor)
    try:
        reset_accelerate()
        accelerator = Accelerator(mixed_precision="bf16", cpu=True)
        cache = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory", accelerator=accelerator)
        with accelerator.autocast():
            expected = compute_prefix(model, pixel_values, 1)
    finally:
        reset_accelerate()
    assert not torch.equal(expected.float(), compute_prefix(model, pixel_values, 1).float())  # the test can tell
    assert torch.equal(cache.fetch(torch.tensor([0, 1])), expected.cpu())


# --------------------------------------------------------------------------------------------------- hooks and tokens
def _shift_patches(hidden_states, state):
    """A layer hook standing in for a method's prompts: moves every token but CLS."""
    return torch.cat([hidden_states[:, :1], hidden_states[:, 1:] + 0.5], dim=1)


def test_a_hooked_model_starts_at_its_first_hooked_layer(tiny_clip, tokenizer, image_processor, train_rows):
    """The start layer is the model's frozen prefix, whatever touches the tower: a layer hook on a model without
    adapters (zero-shot) starts the cache there, and the hook runs when the tower resumes."""
    from modeling_capt import PromptCLIPForImageClassification

    model = PromptCLIPForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer,
                                                       image_processor=image_processor)
    assert prefix_start_layer(model) == 2
    calls = []
    model.register_layer_hook("vision", 1, lambda h, s: calls.append(s.layer_index) or _shift_patches(h, s))
    assert prefix_start_layer(model) == 1
    cache = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory")
    assert cache.start_layer == 1 and cache.fetch(torch.tensor([0])).shape == (1, 65, 32)  # every token
    assert calls == []  # building the cache stops before the hooked layer
    indices = torch.tensor([4, 1])
    pixel_values = IndexedImageDataset(train_rows, "train").pixel_values(indices.tolist(), image_processor)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
        resumed = model(**cache.model_inputs(indices)).logits
    assert calls == [1, 1]
    torch.testing.assert_close(resumed, expected, rtol=0, atol=1e-6)
    # a hook below the first adapted layer of CAPT moves the start down too
    capt = _capt_model(tiny_clip, tokenizer, image_processor)
    capt.register_layer_hook("vision", 0, _shift_patches)
    assert prefix_start_layer(capt) == 0


def test_an_untouched_tower_keeps_every_token_when_the_model_reads_them(tiny_clip, tokenizer, image_processor,
                                                                       train_rows):
    """A method that reads all final vision tokens (reads_only_cls_token = False) gets them all from the cache; the
    fingerprint tells a CLS-only cache from an all-token one."""
    from modeling_capt import PromptCLIPForImageClassification

    class AllTokens(PromptCLIPForImageClassification):
        reads_only_cls_token = False

    cls_only = PromptCLIPForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    every = AllTokens.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    assert prefix_start_layer(every) == prefix_start_layer(cls_only) == 2
    pixel_values = IndexedImageDataset(train_rows, "train").pixel_values([0, 1], image_processor)
    small = FrozenPrefixCache.build(cls_only, train_rows, image_processor, mode="memory")
    full = FrozenPrefixCache.build(every, train_rows, image_processor, mode="memory")
    forced = FrozenPrefixCache.build(cls_only, train_rows, image_processor, mode="memory", keep_all_tokens=True)
    assert small.fetch(torch.tensor([0])).shape == (1, 1, 32)
    with torch.no_grad():
        final = every.encode_image_hidden(pixel_values)
    assert torch.equal(full.fetch(torch.tensor([0, 1])), final)
    assert torch.equal(forced.fetch(torch.tensor([0, 1])), final)
    assert small.fingerprint != forced.fingerprint
    assert prefix_fingerprint(every, 2, image_processor) == prefix_fingerprint(cls_only, 2, image_processor,
                                                                               cls_only=False)


def _insert_two(hidden_states, state):
    tokens = torch.full((hidden_states.shape[0], 2, hidden_states.shape[2]), 0.1, dtype=hidden_states.dtype)
    return torch.cat([hidden_states[:, :1], tokens, hidden_states[:, 1:]], dim=1)


def test_text_prefix_cache_holds_the_class_prompts_entering_the_first_hooked_text_layer(tiny_clip, tokenizer):
    from modeling_capt import PromptCLIPForImageClassification

    zero_shot = PromptCLIPForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer)
    assert TextPrefixCache.build(zero_shot) is None  # nothing hooked: the model caches its class features itself
    coop = PromptCLIPForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer,
                                                      use_learnable_context=True)
    assert TextPrefixCache.build(coop) is None  # the context enters at the token embeddings

    model = zero_shot
    model.register_layer_hook("text", 1, _insert_two)
    cache = TextPrefixCache.build(model)
    assert cache.start_layer == 1 and cache.hidden_states.shape == (len(CLASS_NAMES), 32, 32)
    with torch.no_grad():
        expected = model.get_class_text_features()
    model.train()  # a text hook: the training step recomputes the class features, now from layer 1
    layer_zero = []
    model.clip.text_model.encoder.layers[0].register_forward_hook(lambda *args: layer_zero.append(1))
    got = model.get_class_text_features(**cache.model_inputs(model))
    assert layer_zero == []
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="skips text layers"):
        model.get_class_text_features(text_hidden_states=cache.hidden_states, text_start_layer=2)
    model.set_class_names(["zebra", "car"], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="rebuild"):
        cache.model_inputs(model)


def test_visprompt_caches_every_final_token(tiny_clip, tokenizer, image_processor, train_rows):
    from modeling_capt import VisPromptForImageClassification

    model = VisPromptForImageClassification.from_clip(tiny_clip, CLASS_NAMES, tokenizer=tokenizer,
                                                      image_processor=image_processor, n_ctx=4).eval()
    cache = FrozenPrefixCache.build(model, train_rows, image_processor, mode="memory")
    vision = model.config.clip_config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    assert cache.fetch(torch.tensor([0, 1])).shape == (2, tokens, vision.hidden_size)
    pixel_values = IndexedImageDataset(train_rows, "train").pixel_values([0, 1], image_processor)
    with torch.no_grad():
        torch.testing.assert_close(model(**cache.model_inputs(torch.tensor([0, 1]))).logits,
                                   model(pixel_values=pixel_values).logits, rtol=0, atol=1e-5)
