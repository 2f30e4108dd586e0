"""Rules: one distribution with its parameters, drawn into one `[out, in]` tensor.

A scheme maps each parameter to a `Rule`; the rule fills a tensor and states the std of the
filled values. Every fill goes through the guarded functions of `transformers.initialization`,
which leave a tensor flagged `_is_hf_initialized` (a loaded weight) untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import initialization as hf_init

RULE_KINDS: tuple[str, ...] = (
    "constant",
    "normal",
    "trunc_normal",
    "uniform",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
)


@dataclass(frozen=True)
class Rule:
    """A distribution for one tensor, in the logical `[out, in]` orientation.

    Attributes:
        kind: one of `RULE_KINDS`.
        std: the std of the values the rule draws (for `trunc_normal`, of the truncated
            distribution; for `constant`, 0).
        value: the constant of a `constant` rule.
        scale: the distribution's own parameter: the std of the untruncated normal for `normal`
            and `trunc_normal`, the bound for `uniform`, the gain for `xavier_*` and `orthogonal`.
        cutoff: truncation point of `trunc_normal`, in units of `scale`.
        a: negative slope of leaky ReLU for `kaiming_*`.
        mode: `fan_in` or `fan_out` for `kaiming_*`.
        nonlinearity: the nonlinearity whose gain `kaiming_*` use.
    """

    kind: str
    std: float
    value: float = 0.0
    scale: float = 0.0
    cutoff: float = 0.0
    a: float = 0.0
    mode: str = "fan_in"
    nonlinearity: str = "relu"

    def fill_(self, tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw the rule into `tensor`, an `[out, in]` weight or a 1-D vector, in place.

        torch's fan helpers read `tensor.shape` as `[out, in]`, so the tensor must be in that
        orientation for the `xavier_*`, `kaiming_*` and `orthogonal` kinds.
        """
        match self.kind:
            case "constant":
                return hf_init.constant_(tensor, self.value)
            case "normal":
                return hf_init.normal_(tensor, mean=0.0, std=self.scale, generator=generator)
            case "trunc_normal":
                bound = self.cutoff * self.scale
                return hf_init.trunc_normal_(tensor, 0.0, self.scale, -bound, bound, generator=generator)
            case "uniform":
                return hf_init.uniform_(tensor, -self.scale, self.scale, generator=generator)
            case "xavier_uniform":
                return hf_init.xavier_uniform_(tensor, gain=self.scale, generator=generator)
            case "xavier_normal":
                return hf_init.xavier_normal_(tensor, gain=self.scale, generator=generator)
            case "kaiming_uniform":
                return hf_init.kaiming_uniform_(
                    tensor, a=self.a, mode=self.mode, nonlinearity=self.nonlinearity, generator=generator
                )
            case "kaiming_normal":
                return hf_init.kaiming_normal_(
                    tensor, a=self.a, mode=self.mode, nonlinearity=self.nonlinearity, generator=generator
                )
            case "orthogonal":
                return hf_init.orthogonal_(tensor, gain=self.scale, generator=generator)
        raise ValueError(f"unknown rule kind {self.kind!r}; known: {list(RULE_KINDS)}")


def constant(value: float) -> Rule:
    """Return a rule that sets every entry to `value`."""
    return Rule("constant", std=0.0, value=value)


def normal(std: float) -> Rule:
    """Return a rule drawing from N(0, std²)."""
    return Rule("normal", std=std, scale=std)


def trunc_normal(std: float, cutoff: float) -> Rule:
    """Return a rule drawing from N(0, std²) truncated to [-cutoff·std, cutoff·std].

    The rule's `std` is that of the truncated distribution, smaller than `std`.
    """
    return Rule("trunc_normal", std=std * truncated_std_factor(cutoff), scale=std, cutoff=cutoff)


def uniform(bound: float) -> Rule:
    """Return a rule drawing from U(-bound, bound), whose std is bound/√3."""
    return Rule("uniform", std=bound / math.sqrt(3.0), scale=bound)


def xavier(distribution: str, gain: float, fan_in: int, fan_out: int) -> Rule:
    """Return a Glorot rule: std = gain·√(2/(fan_in + fan_out)), normal or uniform."""
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return Rule(f"xavier_{distribution}", std=std, scale=gain)


def kaiming(distribution: str, a: float, mode: str, nonlinearity: str, fan_in: int, fan_out: int) -> Rule:
    """Return a He rule: std = gain(nonlinearity, a)/√fan, fan chosen by `mode`."""
    fan = fan_in if mode == "fan_in" else fan_out
    std = torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return Rule(f"kaiming_{distribution}", std=std, a=a, mode=mode, nonlinearity=nonlinearity)


def orthogonal(gain: float, fan_in: int, fan_out: int) -> Rule:
    """Return a (semi-)orthogonal rule scaled by `gain`.

    An orthogonal `[out, in]` matrix has orthonormal rows (out <= in) or columns (out > in), so its
    mean square entry is gain²·min(out, in)/(out·in) = gain²/max(out, in).
    """
    return Rule("orthogonal", std=gain / math.sqrt(max(fan_in, fan_out)), scale=gain)


def truncated_std_factor(cutoff: float) -> float:
    """Return std(X)/σ for X ~ N(0, σ²) truncated symmetrically at ±cutoff·σ.

    Var = σ²·(1 - 2c·φ(c)/(2Φ(c) - 1)); for c = 2 the factor is 0.8796, for c = 3 it is 0.9866.
    """
    c = cutoff
    density = math.exp(-0.5 * c * c) / math.sqrt(2.0 * math.pi)
    mass = math.erf(c / math.sqrt(2.0))
    return math.sqrt(1.0 - 2.0 * c * density / mass)
