"""Depth trends and per-head spread of the equilibration analysis on synthetic histories."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hf_initvar.reporting.analysis import analyze_history

STEPS = np.arange(0, 2001, 10)
V0, BAND = 4e-4, 1.2e-3


def approach(tau: float, band: float = BAND) -> np.ndarray:
    return band + (V0 - band) * np.exp(-STEPS / tau)


def history(series: dict[tuple[int, str, int], np.ndarray]) -> pd.DataFrame:
    return pd.concat(
        [pd.DataFrame({"step": STEPS, "layer": layer, "projection": proj, "head": head, "variance": values}) for (layer, proj, head), values in series.items()],
        ignore_index=True,
    )


def trend(analysis, quantity: str, projection: str, per_head: bool = False):
    return next(t for t in analysis.depth if t.quantity == quantity and t.projection == projection and t.per_head == per_head)


def test_slower_deep_layers_give_shallow_first_verdict():
    analysis = analyze_history(history({(layer, p, -1): approach(20.0 * (layer + 1)) for layer in range(8) for p in "qkv"}))

    result = trend(analysis, "equilibration_step", "q")
    assert result.rho == pytest.approx(1.0)
    assert result.p_value < 0.05
    assert "shallow layers equilibrate first" in result.verdict
    assert "ρ = +1.00" in result.verdict
    pooled = trend(analysis, "equilibration_step", "all")
    assert pooled.n == 24
    assert "shallow layers equilibrate first" in pooled.verdict


def test_slower_shallow_layers_give_deep_first_verdict():
    analysis = analyze_history(history({(layer, "k", -1): approach(20.0 * (8 - layer)) for layer in range(8)}))

    result = trend(analysis, "equilibration_step", "k")
    assert result.rho == pytest.approx(-1.0)
    assert "deep layers equilibrate first" in result.verdict


def test_unrelated_order_gives_no_clear_verdict():
    taus = [60, 20, 140, 100, 40, 160, 80, 120]  # Spearman ρ with layer index: 0.33, p ≈ 0.42
    analysis = analyze_history(history({(layer, "v", -1): approach(tau) for layer, tau in enumerate(taus)}))

    result = trend(analysis, "equilibration_step", "v")
    assert result.p_value > 0.05
    assert "no clear depth order" in result.verdict


def test_unsettled_deepest_layer_ranks_last():
    series = {(layer, "q", -1): approach(20.0 * (layer + 1)) for layer in range(5)}
    series[(5, "q", -1)] = V0 * (1 + STEPS / 500)
    analysis = analyze_history(history(series))

    result = trend(analysis, "equilibration_step", "q")
    assert result.rho == pytest.approx(1.0)
    assert result.n == 6


def test_faster_shallow_growth_gives_shallow_faster_verdict():
    rates = [4e-3 / (layer + 1) for layer in range(6)]
    analysis = analyze_history(history({(layer, "q", -1): V0 * np.exp(rate * np.minimum(STEPS, 600)) for layer, rate in enumerate(rates)}))

    result = trend(analysis, "growth_rate", "q")
    assert result.rho == pytest.approx(-1.0)
    assert "shallow layers change faster early on" in result.verdict


def test_shrinking_variance_speed_uses_magnitude():
    # Variance that shrinks faster in deep layers: |rate| rises with depth.
    rates = [-1e-3 * (layer + 1) for layer in range(6)]
    analysis = analyze_history(history({(layer, "q", -1): V0 * np.exp(rate * np.minimum(STEPS, 300)) for layer, rate in enumerate(rates)}))

    result = trend(analysis, "growth_rate", "q")
    assert result.rho == pytest.approx(1.0)
    assert "deep layers change faster early on" in result.verdict


def test_identical_layers_have_no_depth_order():
    analysis = analyze_history(history({(layer, "q", -1): approach(50.0) for layer in range(6)}))

    result = trend(analysis, "equilibration_step", "q")
    assert math.isnan(result.rho)
    assert "does not vary across layers" in result.verdict


def test_nothing_settled_is_said_plainly():
    analysis = analyze_history(history({(layer, "q", -1): V0 * (1 + (layer + 1) * STEPS / 500) for layer in range(4)}))

    assert "no series equilibrated" in trend(analysis, "equilibration_step", "q").verdict


def test_head_spread_reports_band_ratio_and_settling_range():
    series = {}
    for layer in range(3):
        series[(layer, "q", -1)] = approach(40.0)
        for head in range(4):
            series[(layer, "q", head)] = approach(20.0 * (head + 1), band=BAND * (1 + 0.5 * head))
    analysis = analyze_history(history(series))

    spread = analysis.head_spread
    assert len(spread) == 3
    assert np.allclose(spread["band_ratio"], 2.5, rtol=1e-4)  # (1 + 0.5·3) / 1
    assert (spread["settled_heads"] == 4).all()
    assert (spread["first_settled"] < spread["last_settled"]).all()
    head_trends = [t for t in analysis.depth if t.per_head]
    assert head_trends, "per-head rows must produce per-head depth trends"
    assert analysis.verdicts(per_head=True)


def test_projection_history_has_no_head_spread():
    analysis = analyze_history(history({(layer, "q", -1): approach(50.0) for layer in range(3)}))

    assert analysis.head_spread is None
    assert not analysis.verdicts(per_head=True)


def test_higher_deep_bands_give_band_verdict():
    analysis = analyze_history(history({(layer, "q", -1): approach(30.0, band=BAND * (1 + 0.2 * layer)) for layer in range(6)}))

    result = trend(analysis, "band_median", "q")
    assert result.rho == pytest.approx(1.0)
    assert "deeper layers end at a higher variance" in result.verdict
