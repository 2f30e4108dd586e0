"""Where the tracked weights of each layer live, per architecture.

For transformers the tracked weights are the Q, K and V projections of each attention layer. For
`ReluMLP` they are the weights of its linear layers, one projection named `weight` per layer.
A layout lists one `ProjectionPlacement` per (layer, projection): the module and parameter holding
the weight, the axis of that weight that indexes output features, and where each head's
`head_dim` features start along that axis. From a placement and the full weight,
`ProjectionPlacement.view` returns a view shaped `(heads, in_features, head_dim)` that shares
storage with the parameter, so reading it costs one pass over the Q/K/V bytes and no copy. Under
sharding the same placement determines which elements of a rank's shard belong to which head
(`hf_initvar.tracking.shards`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

PROJECTIONS = ("q", "k", "v")
# The one projection of each `ReluMLP` layer: its whole linear weight.
MLP_PROJECTION = "weight"

# Wrapper modules that insert a level into parameter names (FSDP1, activation checkpointing,
# torch.compile); their prefixes are dropped so names match the unwrapped model's.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


@dataclass(frozen=True)
class ProjectionView:
    """One projection of one layer: `weight` has shape `(heads, in_features, head_dim)`."""

    layer: int
    projection: str
    weight: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class ProjectionPlacement:
    """Location of one projection of one layer inside its weight.

    Along `feature_axis` of the weight (0 for `nn.Linear`'s `[out, in]`, 1 for GPT-2's `Conv1D`
    `[in, out]`), head `h` occupies the `head_dim` indices starting at `offset + h * head_stride`.

    Attributes:
        layer: 0-based layer index.
        projection: `q`, `k` or `v` for attention, `weight` for an MLP layer.
        module: the module that owns the weight.
        parameter_name: attribute name of the weight on `module`.
        name: the weight's qualified name in the model (as `named_parameters` gives it).
        n_heads: heads of this projection (fewer for K/V under grouped-query attention).
        head_dim: features per head.
        feature_axis: axis of the weight that indexes output features.
        offset: index along `feature_axis` where head 0 starts.
        head_stride: distance along `feature_axis` between the starts of consecutive heads;
            `head_dim` when heads are contiguous.
    """

    layer: int
    projection: str
    module: nn.Module
    parameter_name: str
    name: str
    n_heads: int
    head_dim: int
    feature_axis: int = 0
    offset: int = 0
    head_stride: int = 0

    def __post_init__(self):
        if not self.projection:
            raise ValueError(f"{self.name}: missing projection name (such as 'q' or 'weight'), got {self.projection!r}")
        if self.feature_axis not in (0, 1):
            raise ValueError(f"feature_axis must be 0 ([out, in] weights) or 1 ([in, out] weights), got {self.feature_axis!r}")
        if self.head_stride == 0:
            object.__setattr__(self, "head_stride", self.head_dim)
        if self.head_stride < self.head_dim:
            raise ValueError(f"head_stride {self.head_stride} is smaller than head_dim {self.head_dim}, so heads would overlap")

    @property
    def feature_end(self) -> int:
        """One past the last index along `feature_axis` that the projection uses."""
        return self.offset + (self.n_heads - 1) * self.head_stride + self.head_dim

    def weight(self) -> torch.Tensor:
        """Return the full weight tensor (unsharded models only)."""
        return getattr(self.module, self.parameter_name)

    def view(self, weight: torch.Tensor) -> torch.Tensor:
        """Return the `(heads, in_features, head_dim)` view of this projection in the 2-D `weight`."""
        if weight.dim() != 2 or weight.shape[self.feature_axis] < self.feature_end:
            raise ValueError(
                f"{self.name}: expected a 2-D weight with at least {self.feature_end} entries on axis "
                f"{self.feature_axis} for layer {self.layer} {self.projection}, got shape {tuple(weight.shape)}"
            )
        feature_stride = weight.stride(self.feature_axis)
        input_axis = 1 - self.feature_axis
        return weight.as_strided(
            (self.n_heads, weight.shape[input_axis], self.head_dim),
            (self.head_stride * feature_stride, weight.stride(input_axis), feature_stride),
            weight.storage_offset() + self.offset * feature_stride,
        )


@dataclass(frozen=True)
class AttentionLayout:
    """The tracked geometry of a model: one placement per (layer, projection), layer-major.

    Attributes:
        name: layout name, stored in the history's metadata.
        placements: Q, K, V placements of layer 0, then layer 1, and so on.
        n_head: query heads per layer (1 for an MLP).
        head_dim: features per head (an MLP's widest layer output).
        n_kv_head: key/value heads per layer (fewer than `n_head` under grouped-query attention).
        projections: names of the projections of a layer, in order.
        metric_prefix: first part of the metric keys sent to reporters, e.g. `qkv` in
            `qkv/variance/layer_03/k`.
    """

    name: str
    placements: list[ProjectionPlacement]
    n_head: int
    head_dim: int
    n_kv_head: int = 0
    projections: tuple[str, ...] = PROJECTIONS
    metric_prefix: str = "qkv"
    n_layer: int = field(init=False)

    def __post_init__(self):
        if not self.placements:
            raise ValueError(f"layout {self.name!r} has no placements")
        unknown = sorted({placement.projection for placement in self.placements} - set(self.projections))
        if unknown:
            raise ValueError(f"layout {self.name!r} has placements of projections {unknown}, not among its projections {list(self.projections)}")
        if self.n_kv_head == 0:
            object.__setattr__(self, "n_kv_head", self.n_head)
        object.__setattr__(self, "n_layer", 1 + max(placement.layer for placement in self.placements))

    @property
    def label(self) -> str:
        """Return the tracked weights for messages: `Q/K/V`, or the projection names joined by `/`."""
        return "Q/K/V" if self.projections == PROJECTIONS else "/".join(self.projections)

    @property
    def n_rows(self) -> int:
        """Number of (layer, projection) entries a logged step produces."""
        return len(self.placements)

    def views(self) -> list[ProjectionView]:
        """Return the `(heads, in_features, head_dim)` views of the full (unsharded) weights."""
        return [
            ProjectionView(placement.layer, placement.projection, placement.view(placement.weight()))
            for placement in self.placements
        ]


LayoutBuilder = Callable[[nn.Module], AttentionLayout]
_LAYOUTS: dict[str, LayoutBuilder] = {}


def register_layout(model_type: str) -> Callable[[LayoutBuilder], LayoutBuilder]:
    """Register a layout builder for models whose `config.model_type` is `model_type`.

    The builder receives the model and returns an `AttentionLayout`. It should read the geometry
    from `model.config`, not from weight shapes, because under sharding the weights are shards.
    See `llama_layout` for an example.
    """

    def decorator(builder: LayoutBuilder) -> LayoutBuilder:
        _LAYOUTS[model_type] = builder
        return builder

    return decorator


def supported_model_types() -> list[str]:
    """Model types with a registered layout."""
    return sorted(_LAYOUTS)


def detect_layout(model: nn.Module) -> AttentionLayout:
    """Return the attention layout of `model`, found from `model.config.model_type`.

    Raises:
        ValueError: the model has no config or no registered layout.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _LAYOUTS:
        known = supported_model_types()
        close = difflib.get_close_matches(str(model_type), known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"no weight layout for model type {model_type!r} ({type(model).__name__}).{hint} "
            f"Supported model types: {', '.join(known)}. Register one with "
            "hf_initvar.tracking.register_layout."
        )
    return _LAYOUTS[model_type](model)


def unwrapped_name(name: str) -> str:
    """Return a parameter or module name without FSDP1, checkpointing and compile wrapper levels."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name.removesuffix("_fsdp_wrapped_module").rstrip(".")


def qualified_names(model: nn.Module) -> dict[int, str]:
    """Map `id(module)` to the module's name in `model`, with wrapper prefixes removed."""
    names = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), unwrapped_name(name))
    return names


def unwrap(module: nn.Module) -> nn.Module:
    """Return the module inside FSDP1 and activation-checkpointing wrappers (or `module` itself)."""
    for attribute in ("_fsdp_wrapped_module", "_checkpoint_wrapped_module"):
        while hasattr(module, attribute) and isinstance(getattr(module, attribute), nn.Module):
            module = getattr(module, attribute)
    return module


def _base_model(model: nn.Module) -> nn.Module:
    """Return the model without its task head (`GPT2LMHeadModel.transformer`, `LlamaForCausalLM.model`, …)."""
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix, model) if prefix else model


def _weight_placement(names: dict[int, str], module: nn.Module, layer: int, projection: str, **geometry) -> ProjectionPlacement:
    """Return the placement of `projection` in `module.weight`, named as in the model; `geometry` sets heads and offsets."""
    return ProjectionPlacement(
        layer=layer,
        projection=projection,
        module=module,
        parameter_name="weight",
        name=f"{names[id(module)]}.weight",
        **geometry,
    )


def _separate_projections(
    model: nn.Module, name: str, attentions: list[nn.Module], attributes: tuple[str, str, str], n_head: int, n_kv_head: int, head_dim: int
) -> AttentionLayout:
    """Layout for separate `nn.Linear` Q, K and V projections (`[out, in]` weights, heads contiguous)."""
    names = qualified_names(model)
    placements = []
    for layer, attention in enumerate(attentions):
        for projection, attribute in zip(PROJECTIONS, attributes):
            module = unwrap(getattr(attention, attribute))
            placements.append(
                _weight_placement(names, module, layer, projection, n_heads=n_head if projection == "q" else n_kv_head, head_dim=head_dim)
            )
    return AttentionLayout(name, placements, n_head, head_dim, n_kv_head)


@register_layout("gpt2")
def gpt2_layout(model: nn.Module) -> AttentionLayout:
    """GPT-2: `attn.c_attn` is a `Conv1D` whose weight is `[in, 3*in]`.

    Q, K and V are the three column blocks of width `in`, and each head is a contiguous group of
    `head_dim` columns inside its block (GPT-2's attention splits the `c_attn` output along the last
    dim, then reshapes each third to `(n_head, head_dim)`).
    """
    config = model.config
    width = config.n_embd
    n_head = config.n_head
    head_dim = width // n_head
    names = qualified_names(model)
    placements = []
    for layer, block in enumerate(_base_model(model).h):
        module = unwrap(block.attn.c_attn)
        for index, projection in enumerate(PROJECTIONS):
            placements.append(
                _weight_placement(names, module, layer, projection, n_heads=n_head, head_dim=head_dim, feature_axis=1, offset=index * width)
            )
    return AttentionLayout("gpt2", placements, n_head, head_dim)


@register_layout("gpt_neox")
def gpt_neox_layout(model: nn.Module) -> AttentionLayout:
    """GPT-NeoX: `attention.query_key_value` is an `nn.Linear` with weight `[3*hidden, hidden]`.

    Output features are interleaved per head: head `h` owns rows `h*3*head_dim` to
    `(h+1)*3*head_dim`, in the order q, k, v (the attention reshapes the output to
    `(n_head, 3*head_dim)` and chunks the last dim in three).
    """
    config = model.config
    n_head = config.num_attention_heads
    head_dim = config.hidden_size // n_head
    names = qualified_names(model)
    placements = []
    for layer, block in enumerate(_base_model(model).layers):
        module = unwrap(block.attention.query_key_value)
        for index, projection in enumerate(PROJECTIONS):
            geometry = {"n_heads": n_head, "head_dim": head_dim, "offset": index * head_dim, "head_stride": 3 * head_dim}
            placements.append(_weight_placement(names, module, layer, projection, **geometry))
    return AttentionLayout("gpt_neox", placements, n_head, head_dim)


def llama_layout(model: nn.Module) -> AttentionLayout:
    """LLaMA family: separate `self_attn.q_proj`, `k_proj`, `v_proj` (`[out, in]`).

    K and V have `num_key_value_heads` heads (grouped-query attention), Q has
    `num_attention_heads`; `head_dim` comes from the config when it sets one.
    """
    config = model.config
    n_head = config.num_attention_heads
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    attentions = [layer.self_attn for layer in _base_model(model).layers]
    return _separate_projections(
        model, config.model_type, attentions, ("q_proj", "k_proj", "v_proj"), n_head, n_kv_head, head_dim
    )


for _model_type in ("llama", "mistral", "qwen2"):
    register_layout(_model_type)(llama_layout)


def bert_layout(model: nn.Module) -> AttentionLayout:
    """BERT and RoBERTa: `attention.self.query`, `key`, `value` are `nn.Linear` (`[out, in]`)."""
    config = model.config
    n_head = config.num_attention_heads
    head_dim = config.hidden_size // n_head
    attentions = [layer.attention.self for layer in _base_model(model).encoder.layer]
    return _separate_projections(model, config.model_type, attentions, ("query", "key", "value"), n_head, n_head, head_dim)


for _model_type in ("bert", "roberta"):
    register_layout(_model_type)(bert_layout)


@register_layout("opt")
def opt_layout(model: nn.Module) -> AttentionLayout:
    """OPT: `self_attn.q_proj`, `k_proj`, `v_proj` are `nn.Linear` (`[out, in]`).

    OPT multiplies the query by `head_dim**-0.5` after `q_proj`; the weight itself is unscaled.
    """
    config = model.config
    n_head = config.num_attention_heads
    head_dim = config.hidden_size // n_head
    base = _base_model(model)
    decoder = getattr(base, "decoder", base)
    attentions = [layer.self_attn for layer in decoder.layers]
    return _separate_projections(model, "opt", attentions, ("q_proj", "k_proj", "v_proj"), n_head, n_head, head_dim)


@register_layout("relu_mlp")
def relu_mlp_layout(model: nn.Module) -> AttentionLayout:
    """`ReluMLP`: every entry of `layers` is an `nn.Linear` (`[out, in]`), tracked whole as projection `weight`.

    The classifier, the last entry, is tracked too. Each layer is one "head" spanning all its
    output features, so per-head rows repeat the whole-layer rows.
    """
    names = qualified_names(model)
    widths = model.config.layer_sizes[1:]
    placements = []
    for layer, linear in enumerate(_base_model(model).layers):
        module = unwrap(linear)
        placements.append(_weight_placement(names, module, layer, MLP_PROJECTION, n_heads=1, head_dim=widths[layer]))
    return AttentionLayout(
        "relu_mlp", placements, n_head=1, head_dim=max(widths), projections=(MLP_PROJECTION,), metric_prefix="mlp"
    )
