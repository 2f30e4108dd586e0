import math

import numpy as np
import pytest
import torch

from hf_initvar.experiments.batched import StackedMLP, init_statistics
from hf_initvar.experiments.theory import (
    critical_std,
    forward_stable_band,
    predicted_activation_variance,
    xavier_relu_shrink_factor,
)
from hf_initvar.models.mlp import ReluMLP, ReluMLPConfig


def test_critical_std_is_kaiming_fan_in():
    assert critical_std(256) == pytest.approx(math.sqrt(2 / 256))


def test_equal_fans_band_formula():
    # Input width n/2 makes the first layer's factor n/2 * s^2 equal the ReLU layers' n s^2 / 2,
    # so every layer has critical std sqrt(2/n) and the band is s* R^(+-1/L).
    n, num_layers, tolerance = 128, 5, 100.0
    sizes = [n // 2] + [n] * (num_layers - 1) + [n]

    low, high = forward_stable_band(sizes, tolerance)

    assert low == pytest.approx(critical_std(n) * tolerance ** (-1 / num_layers))
    assert high == pytest.approx(critical_std(n) * tolerance ** (1 / num_layers))


def test_band_edges_give_output_rms_tolerance_times_input():
    sizes = [64, 128, 128, 128, 10]
    low, high = forward_stable_band(sizes, 10.0)

    variances = predicted_activation_variance(np.array([low, high]), sizes, input_second_moment=1.0)

    np.testing.assert_allclose(np.sqrt(variances[:, -1]), [0.1, 10.0], rtol=1e-12)


def test_tolerance_must_exceed_one():
    with pytest.raises(ValueError, match="greater than 1"):
        forward_stable_band([8, 8, 2], 1.0)


def test_xavier_shrink_over_six_layers():
    assert xavier_relu_shrink_factor(6) == pytest.approx(1 / 8)


@pytest.mark.parametrize("std_factor", [0.5, 1.0, 2.0])
def test_measured_init_variance_follows_theory(std_factor):
    # Wide layers and a large Gaussian batch: per-layer variance estimates fluctuate by about
    # sqrt(2/width) from the finite width, compounded over 4 layers, so 10% is a loose but
    # failing bound for any wrong factor (a missing ReLU halving alone is off by 2x per layer).
    width, batch = 1024, 512
    std = std_factor * critical_std(width)
    torch.manual_seed(0)
    config = ReluMLPConfig(input_size=width, hidden_size=width, num_hidden_layers=3, num_labels=width,
                           init_scheme="normal", init_args={"std": std})
    model = ReluMLP(config)
    features = torch.randn(batch, width)

    measured = init_statistics(StackedMLP([model]), features, torch.zeros(batch, dtype=torch.long))

    predicted = predicted_activation_variance(std, config.layer_sizes, float(features.pow(2).mean()))
    np.testing.assert_allclose(measured["activation_variance"][0].numpy(), predicted, rtol=0.10)
