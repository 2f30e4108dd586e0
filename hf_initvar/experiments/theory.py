"""Variance propagation through a bias-free ReLU MLP at initialization, and the band it predicts.

With weights drawn i.i.d. with mean 0 and std `s`, a layer with fan-in `n` maps an input of second
moment `q` to pre-activations of variance `n * s**2 * q`. After a ReLU the second moment halves
(`E[relu(z)**2] = Var[z] / 2` for zero-mean symmetric `z`), so each hidden-to-hidden layer multiplies
the variance by `n * s**2 / 2`, and the critical std that keeps it constant is `s* = sqrt(2 / n)`
(He et al. 2015, "Delving Deep into Rectifiers", the Kaiming fan-in rule). Over `L` weight layers
the output RMS scales as `(s / s*)**L`, so the stds whose output RMS stays within a factor `R` of
the input RMS form the band `[s* R**(-1/L), s* R**(1/L)]`.
"""

from __future__ import annotations

import math

import numpy as np


def critical_std(fan_in: int) -> float:
    """Return the std `sqrt(2 / fan_in)` that keeps ReLU activation variance constant across a layer."""
    return math.sqrt(2.0 / fan_in)


def predicted_activation_variance(
    std: float | np.ndarray, layer_sizes: list[int], input_second_moment: float = 1.0
) -> np.ndarray:
    """Predict each linear layer's pre-activation variance at initialization.

    Args:
        std: weight std of every layer; an array of shape `(S,)` gives one row per std.
        layer_sizes: `[input_size, *hidden_sizes, num_classes]`.
        input_second_moment: mean of the squared input features (1 for standardized features
            without constant columns).

    Returns:
        Array `(S, L)` (or `(L,)` for a scalar std) of variances, layer 0 first, the logits last.
        The first layer takes the raw input, so its factor has no ReLU halving.
    """
    stds = np.atleast_1d(np.asarray(std, dtype=np.float64))
    variances = np.empty((stds.size, len(layer_sizes) - 1))
    second_moment = np.full(stds.size, float(input_second_moment))
    for layer, fan_in in enumerate(layer_sizes[:-1]):
        variances[:, layer] = fan_in * stds**2 * second_moment
        second_moment = variances[:, layer] / 2.0
    return variances[0] if np.ndim(std) == 0 else variances


def forward_stable_band(layer_sizes: list[int], tolerance: float) -> tuple[float, float]:
    """Return the stds whose output RMS stays within a factor `tolerance` of the input RMS.

    For equal widths `n` this is `[s* R**(-1/L), s* R**(1/L)]` with `s* = sqrt(2/n)` and `L` the
    number of weight layers. With unequal fans the centre is the std at which the predicted output
    variance equals the input's: the geometric mean of the per-layer critical stds, where the first
    layer's is `sqrt(1 / n_0)` because its input has not passed a ReLU.

    Args:
        layer_sizes: `[input_size, *hidden_sizes, num_classes]`.
        tolerance: the factor `R` > 1 on the RMS.

    Returns:
        `(low, high)` stds.
    """
    if tolerance <= 1:
        raise ValueError(f"tolerance must be greater than 1, got {tolerance}")
    num_layers = len(layer_sizes) - 1
    # Output variance / input second moment = s**(2L) * n_0 * prod_{l>=1}(n_l / 2).
    log_gain = math.log(layer_sizes[0]) + sum(math.log(n / 2.0) for n in layer_sizes[1:-1])
    centre = math.exp(-log_gain / (2 * num_layers))
    spread = tolerance ** (1.0 / num_layers)
    return centre / spread, centre * spread


def xavier_relu_shrink_factor(num_layers: int) -> float:
    """Return the RMS factor `2**(-L/2)` by which a variance-1/n init shrinks a ReLU signal over `L` layers."""
    return 2.0 ** (-num_layers / 2.0)
