"""The scheme registry: named initialization schemes with typed arguments and a rule per role.

A scheme is a frozen dataclass whose fields are its arguments. `rule(info)` returns the `Rule`
(distribution and intended std) for one parameter described by a `ParamInfo`. Each scheme's
docstring carries a `Formula:` and a `Source:` paragraph, which `hf-initvar schemes` prints.

Conventions shared by every built-in scheme unless its formula states otherwise: biases start at
zero, norm gains at one and norm biases at zero, and the scheme's weight rule covers embeddings,
projections and heads. `d` is the model width (`ParamInfo.d_model`), `L` the number of layers and
`l` the 0-based layer index.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from hf_initvar.init import rules
from hf_initvar.init.roles import EMBEDDING_ROLES, MATRIX_ROLES, RESIDUAL_OUTPUT_ROLES, ROLES, ParamInfo
from hf_initvar.init.rules import Rule

_REGISTRY: dict[str, type[Scheme]] = {}

_KAIMING_NONLINEARITIES = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu")


@dataclass(frozen=True)
class Scheme:
    """Base class of every scheme: a rule per parameter, plus helpers to draw and inspect it."""

    name: ClassVar[str] = ""

    def rule(self, info: ParamInfo) -> Rule:
        """Return the rule for the parameter `info` describes."""
        raise NotImplementedError(f"{type(self).__name__} does not define rule()")

    @property
    def args(self) -> dict[str, Any]:
        """The scheme's arguments, by name."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def intended_std(self, info: ParamInfo) -> float:
        """Return the std the scheme intends for the parameter `info` describes.

        For an embedding with a padding row (kept at zero, as `nn.Embedding` does) the std is
        that of the whole table: the drawn std times √((rows - 1)/rows).
        """
        std = self.rule(info).std
        if info.role in EMBEDDING_ROLES and info.padding_idx is not None:
            std *= math.sqrt((info.fan_out - 1) / info.fan_out)
        return std

    def init_tensor(
        self, tensor: torch.Tensor, info: ParamInfo, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw the scheme's rule for `info` into a bare tensor, in place.

        This is the entry point for weights that live outside a module, e.g. a batch of models
        stored as one `[n_models, out, in]` tensor: `tensor` has shape `[..., out, in]` for a
        weight stored `[out, in]` (nn.Linear's layout, not Conv1D's), or `[..., out]` for a bias or
        norm vector. Each trailing block is drawn on its own, in order, so slice `i` equals what
        `torch.nn.init` would draw into one `[out, in]` weight after the `i` slices before it.
        A tensor flagged `_is_hf_initialized` (loaded by `from_pretrained`) is left as it is.

        Args:
            tensor: the tensor to fill.
            info: role, fans and layer of one block, e.g.
                `ParamInfo(role="hidden", layer=0, n_layer=6, fan_in=64, fan_out=256)`.
            generator: random generator; the global one when None.

        Returns:
            `tensor`.
        """
        if getattr(tensor, "_is_hf_initialized", False):
            return tensor
        block_shape = info.block_shape
        if tuple(tensor.shape[tensor.dim() - len(block_shape) :]) != block_shape:
            raise ValueError(
                f"tensor of shape {tuple(tensor.shape)} does not end in the block shape {block_shape} "
                f"of role {info.role!r} (fan_out={info.fan_out}, fan_in={info.fan_in})"
            )

        rule = self.rule(info)
        blocks = tensor.view(-1, *block_shape) if tensor.dim() > len(block_shape) else tensor.unsqueeze(0)
        with torch.no_grad():
            for block in blocks:
                rule.fill_(block, generator=generator)
                if info.role in EMBEDDING_ROLES and info.padding_idx is not None:
                    block[info.padding_idx].zero_()
        return tensor


def register_scheme(name: str) -> Callable[[type[Scheme]], type[Scheme]]:
    """Register a scheme class under `name`, making it a frozen dataclass if it is not one.

    The class must subclass `Scheme` and define `rule(info)`; its fields are its arguments.

    Example:
        ```python
        @register_scheme("half_normal")
        class HalfNormal(Scheme):
            \"\"\"Normal init at half the usual std.

            Formula: std/2 for every weight.
            Source: an example.
            \"\"\"

            std: float = 0.02

            def rule(self, info):
                return standard_rule(info, rules.normal(self.std / 2))
        ```
    """

    def decorate(cls: type[Scheme]) -> type[Scheme]:
        if not (isinstance(cls, type) and issubclass(cls, Scheme)):
            raise TypeError(f"register_scheme({name!r}) needs a subclass of Scheme, got {cls!r}")
        if name in _REGISTRY:
            raise ValueError(f"init scheme {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if "__dataclass_fields__" not in cls.__dict__:
            cls = dataclass(frozen=True)(cls)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_schemes() -> list[str]:
    """Return the names of every registered scheme, sorted."""
    return sorted(_REGISTRY)


def scheme_class(name: str) -> type[Scheme]:
    """Return the class registered under `name`.

    Raises:
        ValueError: for an unknown name, with the nearest registered name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown init scheme {name!r}{_did_you_mean(name, _REGISTRY)} Known: {list_schemes()}")
    return _REGISTRY[name]


def get_scheme(name: str, **args: Any) -> Scheme:
    """Build the registered scheme `name` with its arguments.

    Args:
        name: a registered name (see `list_schemes()`).
        **args: the scheme's arguments, e.g. `std=0.02`; ints are accepted for float arguments.

    Raises:
        ValueError: for an unknown name or argument, or an invalid value.
    """
    cls = scheme_class(name)
    hints = typing.get_type_hints(cls)
    fields = {field.name for field in dataclasses.fields(cls)}
    for key, value in list(args.items()):
        if key not in fields:
            raise ValueError(
                f"init scheme {name!r} has no argument {key!r}{_did_you_mean(key, fields)} "
                f"Its arguments: {sorted(fields) or 'none'}"
            )
        args[key] = _coerce(name, key, value, hints[key])
    return cls(**args)


def scheme_arguments(cls: type[Scheme]) -> list[tuple[str, str, Any]]:
    """Return `(name, type, default)` for each argument of a scheme class."""
    hints = typing.get_type_hints(cls)
    arguments = []
    for field in dataclasses.fields(cls):
        type_name = getattr(hints[field.name], "__name__", None) or str(hints[field.name])
        arguments.append((field.name, type_name.replace("typing.", ""), field.default))
    return arguments


def scheme_doc_paragraph(cls: type[Scheme], label: str) -> str:
    """Return the text after `label:` ("Formula", "Source") in a scheme class's docstring.

    The text runs until a blank line or the next `Formula:`, `Source:` or `Attributes:` line.
    """
    collected: list[str] = []
    active = False
    for line in (inspect.getdoc(cls) or "").splitlines():
        stripped = line.strip()
        starts_section = stripped.split(":", 1)[0] in ("Formula", "Source", "Attributes")
        if stripped.startswith(f"{label}:"):
            active = True
            collected.append(stripped[len(label) + 1 :].strip())
        elif active and stripped and not starts_section:
            collected.append(stripped)
        elif active:
            break
    return " ".join(collected)


@dataclass(frozen=True)
class PerRoleScheme(Scheme):
    """A default scheme with per-role overrides, built from a spec such as
    `{"default": "gpt2", "qkv": ("xavier_normal", {})}`.

    An override for `qkv` also covers separately stored `q`, `k` and `v` projections. An override
    for `q`, `k` or `v` needs a model that stores them separately.

    Attributes:
        default: the scheme for every role without an override.
        overrides: role -> scheme.
    """

    default: Scheme
    overrides: Mapping[str, Scheme]

    def rule(self, info: ParamInfo) -> Rule:
        return self.scheme_for(info.role).rule(info)

    def scheme_for(self, role: str) -> Scheme:
        """Return the scheme that draws parameters of `role`."""
        if role in self.overrides:
            return self.overrides[role]
        if role in ("q", "k", "v") and "qkv" in self.overrides:
            return self.overrides["qkv"]
        return self.default

    def check_roles(self, model_roles: set[str], model_name: str) -> None:
        """Raise ValueError if an override names a role the model has no parameter for."""
        for role in self.overrides:
            covered = role in model_roles or (role == "qkv" and model_roles & {"q", "k", "v"})
            if not covered and role in ("q", "k", "v") and "qkv" in model_roles:
                raise ValueError(
                    f"init override for role {role!r}, but {model_name} stores Q, K and V fused in one "
                    "tensor (role 'qkv'); override 'qkv' instead"
                )
            if not covered:
                raise ValueError(
                    f"init override for role {role!r}, but {model_name} has no {role!r} parameters"
                    f"{_did_you_mean(role, model_roles)} Its roles: {sorted(model_roles)}"
                )

    def spec(self) -> dict[str, list]:
        """Return the JSON form `{"default": [name, args], role: [name, args], ...}`."""
        return {
            "default": [self.default.name, self.default.args],
            **{role: [scheme.name, scheme.args] for role, scheme in self.overrides.items()},
        }


SchemeSpec = str | Scheme | Mapping[str, Any]


def resolve_scheme(scheme: SchemeSpec, **args: Any) -> Scheme:
    """Build a scheme from a name, a `Scheme`, or a per-role spec dict.

    Args:
        scheme: a registered name; a `Scheme` instance; or a dict with a `"default"` entry and one
            entry per overridden role, each a name, a `(name, args)` pair or a `Scheme`.
        **args: arguments of the named scheme, or of the spec's default scheme.

    Raises:
        ValueError: for unknown names, roles or arguments.
    """
    if isinstance(scheme, Scheme):
        if args:
            raise ValueError(f"arguments {sorted(args)} given with a built {type(scheme).__name__}; pass a name instead")
        return scheme
    if isinstance(scheme, str):
        return get_scheme(scheme, **args)
    if not isinstance(scheme, Mapping):
        raise ValueError(f"init scheme must be a name, a Scheme or a per-role dict, got {type(scheme).__name__}")

    if "default" not in scheme:
        raise ValueError(
            f"per-role init spec {dict(scheme)!r} has no 'default' entry; add e.g. \"default\": \"gpt2\""
        )
    overrides = {}
    for role, entry in scheme.items():
        if role != "default" and role not in ROLES:
            raise ValueError(f"unknown role {role!r} in init spec{_did_you_mean(role, ROLES)} Roles: {list(ROLES)}")
        built = _build_entry(role, entry, args if role == "default" else {})
        if role != "default":
            overrides[role] = built
    default = _build_entry("default", scheme["default"], args)
    return PerRoleScheme(default=default, overrides=overrides)


def scheme_record(scheme: Scheme, args: Mapping[str, Any]) -> tuple[str | dict, dict]:
    """Return the `(init_scheme, init_args)` pair stored on a model config for `scheme`.

    A named scheme is stored as its name and the arguments the caller gave. Defaults are left out,
    so a reload reads them from the installed version. A per-role scheme is stored as its spec
    dict, with every argument of every entry.
    """
    if isinstance(scheme, PerRoleScheme):
        return scheme.spec(), {}
    return scheme.name, dict(args)


def standard_rule(info: ParamInfo, weight: Rule, residual_output: Rule | None = None) -> Rule:
    """Return the usual rule for `info`: `weight` for weights, zeros for biases, ones/zeros for norms.

    Args:
        info: the parameter.
        weight: the rule for embeddings, projections and heads.
        residual_output: the rule for `attn_out` and `mlp_out`; `weight` when None.
    """
    if info.role == "norm":
        return rules.constant(0.0 if info.name.endswith("bias") else 1.0)
    if info.role == "bias":
        return rules.constant(0.0)
    if residual_output is not None and info.role in RESIDUAL_OUTPUT_ROLES:
        return residual_output
    return weight


def _build_entry(role: str, entry: Any, args: Mapping[str, Any]) -> Scheme:
    if isinstance(entry, Scheme):
        return entry
    if isinstance(entry, str):
        return get_scheme(entry, **args)
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str):
        return get_scheme(entry[0], **{**dict(entry[1] or {}), **args})
    raise ValueError(
        f"init spec entry for {role!r} must be a scheme name, a (name, args) pair or a Scheme, got {entry!r}"
    )


def _coerce(scheme: str, key: str, value: Any, hint: Any) -> Any:
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if str in allowed and isinstance(value, str):
        return value
    names = [getattr(kind, "__name__", str(kind)) for kind in allowed]
    raise ValueError(f"init scheme {scheme!r}: argument {key!r} must be {' or '.join(names)}, got {value!r}")


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else "."


def check_positive(scheme: str, key: str, value: float) -> None:
    """Raise ValueError unless `value` is a finite number above zero."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"init scheme {scheme!r}: {key} must be a finite number above 0, got {value!r}")


def check_choice(scheme: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ValueError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(
            f"init scheme {scheme!r}: invalid {key} {value!r}{_did_you_mean(value, allowed)} Allowed: {list(allowed)}"
        )


# Built-in schemes ---------------------------------------------------------------------------------


@register_scheme("torch_default")
class TorchDefault(Scheme):
    """PyTorch's own layer defaults, applied by role with true fans.

    Formula: weights U(±1/√fan_in) (kaiming_uniform with a=√5), biases U(±1/√fan_in),
    embeddings N(0, 1), norms ones/zeros. GPT-2's Conv1D weights get the nn.Linear rule.
    Source: torch.nn.Linear.reset_parameters and torch.nn.Embedding.reset_parameters.
    """

    def rule(self, info: ParamInfo) -> Rule:
        if info.role in EMBEDDING_ROLES:
            return rules.normal(1.0)
        if info.role == "bias":
            return rules.uniform(1.0 / math.sqrt(info.fan_in))
        linear = rules.kaiming("uniform", math.sqrt(5.0), "fan_in", "leaky_relu", info.fan_in, info.fan_out)
        return standard_rule(info, linear)


@register_scheme("normal")
class Normal(Scheme):
    """Every weight from one normal distribution.

    Formula: N(0, std²) for every weight.
    Source: the default of transformers' PreTrainedModel._init_weights (std = initializer_range).

    Attributes:
        std: standard deviation of every weight.
    """

    std: float = 0.02

    def __post_init__(self) -> None:
        check_positive(self.name, "std", self.std)

    def rule(self, info: ParamInfo) -> Rule:
        return standard_rule(info, rules.normal(self.std))


@register_scheme("trunc_normal")
class TruncNormal(Scheme):
    """Every weight from a normal distribution truncated at ±cutoff·std.

    Formula: N(0, std²) truncated to [-cutoff·std, cutoff·std]; the intended std is that of the
    truncated distribution, std·√(1 - 2c·φ(c)/(2Φ(c) - 1)) (0.880·std for c = 2).
    Source: torch.nn.init.trunc_normal_; OLMo's `normal` init with init_cutoff_factor.

    Attributes:
        std: std of the normal before truncation.
        cutoff: truncation point in units of std.
    """

    std: float = 0.02
    cutoff: float = 2.0

    def __post_init__(self) -> None:
        check_positive(self.name, "std", self.std)
        check_positive(self.name, "cutoff", self.cutoff)

    def rule(self, info: ParamInfo) -> Rule:
        return standard_rule(info, rules.trunc_normal(self.std, self.cutoff))


@register_scheme("xavier_uniform")
class XavierUniform(Scheme):
    """Glorot uniform on every weight, with true fans.

    Formula: U(±gain·√(6/(fan_in + fan_out))), std gain·√(2/(fan_in + fan_out)).
    Source: torch.nn.init.xavier_uniform_; Glorot & Bengio (2010).

    Attributes:
        gain: multiplier of the std.
    """

    gain: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.name, "gain", self.gain)

    def rule(self, info: ParamInfo) -> Rule:
        return standard_rule(info, rules.xavier("uniform", self.gain, info.fan_in, info.fan_out))


@register_scheme("xavier_normal")
class XavierNormal(Scheme):
    """Glorot normal on every weight, with true fans.

    Formula: N(0, gain²·2/(fan_in + fan_out)).
    Source: torch.nn.init.xavier_normal_; Glorot & Bengio (2010).

    Attributes:
        gain: multiplier of the std.
    """

    gain: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.name, "gain", self.gain)

    def rule(self, info: ParamInfo) -> Rule:
        return standard_rule(info, rules.xavier("normal", self.gain, info.fan_in, info.fan_out))


@dataclass(frozen=True)
class _Kaiming(Scheme):
    mode: str = "fan_in"
    nonlinearity: str = "relu"
    a: float = 0.0

    def __post_init__(self) -> None:
        check_choice(self.name, "mode", self.mode, ("fan_in", "fan_out"))
        check_choice(self.name, "nonlinearity", self.nonlinearity, _KAIMING_NONLINEARITIES)
        if not math.isfinite(self.a):
            raise ValueError(f"init scheme {self.name!r}: a must be finite, got {self.a!r}")

    def _rule(self, info: ParamInfo, distribution: str) -> Rule:
        weight = rules.kaiming(distribution, self.a, self.mode, self.nonlinearity, info.fan_in, info.fan_out)
        return standard_rule(info, weight)


@register_scheme("kaiming_uniform")
class KaimingUniform(_Kaiming):
    """He uniform on every weight, with true fans.

    Formula: U(±√3·gain/√fan), std gain/√fan, gain = √2 for ReLU, fan = fan_in or fan_out.
    Source: torch.nn.init.kaiming_uniform_; He et al. (2015).

    Attributes:
        mode: `fan_in` (preserve forward variance) or `fan_out` (backward).
        nonlinearity: the activation whose gain is used (torch.nn.init.calculate_gain).
        a: negative slope for `leaky_relu`.
    """

    def rule(self, info: ParamInfo) -> Rule:
        return self._rule(info, "uniform")


@register_scheme("kaiming_normal")
class KaimingNormal(_Kaiming):
    """He normal on every weight, with true fans.

    Formula: N(0, gain²/fan), gain = √2 for ReLU, fan = fan_in or fan_out.
    Source: torch.nn.init.kaiming_normal_; He et al. (2015).

    Attributes:
        mode: `fan_in` (preserve forward variance) or `fan_out` (backward).
        nonlinearity: the activation whose gain is used (torch.nn.init.calculate_gain).
        a: negative slope for `leaky_relu`.
    """

    def rule(self, info: ParamInfo) -> Rule:
        return self._rule(info, "normal")


@register_scheme("lecun_normal")
class LecunNormal(Scheme):
    """LeCun normal on every weight, with true fans.

    Formula: N(0, 1/fan_in). JAX's lecun_normal draws a truncated normal with the same std.
    Source: LeCun et al., "Efficient BackProp" (1998); jax.nn.initializers.lecun_normal.
    """

    def rule(self, info: ParamInfo) -> Rule:
        return standard_rule(info, rules.normal(1.0 / math.sqrt(info.fan_in)))


@register_scheme("orthogonal")
class Orthogonal(Scheme):
    """(Semi-)orthogonal matrices, one per projection, scaled by gain.

    Formula: W = gain·Q with orthonormal rows or columns, std gain/√max(fan_in, fan_out).
    Source: torch.nn.init.orthogonal_; Saxe et al. (2014).

    Attributes:
        gain: multiplier of the matrix.
    """

    gain: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.name, "gain", self.gain)

    def rule(self, info: ParamInfo) -> Rule:
        return standard_rule(info, rules.orthogonal(self.gain, info.fan_in, info.fan_out))


@register_scheme("gpt2")
class Gpt2(Scheme):
    """transformers' own GPT-2 init: one normal std, residual outputs scaled by depth.

    Formula: N(0, std²) for every weight; attn_out and mlp_out N(0, (std/√(2L))²).
    std defaults to the config's initializer_range (0.02).
    Source: transformers GPT2PreTrainedModel._init_weights; Radford et al., GPT-2 (2019).

    Attributes:
        std: std of every weight; the model config's initializer_range when None.
    """

    std: float | None = None

    def __post_init__(self) -> None:
        if self.std is not None:
            check_positive(self.name, "std", self.std)

    def rule(self, info: ParamInfo) -> Rule:
        std = self.std if self.std is not None else info.initializer_range
        return standard_rule(info, rules.normal(std), rules.normal(std / math.sqrt(2 * info.n_layer)))


@register_scheme("megatron")
class Megatron(Scheme):
    """Megatron-LM's init: one normal std, output layers scaled by the number of layers.

    Formula: N(0, std²) for every weight; attn_out and mlp_out N(0, (std/√(2L))²). It is the
    rule of `gpt2`, with a fixed std instead of the config's initializer_range.
    Source: Megatron-LM init_method_normal and scaled_init_method_normal (init_method_std).

    Attributes:
        std: init_method_std.
    """

    std: float = 0.02

    def __post_init__(self) -> None:
        check_positive(self.name, "std", self.std)

    def rule(self, info: ParamInfo) -> Rule:
        return standard_rule(info, rules.normal(self.std), rules.normal(self.std / math.sqrt(2 * info.n_layer)))


@register_scheme("small_init")
class SmallInit(Scheme):
    """Width-dependent small normal init for every weight.

    Formula: N(0, 2/(5d)), std √(2/(5d)).
    Source: GPT-NeoX init_functions.small_init_init_method; Nguyen & Salazar (2019).
    """

    def rule(self, info: ParamInfo) -> Rule:
        return standard_rule(info, rules.normal(_small_init_std(info)))


@register_scheme("wang_init")
class WangInit(Scheme):
    """GPT-NeoX's pairing: small_init for inputs, Wang's depth-scaled std for residual outputs.

    Formula: attn_out and mlp_out N(0, (2/(L·√d))²); every other weight √(2/(5d)) (small_init).
    Source: GPT-NeoX init_functions.wang_init_method with init_method small_init;
    Wang & Komatsuzaki, Mesh Transformer JAX (2021).
    """

    def rule(self, info: ParamInfo) -> Rule:
        output = rules.normal(2.0 / (info.n_layer * math.sqrt(info.d_model)))
        return standard_rule(info, rules.normal(_small_init_std(info)), output)


@register_scheme("mitchell")
class Mitchell(Scheme):
    """OLMo's `mitchell` init: fan-in std, residual outputs scaled by layer depth, truncated at 3σ.

    Formula: σ = 1/√fan_in (embeddings 1/√d), residual outputs σ/√(2(l+1)), drawn from
    N(0, σ²) truncated to ±3σ; intended std 0.9866·σ.
    Source: OLMo olmo/initialization.py, InitFnType.mitchell.
    """

    cutoff: ClassVar[float] = 3.0

    def rule(self, info: ParamInfo) -> Rule:
        std = 1.0 / math.sqrt(info.fan_in)
        if info.role in RESIDUAL_OUTPUT_ROLES:
            std /= math.sqrt(2.0 * (_layer(info) + 1))
        return standard_rule(info, rules.trunc_normal(std, self.cutoff))


@register_scheme("depth_scaled")
class DepthScaled(Scheme):
    """torchtitan's depth init: residual outputs shrink with the 0-based layer index.

    Formula: N(0, std²) for every weight; attn_out and mlp_out N(0, (std/√(2(l+1)))²).
    torchtitan also depth-scales LLaMA's up projection (w3), which here keeps `std`.
    Source: torchtitan models/llama init_weights with depth_init=True.

    Attributes:
        std: std of every weight before depth scaling.
    """

    std: float = 0.02

    def __post_init__(self) -> None:
        check_positive(self.name, "std", self.std)

    def rule(self, info: ParamInfo) -> Rule:
        if info.role in RESIDUAL_OUTPUT_ROLES:
            return rules.normal(self.std / math.sqrt(2.0 * (_layer(info) + 1)))
        return standard_rule(info, rules.normal(self.std))


@register_scheme("zero_out")
class ZeroOut(Scheme):
    """Residual branches start as the identity: zero output projections.

    Formula: attn_out and mlp_out are 0; every other weight N(0, std²).
    Source: Fixup (Zhang, Dauphin & Ma, 2019) zero-initializes the last layer of each residual
    branch.

    Attributes:
        std: std of every weight that is not a residual output.
    """

    std: float = 0.02

    def __post_init__(self) -> None:
        check_positive(self.name, "std", self.std)

    def rule(self, info: ParamInfo) -> Rule:
        return standard_rule(info, rules.normal(self.std), rules.constant(0.0))


@register_scheme("mup")
class Mup(Scheme):
    """muP-style width scaling of the init against a base width.

    Formula: with m = d/base_width: input weights (embeddings, the MLP's first layer) N(0, std²);
    hidden matrices N(0, std²/m); readout (lm_head, classifier) N(0, std²/m²). At d = base_width
    every weight has std. Only the init is scaled: the readout multiplier 1/m, attention's 1/d
    scaling and per-layer learning rates of muP are not applied.
    Source: Yang et al., Tensor Programs V (2022), the init column of the muP table; mup's MuReadout.

    Attributes:
        std: std of every weight at the base width.
        base_width: the width at which muP and standard parametrization coincide.
    """

    std: float = 0.02
    base_width: int = 256

    def __post_init__(self) -> None:
        check_positive(self.name, "std", self.std)
        check_positive(self.name, "base_width", self.base_width)

    def rule(self, info: ParamInfo) -> Rule:
        multiplier = info.d_model / self.base_width
        if info.role in ("lm_head", "classifier"):
            weight = rules.normal(self.std / multiplier)
        elif info.role in MATRIX_ROLES and not (info.role == "hidden" and info.layer == 0):
            weight = rules.normal(self.std / math.sqrt(multiplier))
        else:
            weight = rules.normal(self.std)
        return standard_rule(info, weight)


def _small_init_std(info: ParamInfo) -> float:
    return math.sqrt(2.0 / (5.0 * info.d_model))


def _layer(info: ParamInfo) -> int:
    if info.layer is None:
        raise ValueError(f"parameter {info.name!r} of role {info.role!r} has no layer index to depth-scale by")
    return info.layer
