"""Self-contained run reports (Markdown plus PNGs) and comparisons of several runs.

`write_report(RUN_DIR)` writes into `RUN_DIR/report/`:

- `report.md`: the run, the equilibration rule, the figures, the equilibration table and the depth verdicts;
- `variance_heatmap.png`, `variance_curves.png` (with the init scheme's target dashed),
  `equilibration.png`, `head_bands.png` (with per-head rows), `weight_histograms.png` (with
  recorded histograms);
- `equilibration.csv`: every series of the analysis, per-head rows included.

`compare_runs([RUN_A, RUN_B, ...], OUT)` overlays the runs in `compare.md`, `compare_curves.png`,
`compare_equilibration.png` and `compare.csv`. `hf-initvar report` and `hf-initvar compare-runs`
call these two functions.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: training hosts rarely have a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hf_initvar.reporting.analysis import EquilibrationAnalysis, EquilibrationRule, analyze_history, weight_rows  # noqa: E402
from hf_initvar.reporting.figures import (  # noqa: E402
    _title,
    draw_variance_curves,
    draw_variance_heatmap,
    projection_order,
    projection_title,
    variance_grid,
)
from hf_initvar.reporting.targets import intended_variances  # noqa: E402
from hf_initvar.tracking.histograms import HISTOGRAMS_FILENAME, load_histograms  # noqa: E402
from hf_initvar.tracking.history import find_history_dir, load_history  # noqa: E402

logger = logging.getLogger(__name__)

REPORT_DIRNAME = "report"
PROJECTION_MARKERS = {"q": "o", "k": "s", "v": "^", "weight": "o"}
PROJECTION_COLORS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "weight": "tab:purple"}


@dataclass
class Report:
    """Files and analysis produced by `write_report`.

    Attributes:
        directory: the report folder.
        markdown: the `report.md` path.
        figures: name -> PNG path, in the order the report shows them.
        table: the `equilibration.csv` path.
        analysis: the analysis the report is built on.
    """

    directory: Path
    markdown: Path
    figures: dict[str, Path]
    table: Path
    analysis: EquilibrationAnalysis
    files: list[Path] = field(default_factory=list)


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, rule: EquilibrationRule | None = None) -> Report:
    """Analyse the run's variance history and write the Markdown report with its figures.

    Args:
        run_dir: a training `output_dir` (holding `variance/`) or a history folder.
        out_dir: the report folder; default `<run_dir>/report`.
        rule: the equilibration rule; default `EquilibrationRule()`.

    Raises:
        FileNotFoundError: no variance history under `run_dir`.
        ValueError: the history has fewer than three logged steps.
    """
    history_dir = find_history_dir(run_dir)
    run_root = history_dir.parent if history_dir.name == "variance" else history_dir
    out = Path(out_dir) if out_dir is not None else run_root / REPORT_DIRNAME
    out.mkdir(parents=True, exist_ok=True)

    frame, meta = load_history(history_dir)
    frame = weight_rows(frame)
    analysis = analyze_history(frame, meta, rule)
    targets = intended_variances(meta, run_root)
    projections = frame[frame["head"] == -1]
    title = _title(meta)

    figures = {
        "heatmap": draw_variance_heatmap(projections, out / "variance_heatmap.png", title),
        "curves": draw_variance_curves(projections, out / "variance_curves.png", title, targets),
        "equilibration": draw_equilibration(analysis, out / "equilibration.png", title, targets),
    }
    if analysis.head_spread is not None:
        figures["head_bands"] = draw_head_bands(analysis, out / "head_bands.png", title)
    if (history_dir / HISTOGRAMS_FILENAME).exists():
        figures["histograms"] = draw_weight_histograms(load_histograms(history_dir), out / "weight_histograms.png", title, targets)

    table_path = out / "equilibration.csv"
    analysis.table.to_csv(table_path, index=False)
    markdown = out / "report.md"
    markdown.write_text(report_markdown(analysis, figures, targets, run_root))
    logger.info("wrote the report of %s to %s", run_root, markdown)
    return Report(out, markdown, figures, table_path, analysis, [markdown, table_path, *figures.values()])


# Figures


def draw_equilibration(analysis: EquilibrationAnalysis, path: Path, title: str, targets: dict[tuple[int, str], float]) -> Path:
    """Draw three panels against layer: equilibration step, early growth rate, and the band with the init target."""
    table = analysis.projections()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    ceiling = analysis.last_step * 1.05
    for projection in projection_order(table):
        rows = table[table["projection"] == projection].sort_values("layer")
        style = {"color": PROJECTION_COLORS.get(projection, "tab:gray"), "marker": PROJECTION_MARKERS.get(projection, "o")}
        settled = rows[rows["settled"]]
        axes[0].plot(settled["layer"], settled["equilibration_step"], linestyle="-", label=projection_title(projection), **style)
        unsettled = rows[~rows["settled"]]
        if not unsettled.empty:
            axes[0].scatter(unsettled["layer"], np.full(len(unsettled), ceiling), facecolors="none", edgecolors=style["color"], marker=style["marker"])
        axes[1].plot(rows["layer"], rows["growth_rate"] * 1000, linestyle="-", label=projection_title(projection), **style)
        errors = np.vstack([rows["band_median"] - rows["band_low"], rows["band_high"] - rows["band_median"]])
        axes[2].errorbar(rows["layer"], rows["band_median"], yerr=errors, capsize=2, label=projection_title(projection), **style)
        target_layers = [layer for layer in rows["layer"] if (layer, projection) in targets]
        if target_layers:
            axes[2].plot(target_layers, [targets[(layer, projection)] for layer in target_layers], linestyle="--", color=style["color"], linewidth=0.8)

    axes[0].axhline(analysis.last_step, color="grey", linewidth=0.8, linestyle=":")
    axes[0].set_title("equilibration step (open: not settled)")
    axes[0].set_ylabel("optimizer step")
    axes[1].axhline(0, color="grey", linewidth=0.8)
    axes[1].set_title("early growth of ln(variance)")
    axes[1].set_ylabel("per 1000 steps")
    axes[2].set_yscale("log")
    axes[2].set_title("band: median, 10th-90th percentile (dashed: init)")
    axes[2].set_ylabel("weight variance")
    for axis in axes:
        axis.set_xlabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def draw_head_bands(analysis: EquilibrationAnalysis, path: Path, title: str) -> Path:
    """Draw every head's band median against layer, one panel per projection, with the whole projection's band."""
    heads = analysis.table[analysis.table["head"] >= 0]
    whole = analysis.projections()
    projections = projection_order(whole)
    figure, axes = plt.subplots(1, len(projections), figsize=(5 * len(projections), 4.2), sharey=True, constrained_layout=True, squeeze=False)
    axes = axes[0]
    colormap = plt.get_cmap("tab10")
    for axis, projection in zip(axes, projections):
        rows = heads[heads["projection"] == projection]
        for head, group in rows.groupby("head"):
            group = group.sort_values("layer")
            axis.plot(group["layer"], group["band_median"], marker=".", linewidth=0.8, color=colormap(int(head) % 10), label=f"head {head}")
        projection_rows = whole[whole["projection"] == projection].sort_values("layer")
        axis.plot(projection_rows["layer"], projection_rows["band_median"], color="black", linewidth=2, label="whole projection")
        axis.set_yscale("log")
        axis.set_title(projection_title(projection))
        axis.set_xlabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("band median of the variance")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    figure.suptitle(title + " — per head")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def draw_weight_histograms(histograms: pd.DataFrame, path: Path, title: str, targets: dict[tuple[int, str], float]) -> Path:
    """Draw one density curve per recorded step, a row per recorded layer and a column per projection, with the init target dashed."""
    layers = sorted(histograms["layer"].unique())
    steps = sorted(histograms["step"].unique())
    projections = projection_order(histograms)
    colormap = plt.get_cmap("viridis")
    figure, axes = plt.subplots(
        len(layers), len(projections), figsize=(max(8, 5 * len(projections)), 3.2 * len(layers)), squeeze=False, constrained_layout=True
    )
    for row, layer in enumerate(layers):
        for column, projection in enumerate(projections):
            axis = axes[row][column]
            outside_by_step = {}
            occupied = []
            for index, step in enumerate(steps):
                block = histograms[(histograms["layer"] == layer) & (histograms["projection"] == projection) & (histograms["step"] == step)]
                if block.empty:
                    continue
                centers, density, outside_by_step[step] = histogram_density(block)
                axis.plot(centers, density, color=colormap(index / max(len(steps) - 1, 1)), linewidth=1.1, label=f"step {step}")
                occupied.extend(centers[density > 0])
            if occupied:
                # Zoom to the occupied bins: a truncated init leaves most of a wide range empty.
                half = max(abs(min(occupied)), abs(max(occupied))) * 1.1
                axis.set_xlim(-half, half)
            if outside_by_step:
                # Weights past the fixed bins are not drawn, so the panel prints their share.
                last = max(outside_by_step)
                axis.text(0.02, 0.95, f"outside the bins at step {last}: {outside_by_step[last]:.1%}", transform=axis.transAxes, fontsize="small", va="top")
            if (layer, projection) in targets and targets[(layer, projection)] > 0:
                std = math.sqrt(targets[(layer, projection)])
                grid = np.linspace(-4 * std, 4 * std, 200)
                axis.plot(grid, np.exp(-0.5 * (grid / std) ** 2) / (std * math.sqrt(2 * math.pi)), "k--", linewidth=0.8, label="init target N(0, σ²)")
            axis.set_yscale("log")
            axis.set_ylim(bottom=1e-2)
            axis.set_title(f"layer {layer} — {projection_title(projection)}")
            axis.set_xlabel("weight")
            axis.grid(True, alpha=0.3)
        axes[row][0].set_ylabel("density")
        axes[row][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    figure.suptitle(title + " — weight distributions")
    figure.savefig(path, dpi=75)
    plt.close(figure)
    return path


def histogram_density(block: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float]:
    """Return bin centers, the probability density of the finite bins, and the share of weights in the two open bins."""
    block = block.sort_values("lower")
    total = block["count"].sum()
    finite = block[np.isfinite(block["lower"]) & np.isfinite(block["upper"])]
    widths = (finite["upper"] - finite["lower"]).to_numpy()
    centers = ((finite["upper"] + finite["lower"]) / 2).to_numpy()
    density = finite["count"].to_numpy() / (total * widths) if total > 0 else np.zeros(len(finite))
    outside = float(1 - finite["count"].sum() / total) if total > 0 else 0.0
    return centers, density, outside


# Markdown


def report_markdown(analysis: EquilibrationAnalysis, figures: dict[str, Path], targets: dict[tuple[int, str], float], run_root: Path) -> str:
    """Build the text of `report.md`, linking figures by relative path so the folder can be moved whole."""
    meta = analysis.meta
    scheme = meta.get("init_scheme") or "not recorded"
    args = meta.get("init_args") or {}
    model = meta.get("model_type") or meta.get("layout")
    if meta.get("projections") == ["weight"]:
        title, shape = "Layer weight variance report", f"{meta.get('n_layer')} linear layers"
    else:
        title, shape = "Q/K/V variance report", f"{meta.get('n_layer')} layers, {meta.get('n_head')} heads of size {meta.get('head_dim')}"
    lines = [
        f"# {title}: {run_root.name}",
        "",
        f"- model: {model}, {shape}",
        f"- init scheme: `{scheme}`" + (f" with {args}" if args else ""),
        f"- logged steps: {analysis.first_step} to {analysis.last_step}, every {meta.get('every_n_steps')} steps"
        + (", per head" if meta.get("per_head") else ""),
        f"- equilibration rule: {analysis.rule.describe()}",
        "",
        "## Depth dependence",
        "",
        *[f"- {verdict}" for verdict in analysis.verdicts()],
        "",
        "## Variance of every layer",
        "",
        "![layer x step heatmap](variance_heatmap.png)",
        "",
        "![per-layer curves](variance_curves.png)",
        "",
        "## Equilibration",
        "",
        "![equilibration step, early growth and band per layer](equilibration.png)",
        "",
        equilibration_table_markdown(analysis, targets),
        "",
    ]
    if analysis.head_spread is not None:
        lines += ["## Heads", "", *[f"- {verdict}" for verdict in analysis.verdicts(per_head=True)], "", "![per-head bands](head_bands.png)", ""]
        lines += [head_spread_markdown(analysis.head_spread), ""]
    if "histograms" in figures:
        lines += ["## Weight distributions", "", "![weight histograms](weight_histograms.png)", ""]
    lines += ["Every series, per-head rows included, is in `equilibration.csv`.", ""]
    return "\n".join(lines)


def equilibration_table_markdown(analysis: EquilibrationAnalysis, targets: dict[tuple[int, str], float] | None = None) -> str:
    """Format the whole-projection rows as a Markdown table, one line per layer and projection."""
    targets = targets or {}
    header = "| layer | proj | init target | step-0 variance | growth /1k steps | equilibrated at | band median | band 10–90 % | drift in window |"
    lines = [header, "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {projection: index for index, projection in enumerate(projection_order(analysis.table))}
    rows = analysis.projections().sort_values(["layer", "projection"], key=lambda column: column.map(order) if column.name == "projection" else column)
    for _, row in rows.iterrows():
        target = targets.get((row["layer"], row["projection"]))
        settled = f"{int(row['equilibration_step'])}" if row["settled"] else "not settled"
        lines.append(
            f"| {row['layer']} | {row['projection']} | {_number(target)} | {_number(row['initial_variance'])} | "
            f"{row['growth_rate'] * 1000:+.2f} | {settled} | {_number(row['band_median'])} | "
            f"{_number(row['band_low'])}–{_number(row['band_high'])} | {_percent(row['band_drift'])} |"
        )
    return "\n".join(lines)


def head_spread_markdown(spread: pd.DataFrame) -> str:
    """Format the spread across heads of each layer and projection as a Markdown table."""
    lines = ["| layer | proj | heads | band min | band max | max/min | settled heads | settling steps |", "|---:|:---:|---:|---:|---:|---:|---:|---:|"]
    for _, row in spread.iterrows():
        steps = "–" if row["settled_heads"] == 0 else f"{int(row['first_settled'])}–{int(row['last_settled'])}"
        lines.append(
            f"| {row['layer']} | {row['projection']} | {row['n_heads']} | {_number(row['band_min'])} | {_number(row['band_max'])} | "
            f"{row['band_ratio']:.2f} | {row['settled_heads']} | {steps} |"
        )
    return "\n".join(lines)


def _percent(value: float) -> str:
    return f"{value:+.1%}" if math.isfinite(value) else "–"


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3g}" if 1e-2 <= abs(value) < 1e3 else f"{value:.2e}"


# Comparison of runs


def compare_runs(
    run_dirs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: list[str] | None = None,
    rule: EquilibrationRule | None = None,
) -> list[Path]:
    """Overlay several runs: curves of the first, middle and last layer, equilibration and bands per layer.

    Args:
        run_dirs: two or more training `output_dir`s or history folders.
        out_dir: folder for `compare.md`, `compare_curves.png`, `compare_equilibration.png`, `compare.csv`.
        labels: one name per run; default the init scheme, else the folder name.
        rule: the equilibration rule; default `EquilibrationRule()`.

    Returns:
        The paths written.
    """
    if len(run_dirs) < 2:
        raise ValueError(f"compare-runs needs at least two runs, got {len(run_dirs)}: {[str(path) for path in run_dirs]}")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} runs; give one label per run or none")
    runs = []
    for index, run_dir in enumerate(run_dirs):
        frame, meta = load_history(run_dir)
        frame = weight_rows(frame)
        analysis = analyze_history(frame, meta, rule)
        label = labels[index] if labels else (meta.get("init_scheme") or Path(run_dir).resolve().name)
        runs.append((label, frame[frame["head"] == -1], analysis))
    tracked = {str(run_dir): projection_order(frame) for run_dir, (_, frame, _) in zip(run_dirs, runs)}
    if len({tuple(projections) for projections in tracked.values()}) > 1:
        raise ValueError(
            f"compare-runs needs runs that track the same projections, got {tracked}; "
            "compare Q/K/V histories with Q/K/V histories and MLP histories with MLP histories"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [label for label, _, _ in runs]
    if len(set(names)) < len(names):
        runs = [(f"{label} ({Path(run_dir).name})", frame, analysis) for (label, frame, analysis), run_dir in zip(runs, run_dirs)]

    paths = [draw_compare_curves(runs, out / "compare_curves.png"), draw_compare_equilibration(runs, out / "compare_equilibration.png")]
    table = pd.concat([analysis.projections().assign(run=label) for label, _, analysis in runs], ignore_index=True)
    table.to_csv(out / "compare.csv", index=False)
    (out / "compare.md").write_text(compare_markdown(runs))
    return [out / "compare.md", *paths, out / "compare.csv"]


def draw_compare_curves(runs: list[tuple[str, pd.DataFrame, EquilibrationAnalysis]], path: Path) -> Path:
    """Draw the first, middle and last layer of every run, one panel per projection and one color per run."""
    projections = projection_order(runs[0][1])
    figure, axes = plt.subplots(1, len(projections), figsize=(5 * len(projections), 4.5), sharey=True, constrained_layout=True, squeeze=False)
    axes = axes[0]
    colormap = plt.get_cmap("tab10")
    line_styles = ["-", "--", ":"]
    for run_index, (label, frame, analysis) in enumerate(runs):
        for axis, projection in zip(axes, projections):
            steps, layers, variance = variance_grid(frame, projection)
            chosen = sorted({0, len(layers) // 2, len(layers) - 1})
            for style, row in zip(line_styles, chosen):
                axis.plot(steps, variance[row], color=colormap(run_index % 10), linestyle=style, linewidth=1.2, label=f"{label}, layer {layers[row]}")
    for axis, projection in zip(axes, projections):
        axis.set_yscale("log")
        axis.set_title(projection_title(projection))
        axis.set_xlabel("optimizer step")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("weight variance")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    figure.suptitle(f"{'/'.join(projections)} weight variance: first, middle and last layer of each run")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def draw_compare_equilibration(runs: list[tuple[str, pd.DataFrame, EquilibrationAnalysis]], path: Path) -> Path:
    """Draw the equilibration step (top row) and band median (bottom row) per layer, one color per run."""
    projections = projection_order(runs[0][2].projections())
    figure, axes = plt.subplots(2, len(projections), figsize=(5 * len(projections), 7.5), sharex=True, constrained_layout=True, squeeze=False)
    colormap = plt.get_cmap("tab10")
    for run_index, (label, _, analysis) in enumerate(runs):
        table = analysis.projections()
        color = colormap(run_index % 10)
        for column, projection in enumerate(projections):
            rows = table[table["projection"] == projection].sort_values("layer")
            settled = rows[rows["settled"]]
            axes[0][column].plot(settled["layer"], settled["equilibration_step"], marker="o", color=color, label=label)
            unsettled = rows[~rows["settled"]]
            if not unsettled.empty:
                # One row of open markers per run above the last step, so the runs do not hide each other.
                height = analysis.last_step * (1.04 + 0.04 * run_index)
                axes[0][column].scatter(unsettled["layer"], np.full(len(unsettled), height), facecolors="none", edgecolors=color, marker="o")
            axes[1][column].plot(rows["layer"], rows["band_median"], marker="o", color=color, label=label)
    for column, projection in enumerate(projections):
        axes[0][column].set_title(f"{projection_title(projection)}: equilibration step (open: not settled)")
        axes[1][column].set_title(f"{projection_title(projection)}: band median")
        axes[1][column].set_yscale("log")
        axes[1][column].set_xlabel("layer")
        axes[1][column].xaxis.set_major_locator(MaxNLocator(integer=True))
        for row in range(2):
            axes[row][column].grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("optimizer step")
    axes[1][0].set_ylabel("weight variance")
    axes[0][-1].legend(fontsize="small")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def compare_markdown(runs: list[tuple[str, pd.DataFrame, EquilibrationAnalysis]]) -> str:
    """Build the text of `compare.md`: one summary line per run, the verdicts, then the figures."""
    projections = projection_order(runs[0][2].projections())
    names = [projection.upper() if len(projection) == 1 else projection for projection in projections]
    lines = [
        "# Comparison of runs",
        "",
        f"Equilibration rule: {runs[0][2].rule.describe()}",
        "",
        "| run | steps | settled series | median equilibration step | "
        + " | ".join(f"band median {name}" for name in names)
        + f" | band / step 0, {' / '.join(names)} |",
        "|:---|---:|---:|---:|" + "---:|" * len(names) + ":---:|",
    ]
    for label, _, analysis in runs:
        table = analysis.projections()
        settled = table[table["settled"]]
        median_step = f"{settled['equilibration_step'].median():.0f}" if not settled.empty else "–"
        bands = [_number(float(table.loc[table["projection"] == projection, "band_median"].median())) for projection in projections]
        ratios = [f"{float((rows['band_median'] / rows['initial_variance']).median()):.2f}" for rows in (table[table["projection"] == projection] for projection in projections)]
        lines.append(f"| {label} | {analysis.last_step} | {len(settled)}/{len(table)} | {median_step} | " + " | ".join(bands) + f" | {' / '.join(ratios)} |")
    lines += ["", "Band medians and band / step-0 ratios are medians over layers.", ""]
    for label, _, analysis in runs:
        lines += [f"## {label}", "", *[f"- {verdict}" for verdict in analysis.verdicts()], ""]
    lines += ["## Figures", "", "![curves of every run](compare_curves.png)", "", "![equilibration of every run](compare_equilibration.png)", ""]
    return "\n".join(lines)


# W&B


def log_report_to_wandb(report: Report) -> bool:
    """Log the report's figures (`report/figures/<name>`) and its table (`report/equilibration_table`) to the active W&B run.

    Returns:
        False when W&B is not installed or no run is active, True once logged.
    """
    try:
        import wandb
    except ImportError:
        return False
    if wandb.run is None:
        return False
    payload = {f"report/figures/{name}": wandb.Image(str(path)) for name, path in report.figures.items()}
    payload["report/equilibration_table"] = wandb.Table(dataframe=report.analysis.projections())
    wandb.log(payload)
    wandb.run.summary["report/depth_verdicts"] = "\n".join(report.analysis.verdicts())
    return True
