"""The equilibration analysis on synthetic histories with closed-form settling steps, bands and rates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hf_initvar.reporting.analysis import EquilibrationRule, analyze_history, analyze_series

STEPS = np.arange(0, 2001, 10)
INTERVAL = 10
TOLERANCE = 0.05
V0 = 4e-4
BAND = 1.2e-3  # 3x growth, as Q/K/V weights of a small GPT-2 expand from 0.02² in training
NOISE = 0.01  # multiplicative log-normal noise, 1 %


def approach(tau: float, v0: float = V0, band: float = BAND) -> np.ndarray:
    """v(t) = b + (v0 - b)·exp(-t/τ)."""
    return band + (v0 - band) * np.exp(-STEPS / tau)


def settling_time(tau: float, tolerance: float, v0: float = V0, band: float = BAND) -> float:
    """The first t with |v(t)/b - 1| <= tolerance for the exponential approach."""
    return tau * math.log(abs(v0 - band) / (tolerance * band))


def history(series: dict[tuple[int, str, int], np.ndarray], extra: pd.DataFrame | None = None) -> pd.DataFrame:
    frames = [
        pd.DataFrame({"step": STEPS, "layer": layer, "projection": projection, "head": head, "variance": values})
        for (layer, projection, head), values in series.items()
    ]
    frame = pd.concat(frames, ignore_index=True)
    frame["std"] = np.sqrt(frame["variance"])
    return pd.concat([frame, extra], ignore_index=True) if extra is not None else frame


def noisy(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return values * np.exp(NOISE * rng.standard_normal(values.shape))


TAUS = {layer: 20.0 * (layer + 1) for layer in range(6)}  # deeper layers settle more slowly


def test_exponential_approach_settles_at_closed_form_step():
    frame = history({(layer, projection, -1): approach(tau) for layer, tau in TAUS.items() for projection in "qkv"})
    table = analyze_history(frame, rule=EquilibrationRule(tolerance=TOLERANCE)).projections()

    for layer, tau in TAUS.items():
        expected = settling_time(tau, TOLERANCE)
        found = table.loc[(table["layer"] == layer) & (table["projection"] == "q"), "equilibration_step"].item()
        # The rule returns the first logged step at or after the crossing.
        assert expected <= found < expected + INTERVAL, (layer, expected, found)


def test_exponential_approach_band_is_the_asymptote():
    frame = history({(layer, "k", -1): approach(tau) for layer, tau in TAUS.items()})
    table = analyze_history(frame).projections()

    # exp(-1600/120) leaves a relative residual under 1e-5 in the band window.
    assert np.allclose(table["band_median"], BAND, rtol=1e-5)
    assert np.allclose(table["band_spread"], 0.0, atol=1e-5)
    assert table["settled"].all()


def test_noisy_approach_settles_within_noise_bounds():
    rng = np.random.default_rng(0)
    frame = history({(layer, "v", -1): noisy(approach(tau), rng) for layer, tau in TAUS.items()})
    table = analyze_history(frame, rule=EquilibrationRule(tolerance=TOLERANCE)).projections()

    # Noise of 4.5σ (probability ~7e-6 a point) moves the band test by at most ±4.5σ·b, so the
    # settling step lies between the noiseless crossings at tolerances 0.05 + 0.045 and 0.05 - 0.045.
    for layer, tau in TAUS.items():
        found = table.loc[table["layer"] == layer, "equilibration_step"].item()
        earliest = settling_time(tau, TOLERANCE + 4.5 * NOISE)
        latest = settling_time(tau, TOLERANCE - 4.5 * NOISE) + INTERVAL
        assert earliest <= found <= latest, (layer, earliest, found, latest)


def test_noisy_band_median_and_spread_match_sampling_theory():
    rng = np.random.default_rng(1)
    frame = history({(layer, "q", -1): noisy(approach(tau), rng) for layer, tau in TAUS.items()})
    table = analyze_history(frame).projections()
    window = int((STEPS >= 1600).sum())

    # The median of n normal draws has std 1.2533·σ/√n; allow 4 of those.
    median_error = 4 * 1.2533 * NOISE / math.sqrt(window)
    assert np.all(np.abs(table["band_median"] / BAND - 1) < median_error)
    # The 10th-90th percentile width of N(0, σ²) is 2·1.2816·σ ≈ 2.56σ; a quantile from 41 points
    # is off by about 0.27σ, so the width lies within 2.56σ ± 4·0.38σ.
    assert np.all(table["band_spread"] > (2.563 - 1.52) * NOISE)
    assert np.all(table["band_spread"] < (2.563 + 1.52) * NOISE)


def test_linear_growth_does_not_settle():
    frame = history({(0, "q", -1): approach(20.0), (1, "q", -1): V0 * (1 + STEPS / 500)})
    table = analyze_history(frame).projections()

    growing = table[table["layer"] == 1].iloc[0]
    assert not growing["settled"]
    assert math.isnan(growing["equilibration_step"])
    assert table[table["layer"] == 0].iloc[0]["settled"]


def test_steady_drift_within_band_is_not_settled():
    # v = v0·(1 + t/5000): over the window 1600..2000 it climbs 400/5000 = 8 %, relative to its
    # median v0·1.36 that is a drift of 0.08/1.36 = 5.9 %, while every point stays within ±3 % of it.
    result = analyze_series(STEPS, V0 * (1 + STEPS / 5000), EquilibrationRule(tolerance=TOLERANCE))

    assert result.band_drift == pytest.approx(0.08 / 1.36, rel=1e-9)
    assert result.equilibration_step is None


def test_entering_band_inside_final_window_is_not_settled():
    rule = EquilibrationRule(tolerance=TOLERANCE)
    # A jump at step 1700: the band window (1600..2000) has 10 points before it and 31 after, so
    # the band is the new level, which the series enters only inside the window.
    result = analyze_series(STEPS, np.where(STEPS < 1700, V0, BAND), rule)

    assert result.band_median == BAND

    assert result.equilibration_step is None


def test_capped_exponential_growth_rate_is_exact():
    rates = {layer: 4e-3 / (layer + 1) for layer in range(6)}
    cap = 600  # growth stops after the early window (the first 400 steps)
    frame = history({(layer, "q", -1): V0 * np.exp(rate * np.minimum(STEPS, cap)) for layer, rate in rates.items()})
    table = analyze_history(frame, rule=EquilibrationRule(tolerance=TOLERANCE)).projections()

    for layer, rate in rates.items():
        row = table[table["layer"] == layer].iloc[0]
        assert row["growth_rate"] == pytest.approx(rate, rel=1e-9)
        # The band is v0·exp(r·cap); it is reached to within 5 % at cap + ln(0.95)/r.
        expected = cap + math.log(1 - TOLERANCE) / rate
        assert expected <= row["equilibration_step"] < expected + INTERVAL


def test_noisy_growth_rate_within_regression_error():
    rng = np.random.default_rng(2)
    rate = 3e-3
    frame = history({(layer, "q", -1): noisy(V0 * np.exp(rate * np.minimum(STEPS, 600)), rng) for layer in range(4)})
    table = analyze_history(frame).projections()

    early = STEPS[STEPS <= 400]
    # Standard error of a least-squares slope: σ / √(Σ(t - t̄)²).
    slope_error = NOISE / math.sqrt(((early - early.mean()) ** 2).sum())
    assert np.all(np.abs(table["growth_rate"] - rate) < 4 * slope_error)


def test_zero_variance_series_has_no_growth_rate():
    frame = history({(0, "q", -1): np.zeros(len(STEPS)), (1, "q", -1): approach(20.0)})
    table = analyze_history(frame).projections()

    zero = table[table["layer"] == 0].iloc[0]
    assert math.isnan(zero["growth_rate"])
    assert not zero["settled"]


def test_smoothing_rejects_single_spikes():
    values = approach(20.0)
    values[150] *= 1.5  # one outlier at step 1500, before the band window
    rule = EquilibrationRule(tolerance=TOLERANCE)

    raw = analyze_series(STEPS, values, rule)
    smoothed = analyze_series(STEPS, values, EquilibrationRule(tolerance=TOLERANCE, smooth=3))

    assert raw.equilibration_step == 1510
    assert smoothed.equilibration_step == analyze_series(STEPS, approach(20.0), rule).equilibration_step


def test_gradient_rows_are_ignored():
    series = {(layer, "q", -1): approach(tau) for layer, tau in TAUS.items()}
    plain = analyze_history(history(series)).projections()
    gradients = history({key: np.full(len(STEPS), 7.0) * (1 + STEPS) for key in series})
    mixed = pd.concat([history(series).assign(quantity="weight"), gradients.assign(quantity="gradient")], ignore_index=True)

    pd.testing.assert_frame_equal(analyze_history(mixed).projections(), plain)


def test_fewer_than_three_steps_raises():
    frame = pd.DataFrame({"step": [0, 5], "layer": 0, "projection": "q", "head": -1, "variance": [1.0, 2.0]})

    with pytest.raises(ValueError, match="2 logged steps"):
        analyze_history(frame)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"tolerance": 0.0}, "tolerance"), ({"final_fraction": 1.5}, "final_fraction"), ({"smooth": 2}, "odd")],
)
def test_invalid_rule_raises(arguments, message):
    with pytest.raises(ValueError, match=message):
        EquilibrationRule(**arguments)
