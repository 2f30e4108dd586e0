"""GPT-2 presets and config construction for from-scratch pretraining."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from transformers import GPT2Config


@dataclass(frozen=True)
class Preset:
    """A named GPT-2 size with training defaults that suit it.

    `model` holds `GPT2Config` fields; `training` holds `TrainingArguments` defaults that flags
    given on the command line still override; `vocab_size` sizes a tokenizer trained on the corpus.
    """

    description: str
    model: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 8192


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        description="12 layers, width 128, 4 heads, context 128: the whole run fits in minutes on 2 CPU cores",
        model={"n_layer": 12, "n_embd": 128, "n_head": 4, "n_positions": 128},
        training={
            "max_steps": 300,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 32,
            "learning_rate": 2e-3,
            "warmup_steps": 30,
            "weight_decay": 0.1,
            "eval_strategy": "steps",
            "eval_steps": 100,
            "logging_steps": 10,
            "save_strategy": "no",
        },
        vocab_size=4096,
    ),
    "gpt2-124m": Preset(
        description="GPT-2 small, the model of arXiv:2510.09423: 12 layers, 12 heads, width 768, context 1024",
        model={"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024},
        training={
            "max_steps": 20_000,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 16,
            "learning_rate": 6e-4,
            "warmup_steps": 700,
            "weight_decay": 0.1,
            "lr_scheduler_type": "cosine",
            "eval_strategy": "steps",
            "eval_steps": 1000,
            "logging_steps": 50,
            "save_steps": 2000,
        },
        vocab_size=50257,
    ),
    "tiny": Preset(
        description="2 layers, width 32, context 32: seconds on a CPU, for tests and smoke runs",
        model={"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32},
        training={
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 4,
            "learning_rate": 1e-3,
            "eval_strategy": "no",
            "logging_steps": 1,
            "save_strategy": "no",
        },
        vocab_size=300,
    ),
}


def get_preset(name: str) -> Preset:
    """Return the preset called `name`.

    Raises:
        ValueError: unknown name, with the nearest known one.
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown preset {name!r}.{hint} Known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """Parse `"n_embd=256,n_head=8,resid_pdrop=0.0"` into GPT2Config field values.

    Values are read as JSON when they parse (numbers, booleans, null), else kept as strings.

    Raises:
        ValueError: a malformed item or a name that is not a `GPT2Config` field.
    """
    if not text:
        return {}
    known = set(GPT2Config().to_dict())
    overrides = {}
    for item in text.split(","):
        name, separator, value = item.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ValueError(f"config override {item!r} is not of the form name=value (as in 'n_embd=256,n_head=8')")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{name!r} is not a GPT2Config field.{hint}")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value.strip()
    return overrides


def build_gpt2_config(preset: str, vocab_size: int, bos_token_id: int, eos_token_id: int, overrides: dict[str, Any]) -> GPT2Config:
    """Build the `GPT2Config` of a preset with `overrides` applied last.

    Raises:
        ValueError: the width is not divisible by the number of heads.
    """
    fields = {**get_preset(preset).model, "vocab_size": vocab_size, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
    fields.update(overrides)
    if fields["n_embd"] % fields["n_head"] != 0:
        raise ValueError(f"n_embd={fields['n_embd']} is not divisible by n_head={fields['n_head']}")
    return GPT2Config(**fields)
