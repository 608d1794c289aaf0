"""Diff-Manner adapters: identity at init, alpha scaling, branches, disabling, layer selection, running alpha."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from modeling_capt.configuration_capt import CaptAdapterConfig
from modeling_capt.diff_manner import (
    CaptAdaptedLayer,
    CaptDiffMannerAdapter,
    adapter_parameter_names,
    adapter_state_dict,
    adapters_disabled,
    inject_diff_manner_adapters,
    set_adapters_enabled,
    update_running_alphas,
)


HIDDEN, GRID = 32, 8  # image 32, patch 4 -> an 8 x 8 patch grid


def tiny_vision_model(num_layers: int = 2, seed: int = 0) -> CLIPVisionModel:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=num_layers, num_attention_heads=2,
        image_size=32, patch_size=4,
    )
    return CLIPVisionModel(config).eval()


def adapter_config(**kwargs) -> CaptAdapterConfig:
    kwargs.setdefault("adapter_num_heads", 2)
    return CaptAdapterConfig(**kwargs)


def randomise_(adapter: CaptDiffMannerAdapter, seed: int = 1) -> CaptDiffMannerAdapter:
    """Give the zero-initialised output maps non-zero weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return adapter


def plain_and_trained_adapted():
    """A tiny vision model and a copy with default adapters injected and given non-zero ("trained") weights."""
    plain = tiny_vision_model()
    adapted = copy.deepcopy(plain)
    inject_diff_manner_adapters(adapted, adapter_config())
    for _, module in adapted.named_modules():
        if isinstance(module, CaptDiffMannerAdapter):
            randomise_(module)
    return plain, adapted


def hidden(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1 + GRID * GRID, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_untrained_adapters_are_the_identity(pixels):
    plain = tiny_vision_model()
    adapted = copy.deepcopy(plain)
    names = inject_diff_manner_adapters(adapted, adapter_config(layers_to_transform=None))
    assert names == ["encoder.layers.0", "encoder.layers.1"]
    with torch.no_grad():
        expected = plain(pixel_values=pixels)
        got = adapted(pixel_values=pixels, alpha=torch.tensor([1.0, 4.0]))
        got_running = adapted(pixel_values=pixels)
    for output in (got, got_running):
        torch.testing.assert_close(output.last_hidden_state, expected.last_hidden_state, atol=1e-6, rtol=0)
        torch.testing.assert_close(output.pooler_output, expected.pooler_output, atol=1e-6, rtol=0)


def test_generic_transformers_init_keeps_the_identity(pixels):
    # A model holding the adapted CLIP runs `post_init()`, which re-draws every nn.Linear of the vision model that it
    # has not initialised yet; the zero-initialised output maps must survive it.
    plain = tiny_vision_model()
    adapted = copy.deepcopy(plain)
    inject_diff_manner_adapters(adapted, adapter_config())
    adapted.init_weights()
    for _, module in adapted.named_modules():
        if isinstance(module, CaptDiffMannerAdapter):
            assert module.out_proj.weight.abs().max() == 0 and module.global_proj.weight.abs().max() == 0
    with torch.no_grad():
        torch.testing.assert_close(adapted(pixel_values=pixels).pooler_output, plain(pixel_values=pixels).pooler_output)


def test_trained_adapter_changes_the_output_linearly_in_alpha():
    adapter = randomise_(CaptDiffMannerAdapter(HIDDEN, num_heads=2))
    states = hidden()
    with torch.no_grad():
        delta_1 = adapter(states, alpha=1.0) - states
        delta_3 = adapter(states, alpha=torch.tensor(3.0)) - states
        unchanged = adapter(states, alpha=0.0)
    assert delta_1.abs().amax(dim=-1).min() > 0  # every token, the CLS included, moves
    torch.testing.assert_close(delta_3, 3 * delta_1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unchanged, states)


def test_per_sample_alpha():
    adapter = randomise_(CaptDiffMannerAdapter(HIDDEN, num_heads=2))
    states = hidden(batch=3)
    alpha = torch.tensor([0.0, 1.0, 2.5])
    with torch.no_grad():
        batched = adapter(states, alpha=alpha)
        one_by_one = torch.cat([adapter(states[i : i + 1], alpha=float(alpha[i])) for i in range(3)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0], states[0])
    with pytest.raises(ValueError, match="one value per sample"):
        adapter(states, alpha=torch.ones(2))


@pytest.mark.parametrize(
    "branches, present, absent",
    [
        ("both", {"attention", "global_proj", "local_conv", "out_proj", "norm"}, set()),
        ("global", {"attention", "global_proj", "out_proj", "norm"}, {"local_conv"}),
        ("local", {"local_conv", "out_proj", "norm"}, {"attention", "global_proj"}),
    ],
)
def test_branches_have_their_parameters(branches, present, absent):
    adapter = CaptDiffMannerAdapter(HIDDEN, num_heads=2, branches=branches)
    children = {name for name, _ in adapter.named_children()}
    assert present <= children and not (absent & children)
    if branches != "global":
        conv = adapter.local_conv
        assert conv.groups == HIDDEN and conv.kernel_size == (3, 3) and conv.padding == (1, 1)


def test_branch_behaviour():
    states = hidden()
    with torch.no_grad():
        local = randomise_(CaptDiffMannerAdapter(HIDDEN, branches="local"))(states, alpha=1.0)
        global_ = randomise_(CaptDiffMannerAdapter(HIDDEN, num_heads=2, branches="global"))(states, alpha=1.0)
    # local: no attention and no W_g, so the CLS token is untouched; patches move
    torch.testing.assert_close(local[:, 0], states[:, 0])
    assert not torch.allclose(local[:, 1:], states[:, 1:])
    # global: every patch receives the same global cue W_out(u)
    delta = global_[:, 1:] - states[:, 1:]
    torch.testing.assert_close(delta, delta[:, :1].expand_as(delta), atol=1e-6, rtol=0)
    assert not torch.allclose(global_[:, 0], states[:, 0])


def test_disable_returns_the_base_output(pixels):
    plain, adapted = plain_and_trained_adapted()
    with torch.no_grad():
        expected = plain(pixel_values=pixels).pooler_output
        enabled = adapted(pixel_values=pixels).pooler_output
        assert not torch.allclose(enabled, expected)
        with adapters_disabled(adapted):
            torch.testing.assert_close(adapted(pixel_values=pixels).pooler_output, expected)
        torch.testing.assert_close(adapted(pixel_values=pixels).pooler_output, enabled)
        set_adapters_enabled(adapted, False)
        torch.testing.assert_close(adapted(pixel_values=pixels).pooler_output, expected)
        set_adapters_enabled(adapted, True)
        torch.testing.assert_close(adapted(pixel_values=pixels).pooler_output, enabled)


def test_alpha_reaches_the_layers_through_the_vision_model(pixels):
    plain, adapted = plain_and_trained_adapted()
    with torch.no_grad():
        zero = adapted(pixel_values=pixels, alpha=torch.zeros(2)).pooler_output
        mixed = adapted(pixel_values=pixels, alpha=torch.tensor([0.0, 1.0])).pooler_output
    torch.testing.assert_close(zero, plain(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(mixed[0], zero[0])
    assert not torch.allclose(mixed[1], zero[1])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(), [2, 3]),  # default layers_to_transform [-2, -1]
        (dict(layers_to_transform=None), [0, 1, 2, 3]),
        (dict(layers_to_transform=[-1]), [3]),
        (dict(layers_to_transform=0), [0]),
        (dict(target_modules=r"encoder\.layers\.[02]", layers_to_transform=None), [0, 2]),
        (dict(target_modules=["layers.1", "layers.3"], layers_to_transform=None), [1, 3]),
        (dict(target_modules=["layers.1", "layers.3"], layers_to_transform=[-1]), [3]),
    ],
)
def test_injection_selects_layers(kwargs, expected):
    model = tiny_vision_model(num_layers=4)
    names = inject_diff_manner_adapters(model, adapter_config(**kwargs))
    assert names == [f"encoder.layers.{i}" for i in expected]
    wrapped = [i for i, layer in enumerate(model.encoder.layers) if isinstance(layer, CaptAdaptedLayer)]
    assert wrapped == expected


def test_state_dict_keys_and_adapter_export():
    model = tiny_vision_model()
    inject_diff_manner_adapters(model, adapter_config(layers_to_transform=[-1]))
    keys = set(model.state_dict())
    assert "encoder.layers.1.base_layer.mlp.fc1.weight" in keys
    assert "encoder.layers.1.adapter.out_proj.weight" in keys
    assert "encoder.layers.1.adapter.alpha_running" in keys and "encoder.layers.1.adapter.alpha_count" in keys
    assert "encoder.layers.0.mlp.fc1.weight" in keys  # the untouched layer keeps its names
    exported = adapter_state_dict(model)
    assert exported and all(".adapter." in key for key in exported)
    assert "encoder.layers.1.adapter.alpha_running" in exported
    names = adapter_parameter_names(model)
    assert set(names) == {k for k in exported if "alpha_" not in k}


def test_injecting_twice_or_with_bad_heads_is_an_error():
    model = tiny_vision_model()
    inject_diff_manner_adapters(model, adapter_config())
    with pytest.raises(ValueError, match="already injected"):
        inject_diff_manner_adapters(model, adapter_config())
    fresh = tiny_vision_model()
    with pytest.raises(ValueError, match="adapter_num_heads=3"):
        inject_diff_manner_adapters(fresh, adapter_config(adapter_num_heads=3))
    assert not any(isinstance(layer, CaptAdaptedLayer) for layer in fresh.encoder.layers)  # left untouched
    # the local branch has no attention, so any head count is fine there
    inject_diff_manner_adapters(fresh, adapter_config(adapter_num_heads=3, adapter_branches="local",
                                                      layers_to_transform=[0]))


def test_non_square_grid_is_an_error():
    adapter = CaptDiffMannerAdapter(HIDDEN, num_heads=2)
    with pytest.raises(ValueError, match="square grid"):
        adapter(torch.randn(1, 1 + 12, HIDDEN))


def test_running_alpha_is_the_exact_mean_and_is_saved(pixels):
    model = tiny_vision_model()
    inject_diff_manner_adapters(model, adapter_config(alpha_scale=5.0))
    layer = model.encoder.layers[-1]
    assert layer.alpha_running.item() == 5.0 and layer.alpha_count.item() == 0
    update_running_alphas(model, torch.tensor([1.0, 2.0]))
    update_running_alphas(model, torch.tensor(3.0))
    for candidate in model.encoder.layers:
        assert candidate.alpha_running.item() == pytest.approx(2.0) and candidate.alpha_count.item() == 3

    for _, module in model.named_modules():
        if isinstance(module, CaptDiffMannerAdapter):
            randomise_(module)
            module.alpha_running.fill_(2.0)
    with torch.no_grad():
        default = model(pixel_values=pixels).pooler_output
        explicit = model(pixel_values=pixels, alpha=torch.tensor([2.0, 2.0])).pooler_output
    torch.testing.assert_close(default, explicit)

    restored = tiny_vision_model(seed=5)
    inject_diff_manner_adapters(restored, adapter_config(alpha_scale=5.0))
    restored.load_state_dict(model.state_dict())
    assert restored.encoder.layers[-1].alpha_running.item() == pytest.approx(2.0)
    assert restored.encoder.layers[-1].alpha_count.item() == 3
    with torch.no_grad():
        torch.testing.assert_close(restored(pixel_values=pixels).pooler_output, default)


def test_gradients_reach_the_adapters(pixels):
    model = tiny_vision_model()
    model.requires_grad_(False)
    inject_diff_manner_adapters(model, adapter_config())
    model(pixel_values=pixels, alpha=torch.tensor([1.0, 2.0])).pooler_output.square().sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == set(adapter_parameter_names(model))
    # at initialisation only the zero-initialised output maps get a signal (everything behind them is multiplied by 0);
    # the last layer's W_out changes only patch tokens, which the pooled CLS never sees, so its signal comes from W_g
    assert grads["encoder.layers.0.adapter.out_proj.weight"].abs().sum() > 0
    assert grads["encoder.layers.1.adapter.global_proj.weight"].abs().sum() > 0
    assert grads["encoder.layers.1.adapter.out_proj.weight"].abs().sum() == 0

    for _, module in model.named_modules():
        if isinstance(module, CaptDiffMannerAdapter):
            randomise_(module)
    model.zero_grad()
    model(pixel_values=pixels, alpha=torch.tensor([1.0, 2.0])).last_hidden_state.square().sum().backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_adapted_layer_passes_tuple_outputs_through():
    class TupleLayer(torch.nn.Module):  # transformers 4.x encoder layers return tuples
        def forward(self, hidden_states, attention_mask=None, **kwargs):
            return (hidden_states * 2, "attn")

    layer = CaptAdaptedLayer(TupleLayer(), randomise_(CaptDiffMannerAdapter(HIDDEN, num_heads=2)))
    states = hidden(batch=1)
    output = layer(states, None, alpha=0.0)
    assert isinstance(output, tuple) and output[1] == "attn"
    torch.testing.assert_close(output[0], states * 2)


def test_adapter_matches_the_layer_dtype():
    model = tiny_vision_model().to(torch.float64)
    inject_diff_manner_adapters(model, adapter_config())
    adapter = model.encoder.layers[-1].adapter
    assert adapter.out_proj.weight.dtype == torch.float64 and adapter.alpha_count.dtype == torch.long
    with torch.no_grad():
        model(pixel_values=torch.randn(1, 3, 32, 32, dtype=torch.float64), alpha=torch.tensor([1.0]))



def test_cls_attention_equals_multihead_attention():
    torch.manual_seed(0)
    adapter = CaptDiffMannerAdapter(hidden_size=32, num_heads=4)
    cls, patches = torch.randn(3, 1, 32), torch.randn(3, 16, 32)
    expected, _ = adapter.attention(cls, patches, patches, need_weights=False)
    torch.testing.assert_close(adapter.cls_attention(cls, patches), expected, atol=1e-5, rtol=1e-5)


def test_skipping_the_last_layer_patch_update_keeps_the_cls_output():
    torch.manual_seed(0)
    adapter = CaptDiffMannerAdapter(hidden_size=32, num_heads=4)
    with torch.no_grad():
        for param in adapter.parameters():
            param.add_(0.1 * torch.randn_like(param))
    hidden = torch.randn(2, 17, 32)
    full = adapter(hidden, alpha=torch.tensor([1.0, 2.0]))
    cls_only = adapter(hidden, alpha=torch.tensor([1.0, 2.0]), update_patches=False)
    torch.testing.assert_close(cls_only[:, 0], full[:, 0])
    torch.testing.assert_close(cls_only[:, 1:], hidden[:, 1:])
    assert not torch.allclose(full[:, 1:], hidden[:, 1:])


def _depthwise_conv3x3_by_hand(grid: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`out[b, d, h, w] = bias[d] + sum_{i, j in 0..2} weight[d, 0, i, j] * pad(grid)[b, d, h + i, w + j]`."""
    height, width = grid.shape[-2:]
    padded = torch.nn.functional.pad(grid, (1, 1, 1, 1))
    out = bias.view(1, -1, 1, 1).expand_as(grid).clone()
    for i in range(3):
        for j in range(3):
            out = out + weight[:, 0, i, j].view(1, -1, 1, 1) * padded[:, :, i : i + height, j : j + width]
    return out


def _adapter_by_hand(adapter: CaptDiffMannerAdapter, states: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """METHODS.md CAPT 4 / paper Eqs. 9-10, written out: u = MHA(LN(cls), LN(X), LN(X));
    X' = DWConv3x3(reshape(LN(X) + u)) on the row-major H x W grid; X += alpha W_out(X'); cls += alpha W_g(u)."""
    batch, seq_len, dim = states.shape
    side = int(round((seq_len - 1) ** 0.5))
    norm = adapter.norm
    normed = torch.nn.functional.layer_norm(states, (dim,), norm.weight, norm.bias, norm.eps)
    cls, patches = states[:, :1], states[:, 1:]
    a = alpha.view(batch, 1, 1)
    if adapter.branches != "local":
        u, _ = adapter.attention(normed[:, :1], normed[:, 1:], normed[:, 1:], need_weights=False)  # [B, 1, D]
    else:
        u = torch.zeros(batch, 1, dim)
    if adapter.branches == "global":
        mixed = u.expand(-1, seq_len - 1, -1)
    else:
        # patch n of CLIP's row-major patch sequence sits at row n // side, column n % side
        grid = (normed[:, 1:] + u).view(batch, side, side, dim).permute(0, 3, 1, 2)
        conv = _depthwise_conv3x3_by_hand(grid, adapter.local_conv.weight, adapter.local_conv.bias)
        mixed = conv.permute(0, 2, 3, 1).reshape(batch, side * side, dim)
    patches = patches + a * (mixed @ adapter.out_proj.weight.T + adapter.out_proj.bias)
    if adapter.branches != "local":
        cls = cls + a * (u @ adapter.global_proj.weight.T + adapter.global_proj.bias)
    return torch.cat([cls, patches], dim=1)


@pytest.mark.parametrize("branches", ["both", "global", "local"])
def test_adapter_forward_by_hand(branches):
    """Pins Eqs. 9-10 term by term (LN inputs, the global cue mixed into the conv input, the grid orientation, which
    output map each token uses, the alpha scaling), which the identity/linearity/branch-shape tests leave open."""
    torch.manual_seed(0)
    adapter = randomise_(CaptDiffMannerAdapter(HIDDEN, num_heads=2, branches=branches), seed=3)
    with torch.no_grad():
        adapter.norm.weight.add_(1.0)  # a LayerNorm away from the identity, but not near zero
        if branches != "global":  # a kernel with no symmetry, so a transposed grid or flipped kernel shows
            adapter.local_conv.weight.copy_(torch.randn(adapter.local_conv.weight.shape))
    # a 4 x 4 grid with a non-symmetric pattern
    states = torch.randn(2, 1 + 4 * 4, HIDDEN, generator=torch.Generator().manual_seed(7))
    alpha = torch.tensor([0.7, 2.3])
    with torch.no_grad():
        expected = _adapter_by_hand(adapter, states, alpha)
        torch.testing.assert_close(adapter(states, alpha=alpha), expected, atol=1e-5, rtol=1e-5)
