"""The Q/K/V variance an init scheme intends, read back for a saved run.

The target is the square of the std the scheme draws each layer's Q/K/V (or an MLP layer's weight) with
(`hf_initvar.init.intended_stds`), on a model built on the meta device from the run's
`config.json`, or without one from the config or, failing that, the sizes in the history's `meta.json`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from hf_initvar.init import classify_parameters, intended_stds

logger = logging.getLogger(__name__)

# Init roles of the tracked weights, and the history projections each role's weight holds.
_ROLE_PROJECTIONS = {
    "qkv": ("q", "k", "v"),
    "q": ("q",),
    "k": ("k",),
    "v": ("v",),
    "hidden": ("weight",),
    "classifier": ("weight",),
}


def intended_variances(meta: dict[str, Any], run_dir: str | os.PathLike | None = None) -> dict[tuple[int, str], float]:
    """Return {(layer, projection): intended variance} for the scheme recorded in `meta`.

    Args:
        meta: a history's metadata (`init_scheme`, `init_args`, `model_type`, sizes).
        run_dir: the run's `output_dir`; its `config.json`, when present, gives the exact model.

    Returns:
        An empty dict when the history records no scheme or the model cannot be rebuilt. The
        reason is logged, and figures are then drawn without target lines.
    """
    scheme = meta.get("init_scheme")
    if not scheme:
        return {}
    try:
        model = _meta_model(meta, run_dir)
        stds = intended_stds(model, scheme, **(meta.get("init_args") or {}))
        infos = classify_parameters(model)
    except (ValueError, KeyError, TypeError, OSError) as error:
        logger.warning("no init target for scheme %r: %s", scheme, error)
        return {}

    targets = {}
    for name, info in infos.items():
        if info.role in _ROLE_PROJECTIONS and name.endswith("weight") and info.layer is not None and stds.get(name) is not None:
            for projection in _ROLE_PROJECTIONS[info.role]:
                targets[(info.layer, projection)] = stds[name] ** 2
    return targets


def _meta_model(meta: dict[str, Any], run_dir: str | os.PathLike | None):
    import torch
    import transformers

    import hf_initvar.models.mlp  # noqa: F401  (registers ReluMLP with the Auto classes)

    config_path = Path(run_dir) / "config.json" if run_dir is not None else None
    config = None
    if config_path is not None and config_path.is_file():
        config = transformers.AutoConfig.from_pretrained(config_path.parent)
    elif meta.get("model_config"):
        fields = dict(meta["model_config"])
        config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    if config is not None:
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(config) if _is_causal(config) else transformers.AutoModel.from_config(config)

    from hf_initvar.init.describe import build_meta_model

    model_type = meta.get("model_type") or meta.get("layout")
    n_head, head_dim = meta.get("n_head"), meta.get("head_dim")
    if not (model_type and meta.get("n_layer") and n_head and head_dim):
        raise ValueError("meta.json lacks model_type, n_layer, n_head or head_dim")
    return build_meta_model(re.sub(r"[^a-z0-9_]", "", str(model_type)), n_layer=meta["n_layer"], n_embd=n_head * head_dim, n_head=n_head)


def _is_causal(config) -> bool:
    return any(name.endswith("ForCausalLM") for name in (getattr(config, "architectures", None) or []))
