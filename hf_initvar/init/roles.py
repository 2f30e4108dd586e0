"""Parameter roles: what each parameter of a supported model does, its layer and its true fans.

A *role* names what a parameter does, independently of how one architecture names or stores it:

| role | parameters |
|---|---|
| `embedding` | token embeddings (and BERT's token-type embeddings) |
| `position_embedding` | learned absolute position embeddings |
| `qkv` | fused query/key/value projections (GPT-2 `c_attn`, GPT-NeoX `query_key_value`) |
| `q`, `k`, `v` | separate query, key, value projections (LLaMA family, BERT) |
| `attn_out` | attention output projection, writes into the residual stream |
| `mlp_in` | MLP input projections (including LLaMA's gate and up projections) |
| `mlp_out` | MLP output projection, writes into the residual stream |
| `lm_head` | output projection to the vocabulary when it is not tied to the embedding |
| `hidden` | any other dense layer: the ReLU MLP's hidden layers, BERT's pooler and MLM transform |
| `classifier` | the output layer of a classification model (the ReLU MLP's last layer) |
| `norm` | LayerNorm / RMSNorm gains and biases |
| `bias` | biases of linear layers |

Fans follow the logical `[out, in]` orientation, whatever the storage: GPT-2's `Conv1D` stores
`[in, out]` and is marked `transposed`. A fused Q/K/V tensor counts as three `[d, d]` projections,
so its fans are those of one projection. Embeddings follow torch's and Flax's convention: a `[V, d]`
table has fan-in `d` and fan-out `V`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

ROLES: tuple[str, ...] = (
    "embedding",
    "position_embedding",
    "qkv",
    "q",
    "k",
    "v",
    "attn_out",
    "mlp_in",
    "mlp_out",
    "lm_head",
    "hidden",
    "classifier",
    "norm",
    "bias",
)

# Roles whose output is added to the residual stream: the ones depth-scaled schemes shrink.
RESIDUAL_OUTPUT_ROLES: frozenset[str] = frozenset({"attn_out", "mlp_out"})

# Roles of weight matrices (2-D tensors drawn from a distribution).
MATRIX_ROLES: frozenset[str] = frozenset(
    {"qkv", "q", "k", "v", "attn_out", "mlp_in", "mlp_out", "lm_head", "hidden", "classifier"}
)
EMBEDDING_ROLES: frozenset[str] = frozenset({"embedding", "position_embedding"})


@dataclass(frozen=True)
class ParamInfo:
    """Description of one parameter: what a scheme needs to decide how to draw it.

    Attributes:
        role: one of `ROLES`.
        layer: 0-based index of the block (or MLP layer) the parameter sits in; None outside blocks.
        n_layer: number of blocks of the model (number of linear layers for the ReLU MLP).
        fan_in: inputs of one output unit in the logical `[out, in]` orientation (for a fused
            Q/K/V tensor, of one projection; for an embedding, the embedding width).
        fan_out: outputs of one projection (for an embedding, the number of rows).
        name: the parameter's name in `model.named_parameters()`.
        shape: the stored shape.
        d_model: hidden width of the model (residual stream width; hidden width for the MLP).
        transposed: True when the weight is stored `[in, out]` (GPT-2 `Conv1D`).
        n_fused: number of projections fused into this tensor (3 for a fused Q/K/V, else 1).
        fused_heads: for a fused Q/K/V interleaved per head (GPT-NeoX), the number of heads;
            None when the projections are contiguous blocks (GPT-2 `c_attn`).
        padding_idx: the embedding row kept at zero, as `nn.Embedding` and transformers do.
        initializer_range: the model config's `initializer_range` (0.02 when it has none).
    """

    role: str
    layer: int | None
    n_layer: int
    fan_in: int
    fan_out: int
    name: str = ""
    shape: tuple[int, ...] = ()
    d_model: int = 0
    transposed: bool = False
    n_fused: int = 1
    fused_heads: int | None = None
    padding_idx: int | None = None
    initializer_range: float = 0.02

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one projection in `[out, in]` orientation (`[out]` for 1-D parameters)."""
        if self.role in ("bias", "norm"):
            return (self.fan_out,)
        return (self.fan_out, self.fan_in)


# Family tables: (regular expression searched in the parameter's module path, role). The first
# match wins. Biases of linear layers and norm parameters are recognised by module type first.
_FAMILY_PATTERNS: dict[str, tuple[tuple[str, str], ...]] = {
    "gpt2": (
        (r"(^|\.)wte$", "embedding"),
        (r"(^|\.)wpe$", "position_embedding"),
        (r"\.attn\.c_attn$", "qkv"),
        (r"\.attn\.c_proj$", "attn_out"),
        (r"\.mlp\.c_fc$", "mlp_in"),
        (r"\.mlp\.c_proj$", "mlp_out"),
        (r"(^|\.)lm_head$", "lm_head"),
        (r"(^|\.)score$", "classifier"),
    ),
    "llama": (
        (r"(^|\.)embed_tokens$", "embedding"),
        (r"\.q_proj$", "q"),
        (r"\.k_proj$", "k"),
        (r"\.v_proj$", "v"),
        (r"\.o_proj$", "attn_out"),
        (r"\.mlp\.(gate_proj|up_proj)$", "mlp_in"),
        (r"\.mlp\.down_proj$", "mlp_out"),
        (r"(^|\.)lm_head$", "lm_head"),
        (r"(^|\.)score$", "classifier"),
    ),
    "gpt_neox": (
        (r"(^|\.)embed_in$", "embedding"),
        (r"\.attention\.query_key_value$", "qkv"),
        (r"\.attention\.dense$", "attn_out"),
        (r"\.mlp\.dense_h_to_4h$", "mlp_in"),
        (r"\.mlp\.dense_4h_to_h$", "mlp_out"),
        (r"(^|\.)(embed_out|lm_head)$", "lm_head"),
        (r"(^|\.)score$", "classifier"),
    ),
    "bert": (
        (r"\.(word_embeddings|token_type_embeddings)$", "embedding"),
        (r"\.position_embeddings$", "position_embedding"),
        (r"\.attention\.self\.query$", "q"),
        (r"\.attention\.self\.key$", "k"),
        (r"\.attention\.self\.value$", "v"),
        (r"\.attention\.output\.dense$", "attn_out"),
        (r"\.intermediate\.dense$", "mlp_in"),
        (r"\.layer\.\d+\.output\.dense$", "mlp_out"),
        (r"(^|\.)(decoder)$", "lm_head"),
        (r"(^|\.)classifier(\.out_proj)?$", "classifier"),
        (r"(^|\.)(pooler\.dense|transform\.dense|lm_head\.dense|classifier\.dense)$", "hidden"),
    ),
}

# config.model_type -> family table.
MODEL_TYPE_FAMILIES: dict[str, str] = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gpt_neox": "gpt_neox",
    "bert": "bert",
    "roberta": "bert",
    "relu_mlp": "mlp",
}

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:h|layers|layer)\.(\d+)(?:\.|$)")


def model_family(model: nn.Module) -> str:
    """Return the role family of a model from its `config.model_type`.

    Raises:
        ValueError: if the model type is not supported.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_FAMILIES:
        close = difflib.get_close_matches(str(model_type), MODEL_TYPE_FAMILIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"no parameter roles for model_type {model_type!r} ({type(model).__name__}){hint} "
            f"Supported model types: {sorted(MODEL_TYPE_FAMILIES)}"
        )
    return MODEL_TYPE_FAMILIES[model_type]


def classify_parameters(model: nn.Module) -> dict[str, ParamInfo]:
    """Give every parameter of a supported model its role, layer and true fans.

    Tied parameters appear once, under the name `model.named_parameters()` gives them (the
    embedding, for GPT-2's `lm_head`).

    Args:
        model: a GPT-2, LLaMA, Mistral, Qwen2, GPT-NeoX, BERT or RoBERTa model of transformers, or
            a `ReluMLP` (any `PreTrainedModel` with `config.model_type == "relu_mlp"` and its linear
            layers in `model.layers`).

    Returns:
        `ParamInfo` per parameter name, in `named_parameters()` order.

    Raises:
        ValueError: for an unsupported model type, or a parameter no role pattern matches.
    """
    family = model_family(model)
    if family == "mlp":
        return _classify_mlp(model)

    config = model.config
    n_layer = _config_int(config, ("n_layer", "num_hidden_layers"))
    d_model = _config_int(config, ("n_embd", "hidden_size"))
    n_heads = _config_int(config, ("n_head", "num_attention_heads"))
    initializer_range = float(getattr(config, "initializer_range", None) or 0.02)
    modules = dict(model.named_modules())

    infos: dict[str, ParamInfo] = {}
    for name, param in model.named_parameters():
        module_path, _, attribute = name.rpartition(".")
        module = modules[module_path]
        match = _LAYER_INDEX.search(name)
        layer = int(match.group(1)) if match else None
        common = dict(
            layer=layer,
            n_layer=n_layer,
            name=name,
            shape=tuple(param.shape),
            d_model=d_model,
            initializer_range=initializer_range,
        )

        if _is_norm(module):
            infos[name] = ParamInfo(role="norm", fan_in=param.shape[0], fan_out=param.shape[0], **common)
            continue
        if attribute == "bias" and param.dim() == 1:
            fan_in = _bias_fan_in(module, d_model)
            infos[name] = ParamInfo(role="bias", fan_in=fan_in, fan_out=param.shape[0], **common)
            continue

        role = _match_role(family, module_path, name)
        infos[name] = _weight_info(role, module, param.shape, n_heads, common)
    return infos


def _classify_mlp(model: nn.Module) -> dict[str, ParamInfo]:
    # The ReLU MLP: `model.layers[:-1]` are hidden linears (role `hidden`, layer = index), the last
    # is the classifier. n_layer counts every linear layer, so the classifier's layer is n_layer - 1.
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(isinstance(layer, nn.Linear) for layer in layers):
        raise ValueError(
            f"{type(model).__name__} has model_type 'relu_mlp' but no `layers` ModuleList of nn.Linear"
        )
    n_layer = len(layers)
    d_model = layers[0].out_features
    initializer_range = float(getattr(model.config, "initializer_range", None) or 0.02)
    owner = {id(param): (index, attribute) for index, layer in enumerate(layers) for attribute, param in layer.named_parameters()}

    infos: dict[str, ParamInfo] = {}
    for name, param in model.named_parameters():
        if id(param) not in owner:
            raise ValueError(f"parameter {name!r} of {type(model).__name__} is outside `layers`; it has no role")
        index, attribute = owner[id(param)]
        linear = layers[index]
        if attribute == "bias":
            role = "bias"
        elif index == n_layer - 1:
            role = "classifier"
        else:
            role = "hidden"
        infos[name] = ParamInfo(
            role=role,
            layer=index,
            n_layer=n_layer,
            fan_in=linear.in_features,
            fan_out=linear.out_features,
            name=name,
            shape=tuple(param.shape),
            d_model=d_model,
            initializer_range=initializer_range,
        )
    return infos


def _weight_info(role: str, module: nn.Module, shape, n_heads: int, common: dict) -> ParamInfo:
    if isinstance(module, nn.Embedding):
        return ParamInfo(
            role=role, fan_in=shape[1], fan_out=shape[0], padding_idx=module.padding_idx, **common
        )

    transposed = isinstance(module, Conv1D)
    fan_in, fan_out = (shape[0], shape[1]) if transposed else (shape[1], shape[0])
    if role != "qkv":
        return ParamInfo(role=role, fan_in=fan_in, fan_out=fan_out, transposed=transposed, **common)

    # Fused Q/K/V: three projections of width fan_out / 3. GPT-2's c_attn stores them as column
    # blocks [Q | K | V]; GPT-NeoX's query_key_value interleaves them per head
    # (rows grouped as head 0: q k v, head 1: q k v, ...).
    fused_heads = None if transposed else n_heads
    return ParamInfo(
        role=role,
        fan_in=fan_in,
        fan_out=fan_out // 3,
        transposed=transposed,
        n_fused=3,
        fused_heads=fused_heads,
        **common,
    )


def _match_role(family: str, module_path: str, name: str) -> str:
    for pattern, role in _FAMILY_PATTERNS[family]:
        if re.search(pattern, module_path):
            return role
    raise ValueError(
        f"parameter {name!r} matches no {family} role pattern; known roles: {list(ROLES)}. "
        "Its model class is not covered by the role tables in hf_initvar.init.roles."
    )


def _bias_fan_in(module: nn.Module, d_model: int) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0]
    # A bias owned by a head module (BERT's cls.predictions.bias, RoBERTa's lm_head.bias): the
    # vocabulary projection's bias, whose input is the hidden state.
    return d_model


def _is_norm(module: nn.Module) -> bool:
    # transformers names its norms <Model>LayerNorm / <Model>RMSNorm, so match on the class name
    # as transformers' own `_init_weights` does.
    name = type(module).__name__
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "LayerNorm" in name or "RMSNorm" in name


def _config_int(config, keys: tuple[str, ...]) -> int:
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(config).__name__} has none of {keys}; cannot count layers or width")
