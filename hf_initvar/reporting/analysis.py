"""Equilibration analysis of a saved variance history: growth, settling step, band, depth trend.

Everything here is a pure function of the history that `VarianceCallback` writes (or of any
DataFrame with its columns), so it runs on finished runs, runs still training, and runs of other
people's models alike.

The equilibration rule (`EquilibrationRule`, the same text is in the docs):

1. The *band window* is the final `final_fraction` of the logged steps. The *band* is the median
   of the variance over that window, and its spread is the 10th to 90th percentile there.
2. A series *equilibrates at step t* when, from t to the last logged step, every logged variance
   (after an optional centred rolling median over `smooth` points) stays within `±tolerance`
   of the band median. t is the first logged step after the last excursion, the settling time of
   control engineering.
3. A series that only enters the band after the band window starts has *not equilibrated*: it has
   not stayed in the band for a whole window, so the run was too short to tell.
4. A series whose *drift* over the band window exceeds the tolerance has not equilibrated either,
   even when every point lies in the band. The drift is the slope of a straight-line fit over the
   window times the window's length, relative to the band median. A steady climb of 8 % over the
   window stays within ±5 % of its own median, yet it is still climbing. A window of one logged
   step has no drift to measure, so its series counts as not equilibrated.

For an exponential approach v(t) = b + (v0 - b)·exp(-t/τ) the rule returns the first logged step
at or after τ·ln(|v0 - b| / (tolerance·b)).

The *early growth rate* is the least-squares slope of ln(variance) against the step over the first
`early_fraction` of the logged steps (at least three points), in units of 1/step. A rate of 1e-3
means the variance grows by about 0.1 % per step at the start.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from hf_initvar.tracking.history import load_history

logger = logging.getLogger(__name__)

SIGNIFICANCE = 0.05
TABLE_COLUMNS = (
    "layer",
    "projection",
    "head",
    "initial_variance",
    "growth_rate",
    "equilibration_step",
    "settled",
    "band_median",
    "band_low",
    "band_high",
    "band_spread",
    "band_drift",
    "final_variance",
)


@dataclass(frozen=True)
class EquilibrationRule:
    """Parameters of the equilibration rule written in the module docstring.

    Attributes:
        tolerance: relative half-width of the band (0.05: within ±5 % of the band median).
        final_fraction: share of the logged step range that forms the band window.
        early_fraction: share of the logged step range over which the early growth rate is fitted.
        smooth: points of the centred rolling median applied before the band test (1: none).
    """

    tolerance: float = 0.05
    final_fraction: float = 0.2
    early_fraction: float = 0.2
    smooth: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}; e.g. 0.05 for ±5 %")
        for name in ("final_fraction", "early_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.smooth < 1 or self.smooth % 2 == 0:
            raise ValueError(f"smooth must be a positive odd number of points, got {self.smooth}; e.g. 1 or 3")

    def describe(self) -> str:
        """Return one sentence that states the rule with its numbers, for reports."""
        smoothing = f" after a {self.smooth}-point rolling median" if self.smooth > 1 else ""
        return (
            f"a series equilibrates at the first logged step from which its variance{smoothing} stays within "
            f"±{self.tolerance:.0%} of its band, the median over the last {self.final_fraction:.0%} of the run; "
            f"a series that enters the band only inside that final window, or drifts by more than ±{self.tolerance:.0%} "
            f"across it (straight-line fit), has not equilibrated. "
            f"The early growth rate is the slope of ln(variance) per step over the first {self.early_fraction:.0%} of the run."
        )


@dataclass(frozen=True)
class SeriesResult:
    """Equilibration of one series (one layer, projection and head)."""

    initial_variance: float
    growth_rate: float
    equilibration_step: int | None
    band_median: float
    band_low: float
    band_high: float
    band_drift: float
    final_variance: float

    @property
    def settled(self) -> bool:
        """True when the series equilibrated within the run."""
        return self.equilibration_step is not None


@dataclass(frozen=True)
class DepthTrend:
    """Spearman rank correlation between layer index and a per-layer quantity.

    Attributes:
        quantity: `growth_rate` (correlated as |rate|, the speed of change), `equilibration_step`,
            or `band_median` (the variance the layer ends at).
        projection: `q`, `k`, `v`, or `all` (every projection pooled).
        per_head: True when computed over per-head series.
        rho: Spearman's ρ (NaN when one of the two has no spread).
        p_value: two-sided p-value of ρ = 0.
        n: number of series correlated.
        verdict: the result in one plain sentence.
    """

    quantity: str
    projection: str
    per_head: bool
    rho: float
    p_value: float
    n: int
    verdict: str


@dataclass
class EquilibrationAnalysis:
    """The result of `analyze_history`.

    Attributes:
        table: one row per series with `TABLE_COLUMNS`; `head` is -1 for whole projections.
        depth: depth trends for whole projections, then for heads when present.
        head_spread: per (layer, projection), how far the heads' bands and settling steps spread;
            None without per-head rows.
        rule: the rule used.
        meta: the history's metadata.
        first_step: first logged step.
        last_step: last logged step.
    """

    table: pd.DataFrame
    depth: list[DepthTrend]
    head_spread: pd.DataFrame | None
    rule: EquilibrationRule
    meta: dict[str, Any] = field(default_factory=dict)
    first_step: int = 0
    last_step: int = 0

    def projections(self) -> pd.DataFrame:
        """Return the whole-projection rows of `table`."""
        return self.table[self.table["head"] == -1].reset_index(drop=True)

    def verdicts(self, per_head: bool = False) -> list[str]:
        """Return the depth verdicts of the whole projections, or of the heads."""
        return [trend.verdict for trend in self.depth if trend.per_head == per_head]


def analyze_history(
    history: str | os.PathLike | pd.DataFrame,
    meta: dict[str, Any] | None = None,
    rule: EquilibrationRule | None = None,
) -> EquilibrationAnalysis:
    """Analyse every series of a variance history.

    Args:
        history: a history folder, a run's `output_dir`, or a DataFrame with the history columns.
        meta: the history's metadata when `history` is a DataFrame.
        rule: the equilibration rule; default `EquilibrationRule()`.

    Returns:
        The per-series table, depth trends and head spread.

    Raises:
        ValueError: the history has fewer than three logged steps or lacks a needed column.
    """
    rule = rule or EquilibrationRule()
    if isinstance(history, pd.DataFrame):
        frame, meta = history, dict(meta or {})
    else:
        frame, meta = load_history(history)
    frame = weight_rows(frame)
    missing = [column for column in ("step", "layer", "projection", "head", "variance") if column not in frame.columns]
    if missing:
        raise ValueError(f"the history lacks columns {missing}; it needs step, layer, projection, head and variance")
    steps = np.sort(frame["step"].unique())
    if len(steps) < 3:
        raise ValueError(f"the history has {len(steps)} logged steps; the analysis needs at least 3")

    rows = []
    for (layer, projection, head), group in frame.groupby(["layer", "projection", "head"], sort=True):
        group = group.sort_values("step")
        result = analyze_series(group["step"].to_numpy(), group["variance"].to_numpy(dtype=float), rule)
        rows.append(
            {
                "layer": int(layer),
                "projection": str(projection),
                "head": int(head),
                "initial_variance": result.initial_variance,
                "growth_rate": result.growth_rate,
                "equilibration_step": result.equilibration_step if result.settled else np.nan,
                "settled": result.settled,
                "band_median": result.band_median,
                "band_low": result.band_low,
                "band_high": result.band_high,
                "band_spread": (result.band_high - result.band_low) / result.band_median if result.band_median > 0 else np.nan,
                "band_drift": result.band_drift,
                "final_variance": result.final_variance,
            }
        )
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    first_step, last_step = int(steps[0]), int(steps[-1])

    depth = depth_trends(table[table["head"] == -1], last_step, per_head=False)
    heads = table[table["head"] >= 0]
    head_spread = None
    if not heads.empty:
        depth += depth_trends(heads, last_step, per_head=True)
        head_spread = spread_across_heads(heads)
    return EquilibrationAnalysis(table, depth, head_spread, rule, meta, first_step, last_step)


def weight_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the rows of weight statistics (a history may also hold gradient or update rows)."""
    if "quantity" in frame.columns:
        frame = frame[frame["quantity"].fillna("weight") == "weight"]
    return frame


def analyze_series(steps: np.ndarray, variance: np.ndarray, rule: EquilibrationRule) -> SeriesResult:
    """Apply the equilibration rule to one series of (step, variance), sorted by step."""
    steps = np.asarray(steps, dtype=float)
    variance = np.asarray(variance, dtype=float)
    span = steps[-1] - steps[0]

    window = steps >= steps[-1] - rule.final_fraction * span
    band_median = float(np.median(variance[window]))
    band_low, band_high = (float(value) for value in np.percentile(variance[window], [10, 90]))
    window_start = float(steps[window][0])
    drift = band_drift(steps[window], variance[window], band_median)

    settling_step = _settling_step(steps, _rolling_median(variance, rule.smooth), band_median, rule.tolerance, window_start)
    if not abs(drift) <= rule.tolerance:
        settling_step = None
    return SeriesResult(
        initial_variance=float(variance[0]),
        growth_rate=early_growth_rate(steps, variance, rule.early_fraction),
        equilibration_step=settling_step,
        band_median=band_median,
        band_low=band_low,
        band_high=band_high,
        band_drift=drift,
        final_variance=float(variance[-1]),
    )


def band_drift(steps: np.ndarray, variance: np.ndarray, band_median: float) -> float:
    """Compute the relative change across the window of a straight-line fit: slope · span / band median."""
    if len(steps) < 2 or not band_median > 0:
        return math.nan
    slope, _ = np.polyfit(steps, variance, 1)
    return float(slope * (steps[-1] - steps[0]) / band_median)


def early_growth_rate(steps: np.ndarray, variance: np.ndarray, early_fraction: float) -> float:
    """Fit the slope of ln(variance) per step over the first `early_fraction` of the steps (at least 3 points)."""
    steps = np.asarray(steps, dtype=float)
    variance = np.asarray(variance, dtype=float)
    early = steps <= steps[0] + early_fraction * (steps[-1] - steps[0])
    if early.sum() < 3:
        early = np.arange(len(steps)) < 3
    positive = early & (variance > 0)
    if positive.sum() < 2:
        # ln is undefined at zero (a zero-initialized projection), so no rate can be read.
        return math.nan
    slope, _ = np.polyfit(steps[positive], np.log(variance[positive]), 1)
    return float(slope)


def _settling_step(steps: np.ndarray, variance: np.ndarray, band: float, tolerance: float, window_start: float) -> int | None:
    if not band > 0:
        return None
    outside = np.flatnonzero(np.abs(variance / band - 1.0) > tolerance)
    if outside.size == 0:
        return int(steps[0])
    if outside[-1] + 1 >= len(steps):
        return None
    settled_at = steps[outside[-1] + 1]
    if settled_at > window_start:
        return None
    return int(settled_at)


def _rolling_median(values: np.ndarray, points: int) -> np.ndarray:
    if points == 1:
        return values
    return pd.Series(values).rolling(points, center=True, min_periods=1).median().to_numpy()


def depth_trends(table: pd.DataFrame, last_step: int, per_head: bool) -> list[DepthTrend]:
    """Correlate layer index with |growth rate|, equilibration step and band median (Spearman ρ).

    Per projection and pooled over projections. A series that did not equilibrate is ranked
    after every series that did (its settling step is censored at `last_step + 1`).
    """
    trends = []
    projections = sorted(table["projection"].unique())
    # Pooling is only new information when a layer has several projections (Q, K and V).
    for projection in [*projections, "all"] if len(projections) > 1 else projections:
        rows = table if projection == "all" else table[table["projection"] == projection]
        layers = rows["layer"].to_numpy()
        speed = np.abs(rows["growth_rate"].to_numpy(dtype=float))
        trends.append(_trend("growth_rate", projection, per_head, layers, speed, settled=None))
        settle = rows["equilibration_step"].fillna(last_step + 1).to_numpy(dtype=float)
        trends.append(_trend("equilibration_step", projection, per_head, layers, settle, settled=rows["settled"].to_numpy()))
        trends.append(_trend("band_median", projection, per_head, layers, rows["band_median"].to_numpy(dtype=float), settled=None))
    return trends


def _trend(quantity: str, projection: str, per_head: bool, layers: np.ndarray, values: np.ndarray, settled: np.ndarray | None) -> DepthTrend:
    finite = np.isfinite(values)
    layers, values = layers[finite], values[finite]
    label = _series_label(projection, per_head)
    n = len(values)
    if settled is not None and not settled.any():
        return DepthTrend(quantity, projection, per_head, math.nan, math.nan, n, f"{label}: no series equilibrated within the run")
    if n < 3 or np.ptp(layers) == 0 or np.ptp(values) == 0:
        what = {"growth_rate": "speed of early change", "equilibration_step": "equilibration step", "band_median": "band"}[quantity]
        return DepthTrend(quantity, projection, per_head, math.nan, math.nan, n, f"{label}: no depth order, the {what} does not vary across layers")

    rho, p_value = stats.spearmanr(layers, values)
    rho, p_value = float(rho), float(p_value)
    numbers = f"ρ = {rho:+.2f}, p = {p_value:.2g}, n = {n}"
    if p_value >= SIGNIFICANCE:
        what = {"growth_rate": "early change", "equilibration_step": "equilibration", "band_median": "the band"}[quantity]
        return DepthTrend(quantity, projection, per_head, rho, p_value, n, f"{label}: no clear depth order in {what} ({numbers})")
    if quantity == "growth_rate":
        # ρ is taken against |rate|: a negative ρ means the rate falls with depth.
        finding = "shallow layers change faster early on" if rho < 0 else "deep layers change faster early on"
    elif quantity == "equilibration_step":
        finding = "shallow layers equilibrate first" if rho > 0 else "deep layers equilibrate first"
    else:
        finding = "deeper layers end at a higher variance" if rho > 0 else "deeper layers end at a lower variance"
    return DepthTrend(quantity, projection, per_head, rho, p_value, n, f"{label}: {finding} ({numbers})")


def _series_label(projection: str, per_head: bool) -> str:
    if projection == "all":
        name = "Q, K and V pooled"
    elif projection == "weight":
        name = "layer weight"
    else:
        name = projection.upper()
    return f"{name} (per head)" if per_head else name


def spread_across_heads(heads: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, projection): spread of the heads' band medians and of their settling steps.

    Columns: layer, projection, n_heads, band_min, band_max, band_ratio (max/min), band_cv (std/mean
    of the heads' band medians), settled_heads, first_settled, last_settled.
    """
    rows = []
    for (layer, projection), group in heads.groupby(["layer", "projection"], sort=True):
        bands = group["band_median"].to_numpy(dtype=float)
        settled = group.loc[group["settled"], "equilibration_step"]
        rows.append(
            {
                "layer": int(layer),
                "projection": str(projection),
                "n_heads": len(group),
                "band_min": float(bands.min()),
                "band_max": float(bands.max()),
                "band_ratio": float(bands.max() / bands.min()) if bands.min() > 0 else math.inf,
                "band_cv": float(bands.std(ddof=1) / bands.mean()) if len(bands) > 1 and bands.mean() > 0 else math.nan,
                "settled_heads": int(group["settled"].sum()),
                "first_settled": float(settled.min()) if not settled.empty else math.nan,
                "last_settled": float(settled.max()) if not settled.empty else math.nan,
            }
        )
    return pd.DataFrame(rows)
