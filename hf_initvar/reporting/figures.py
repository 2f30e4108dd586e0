"""Figures of a saved variance history: a layer x step heatmap and per-layer curves.

Both read only the history folder that `VarianceCallback` writes, so they can be redrawn at any
time, also while training is still running (`hf-initvar plot RUN_DIR`).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, and none exists on most training hosts

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from hf_initvar.tracking.history import find_history_dir, load_history  # noqa: E402

PROJECTION_TITLES = {"q": "Query", "k": "Key", "v": "Value", "weight": "Linear weight"}


def projection_order(frame: pd.DataFrame) -> list[str]:
    """Return the projections present in `frame`: Q, K, V (or an MLP's `weight`) first, then others sorted."""
    present = set(frame["projection"].astype(str))
    return [name for name in PROJECTION_TITLES if name in present] + sorted(present - set(PROJECTION_TITLES))


def projection_title(projection: str) -> str:
    """Return the panel title of a projection, e.g. `Query` for `q`."""
    return PROJECTION_TITLES.get(projection, projection)


def draw_history_figures(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    targets: dict[tuple[int, str], float] | None = None,
) -> list[Path]:
    """Draw `variance_heatmap.png` and `variance_curves.png` for the history at `path`.

    Args:
        path: a history folder, or a training `output_dir` that contains `variance/`.
        out_dir: where to write the PNGs; default the history folder.
        targets: {(layer, projection): variance the init scheme intends}, drawn as dashed lines
            on the curves (`hf_initvar.reporting.targets.intended_variances` computes it).

    Returns:
        The paths written.
    """
    frame, meta = load_history(path)
    if frame.empty:
        raise ValueError(f"the variance history at {find_history_dir(path)} has no rows yet; nothing to draw")
    out = Path(out_dir) if out_dir is not None else find_history_dir(path)
    out.mkdir(parents=True, exist_ok=True)
    if "quantity" in frame.columns:  # keep weight rows; a history may also hold gradient or update rows
        frame = frame[frame["quantity"].fillna("weight") == "weight"]
    projections = frame[frame["head"] == -1]
    title = _title(meta)
    return [
        draw_variance_heatmap(projections, out / "variance_heatmap.png", title),
        draw_variance_curves(projections, out / "variance_curves.png", title, targets),
    ]


def variance_grid(frame: pd.DataFrame, projection: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return `(steps, layers, variance[layer, step])` for one projection's whole-projection rows."""
    rows = frame[(frame["projection"] == projection) & (frame["head"] == -1)]
    table = rows.pivot_table(index="layer", columns="step", values="variance", aggfunc="last")
    return table.columns.to_numpy(), table.index.to_numpy(), table.to_numpy()


def draw_variance_heatmap(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Draw one panel per projection: layers on the y axis, steps on the x axis, variance as color (log scale)."""
    grids = {projection: variance_grid(frame, projection) for projection in projection_order(frame)}
    positive = np.concatenate([grid[2][np.isfinite(grid[2]) & (grid[2] > 0)] for grid in grids.values()])
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None

    figure, axes = _panels(len(grids))
    for axis, (projection, (steps, layers, variance)) in zip(axes, grids.items()):
        image = axis.pcolormesh(_edges(steps), _edges(layers), variance, norm=norm, cmap="viridis", shading="flat")
        axis.set_title(projection_title(projection))
        axis.set_xlabel("optimizer step")
    axes[0].set_ylabel("layer")
    figure.colorbar(image, ax=axes, label="weight variance", shrink=0.9)
    figure.suptitle(title)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def draw_variance_curves(frame: pd.DataFrame, path: Path, title: str, targets: dict[tuple[int, str], float] | None = None) -> Path:
    """Draw the variance of every layer against the step, one panel per projection, colored by depth.

    With `targets`, each layer's intended init variance is a dashed line in the layer's color.
    """
    projections = projection_order(frame)
    figure, axes = _panels(len(projections))
    colormap = plt.get_cmap("plasma")
    for axis, projection in zip(axes, projections):
        steps, layers, variance = variance_grid(frame, projection)
        for row, layer in enumerate(layers):
            color = colormap(row / max(len(layers) - 1, 1))
            axis.plot(steps, variance[row], color=color, label=f"layer {layer}", linewidth=1.2)
            if targets and (int(layer), projection) in targets:
                axis.axhline(targets[(int(layer), projection)], color=color, linestyle="--", linewidth=0.8, alpha=0.7)
        axis.set_yscale("log")
        axis.set_title(projection_title(projection))
        axis.set_xlabel("optimizer step")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("weight variance" + (" (dashed: init target)" if targets else ""))
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _panels(count: int):
    """Return a figure with `count` side-by-side panels sharing the y axis, and the panels as a list."""
    figure, axes = plt.subplots(1, count, figsize=(5 * count + 1, 4.5), sharey=True, constrained_layout=True, squeeze=False)
    return figure, list(axes[0])


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges around sorted cell centers, for `pcolormesh` with uneven step spacing."""
    centers = np.asarray(centers, dtype=float)
    if centers.size == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    middles = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[centers[0] - (middles[0] - centers[0])], middles, [centers[-1] + (centers[-1] - middles[-1])]])


def _title(meta: dict) -> str:
    model = meta.get("model_type") or meta.get("layout")
    if meta.get("projections") == ["weight"]:
        subject, parts = "Layer weight variance", [f"{model}: {meta.get('n_layer')} linear layers"]
    else:
        subject, parts = "Q/K/V weight variance", [f"{model}: {meta.get('n_layer')} layers, {meta.get('n_head')} heads"]
    scheme = meta.get("init_scheme")
    if scheme:
        parts.append(f"init {scheme}")
    return f"{subject} — " + ", ".join(parts)
