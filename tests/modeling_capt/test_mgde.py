"""MGDE: routing, expert initialisation from CLIP and the prompt centres, train/eval regularisers, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from modeling_capt.configuration_capt import CaptAdapterConfig
from modeling_capt.diff_manner import inject_diff_manner_adapters
from modeling_capt.mgde import CaptMGDE, CaptSemanticExpert


HIDDEN, PROJECTION, CLUSTERS = 32, 16, 4


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37),
        vision_config=dict(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32,
            patch_size=4,
        ),
        projection_dim=PROJECTION,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms, so copying them is visible
        for norm in (model.vision_model.post_layernorm, model.vision_model.encoder.layers[-1].layer_norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(std=0.1)
    return model


def centres(seed: int, n: int = CLUSTERS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, PROJECTION, generator=generator), dim=-1)


def features(batch: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, HIDDEN, generator=torch.Generator().manual_seed(seed)) * 3


def make_mgde(clip, **kwargs) -> CaptMGDE:
    kwargs.setdefault("num_clusters", CLUSTERS)
    mgde = CaptMGDE.from_configs(clip.config, CaptAdapterConfig(), **kwargs)
    return mgde.init_from_clip(clip, centres(1), centres(2)).eval()


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_router_weights_sum_to_one_over_top_k(clip, top_k):
    mgde = make_mgde(clip, top_k=top_k)
    for training in (False, True):
        mgde.train(training)
        routing = mgde.route(features())
        torch.testing.assert_close(routing.expert_weights.sum(-1), torch.ones(5))
        assert ((routing.expert_weights > 0).sum(-1) == top_k).all()
        chosen = torch.zeros_like(routing.expert_weights, dtype=torch.bool).scatter(-1, routing.expert_indices, True)
        assert torch.equal(chosen, routing.expert_weights > 0)
        torch.testing.assert_close(routing.router_probs.sum(-1), torch.ones(5))


@pytest.mark.parametrize("training", [False, True])
def test_routing_under_an_autocast_that_keeps_softmax_in_float32(clip, monkeypatch, training):
    """CUDA's autocast runs `softmax` in float32 while the router's `Linear` gives float16/bfloat16 logits (the CPU's
    autocast keeps both in the low precision, so a CPU bf16 run never sees the mix). Emulated here: under CPU bf16
    autocast, softmax returns float32 as on CUDA. The top-k weights must not be scattered into a low-precision
    tensor of another dtype (a RuntimeError on the GPU in every mixed-precision CAPT forward)."""
    softmax = torch.Tensor.softmax
    monkeypatch.setattr(torch.Tensor, "softmax", lambda self, *args, **kwargs: softmax(self.float(), *args, **kwargs))
    mgde = make_mgde(clip).train(training)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = mgde.route(features())
        refined, _ = mgde(features())
    assert routing.router_logits.dtype == torch.bfloat16  # the emulation holds: low-precision logits ...
    assert routing.expert_weights.dtype == torch.float32  # ... and float32 weights, as the softmax gives them
    torch.testing.assert_close(routing.expert_weights.sum(-1), torch.ones(5))
    assert torch.isfinite(refined).all()


def test_balance_loss():
    mgde = CaptMGDE(HIDDEN, PROJECTION, CLUSTERS, intermediate_size=37, router_noise_std=0.0)
    with torch.no_grad():
        mgde.router.weight.zero_()  # uniform router probabilities: the balanced value, 1
    assert mgde.route(features()).balance_loss.item() == pytest.approx(1.0)
    with torch.no_grad():
        mgde.router.weight.zero_()
        mgde.router.weight[0, 0] = 100.0  # everything to the sample expert (features are positive in dim 0)
    routing = mgde.route(features().abs())
    assert 1.0 < routing.balance_loss.item() <= 3.0
    mgde.train()
    assert mgde(features())[1] is not None
    mgde.eval()
    assert mgde(features())[1] is None


def test_untrained_mgde_is_the_identity_unless_gated_open(clip):
    f = features()
    with torch.no_grad():
        torch.testing.assert_close(make_mgde(clip)(f)[0], f, atol=0, rtol=0)
        assert not torch.allclose(make_mgde(clip, gate_init=1.0)(f)[0], f)
        # shapes other than (B, D) are flattened and restored
        assert make_mgde(clip, gate_init=1.0)(f.view(5, 1, HIDDEN))[0].shape == (5, 1, HIDDEN)


def test_sample_expert_is_clips_last_ffn(clip):
    layer = clip.vision_model.encoder.layers[-1]
    f = features()
    with torch.no_grad():
        expected = layer.mlp(layer.layer_norm2(f))
        torch.testing.assert_close(make_mgde(clip).sample_expert(f), expected)
        # also when the CLIP's layers are already wrapped by Diff-Manner adapters
        adapted = copy.deepcopy(clip)
        inject_diff_manner_adapters(adapted.vision_model, CaptAdapterConfig(adapter_num_heads=2))
        torch.testing.assert_close(make_mgde(adapted).sample_expert(f), expected)


def test_semantic_experts_are_anchored_on_the_prompt_centres(clip):
    mgde = make_mgde(clip)
    projection = clip.visual_projection.weight  # (P, D)
    for expert, expected_centres in ((mgde.commonality_expert, centres(1)), (mgde.difference_expert, centres(2))):
        torch.testing.assert_close(expert.centres, expected_centres)
        torch.testing.assert_close(expert.w.weight, projection.t())
        first = expert.first_layer_weight()
        assert first.shape == (CLUSTERS, HIDDEN)
        torch.testing.assert_close(first, expected_centres @ projection)  # visual_projection.weight.T on the centres
        torch.testing.assert_close(expert.fc2.weight, first.t() / CLUSTERS)
        # the hidden units start as image-prompt similarities: visual_projection(post_layernorm(f)) . centre
        f = features()
        with torch.no_grad():
            hidden = torch.nn.functional.linear(expert.norm(f), first)
            image = clip.visual_projection(clip.vision_model.post_layernorm(f))
        torch.testing.assert_close(hidden, image @ expected_centres.t(), atol=1e-5, rtol=1e-5)
    assert mgde.commonality_expert.w.weight.data_ptr() != mgde.difference_expert.w.weight.data_ptr()


def test_first_layer_follows_w_during_training(clip):
    expert = make_mgde(clip).commonality_expert
    with torch.no_grad():
        expert.w.weight.mul_(2)
    torch.testing.assert_close(expert.first_layer_weight(), 2 * (centres(1) @ clip.visual_projection.weight))


def test_regularisers_only_in_training(clip):
    mgde = make_mgde(clip, gate_init=1.0, router_noise_std=1.0, expert_dropout=0.5)
    f = features()
    with torch.no_grad():
        assert torch.equal(mgde(f)[0], mgde(f)[0])
        mgde.train()
        assert not torch.equal(mgde(f)[0], mgde(f)[0])
        assert not torch.equal(mgde.route(f).router_logits, mgde.route(f).router_logits)
        quiet = make_mgde(clip, gate_init=1.0, router_noise_std=0.0, expert_dropout=0.0).train()
        assert torch.equal(quiet(f)[0], quiet(f)[0])


def test_state_dict_round_trip_without_prompts(clip):
    trained = make_mgde(clip, gate_init=0.5)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    state = trained.state_dict()
    assert "commonality_expert.centres" in state and "difference_expert.centres" in state
    fresh = CaptMGDE.from_configs(clip.config, CaptAdapterConfig(mgde_num_clusters=CLUSTERS)).eval()
    fresh.load_state_dict(state)
    f = features()
    with torch.no_grad():
        torch.testing.assert_close(fresh(f)[0], trained(f)[0], atol=0, rtol=0)


def test_gradients_reach_the_mgde(clip):
    mgde = make_mgde(clip).train()
    mgde(features())[0].square().sum().backward()
    assert mgde.expert_gates.grad.abs().sum() > 0  # closed gates still learn to open

    mgde = make_mgde(clip, gate_init=1.0, top_k=3).train()
    output, balance_loss = mgde(features())
    (output.square().sum() + balance_loss).backward()
    for name, parameter in mgde.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_construction_errors(clip):
    with pytest.raises(ValueError, match="top_k"):
        CaptMGDE(HIDDEN, PROJECTION, CLUSTERS, top_k=4)
    mgde = make_mgde(clip)
    with pytest.raises(ValueError, match="num_clusters"):
        mgde.set_centres(centres(1, n=CLUSTERS + 1), centres(2))
    with pytest.raises(ValueError, match="features of size"):
        mgde(torch.randn(2, HIDDEN + 1))
    # separate cluster counts per semantic expert
    uneven = CaptMGDE(HIDDEN, PROJECTION, (3, 5), intermediate_size=37)
    uneven.init_from_clip(clip, centres(1, n=3), centres(2, n=5))
    assert uneven.commonality_expert.fc2.weight.shape == (HIDDEN, 3)
    assert uneven.difference_expert.fc2.weight.shape == (HIDDEN, 5)


def test_semantic_expert_without_centres_outputs_zero():
    expert = CaptSemanticExpert(HIDDEN, PROJECTION, CLUSTERS)
    assert expert(features()).abs().max() == 0




@pytest.mark.parametrize("field, value", [("mgde_top_k", 2.5), ("mgde_top_k", True), ("mgde_num_clusters", "8")])
def test_adapter_config_rejects_non_integer_mgde_sizes(field, value):
    from modeling_capt import CaptAdapterConfig

    with pytest.raises(ValueError, match=f"{field} must be an integer"):
        CaptAdapterConfig(**{field: value})


def test_mgde_forward_by_hand(clip):
    """Eq. 11 term by term in eval mode: f + sum_{i in top-k(f W_r)} g_i softmax_topk(f W_r)_i Expert_i(LN_i(f)),
    experts in router order (sample, commonality, difference), with Eq. 12's first layer w(centres) recomputed."""
    torch.manual_seed(0)
    mgde = make_mgde(clip, top_k=2, router_init_std=1.0)
    with torch.no_grad():
        mgde.expert_gates.copy_(torch.tensor([0.5, 1.3, -0.7]))  # distinct gates, so a mixed-up order shows
        for expert in (mgde.commonality_expert, mgde.difference_expert):  # move away from the initial values
            expert.w.weight.add_(0.1 * torch.randn_like(expert.w.weight))
            expert.fc2.weight.add_(0.1 * torch.randn_like(expert.fc2.weight))
    f = features(batch=8)
    assert clip.config.vision_config.hidden_act == "quick_gelu"
    act = lambda x: x * torch.sigmoid(1.702 * x)  # noqa: E731 (CLIP's quick_gelu)

    def norm(module, x):
        return torch.nn.functional.layer_norm(x, (HIDDEN,), module.weight, module.bias, module.eps)

    with torch.no_grad():
        sample = mgde.sample_expert
        outputs = [sample.fc2(act(sample.fc1(norm(sample.norm, f))))]
        for expert in (mgde.commonality_expert, mgde.difference_expert):
            f_e = expert.centres @ expert.w.weight.T  # Eq. 12: (n_clusters, D)
            outputs.append(act(norm(expert.norm, f) @ f_e.T) @ expert.fc2.weight.T)
        logits = f @ mgde.router.weight.T
        expected = f.clone()
        for b in range(f.shape[0]):
            top = sorted(range(3), key=lambda i: -float(logits[b, i]))[:2]
            weights = torch.softmax(logits[b, top], dim=0)
            for weight, i in zip(weights, top):
                expected[b] += weight * mgde.expert_gates[i] * outputs[i][b]
        routing = mgde.route(f)
        chosen = {tuple(sorted(row)) for row in routing.expert_indices.tolist()}
        assert len(chosen) > 1, "the test needs samples routed to different experts"
        torch.testing.assert_close(mgde(f)[0], expected, atol=1e-5, rtol=1e-5)


def test_balance_loss_by_hand():
    """Switch-Transformer balance loss: E * sum_i dispatch_i * mean_b softmax(f W_r)_{b, i}, dispatch_i the share of
    the batch's top-k assignments that went to expert i."""
    mgde = CaptMGDE(HIDDEN, PROJECTION, CLUSTERS, intermediate_size=37, top_k=2, router_noise_std=0.0)
    with torch.no_grad():
        mgde.router.weight.zero_()
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.5], [2.0, 1.5, 0.0]])
    # top-2: {0,1}, {1,2}, {2,0}, {0,1} -> counts [3, 3, 2] of 8 assignments
    dispatch = torch.tensor([3.0, 3.0, 2.0]) / 8
    expected = 3 * (dispatch * logits.softmax(-1).mean(0)).sum()
    mgde.router = torch.nn.Identity()  # so that route() sees these logits as f W_r
    routing = mgde.route(logits)
    torch.testing.assert_close(routing.balance_loss, expected)
