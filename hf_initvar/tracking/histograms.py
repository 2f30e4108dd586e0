"""Fixed-bin histograms of chosen layers' Q/K/V weights at chosen steps.

A histogram is taken only at the steps asked for, so recording costs one pass over a few
layers' Q/K/V bytes a handful of times per run.

File format: `<history_dir>/histograms.csv`, one row per bin, columns

- `step`, `layer`, `projection` (q/k/v): which weights;
- `lower`, `upper`: the bin's edges. The first row of a block has `lower = -inf` and counts the
  weights below the first edge. The last row has `upper = inf` and counts those at or above the last edge.
- `count`: number of weights in the bin.

The edges of a (layer, projection) are fixed the first time it is recorded: `bins` equal bins
over `±range_in_std` (default 10) times the std it has then (or `±half_width` when given), so every later
snapshot of that projection shares its bins and the snapshots overlay directly. Counts are
exact; weights that drift outside the range land in the two open-ended bins.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hf_initvar.tracking.layouts import ProjectionView

logger = logging.getLogger(__name__)

HISTOGRAMS_FILENAME = "histograms.csv"
HISTOGRAM_COLUMNS = ("step", "layer", "projection", "lower", "upper", "count")


class HistogramRecorder:
    """Record fixed-bin histograms of the Q/K/V weights of `layers` at `steps`.

    Args:
        layers: layer indices to record (negative indices count from the last layer).
        steps: optimizer steps at which to record.
        bins: number of equal bins between the edges (two open-ended bins are added).
        range_in_std: half-width of the binned range, in stds of the first recorded snapshot.
        half_width: a fixed half-width instead of `range_in_std`.
    """

    def __init__(
        self,
        layers: Iterable[int],
        steps: Iterable[int],
        bins: int = 80,
        range_in_std: float = 10.0,
        half_width: float | None = None,
    ):
        self.layers = sorted({int(layer) for layer in layers})
        self.steps = sorted({int(step) for step in steps})
        if not self.layers:
            raise ValueError("HistogramRecorder needs at least one layer, got none; e.g. layers=[0, 5, 11]")
        if not self.steps or self.steps[0] < 0:
            raise ValueError(f"HistogramRecorder steps must be non-negative integers, got {self.steps}; e.g. steps=[0, 100, 500]")
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        if half_width is not None and not half_width > 0:
            raise ValueError(f"half_width must be positive, got {half_width}")
        if not range_in_std > 0:
            raise ValueError(f"range_in_std must be positive, got {range_in_std}")
        self.bins = bins
        self.range_in_std = range_in_std
        self.half_width = half_width
        self._edges: dict[tuple[int, str], np.ndarray] = {}
        self._path: Path | None = None
        self._recorded: set[int] = set()

    def open(self, directory: str | os.PathLike, n_layer: int) -> None:
        """Resolve negative layer indices against `n_layer` and reuse the edges of an existing file."""
        resolved = []
        for layer in self.layers:
            index = layer + n_layer if layer < 0 else layer
            if not 0 <= index < n_layer:
                raise ValueError(f"histogram layer {layer} is outside the model's {n_layer} layers (allowed: 0..{n_layer - 1} or -{n_layer}..-1)")
            resolved.append(index)
        self.layers = sorted(set(resolved))
        self._path = Path(directory) / HISTOGRAMS_FILENAME
        if self._path.exists():
            existing = pd.read_csv(self._path)
            self._edges = _edges_from_frame(existing)
            self._recorded = set(existing["step"].astype(int))

    def wants(self, step: int) -> bool:
        """Return whether `step` is a recording step not yet in the file (a resume may revisit a step)."""
        return step in self.steps and step not in self._recorded

    def compute(self, views: list[ProjectionView], step: int) -> list[tuple]:
        """Compute the histogram rows of the chosen layers at `step`. Every rank calls this, and only rank 0 writes."""
        rows = []
        for view in views:
            if view.layer not in self.layers:
                continue
            weight = view.weight
            if hasattr(weight, "full_tensor"):  # a DTensor shard: gather the whole projection first
                weight = weight.full_tensor()
            values = weight.detach().reshape(-1).to(torch.float64)
            key = (view.layer, view.projection)
            if key not in self._edges:
                half = self.half_width if self.half_width is not None else self.range_in_std * float(values.std())
                half = half if half > 0 else 1.0  # an all-zero projection (zero_out init) still gets usable bins
                self._edges[key] = np.linspace(-half, half, self.bins + 1)
            edges = self._edges[key]
            counts = _bin_counts(values, edges)
            lowers = np.concatenate([[-math.inf], edges])
            uppers = np.concatenate([edges, [math.inf]])
            rows.extend((step, view.layer, view.projection, float(lo), float(hi), int(n)) for lo, hi, n in zip(lowers, uppers, counts))
        return rows

    def append(self, rows: list[tuple]) -> None:
        """Append rows to `histograms.csv`, writing the header when the file is new."""
        if self._path is None:
            raise RuntimeError("HistogramRecorder.open(directory, n_layer) must be called before append")
        new = not self._path.exists()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(HISTOGRAM_COLUMNS)
            writer.writerows(rows)
        self._recorded.update(row[0] for row in rows)


def _bin_counts(values: torch.Tensor, edges: np.ndarray) -> np.ndarray:
    """Counts below edges[0], in each of the len(edges)-1 bins, and at or above edges[-1]."""
    edge_tensor = torch.tensor(edges, dtype=values.dtype, device=values.device)
    # bucketize(right=True) gives i such that edges[i-1] <= v < edges[i]: 0 is the underflow bin,
    # len(edges) the overflow bin, so one bincount covers both open ends.
    index = torch.bucketize(values, edge_tensor, right=True)
    return torch.bincount(index, minlength=len(edges) + 1).cpu().numpy()


def _edges_from_frame(frame: pd.DataFrame) -> dict[tuple[int, str], np.ndarray]:
    edges = {}
    for (layer, projection), group in frame.groupby(["layer", "projection"]):
        first = group[group["step"] == group["step"].min()]
        # The block's lower edges are -inf followed by every finite edge, in order.
        edges[(int(layer), str(projection))] = np.asarray(first["lower"].iloc[1:], dtype=float)
    return edges


def load_histograms(path: str | os.PathLike) -> pd.DataFrame:
    """Read `histograms.csv` from a file or a history folder.

    Raises:
        FileNotFoundError: no histogram file there (record one with `VarianceCallback(histogram_steps=...)`).
    """
    path = Path(path)
    if path.is_dir():
        path = path / HISTOGRAMS_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"no {HISTOGRAMS_FILENAME} at {path}; record one with VarianceCallback(histogram_steps=[...])")
    frame = pd.read_csv(path)
    missing = [column for column in HISTOGRAM_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; expected {list(HISTOGRAM_COLUMNS)}")
    return frame
