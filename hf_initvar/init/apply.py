"""Applying a scheme to a model, recording it on the config, and reading back what it intends.

`apply_init` draws every parameter that is not flagged `_is_hf_initialized`, after transformers'
own init has run, so no block-level rule of transformers (GPT-2's `c_proj` rescale) can overwrite
it. Loaded weights carry the flag and are never written: every write goes through the guarded
functions of `transformers.initialization`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers import initialization as hf_init

from hf_initvar.init.roles import ParamInfo, classify_parameters, model_family
from hf_initvar.init.schemes import PerRoleScheme, Scheme, SchemeSpec, resolve_scheme, scheme_record

logger = logging.getLogger(__name__)


def apply_init(
    model: nn.Module,
    scheme: SchemeSpec,
    *,
    generator: torch.Generator | None = None,
    **scheme_args: Any,
) -> None:
    """Draw every fresh parameter of `model` with `scheme` and record the scheme on `model.config`.

    Parameters flagged `_is_hf_initialized` (loaded by `from_pretrained`) are left untouched.
    Tied parameters are drawn once, by the rule of the role `named_parameters()` lists them under
    (the embedding for GPT-2's tied `lm_head`), and stay tied. The same generator state (or global
    seed) gives bit-identical weights.

    Args:
        model: a model `classify_parameters` supports.
        scheme: a registered name (`"gpt2"`), a `Scheme`, or a per-role spec such as
            `{"default": "gpt2", "qkv": ("xavier_normal", {})}`.
        generator: random generator; the global one when None.
        **scheme_args: arguments of the named scheme (of the spec's default for a per-role spec),
            e.g. `std=0.02`.

    Raises:
        ValueError: for an unknown scheme, argument or role, an invalid value, an override for a
            role the model lacks, or an unsupported model.
    """
    built = resolve_scheme(scheme, **scheme_args)
    infos = classify_parameters(model)
    if isinstance(built, PerRoleScheme):
        built.check_roles({info.role for info in infos.values()}, type(model).__name__)

    drawn = draw_parameters(model, built, infos, generator=generator)
    _record(model, built, scheme_args)
    logger.info(
        "initialized %d of %d parameter tensors of %s with init scheme %s",
        drawn, len(infos), type(model).__name__, model.config.init_scheme,
    )


def apply_config_init(model: nn.Module, generator: torch.Generator | None = None) -> bool:
    """Draw the fresh parameters of `model` with the scheme recorded on its config.

    After `from_pretrained`, only the keys missing from the checkpoint are fresh, so only those are
    drawn, with the same depth scaling as a full init (a missing `c_attn` of layer 3 gets layer 3's
    rule).

    Returns:
        True if the config records a scheme (and it was applied), False if it records none.
    """
    init_scheme = getattr(model.config, "init_scheme", None)
    if init_scheme is None:
        return False
    init_args = getattr(model.config, "init_args", None) or {}
    apply_init(model, init_scheme, generator=generator, **init_args)
    return True


def from_config(model_class: type, config: PreTrainedConfig, **kwargs: Any) -> nn.Module:
    """Build a fresh model from `config` and draw it with the scheme recorded on the config.

    Args:
        model_class: a transformers model class or Auto class, e.g. `GPT2LMHeadModel` or
            `AutoModelForCausalLM`.
        config: a config with `init_scheme` (and optionally `init_args`) set; without them the
            model keeps transformers' own init.
        **kwargs: passed to the class's `from_config` / `_from_config`.
    """
    build = getattr(model_class, "from_config", None) or model_class._from_config
    model = build(config, **kwargs)
    apply_config_init(model)
    return model


def from_pretrained(model_class: type, path: str, **kwargs: Any) -> nn.Module:
    """Load a checkpoint and draw its missing keys with the scheme recorded in its config.

    Loaded weights stay bit-identical; keys missing from the checkpoint get the recorded scheme
    instead of transformers' default.

    Args:
        model_class: a transformers model class or Auto class.
        path: a folder written by `save_pretrained`.
        **kwargs: passed to `from_pretrained`.
    """
    model = model_class.from_pretrained(path, **kwargs)
    apply_config_init(model)
    return model


def intended_stds(model: nn.Module, scheme: SchemeSpec | None = None, **scheme_args: Any) -> dict[str, float | None]:
    """Return, per parameter name, the std the scheme intends.

    Args:
        model: a model `classify_parameters` supports.
        scheme: the scheme to read. When None, the one recorded on `model.config` is read. A
            config without one reads transformers' own init for the family: `gpt2` for GPT-2,
            `normal` with the config's initializer_range for the others.
        **scheme_args: arguments of `scheme`.

    Returns:
        Parameter name -> intended std (0.0 for constants such as norm gains and zero biases).
        None only for a model whose family has no transformers default (the ReLU MLP) and whose
        config records no scheme.
    """
    infos = classify_parameters(model)
    if scheme is None:
        scheme, scheme_args = _recorded_or_default_scheme(model)
        if scheme is None:
            return {name: None for name in infos}
    built = resolve_scheme(scheme, **scheme_args)
    return {name: built.intended_std(info) for name, info in infos.items()}


def draw_parameters(
    model: nn.Module,
    scheme: Scheme,
    infos: Mapping[str, ParamInfo],
    generator: torch.Generator | None = None,
) -> int:
    """Draw each fresh parameter named in `infos` in place; return how many were drawn."""
    parameters = dict(model.named_parameters())
    drawn = 0
    with torch.no_grad():
        for name, info in infos.items():
            param = parameters[name]
            if getattr(param, "_is_hf_initialized", False):
                continue
            _draw_one(param, info, scheme, generator)
            drawn += 1
    return drawn


def _draw_one(param: torch.Tensor, info: ParamInfo, scheme: Scheme, generator: torch.Generator | None) -> None:
    if not info.transposed and info.n_fused == 1:
        scheme.init_tensor(param, info, generator=generator)
        return

    # Conv1D or fused Q/K/V: draw [n_fused, out, in] blocks in the logical orientation, then copy
    # them into the stored layout through the guarded copy.
    blocks = torch.empty((info.n_fused, info.fan_out, info.fan_in), dtype=param.dtype, device=param.device)
    scheme.init_tensor(blocks, info, generator=generator)
    hf_init.copy_(param, _to_stored_layout(blocks, info))


def _to_stored_layout(blocks: torch.Tensor, info: ParamInfo) -> torch.Tensor:
    # blocks: (n_fused, out, in)
    if info.fused_heads is not None:
        # GPT-NeoX query_key_value (3·d, d): rows ordered (head, projection, head_dim).
        n_fused, out, fan_in = blocks.shape
        head_dim = out // info.fused_heads
        per_head = blocks.view(n_fused, info.fused_heads, head_dim, fan_in).transpose(0, 1)
        return per_head.reshape(n_fused * out, fan_in)
    logical = blocks.reshape(-1, info.fan_in)  # (n_fused·out, in): Q rows, then K, then V
    return logical.t() if info.transposed else logical


def _record(model: nn.Module, scheme: Scheme, scheme_args: Mapping[str, Any]) -> None:
    init_scheme, init_args = scheme_record(scheme, scheme_args)
    model.config.init_scheme = init_scheme
    model.config.init_args = init_args


def _recorded_or_default_scheme(model: nn.Module) -> tuple[SchemeSpec | None, dict]:
    recorded = getattr(model.config, "init_scheme", None)
    if recorded is not None:
        return recorded, dict(getattr(model.config, "init_args", None) or {})

    family = model_family(model)
    if family == "gpt2":
        logger.info("no init_scheme on %s's config; reading transformers' own GPT-2 init", type(model).__name__)
        return "gpt2", {}
    if family == "mlp":
        logger.warning("no init_scheme on %s's config and no transformers default; stds unknown", type(model).__name__)
        return None, {}
    std = float(getattr(model.config, "initializer_range", None) or 0.02)
    if not math.isfinite(std):
        raise ValueError(f"config.initializer_range of {type(model).__name__} is {std}")
    logger.info("no init_scheme on %s's config; reading transformers' default normal(%g)", type(model).__name__, std)
    return "normal", {"std": std}
