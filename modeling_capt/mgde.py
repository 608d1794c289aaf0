"""Multi-Granularity Discrepancy Expert (MGDE) of CAPT: a top-k mixture of three experts refining the pooled CLS
feature before CLIP's post-layernorm and visual projection (METHODS.md, CAPT 5; paper Eqs. 11-12).

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

from .configuration_capt import CaptAdapterConfig


EXPERT_NAMES = ("sample", "commonality", "difference")


@dataclass
class CaptMGDERouting:
    r"""How [`CaptMGDE`] routed a batch.

    Args:
        router_logits (`torch.FloatTensor` of shape `(batch_size, 3)`):
            `f W_r`, plus the Gaussian noise in training: the logits the top-k was taken on.
        router_probs (`torch.FloatTensor` of shape `(batch_size, 3)`):
            Softmax over all three experts (what the load-balancing loss uses).
        expert_weights (`torch.FloatTensor` of shape `(batch_size, 3)`):
            Softmax over the `top_k` chosen experts, zero for the others; each row sums to one.
        expert_indices (`torch.LongTensor` of shape `(batch_size, top_k)`):
            The chosen experts (0 sample, 1 commonality, 2 difference), best first.
        balance_loss (`torch.FloatTensor` of shape `()`):
            Switch-Transformer load-balancing loss `E * sum_i dispatch_i * mean_prob_i` (1 when balanced, `E` = 3
            when one expert takes everything), with `dispatch_i` the share of the batch's top-k assignments that went
            to expert `i`.
    """

    router_logits: torch.Tensor
    router_probs: torch.Tensor
    expert_weights: torch.Tensor
    expert_indices: torch.Tensor
    balance_loss: torch.Tensor


class CaptSampleExpert(nn.Module):
    r"""The sample expert: CLIP's last vision FFN sub-block, `fc2(act(fc1(LN(f))))`, copied in by
    [`~CaptSampleExpert.init_from_clip_layer`] (LayerNorm from the layer's `layer_norm2`, `fc1`/`fc2` from its MLP),
    so that at initialisation it computes exactly what that layer's MLP computes on the same input.

    Args:
        hidden_size (`int`): vision hidden size `D`.
        intermediate_size (`int`): the MLP's hidden width (CLIP's `intermediate_size`).
        hidden_act (`str`, *optional*, defaults to `"quick_gelu"`): activation (CLIP's `hidden_act`).
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): LayerNorm epsilon.
        dropout (`float`, *optional*, defaults to 0.0): dropout on the normalised input, in training only.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    @torch.no_grad()
    def init_from_clip_layer(self, layer: nn.Module) -> None:
        """Copy `layer.layer_norm2` and `layer.mlp.fc1` / `fc2` of a `CLIPEncoderLayer` (or a module with them)."""
        self.norm.load_state_dict(layer.layer_norm2.state_dict())
        self.fc1.load_state_dict(layer.mlp.fc1.state_dict())
        self.fc2.load_state_dict(layer.mlp.fc2.state_dict())

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """`(batch_size, hidden_size)` -> `(batch_size, hidden_size)`."""
        return self.fc2(self.activation_fn(self.fc1(self.dropout(self.norm(pooled)))))


class CaptSemanticExpert(nn.Module):
    r"""A commonality or difference expert: an MLP of hidden width `num_clusters` anchored on semantic prompts.

    ```
    f_e = w(centres)                          # (num_clusters, D): paper Eq. 12, recomputed in every forward
    out = fc2(act(LN(f) @ f_e^T))             # fc2.weight: (D, num_clusters), initialised to f_e^T / num_clusters
    ```

    `centres` (a persistent buffer, `(num_clusters, P)`) are the k-means centres of the commonality (or difference)
    prompt embeddings; `w` (`P -> D`, no bias) is learnable and initialised to the transpose of CLIP's visual
    projection, so `LN(f) @ f_e^T = visual_projection(LN(f)) @ centres^T`: with `LN` initialised from CLIP's
    `post_layernorm`, the hidden units start as the image's (unnormalised) similarities to the prompt centres, and the
    output as their activation-weighted mean of the back-projected centres. The activation is CLIP's own
    (`hidden_act`, `quick_gelu` for OpenAI CLIP), as in the sample expert.

    Args:
        hidden_size (`int`): vision hidden size `D`.
        projection_dim (`int`): joint embedding size `P`.
        num_clusters (`int`): number of centres (the hidden width).
        hidden_act (`str`, *optional*, defaults to `"quick_gelu"`): activation.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): LayerNorm epsilon.
        dropout (`float`, *optional*, defaults to 0.0): dropout on the normalised input, in training only.
    """

    def __init__(
        self,
        hidden_size: int,
        projection_dim: int,
        num_clusters: int,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ):
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be positive, got {num_clusters}")
        self.num_clusters = num_clusters
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.w = nn.Linear(projection_dim, hidden_size, bias=False)
        self.activation_fn = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(num_clusters, hidden_size, bias=False)
        # Filled by `init_from_clip` (or by `load_state_dict` when loading a checkpoint).
        self.register_buffer("centres", torch.zeros(num_clusters, projection_dim))

    def first_layer_weight(self) -> torch.Tensor:
        """`f_e = w(centres)`, shape `(num_clusters, hidden_size)`."""
        return self.w(self.centres.to(self.w.weight.dtype))

    @torch.no_grad()
    def init_from_clip(
        self, visual_projection: nn.Linear, post_layernorm: nn.LayerNorm, centres: torch.Tensor | None = None
    ) -> None:
        """Set `w` to `visual_projection.weight.T`, the LayerNorm from `post_layernorm`, optionally new `centres`
        `(num_clusters, P)`, and `fc2.weight` to `f_e^T / num_clusters`."""
        projection = visual_projection.weight  # (P, D)
        if projection.shape != (self.w.in_features, self.w.out_features):
            raise ValueError(
                f"visual_projection.weight has shape {tuple(projection.shape)}, expected "
                f"{(self.w.in_features, self.w.out_features)} (projection_dim, hidden_size)"
            )
        self.w.weight.copy_(projection.t())
        self.norm.load_state_dict(post_layernorm.state_dict())
        if centres is not None:
            self.set_centres(centres)
        else:
            self.reset_second_layer()

    @torch.no_grad()
    def set_centres(self, centres: torch.Tensor) -> None:
        """Replace the prompt centres `(num_clusters, P)` and re-initialise `fc2` to `f_e^T / num_clusters`."""
        centres = torch.as_tensor(centres)
        if centres.shape != self.centres.shape:
            raise ValueError(
                f"Expected {self.centres.shape[0]} centres of size {self.centres.shape[1]}, "
                f"got {tuple(centres.shape)}; "
                "build the MGDE with num_clusters equal to the number of centres (and record it in the config)"
            )
        self.centres.copy_(centres.to(self.centres.device, self.centres.dtype))
        self.reset_second_layer()

    @torch.no_grad()
    def reset_second_layer(self) -> None:
        """`fc2.weight = f_e^T / num_clusters` from the current `w` and `centres`."""
        self.fc2.weight.copy_(self.first_layer_weight().t() / self.num_clusters)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """`(batch_size, hidden_size)` -> `(batch_size, hidden_size)`."""
        hidden = F.linear(self.dropout(self.norm(pooled)), self.first_layer_weight())  # (B, num_clusters)
        return self.fc2(self.activation_fn(hidden))


class CaptMGDE(nn.Module):
    r"""Multi-Granularity Discrepancy Expert: refines the pooled CLS feature `f` (before CLIP's post-layernorm).

    ```
    f_out = f + sum_{i in TopK(f W_r)} g_i * softmax_topk(f W_r)_i * Expert_i(LN_i(f))      # paper Eq. 11
    ```

    Experts: 0 = sample ([`CaptSampleExpert`], CLIP's last vision FFN), 1 = commonality and 2 = difference
    ([`CaptSemanticExpert`], no shared parameters).

    Readings where the paper leaves gaps:

    - **Starts as the identity.** Each expert's output is scaled by a learnable gate `g_i` (`expert_gates`, shape
      `(3,)`), initialised to `gate_init = 0`. The experts are non-zero at initialisation (one is CLIP's own FFN), so
      without a gate the residual would move the zero-shot features before any training, which hurts novel classes
      and makes the untrained model differ from CLIP. The gates receive gradients from the first step (ReZero /
      LayerScale), and the experts and router from the moment the gates leave zero. `gate_init=1` gives Eq. 11
      verbatim.
    - **One LayerNorm per expert** (`LN_i`), each initialised to what its expert was trained behind: the sample expert
      from the last layer's `layer_norm2` (so it reproduces that FFN exactly), the semantic experts from
      `post_layernorm` (so their hidden units start as image-prompt similarities). Eq. 11 writes one `LN`.
    - **Router** `W_r`: `Linear(D, 3)` without bias on the raw `f` (as Eq. 11), drawn from `N(0, router_init_std)`.
      Top-k on the logits (plus `N(0, router_noise_std)` noise in training), softmax over the chosen `top_k` only.
      With `top_k=1` that weight is always 1 and the router learns only through the balance loss.
    - **Regularisers** (paper: "random vectors are assigned to the activated experts, and masking is applied"):
      the router-logit noise and dropout (`expert_dropout`, an independent mask per expert) on each expert's
      normalised input; both only in training.
    - **Load balancing**: the Switch-Transformer loss, returned by `forward` in training (see
      [`CaptMGDERouting.balance_loss`]); the caller weights it (0 ignores it).
    - All three experts run on the whole batch (they are small next to the vision tower); an expert a sample did
      not choose gets weight zero.

    Construction does not need CLIP or the prompts: buffers and weights have known shapes and are filled either by
    [`~CaptMGDE.init_from_clip`] (new model) or by `load_state_dict` (checkpoint).

    Args:
        hidden_size (`int`):
            Vision hidden size `D`.
        projection_dim (`int`):
            Joint embedding size `P` (of the prompt embeddings and CLIP's visual projection).
        num_clusters (`int` or `tuple[int, int]`, *optional*, defaults to 8):
            Prompt centres of the commonality and difference experts (one number for both, or one each).
        top_k (`int`, *optional*, defaults to 2):
            Experts per sample, 1 to 3.
        router_noise_std (`float`, *optional*, defaults to 1.0):
            Standard deviation of the Gaussian noise on the router logits in training.
        expert_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the experts' inputs in training.
        intermediate_size (`int`, *optional*):
            Hidden width of the sample expert (CLIP's `intermediate_size`); defaults to `4 * hidden_size`.
        hidden_act (`str`, *optional*, defaults to `"quick_gelu"`):
            Activation of all experts (CLIP's `hidden_act`).
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the experts' LayerNorms.
        gate_init (`float`, *optional*, defaults to 0.0):
            Initial value of the per-expert output gates; 0 makes the untrained MGDE the identity.
        router_init_std (`float`, *optional*, defaults to 0.02):
            Standard deviation of the router's initial weights.

    Example:

    ```python
    >>> import torch
    >>> mgde = CaptMGDE(hidden_size=32, projection_dim=16, num_clusters=4, intermediate_size=64)
    >>> features, balance_loss = mgde.eval()(torch.randn(2, 32))
    >>> features.shape, balance_loss
    (torch.Size([2, 32]), None)
    ```"""

    num_experts = 3

    def __init__(
        self,
        hidden_size: int,
        projection_dim: int,
        num_clusters: int | tuple[int, int] = 8,
        top_k: int = 2,
        router_noise_std: float = 1.0,
        expert_dropout: float = 0.1,
        intermediate_size: int | None = None,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        gate_init: float = 0.0,
        router_init_std: float = 0.02,
    ):
        super().__init__()
        if not 1 <= top_k <= self.num_experts:
            raise ValueError(f"top_k must be between 1 and {self.num_experts}, got {top_k}")
        if router_noise_std < 0 or not 0 <= expert_dropout < 1:
            raise ValueError(
                f"Need router_noise_std >= 0 and 0 <= expert_dropout < 1, got {router_noise_std}, {expert_dropout}"
            )
        commonality_clusters, difference_clusters = (
            (num_clusters, num_clusters) if isinstance(num_clusters, int) else tuple(num_clusters)
        )
        self.hidden_size = hidden_size
        self.projection_dim = projection_dim
        self.top_k = top_k
        self.router_noise_std = float(router_noise_std)
        self.gate_init = float(gate_init)
        self.router_init_std = float(router_init_std)

        expert_kwargs = dict(hidden_act=hidden_act, layer_norm_eps=layer_norm_eps, dropout=expert_dropout)
        self.sample_expert = CaptSampleExpert(hidden_size, intermediate_size or 4 * hidden_size, **expert_kwargs)
        self.commonality_expert = CaptSemanticExpert(hidden_size, projection_dim, commonality_clusters, **expert_kwargs)
        self.difference_expert = CaptSemanticExpert(hidden_size, projection_dim, difference_clusters, **expert_kwargs)
        self.router = nn.Linear(hidden_size, self.num_experts, bias=False)  # W_r
        self.expert_gates = nn.Parameter(torch.full((self.num_experts,), self.gate_init))
        with torch.no_grad():
            nn.init.normal_(self.router.weight, std=self.router_init_std)

    @classmethod
    def from_configs(cls, clip_config, adapter_config: CaptAdapterConfig, **kwargs) -> "CaptMGDE":
        """Build an uninitialised MGDE for a `CLIPConfig` and a [`CaptAdapterConfig`] (then call `init_from_clip`,
        or `load_state_dict`). `kwargs` override constructor arguments (e.g. `num_clusters=(5, 5)`)."""
        vision = clip_config.vision_config
        arguments = dict(
            hidden_size=vision.hidden_size,
            projection_dim=clip_config.projection_dim,
            num_clusters=adapter_config.mgde_num_clusters,
            top_k=adapter_config.mgde_top_k,
            router_noise_std=adapter_config.mgde_router_noise_std,
            expert_dropout=adapter_config.mgde_expert_dropout,
            intermediate_size=vision.intermediate_size,
            hidden_act=vision.hidden_act,
            layer_norm_eps=vision.layer_norm_eps,
        )
        arguments.update(kwargs)
        return cls(**arguments)

    @property
    def experts(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """`(sample_expert, commonality_expert, difference_expert)`, in router order."""
        return (self.sample_expert, self.commonality_expert, self.difference_expert)

    @torch.no_grad()
    def init_from_clip(
        self,
        clip_model: nn.Module,
        commonality_centres: torch.Tensor | None = None,
        difference_centres: torch.Tensor | None = None,
    ) -> "CaptMGDE":
        r"""Initialise from a `CLIPModel` (adapted or not) and the prompt centres.

        Copies the last vision layer's `layer_norm2` and MLP into the sample expert; sets each semantic expert's `w`
        to `visual_projection.weight.T`, its LayerNorm from `post_layernorm`, its centres, and its second layer to
        `f_e^T / num_clusters`; resets the gates to `gate_init`. The router keeps its random initialisation.

        Args:
            clip_model (`CLIPModel`):
                Source of the weights (`vision_model.encoder.layers[-1]`, `vision_model.post_layernorm`,
                `visual_projection`).
            commonality_centres, difference_centres (`torch.Tensor` of shape `(num_clusters, P)`, *optional*):
                k-means centres of the commonality / difference prompt embeddings. When omitted, the current
                `centres` buffers are kept (zeros in a new module: that expert then outputs zero until centres are
                set with `set_centres`).

        Returns:
            `self`.
        """
        vision = clip_model.vision_model
        last_layer = vision.encoder.layers[-1]
        last_layer = getattr(last_layer, "base_layer", last_layer)  # unwrap a CaptAdaptedLayer
        self.sample_expert.init_from_clip_layer(last_layer)
        self.commonality_expert.init_from_clip(clip_model.visual_projection, vision.post_layernorm, commonality_centres)
        self.difference_expert.init_from_clip(clip_model.visual_projection, vision.post_layernorm, difference_centres)
        self.expert_gates.fill_(self.gate_init)
        return self

    def set_centres(self, commonality_centres: torch.Tensor, difference_centres: torch.Tensor) -> None:
        """Replace both experts' prompt centres and re-initialise their second layers (`f_e^T / num_clusters`)."""
        self.commonality_expert.set_centres(commonality_centres)
        self.difference_expert.set_centres(difference_centres)

    def route(self, pooled: torch.Tensor) -> CaptMGDERouting:
        """Router decisions for `pooled` of shape `(batch_size, hidden_size)` (noisy in training)."""
        logits = self.router(pooled)
        if self.training and self.router_noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.router_noise_std
        top_logits, top_indices = logits.topk(self.top_k, dim=-1)
        top_weights = top_logits.softmax(dim=-1)  # float32 under CUDA autocast, whatever the logits' dtype
        weights = top_weights.new_zeros(logits.shape).scatter(-1, top_indices, top_weights)
        probs = logits.softmax(dim=-1)
        dispatch = torch.zeros_like(logits).scatter(-1, top_indices, 1.0).mean(dim=0) / self.top_k
        balance_loss = self.num_experts * (dispatch * probs.mean(dim=0)).sum()
        return CaptMGDERouting(logits, probs, weights, top_indices, balance_loss)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""
        Args:
            pooled (`torch.Tensor` of shape `(batch_size, hidden_size)`, or `(..., hidden_size)`):
                The CLS feature of the last vision layer, before `post_layernorm`.

        Returns:
            `tuple(torch.Tensor, torch.Tensor | None)`: the refined feature (same shape as `pooled`) and, in training,
            the load-balancing loss (a scalar; `None` in eval). Use [`~CaptMGDE.route`] for the routing itself.
        """
        if pooled.shape[-1] != self.hidden_size:
            raise ValueError(f"Expected features of size {self.hidden_size}, got shape {tuple(pooled.shape)}")
        flat = pooled.reshape(-1, self.hidden_size)
        routing = self.route(flat)
        expert_outputs = torch.stack([expert(flat) for expert in self.experts], dim=1)  # (B, 3, D)
        weights = routing.expert_weights * self.expert_gates.to(flat.dtype)  # (B, 3)
        refined = flat + (weights.unsqueeze(-1) * expert_outputs).sum(dim=1)
        balance_loss = routing.balance_loss if self.training else None
        return refined.reshape(pooled.shape), balance_loss

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, router_noise_std={self.router_noise_std}"


__all__ = [
    "CaptMGDE",
    "CaptMGDERouting",
    "CaptSampleExpert",
    "CaptSemanticExpert",
    "EXPERT_NAMES",
]
