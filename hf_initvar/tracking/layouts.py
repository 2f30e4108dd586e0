"""Where the Q, K and V weights of each attention layer live, per architecture.

A layout turns a model into a list of `ProjectionView`s: for every (layer, projection) a view of the
weight, shaped `(heads, rows, head_dim)` so that per-head statistics reduce over dims 1 and 2 and
per-projection statistics reduce over everything. Views share storage with the parameter, so
reading them costs one pass over the Q/K/V bytes and no copy.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

PROJECTIONS = ("q", "k", "v")


@dataclass(frozen=True)
class ProjectionView:
    """One projection of one layer: `weight` has shape `(heads, rows, head_dim)`."""

    layer: int
    projection: str
    weight: torch.Tensor


@dataclass(frozen=True)
class AttentionLayout:
    """The attention geometry of a model and a function that returns its Q/K/V views."""

    name: str
    n_layer: int
    n_head: int
    head_dim: int
    views: Callable[[], list[ProjectionView]]

    @property
    def n_rows(self) -> int:
        """Number of (layer, projection) entries a logged step produces."""
        return self.n_layer * len(PROJECTIONS)


LayoutBuilder = Callable[[nn.Module], AttentionLayout]
_LAYOUTS: dict[str, LayoutBuilder] = {}


def register_layout(model_type: str) -> Callable[[LayoutBuilder], LayoutBuilder]:
    """Register a layout builder for models whose `config.model_type` is `model_type`.

    The builder receives the model and returns an `AttentionLayout`; see `gpt2_layout` for an example.
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
            f"no Q/K/V layout for model type {model_type!r} ({type(model).__name__}).{hint} "
            f"Supported model types: {', '.join(known)}. Register one with "
            "hf_initvar.tracking.register_layout."
        )
    return _LAYOUTS[model_type](model)


@register_layout("gpt2")
def gpt2_layout(model: nn.Module) -> AttentionLayout:
    """GPT-2: `attn.c_attn` is a `Conv1D` whose weight is `[in, 3*in]`.

    Q, K and V are the three column blocks of width `in`, and each head is a contiguous group of
    `head_dim` columns inside its block (GPT-2's attention splits the `c_attn` output along the last
    dim, then reshapes each third to `(n_head, head_dim)`).
    """
    base = getattr(model, "transformer", model)
    blocks = base.h
    config = model.config
    width = config.n_embd
    n_head = config.n_head
    head_dim = width // n_head

    def views() -> list[ProjectionView]:
        result = []
        for layer, block in enumerate(blocks):
            weight = block.attn.c_attn.weight  # (in, 3 * in)
            for index, projection in enumerate(PROJECTIONS):
                columns = weight[:, index * width : (index + 1) * width]  # (in, n_head * head_dim)
                per_head = columns.unflatten(1, (n_head, head_dim)).transpose(0, 1)  # (n_head, in, head_dim)
                result.append(ProjectionView(layer, projection, per_head))
        return result

    return AttentionLayout("gpt2", len(blocks), n_head, head_dim, views)
