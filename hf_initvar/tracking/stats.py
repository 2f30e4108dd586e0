"""Statistics of Q/K/V views: partial moments written into one preallocated tensor.

Each row holds the partial moments `(count, mean, m2)` of one (layer, projection) or one
(layer, projection, head), where `m2` is the sum of squared deviations from the mean. Partial
moments merge exactly across shards (Chan et al., "Updating formulae and a pairwise algorithm for
computing sample variances", 1979), and the float64 accumulator keeps the variance exact when
|mean| is much larger than the std.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from hf_initvar.tracking.layouts import AttentionLayout, ProjectionPlacement, ProjectionView

MOMENT_COLUMNS = ("count", "mean", "m2")
STATISTICS = ("variance", "std", "mean", "rms")


def row_keys(layout: AttentionLayout, per_head: bool) -> list[tuple[int, str, int]]:
    """Return the `(layer, projection, head)` key of every row, in the order `compute_moments` writes them.

    `head` is -1 for the row over the whole projection.
    """
    keys = []
    for placement in layout.placements:
        keys.append((placement.layer, placement.projection, -1))
        if per_head:
            keys.extend((placement.layer, placement.projection, head) for head in range(placement.n_heads))
    return keys


@torch.no_grad()
def compute_moments(views: list[ProjectionView], per_head: bool, out: torch.Tensor) -> torch.Tensor:
    """Write the partial moments of every view (and of every head, if `per_head`) into `out`.

    Args:
        views: the layout's views, each `(heads, rows, head_dim)`.
        per_head: also write one row per head after each projection's row.
        out: float64 tensor of shape `(len(row_keys(...)), 3)` on the weights' device.

    Returns:
        `out`, filled in place. No host synchronization happens here.
    """
    row = 0
    for view in views:
        weight = view.weight
        variance, mean = torch.var_mean(weight, correction=0)
        out[row, 0] = weight.numel()
        out[row, 1] = mean
        out[row, 2] = variance.double() * weight.numel()
        row += 1
        if per_head:
            heads = weight.shape[0]
            per_head_count = weight[0].numel()
            head_variance, head_mean = torch.var_mean(weight, dim=(1, 2), correction=0)
            out[row : row + heads, 0] = per_head_count
            out[row : row + heads, 1] = head_mean
            out[row : row + heads, 2] = head_variance.double() * per_head_count
            row += heads
    return out


class FeatureSums:
    """Partial moments of every row from float64 per-feature sums: two reductions per weight.

    For each distinct weight, `sum(x)` and `sum(x**2)` are taken over the input axis in float64,
    which gives one pair per output feature. Two `index_add_` calls then add the features of each
    head and projection. On CPU (torch 2.13) this is 4-7 times faster than a Welford `var_mean`
    per view, and in float64 the relative error of `m2 = S2 - S1**2 / n` stays about
    1e-16 * (mean / std)**2, below 1e-9 even for LayerNorm-like weights (mean 1, std 1e-3).
    Unsharded weights only: the feature axis must be whole.

    Args:
        layout: the attention layout.
        per_head: keep one row per head after each projection's row.
    """

    def __init__(self, layout: AttentionLayout, per_head: bool):
        self.layout = layout
        self.keys = row_keys(layout, per_head)
        self._weights: list[tuple[ProjectionPlacement, slice]] = []  # one placement per distinct weight
        first_feature: dict[tuple[int, str], int] = {}
        n_features = 0
        for placement in layout.placements:
            key = (id(placement.module), placement.parameter_name)
            if key not in first_feature:
                shape = placement.weight().shape
                first_feature[key] = n_features
                self._weights.append((placement, slice(n_features, n_features + shape[placement.feature_axis])))
                n_features += shape[placement.feature_axis]
        unused_row = len(self.keys)  # features outside every projection land here
        head_rows = torch.full((n_features,), unused_row, dtype=torch.long)
        projection_rows = torch.full((n_features,), unused_row, dtype=torch.long)
        counts = torch.zeros(len(self.keys) + 1, dtype=torch.float64)
        row = 0
        for placement in layout.placements:
            base = first_feature[(id(placement.module), placement.parameter_name)]
            inputs = placement.weight().shape[1 - placement.feature_axis]
            projection_row = row
            row += 1
            for head in range(placement.n_heads):
                start = base + placement.offset + head * placement.head_stride
                features = slice(start, start + placement.head_dim)
                projection_rows[features] = projection_row
                if per_head:
                    head_rows[features] = row + head
                    counts[row + head] = inputs * placement.head_dim
            counts[projection_row] = inputs * placement.head_dim * placement.n_heads
            if per_head:
                row += placement.n_heads
        # Each feature feeds its projection's row and, with per-head rows, its head's row.
        self._targets = torch.cat([projection_rows, head_rows]) if per_head else projection_rows
        self._counts = counts[:-1]
        self._n_features = n_features
        self._device: torch.device | None = None

    @torch.no_grad()
    def compute(self, out: torch.Tensor, tensor_of: Callable[[ProjectionPlacement], torch.Tensor] | None = None) -> torch.Tensor:
        """Write `(count, mean, m2)` of every row into `out` (float64, on the weights' device).

        `tensor_of` returns the full tensor to reduce for a placement (its weight by default; a
        gradient or a weight change has the same shape).
        """
        device = out.device
        if self._device != device:
            self._targets, self._counts, self._device = self._targets.to(device), self._counts.to(device), device
            self._sums = torch.empty((2, self._n_features), dtype=torch.float64, device=device)
        for placement, features in self._weights:
            weight = (tensor_of(placement) if tensor_of is not None else placement.weight()).detach().double()
            input_axis = 1 - placement.feature_axis
            torch.sum(weight, dim=input_axis, out=self._sums[0, features])
            torch.sum(weight.square_(), dim=input_axis, out=self._sums[1, features])
        repeats = len(self._targets) // self._n_features
        sums = self._sums.repeat(1, repeats) if repeats > 1 else self._sums
        totals = torch.zeros((2, len(self.keys) + 1), dtype=torch.float64, device=device)
        totals[0].index_add_(0, self._targets, sums[0])
        totals[1].index_add_(0, self._targets, sums[1])
        first, second = totals[0, :-1], totals[1, :-1]
        out[:, 0] = self._counts
        out[:, 1] = first / self._counts
        out[:, 2] = (second - first * first / self._counts).clamp_min_(0.0)
        return out


def merge_moments(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Merge two arrays of partial moments `(..., 3)` row by row (Chan's parallel formula)."""
    count = a[..., 0] + b[..., 0]
    safe_count = np.where(count > 0, count, 1.0)
    delta = b[..., 1] - a[..., 1]
    mean = a[..., 1] + delta * b[..., 0] / safe_count
    m2 = a[..., 2] + b[..., 2] + delta**2 * a[..., 0] * b[..., 0] / safe_count
    return np.stack([count, mean, m2], axis=-1)


def moments_to_statistics(moments: np.ndarray) -> dict[str, np.ndarray]:
    """Turn partial moments `(rows, 3)` into population variance, std, mean and RMS per row."""
    count = moments[:, 0]
    mean = moments[:, 1]
    variance = moments[:, 2] / np.where(count > 0, count, math.nan)
    return {
        "variance": variance,
        "std": np.sqrt(variance),
        "mean": mean,
        "rms": np.sqrt(variance + mean**2),
    }
