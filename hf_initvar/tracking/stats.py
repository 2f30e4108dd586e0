"""Statistics of Q/K/V views: partial moments written into one preallocated tensor.

Each row holds the partial moments `(count, mean, m2)` of one (layer, projection) or one
(layer, projection, head), where `m2` is the sum of squared deviations from the mean. Partial
moments merge exactly across shards (Chan et al., "Updating formulae and a pairwise algorithm for
computing sample variances", 1979), and the float64 accumulator keeps the variance exact when
|mean| is much larger than the std.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hf_initvar.tracking.layouts import AttentionLayout, ProjectionView

MOMENT_COLUMNS = ("count", "mean", "m2")
STATISTICS = ("variance", "std", "mean", "rms")


def row_keys(layout: AttentionLayout, per_head: bool) -> list[tuple[int, str, int]]:
    """The `(layer, projection, head)` key of every row, in the order `compute_moments` writes them.

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
