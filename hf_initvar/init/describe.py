"""Text tables of the registry: every scheme with its arguments and formula, and the std a scheme
intends for each role and layer of a model. `hf-initvar schemes` prints them.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hf_initvar.init.roles import ROLES, classify_parameters
from hf_initvar.init.schemes import (
    SchemeSpec,
    list_schemes,
    resolve_scheme,
    scheme_arguments,
    scheme_class,
    scheme_doc_paragraph,
)

# Named model shapes for the tables: model_type plus size.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-124m": {"model": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257},
}

# model_type -> (Auto class name, default vocabulary size) for the families the tables can build.
_BUILDABLE: dict[str, tuple[str, int]] = {
    "gpt2": ("AutoModelForCausalLM", 50257),
    "llama": ("AutoModelForCausalLM", 32000),
    "mistral": ("AutoModelForCausalLM", 32000),
    "qwen2": ("AutoModelForCausalLM", 151936),
    "gpt_neox": ("AutoModelForCausalLM", 50304),
    "bert": ("AutoModelForMaskedLM", 30522),
    "roberta": ("AutoModelForMaskedLM", 50265),
}


def describe_schemes() -> str:
    """Return a table of every registered scheme: name, arguments with defaults, formula, source."""
    lines = []
    for name in list_schemes():
        cls = scheme_class(name)
        arguments = ", ".join(f"{arg}: {kind} = {default!r}" for arg, kind, default in scheme_arguments(cls))
        lines.append(f"{name}({arguments})")
        lines.append(f"    formula: {scheme_doc_paragraph(cls, 'Formula')}")
        lines.append(f"    source:  {scheme_doc_paragraph(cls, 'Source')}")
    return "\n".join(lines)


def build_meta_model(
    model: str,
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_head: int | None = None,
    vocab_size: int | None = None,
) -> nn.Module:
    """Build a transformers model on the meta device (shapes only, no memory) from a size.

    Args:
        model: a preset (`gpt2-124m`) or a model_type (`gpt2`, `llama`, `mistral`, `qwen2`,
            `gpt_neox`, `bert`, `roberta`).
        n_layer: number of blocks (required for a model_type).
        n_embd: model width (required for a model_type).
        n_head: attention heads; n_embd/64 when None.
        vocab_size: vocabulary size; the family's usual size when None.

    Raises:
        ValueError: for an unknown model or a missing size.
    """
    import transformers

    if model in MODEL_PRESETS:
        preset = MODEL_PRESETS[model]
        model = preset["model"]
        n_layer = n_layer or preset["n_layer"]
        n_embd = n_embd or preset["n_embd"]
        n_head = n_head or preset["n_head"]
        vocab_size = vocab_size or preset["vocab_size"]
    if model not in _BUILDABLE:
        known = [*MODEL_PRESETS, *_BUILDABLE]
        close = difflib.get_close_matches(model, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ValueError(f"unknown model {model!r}{hint} Known: {known}")
    if not n_layer or not n_embd:
        raise ValueError(f"model {model!r} needs --n_layer and --n_embd (or a preset such as gpt2-124m)")

    auto_class, default_vocab = _BUILDABLE[model]
    n_head = n_head or max(1, n_embd // 64)
    config = transformers.AutoConfig.for_model(
        model,
        num_hidden_layers=n_layer,
        hidden_size=n_embd,
        num_attention_heads=n_head,
        num_key_value_heads=n_head,
        intermediate_size=4 * n_embd,
        vocab_size=vocab_size or default_vocab,
    )
    with torch.device("meta"):
        return getattr(transformers, auto_class).from_config(config)


def describe_intended_stds(model: nn.Module, scheme: SchemeSpec, **scheme_args: Any) -> str:
    """Return a table of the std `scheme` intends for each role and layer of `model`.

    Parameters with the same role, shape and rule share one row, which lists their layers.
    """
    built = resolve_scheme(scheme, **scheme_args)
    groups: dict[tuple[str, ...], list[int | None]] = {}
    for info in _ordered(classify_parameters(model).values()):
        tensor = "bias" if info.name.endswith("bias") else "weight"
        rule = built.rule(info)
        if rule.kind == "constant":
            distribution, std = f"constant {rule.value:g}", "0"
        else:
            distribution, std = rule.kind, f"{built.intended_std(info):.6g}"
        shape = "x".join(str(size) for size in info.block_shape)
        if info.n_fused > 1:
            shape += f" (x{info.n_fused} fused)"
        groups.setdefault((info.role, tensor, shape, distribution, std), []).append(info.layer)

    rows = [[role, tensor, _layer_ranges(layers), shape, distribution, std]
            for (role, tensor, shape, distribution, std), layers in groups.items()]
    header = ["role", "tensor", "layers", "out x in", "distribution", "intended std"]
    title = f"{type(model).__name__} ({_size(model)}), init scheme {_scheme_label(scheme, scheme_args)}"
    return title + "\n" + _format_table(header, rows)


def _ordered(infos):
    # Roles in the documented order, then layer order, so one table reads top (embeddings) to
    # bottom (norms and biases).
    position = {role: index for index, role in enumerate(ROLES)}

    def key(info):
        layer = info.layer if info.layer is not None else float("inf")
        return position[info.role], info.name.endswith("bias"), layer

    return sorted(infos, key=key)


def _layer_ranges(layers: list[int | None]) -> str:
    numbers = sorted({layer for layer in layers if layer is not None})
    parts = []
    for number in numbers:
        if parts and number == parts[-1][1] + 1:
            parts[-1][1] = number
        else:
            parts.append([number, number])
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
    if None in layers:
        text = f"{text},-" if text else "-"
    return text


def _size(model: nn.Module) -> str:
    config = model.config
    n_layer = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    return f"{n_layer} layers, width {width}"


def _scheme_label(scheme: SchemeSpec, scheme_args: dict) -> str:
    label = scheme if isinstance(scheme, str) else repr(scheme)
    if scheme_args:
        label += "(" + ", ".join(f"{key}={value!r}" for key, value in scheme_args.items()) + ")"
    return label


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)


def describe_command(
    names: Sequence[str],
    model: str | None = None,
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_head: int | None = None,
    vocab_size: int | None = None,
    init_args: dict[str, Any] | None = None,
) -> str:
    """Return the text `hf-initvar schemes` prints.

    With no model, the list of every scheme (or of the named ones). With a model (`--model`, or a
    preset such as `gpt2-124m` among `names`), one intended-std table per named scheme, or per
    registered scheme when none is named.

    Raises:
        ValueError: for an unknown scheme or model name, or init args given for several schemes.
    """
    schemes = [name for name in names if name not in MODEL_PRESETS]
    presets = [name for name in names if name in MODEL_PRESETS]
    if len(presets) > 1 or (presets and model):
        raise ValueError(f"expected one model, got {[*presets, *([model] if model else [])]}")
    model = model or (presets[0] if presets else None)
    for name in schemes:
        scheme_class(name)
    if init_args and len(schemes) != 1:
        raise ValueError(f"--init_args needs exactly one scheme name, got {schemes or 'none'}")

    if model is None:
        if n_layer or n_embd:
            raise ValueError("--n_layer and --n_embd need --model (e.g. --model gpt2)")
        text = describe_schemes()
        if not schemes:
            return text
        blocks = text.split("\n")
        return "\n".join(
            "\n".join(blocks[index : index + 3])
            for index in range(0, len(blocks), 3)
            if blocks[index].split("(")[0] in schemes
        )

    built = build_meta_model(model, n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size)
    tables = [describe_intended_stds(built, name, **(init_args or {})) for name in schemes or list_schemes()]
    return "\n\n".join(tables)
