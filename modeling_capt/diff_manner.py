"""Diff-Manner adapters of CAPT: a global (CLS-to-patch attention) and a local (depthwise 3x3 convolution) branch
added after chosen CLIP vision encoder layers, scaled per sample by the confusion weight `alpha` (METHODS.md, CAPT 4).

The injection follows PEFT's layer/injector split without importing PEFT: `CaptAdaptedLayer` wraps a CLIP encoder
layer (`base_layer`) and its `CaptDiffMannerAdapter` (`adapter`), and `inject_diff_manner_adapters` swaps the layers a
`CaptAdapterConfig` selects, in place. State-dict keys therefore read `encoder.layers.<i>.base_layer.*` (the frozen
CLIP weights) and `encoder.layers.<i>.adapter.*` (everything CAPT adds to that layer, including its inference alpha).

This file ships to the Hub as remote code: it imports only the standard library, torch and transformers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_capt import ADAPTER_BRANCHES, CaptAdapterConfig


class CaptZeroInitLinear(nn.Module):
    r"""A linear map `y = x W^T + b` whose weight and bias start at zero (the adapter's `W_out` and `W_g`).

    Deliberately not an `nn.Linear`: the adapters live inside CLIP's vision model, a `PreTrainedModel`, and
    transformers' generic `_init_weights` re-draws every `nn.Linear` it has not initialised yet (for instance when a
    model that holds the adapted CLIP runs `post_init()`), which would silently break the identity-at-init guarantee.
    State-dict keys are the same as an `nn.Linear`'s (`weight`, `bias`).

    Args:
        in_features (`int`): input size.
        out_features (`int`): output size.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden_states, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class CaptDiffMannerAdapter(nn.Module):
    r"""The Diff-Manner adapter: refines the token sequence `[cls; X]` output by one CLIP vision encoder layer.

    With `LN` the adapter's own LayerNorm and `X` the `N = H * W` patch tokens of a square grid:

    ```
    u   = MultiHead(q=LN(cls), k=LN(X), v=LN(X))            # global: the CLS token attends to the patches
    X'  = DWConv3x3(reshape(LN(X) + u, H, W, D))            # local, with the global cue mixed in
    X   = X + alpha * W_out(X')                             # paper Eq. 10
    cls = cls + alpha * W_g(u)                              # so that a last-layer adapter reaches the pooled output
    ```

    `W_out` and `W_g` are zero-initialised, so an untrained adapter is exactly the identity.

    Branches (`adapter_branches`, paper Table 10):

    - `"both"`: as above.
    - `"global"`: no convolution. Read as the pure global branch: every patch receives the same global cue,
      `X' = u` (broadcast over the patches), so `X = X + alpha * W_out(u)` and `cls = cls + alpha * W_g(u)`. (Keeping
      `LN(X)` in `X'` would add a per-token linear adapter that belongs to neither branch.)
    - `"local"`: no attention (`u = 0`) and no `W_g`: `X' = DWConv3x3(LN(X))` and the CLS token is left unchanged; a
      local-only adapter reaches the pooled feature through the later encoder layers' attention.

    `alpha` is the per-sample confusion weight `alpha_j = s * mean_c(s_c) ** gamma` during training. When it is not
    given (inference: no bank), the adapter uses the buffer `alpha_running`, the exact mean of every training alpha
    passed to [`~CaptDiffMannerAdapter.update_running_alpha`]. Before any update it holds `alpha_init`, the value
    `alpha_scale` (= `s * 1 ** gamma`, a maximally confused sample): with zero-initialised `W_out`/`W_g` the choice does
    not change an untrained adapter's output, and a trained model always has updated it.

    Args:
        hidden_size (`int`):
            Vision hidden size `D`.
        num_heads (`int`, *optional*, defaults to 4):
            Heads of the global branch's attention; must divide `hidden_size`.
        branches (`str`, *optional*, defaults to `"both"`):
            `"global"`, `"local"` or `"both"`.
        alpha_init (`float`, *optional*, defaults to 5.0):
            Initial value of `alpha_running`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the adapter's LayerNorm.

    Example:

    ```python
    >>> import torch
    >>> adapter = CaptDiffMannerAdapter(hidden_size=32, num_heads=2)
    >>> hidden_states = torch.randn(2, 1 + 8 * 8, 32)
    >>> torch.equal(adapter(hidden_states, alpha=torch.tensor([1.0, 3.0])), hidden_states)  # zero-initialised
    True
    ```"""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int = 4,
        branches: str = "both",
        alpha_init: float = 5.0,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        if branches not in ADAPTER_BRANCHES:
            raise ValueError(f"branches must be 'global', 'local' or 'both', got {branches!r}")
        uses_global = branches in ("global", "both")
        if uses_global and (num_heads < 1 or hidden_size % num_heads != 0):
            raise ValueError(
                f"adapter_num_heads={num_heads} must be a positive divisor of the vision hidden size {hidden_size}"
            )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.branches = branches
        self.alpha_init = float(alpha_init)

        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        if uses_global:
            self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
            self.global_proj = CaptZeroInitLinear(hidden_size, hidden_size)  # W_g
        if branches in ("local", "both"):
            self.local_conv = nn.Conv2d(hidden_size, hidden_size, kernel_size=3, padding=1, groups=hidden_size)
        self.out_proj = CaptZeroInitLinear(hidden_size, hidden_size)  # W_out

        # Inference alpha: the exact running mean of the training alphas. Persistent, so checkpoints carry it; the
        # count is an integer so that casting the model to half precision does not round it.
        self.register_buffer("alpha_running", torch.tensor(self.alpha_init))
        self.register_buffer("alpha_count", torch.tensor(0, dtype=torch.long))
        self.reset_parameters()

    @property
    def uses_global(self) -> bool:
        return self.branches in ("global", "both")

    @property
    def uses_local(self) -> bool:
        return self.branches in ("local", "both")

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every weight (zero `W_out` and `W_g`) and reset `alpha_running` / `alpha_count`.

        Uses `torch.nn.init`, which transformers guards, so a `PreTrainedModel._init_weights` may call it without
        overwriting loaded weights. It does not have to: transformers' generic init leaves `W_out` and `W_g` (not
        `nn.Linear`s) at zero and the buffers alone, and only redraws the attention, convolution and LayerNorm.
        """
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        if self.uses_global:
            self.attention._reset_parameters()
            nn.init.xavier_uniform_(self.attention.out_proj.weight)
            self.global_proj.reset_parameters()
        if self.uses_local:
            # torch's default Conv2d init, written out so that it goes through the guarded init functions
            nn.init.kaiming_uniform_(self.local_conv.weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(self.local_conv.weight[0].numel())
            nn.init.uniform_(self.local_conv.bias, -bound, bound)
        self.out_proj.reset_parameters()
        nn.init.constant_(self.alpha_running, self.alpha_init)
        nn.init.zeros_(self.alpha_count)

    @torch.no_grad()
    def update_running_alpha(self, alpha: torch.Tensor | float) -> None:
        """Fold a batch of training alphas (`[B]` or a scalar) into `alpha_running`, the exact cumulative mean.

        The caller decides which alphas count (CAPT: the `alpha_j` of every training sample, once per sample seen);
        the forward pass never updates the buffer itself.
        """
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=self.alpha_running.device).reshape(-1)
        if alpha.numel() == 0:
            return
        count = int(self.alpha_count.item())
        new_count = count + alpha.numel()
        mean = self.alpha_running.double()
        mean = mean + (alpha.sum() - alpha.numel() * mean) / new_count
        self.alpha_running.copy_(mean.to(self.alpha_running.dtype))
        self.alpha_count.fill_(new_count)

    def _patch_grid(self, num_patches: int) -> int:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"The Diff-Manner adapter needs the patch tokens on a square grid; got {num_patches} patch tokens "
                "(hidden states must be [batch, 1 + H * W, hidden] with H == W)"
            )
        return side

    def cls_attention(self, normed_cls: torch.Tensor, normed_patches: torch.Tensor) -> torch.Tensor:
        r"""`MultiHead(q=LN(cls), k=LN(X), v=LN(X))` for the single CLS query, without projecting every patch.

        With one query the key and value projections can be moved onto the query side: per head `h`,
        `q_h . (W_k,h x + b_k,h) = (W_k,h^T q_h) . x + const` (the constant cancels in the softmax) and
        `sum_n p_n (W_v,h x_n + b_v,h) = W_v,h (sum_n p_n x_n) + b_v,h`. The cost drops from `O(N D^2)` to
        `O(H N D)` and the result equals `self.attention(...)` (same parameters, up to float rounding).

        Args:
            normed_cls (`torch.Tensor` of shape `(batch_size, 1, hidden_size)`), normed_patches (`torch.Tensor` of
            shape `(batch_size, N, hidden_size)`).

        Returns:
            `torch.Tensor` of shape `(batch_size, 1, hidden_size)`.
        """
        attention = self.attention
        batch_size, _, hidden_size = normed_cls.shape
        heads, head_dim = attention.num_heads, hidden_size // attention.num_heads
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        b_q, _, b_v = attention.in_proj_bias.chunk(3) if attention.in_proj_bias is not None else (None, None, None)
        query = F.linear(normed_cls[:, 0], w_q, b_q).view(batch_size, heads, head_dim)  # [B, H, d]
        key_side = torch.einsum("bhd,hdk->bhk", query, w_k.view(heads, head_dim, hidden_size))  # [B, H, D]
        scores = torch.einsum("bhk,bnk->bhn", key_side, normed_patches) * head_dim**-0.5  # [B, H, N]
        pooled = torch.einsum("bhn,bnk->bhk", scores.softmax(dim=-1), normed_patches)  # [B, H, D]
        values = torch.einsum("bhk,hdk->bhd", pooled, w_v.view(heads, head_dim, hidden_size))  # [B, H, d]
        if b_v is not None:
            values = values + b_v.view(heads, head_dim)
        return attention.out_proj(values.reshape(batch_size, 1, hidden_size))

    def forward(
        self, hidden_states: torch.Tensor, alpha: torch.Tensor | float | None = None, update_patches: bool = True
    ) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, 1 + H * W, hidden_size)`):
                Output of the wrapped encoder layer: the CLS token, then the patch tokens in row-major grid order.
            alpha (`torch.Tensor` of shape `(batch_size,)` or `()`, or `float`, *optional*):
                Per-sample (or shared) adapter weight. Defaults to `alpha_running`.
            update_patches (`bool`, *optional*, defaults to `True`):
                `False` skips the patch update (`X + alpha * W_out(X')`) and returns the patches unchanged: for the
                last encoder layer, whose patch tokens nothing reads (the classifier pools the CLS token), this
                saves the local branch's work without changing the pooled output.

        Returns:
            `torch.Tensor` of shape `(batch_size, 1 + H * W, hidden_size)`: the adapted hidden states.
        """
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"Expected hidden states of shape [batch, 1 + H * W, {self.hidden_size}], "
                f"got {tuple(hidden_states.shape)}"
            )
        batch_size, seq_len, hidden_size = hidden_states.shape
        side = self._patch_grid(seq_len - 1)
        alpha = self._alpha_for(alpha, batch_size, hidden_states)

        cls, patches = hidden_states[:, :1], hidden_states[:, 1:]
        normed = self.norm(hidden_states)
        normed_cls, normed_patches = normed[:, :1], normed[:, 1:]

        if self.uses_global:
            global_cue = self.cls_attention(normed_cls, normed_patches)  # [B, 1, D]
        if not update_patches:
            if self.uses_global:
                cls = cls + alpha * self.global_proj(global_cue)
            return torch.cat([cls, patches], dim=1)
        if self.branches == "global":
            mixed = global_cue.expand(-1, seq_len - 1, -1)
        else:
            local_input = normed_patches + global_cue if self.uses_global else normed_patches
            grid = local_input.transpose(1, 2).reshape(batch_size, hidden_size, side, side)
            mixed = self.local_conv(grid).flatten(2).transpose(1, 2)  # [B, N, D]

        patches = patches + alpha * self.out_proj(mixed)
        if self.uses_global:
            cls = cls + alpha * self.global_proj(global_cue)
        return torch.cat([cls, patches], dim=1)

    def _alpha_for(self, alpha, batch_size: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """`alpha` as a `[B, 1, 1]` (or `[]`) tensor in the hidden states' dtype and device."""
        if alpha is None:
            alpha = self.alpha_running
        alpha = torch.as_tensor(alpha, device=hidden_states.device).to(hidden_states.dtype)
        if alpha.dim() == 0:
            return alpha
        alpha = alpha.reshape(-1)
        if alpha.numel() != batch_size:
            raise ValueError(f"alpha must be a scalar or have one value per sample ({batch_size}), got {alpha.numel()}")
        return alpha.view(batch_size, 1, 1)

    def extra_repr(self) -> str:
        return f"branches={self.branches!r}, num_heads={self.num_heads}"


class CaptAdaptedLayer(nn.Module):
    r"""A CLIP vision encoder layer followed by its Diff-Manner adapter (PEFT's "wrapped base layer" pattern).

    Drop-in for `CLIPEncoderLayer` inside `CLIPEncoder.layers`: `CLIPEncoder` calls every layer as
    `layer(hidden_states, attention_mask, **kwargs)`, and the keyword arguments the vision model receives reach here,
    so `vision_model(pixel_values=..., alpha=alpha)` sets the per-sample alpha of every adapted layer (layers that are
    not adapted ignore the extra keyword).

    Note: transformers' `output_hidden_states=True` records the outputs of `CLIPEncoderLayer` instances through
    forward hooks, so for an adapted layer it records `base_layer`'s output, before the adapter. `last_hidden_state`
    and `pooler_output` include every adapter.

    Args:
        base_layer (`nn.Module`):
            The wrapped encoder layer; called with the standard arguments and left untouched (freezing is the
            caller's business).
        adapter (`CaptDiffMannerAdapter`):
            The adapter applied to the layer's output.
    """

    def __init__(self, base_layer: nn.Module, adapter: CaptDiffMannerAdapter):
        super().__init__()
        if isinstance(base_layer, CaptAdaptedLayer):
            raise ValueError("This layer already carries a Diff-Manner adapter")
        self.base_layer = base_layer
        self.adapter = adapter
        self.disable_adapters = False

    @property
    def alpha_running(self) -> torch.Tensor:
        """The inference alpha (a buffer of `adapter`)."""
        return self.adapter.alpha_running

    @property
    def alpha_count(self) -> torch.Tensor:
        """How many training alphas `alpha_running` averages."""
        return self.adapter.alpha_count

    def update_running_alpha(self, alpha: torch.Tensor | float) -> None:
        """See [`CaptDiffMannerAdapter.update_running_alpha`]."""
        self.adapter.update_running_alpha(alpha)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *args,
        alpha: torch.Tensor | float | None = None,
        update_patches: bool = True,
        **kwargs,
    ):
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, 1 + H * W, hidden_size)`):
                Input of the wrapped layer.
            attention_mask (`torch.Tensor`, *optional*):
                Passed to the wrapped layer (the vision tower uses none).
            alpha (`torch.Tensor` of shape `(batch_size,)` or `()`, or `float`, *optional*):
                Adapter weight; defaults to the adapter's `alpha_running`.
            update_patches (`bool`, *optional*, defaults to `True`):
                See [`CaptDiffMannerAdapter.forward`].
            *args, **kwargs:
                Passed to the wrapped layer unchanged.

        Returns:
            What the wrapped layer returns, with the hidden states adapted: a tensor (transformers 5) or a tuple whose
            first element is the hidden states (transformers 4).
        """
        output = self.base_layer(hidden_states, attention_mask, *args, **kwargs)
        if self.disable_adapters:
            return output
        if isinstance(output, tuple):
            return (self.adapter(output[0], alpha=alpha, update_patches=update_patches),) + tuple(output[1:])
        return self.adapter(output, alpha=alpha, update_patches=update_patches)


def _vision_encoder_layers(vision_model: nn.Module) -> nn.ModuleList:
    """The `encoder.layers` list of a CLIP vision transformer (`CLIPVisionModel`, or a model with `vision_model`)."""
    for candidate in (vision_model, getattr(vision_model, "vision_model", None)):
        layers = getattr(getattr(candidate, "encoder", None), "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(
        f"{type(vision_model).__name__} has no `encoder.layers` (nor `vision_model.encoder.layers`): "
        "pass a CLIP vision model"
    )


def _layer_hidden_size_and_eps(layer: nn.Module) -> tuple[int, float]:
    norm = getattr(layer, "layer_norm1", None)
    if isinstance(norm, nn.LayerNorm):
        return int(norm.normalized_shape[-1]), float(norm.eps)
    hidden_size = getattr(layer, "embed_dim", None)
    if hidden_size is None:
        raise TypeError(f"Cannot read the hidden size of {type(layer).__name__}; expected a CLIPEncoderLayer")
    return int(hidden_size), 1e-5


def inject_diff_manner_adapters(vision_model: nn.Module, adapter_config: CaptAdapterConfig) -> list[str]:
    """Wrap the vision encoder layers `adapter_config` selects in [`CaptAdaptedLayer`]s, in place.

    Like PEFT's `_create_and_replace`: every selected `encoder.layers.<i>` is replaced by a `CaptAdaptedLayer` holding
    the original layer as `base_layer` and a fresh (identity) [`CaptDiffMannerAdapter`] on the layer's device and
    dtype. Layer names are relative to the vision transformer, as in `CaptAdapterConfig.target_modules`.

    Args:
        vision_model (`nn.Module`):
            A `CLIPVisionModel` (or any module with `encoder.layers` or `vision_model.encoder.layers`).
        adapter_config (`CaptAdapterConfig`):
            Which layers (`target_modules`, `layers_to_transform`), branches, heads and `alpha_scale`.

    Returns:
        `list[str]`: the wrapped layer names, e.g. `["encoder.layers.10", "encoder.layers.11"]`.

    Raises:
        `ValueError`: if a selected layer is already adapted (injecting twice is a mistake, not a no-op), if the
        config selects no layer, or if `adapter_num_heads` does not divide the hidden size.
    """
    layers = _vision_encoder_layers(vision_model)
    indices = adapter_config.select_layers(len(layers))
    already = [f"encoder.layers.{i}" for i in indices if isinstance(layers[i], CaptAdaptedLayer)]
    if already:
        raise ValueError(f"Diff-Manner adapters are already injected in {already}")

    # Build every adapter before swapping any layer, so a bad config leaves the model untouched.
    adapters = {}
    for index in indices:
        hidden_size, eps = _layer_hidden_size_and_eps(layers[index])
        adapter = CaptDiffMannerAdapter(
            hidden_size,
            num_heads=adapter_config.adapter_num_heads,
            branches=adapter_config.adapter_branches,
            alpha_init=adapter_config.alpha_scale,
            layer_norm_eps=eps,
        )
        reference = next(layers[index].parameters(), None)
        if reference is not None:
            adapter.to(device=reference.device, dtype=reference.dtype)
        adapters[index] = adapter
    for index, adapter in adapters.items():
        layers[index] = CaptAdaptedLayer(layers[index], adapter)
    return [f"encoder.layers.{i}" for i in indices]


def adapted_layers(module: nn.Module) -> Iterator[tuple[str, CaptAdaptedLayer]]:
    """Yield `(name, layer)` for every [`CaptAdaptedLayer`] inside `module`."""
    for name, submodule in module.named_modules():
        if isinstance(submodule, CaptAdaptedLayer):
            yield name, submodule


def adapter_parameter_names(module: nn.Module) -> list[str]:
    """Names (as in `module.named_parameters()`) of the parameters of every adapted layer's `adapter`: what CAPT
    trains."""
    return [
        f"{name}.adapter.{param_name}" if name else f"adapter.{param_name}"
        for name, layer in adapted_layers(module)
        for param_name, _ in layer.adapter.named_parameters()
    ]


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state of every adapted layer's `adapter` in `module`: adapter weights and `alpha_running` / `alpha_count`.

    Keys are as in `module.state_dict()`, so `module.load_state_dict(adapter_state_dict(...), strict=False)` restores
    them into a model with the same adapters injected.
    """
    state = {}
    for name, layer in adapted_layers(module):
        state.update(layer.adapter.state_dict(prefix=f"{name}.adapter." if name else "adapter."))
    return state


def set_adapters_enabled(module: nn.Module, enabled: bool) -> None:
    """Enable or disable every Diff-Manner adapter in `module` (disabled: the wrapped layers' own outputs)."""
    for _, layer in adapted_layers(module):
        layer.disable_adapters = not enabled


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Context manager running `module` without its Diff-Manner adapters (e.g. zero-shot CLIP features), then
    restoring each layer's previous state."""
    layers = [layer for _, layer in adapted_layers(module)]
    previous = [layer.disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer.disable_adapters = True
        yield
    finally:
        for layer, state in zip(layers, previous):
            layer.disable_adapters = state


def update_running_alphas(module: nn.Module, alpha: torch.Tensor | float) -> None:
    """Fold a batch of training alphas into the `alpha_running` of every adapted layer in `module`."""
    for _, layer in adapted_layers(module):
        layer.update_running_alpha(alpha)


__all__ = [
    "CaptAdaptedLayer",
    "CaptDiffMannerAdapter",
    "CaptZeroInitLinear",
    "adapted_layers",
    "adapter_parameter_names",
    "adapter_state_dict",
    "adapters_disabled",
    "inject_diff_manner_adapters",
    "set_adapters_enabled",
    "update_running_alphas",
]
