"""Figures of the MLP std sweep and the init-scheme comparison, drawn from their saved JSON results.

The figures read only `sweep.json` / `compare.json`, so they can be redrawn (restyled, or for a
paper) without training again: `draw_sweep_figures(run_dir)`, `draw_compare_figures(run_dir)`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hf_initvar.experiments.compare import load_compare_results
from hf_initvar.experiments.sweep import load_sweep_results

logger = logging.getLogger(__name__)

_OPTIMIZER_COLORS = {"sgd": "tab:blue", "adam": "tab:orange"}
_OUTCOME_MARKERS = {"vanishing": "v", "stable": "o", "exploding": "^", "diverged": "x"}


def draw_sweep_figures(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw `sweep_loss_accuracy.png` and `sweep_init_variance.png` from a sweep's `sweep.json`.

    Args:
        run_dir: the sweep's output folder (or its `sweep.json`).
        out_dir: folder for the PNGs; the results' folder when None.

    Returns:
        The paths written.
    """
    summary = load_sweep_results(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else _results_folder(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_draw_sweep_outcomes(summary, out_dir), _draw_init_variance(summary, out_dir)]


def draw_compare_figures(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw `compare_loss_curves.png` (mean and 95% CI per scheme) from a comparison's `compare.json`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = load_compare_results(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else _results_folder(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    figure, (curves_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[2, 1])
    threshold = summary["config"]["loss_threshold"]
    names = list(summary["schemes"])
    for index, name in enumerate(names):
        scheme = summary["schemes"][name]
        steps = np.arange(1, len(scheme["curve_mean"]) + 1)
        mean = _as_float_array(scheme["curve_mean"])
        low = _as_float_array(scheme["curve_ci_low"])
        high = _as_float_array(scheme["curve_ci_high"])
        color = f"C{index}"
        curves_axis.plot(steps, mean, color=color, label=name)
        curves_axis.fill_between(steps, low, high, color=color, alpha=0.25, linewidth=0)

        accuracy = scheme["final_test_accuracy"]
        accuracy_axis.errorbar(
            [index], [accuracy["mean"]],
            yerr=[[accuracy["mean"] - (accuracy["ci_low"] or accuracy["mean"])],
                  [(accuracy["ci_high"] or accuracy["mean"]) - accuracy["mean"]]],
            fmt="o", color=color, capsize=4,
        )
    curves_axis.axhline(threshold, color="gray", linestyle=":", label=f"threshold {threshold:g}")
    curves_axis.set_yscale("log")
    curves_axis.set_xlabel("optimizer step")
    curves_axis.set_ylabel("training loss (epoch-window mean)")
    curves_axis.set_title(f"{summary['dataset']['name']}: mean and 95% CI over {len(summary['config']['seeds'])} seeds")
    curves_axis.legend()
    accuracy_axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    accuracy_axis.set_ylabel("final test accuracy")
    accuracy_axis.set_title("final test accuracy (95% CI)")
    figure.tight_layout()

    path = out_dir / "compare_loss_curves.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path]


def _draw_sweep_outcomes(summary: dict, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = summary["config"]
    runs = summary["runs"]
    stds = np.asarray(summary["stds"])
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(13, 4.8), sharex=True)

    for axis in (loss_axis, accuracy_axis):
        _shade_bands(axis, summary)

    # Diverged runs have no loss; they are drawn as crosses on the top edge of the loss panel.
    finite_losses = [r["train_loss"] for r in runs if r["train_loss"] is not None]
    diverged_level = max(finite_losses) * 3 if finite_losses else 10.0
    for optimizer in config["optimizers"]:
        color = _OPTIMIZER_COLORS.get(optimizer, "black")
        own = [r for r in runs if r["optimizer"] == optimizer]
        for outcome, marker in _OUTCOME_MARKERS.items():
            picked = [r for r in own if r["outcome"] == outcome]
            if not picked:
                continue
            losses = [r["train_loss"] if r["train_loss"] is not None else diverged_level for r in picked]
            loss_axis.scatter([r["std"] for r in picked], losses, color=color, marker=marker, s=18, alpha=0.7)
            accuracies = [r["test_accuracy"] for r in picked if r["test_accuracy"] is not None]
            accuracy_stds = [r["std"] for r in picked if r["test_accuracy"] is not None]
            accuracy_axis.scatter(accuracy_stds, accuracies, color=color, marker=marker, s=18, alpha=0.7)
        loss_axis.plot(stds, _median_by_std(own, stds, "train_loss"), color=color, label=f"{optimizer} (median over seeds)")
        accuracy_axis.plot(stds, _median_by_std(own, stds, "test_accuracy"), color=color, label=f"{optimizer} (median over seeds)")

    for outcome, marker in _OUTCOME_MARKERS.items():
        loss_axis.scatter([], [], color="gray", marker=marker, label=outcome)
    loss_axis.set_xscale("log")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("initial weight std")
    loss_axis.set_ylabel("final training loss (nats); diverged on top")
    accuracy_axis.set_xscale("log")
    accuracy_axis.set_xlabel("initial weight std")
    accuracy_axis.set_ylabel("final test accuracy")
    # One legend below both panels, so that no legend box hides the runs.
    entries = {}
    for axis in (loss_axis, accuracy_axis):
        for handle, label in zip(*axis.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    figure.legend(list(entries.values()), list(entries), loc="lower center", ncol=5, fontsize=8, frameon=False)
    sizes = summary["layer_sizes"]
    figure.suptitle(
        f"{summary['dataset']['name']}, MLP {'-'.join(map(str, sizes))} ({config['activation']}), "
        f"{config['epochs']} epochs: outcome vs initial std"
    )
    figure.tight_layout(rect=(0, 0.14, 1, 1))

    path = out_dir / "sweep_loss_accuracy.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _shade_bands(axis, summary: dict) -> None:
    bands = summary["bands"]
    axis.axvspan(bands["paper"]["low"]["mean"], bands["paper"]["high"]["mean"], color="gray", alpha=0.12,
                 label="paper band 1e-2..1e-1")
    if summary["theory"]["band"] is not None:
        theory_low, theory_high = summary["theory"]["band"]
        axis.axvspan(theory_low, theory_high, facecolor="none", edgecolor="green", hatch="//", alpha=0.5,
                     label=f"theory propagation band (R={summary['theory']['tolerance']:g})")
    for optimizer, color in _OPTIMIZER_COLORS.items():
        band = bands.get(optimizer)
        if band and band["low"] and band["high"]:
            axis.axvspan(band["low"]["mean"], band["high"]["mean"], color=color, alpha=0.15,
                         label=f"measured {optimizer} band")


def _draw_init_variance(summary: dict, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stds = np.asarray(summary["stds"])
    first = summary["config"]["optimizers"][0]
    runs = [r for r in summary["runs"] if r["optimizer"] == first]
    predicted = summary["theory"]["predicted_activation_variance"]
    predicted = None if predicted is None else np.asarray(predicted)  # (S, L); None without a theory
    num_layers = len(runs[0]["activation_variance"])

    figure, (activation_axis, gradient_axis) = plt.subplots(1, 2, figsize=(13, 4.8), sharex=True)
    for layer in range(num_layers):
        color = plt.cm.viridis(layer / max(num_layers - 1, 1))
        measured = _mean_by_std(runs, stds, lambda r: r["activation_variance"][layer])
        label = "logits" if layer == num_layers - 1 else f"layer {layer}"
        activation_axis.plot(stds, measured, "o", color=color, markersize=3, label=f"{label} measured")
        if predicted is not None:
            activation_axis.plot(stds, predicted[:, layer], "--", color=color, linewidth=1)
        gradient = _mean_by_std(runs, stds, lambda r: r["gradient_variance"][layer])
        gradient_axis.plot(stds, gradient, "o-", color=color, markersize=3, linewidth=0.8, label=label)
    critical = summary["theory"]["critical_std"]
    if predicted is not None:
        activation_axis.plot([], [], "k--", linewidth=1, label="theory: n s^2 q (x 1/2 after ReLU)")
    for axis in (activation_axis, gradient_axis):
        if critical is not None:
            axis.axvline(critical, color="red", linestyle=":", label=f"s* = sqrt(2/n) = {critical:.3g}")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("initial weight std")
    activation_axis.set_ylabel("pre-activation variance at init")
    activation_axis.set_title("forward: measured (dots) vs theory (dashed)")
    gradient_axis.set_ylabel("variance of dLoss/dW at init")
    gradient_axis.set_title("backward: weight-gradient variance")
    activation_axis.legend(fontsize=8, ncol=2, loc="upper left")
    gradient_axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()

    path = out_dir / "sweep_init_variance.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _median_by_std(runs: list[dict], stds: np.ndarray, key: str) -> np.ndarray:
    # Diverged runs have no value; a std where every seed diverged shows a gap in the line.
    values = []
    for std in stds:
        finite = [r[key] for r in runs if r["std"] == float(std) and r[key] is not None]
        values.append(np.median(finite) if finite else np.nan)
    return np.asarray(values)


def _mean_by_std(runs: list[dict], stds: np.ndarray, value) -> np.ndarray:
    means = []
    for std in stds:
        picked = [value(r) for r in runs if r["std"] == float(std)]
        picked = [v for v in picked if v is not None]
        means.append(np.mean(picked) if picked else np.nan)
    return np.asarray(means)


def _as_float_array(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _results_folder(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir if run_dir.is_dir() else run_dir.parent


def log_sweep_to_wandb(run_dir: str | Path, project: str = "hf-initvar", run_name: str | None = None) -> str | None:
    """Log a saved sweep to Weights & Biases: a table of every run, the band summary and the PNGs.

    Without credentials (no `WANDB_API_KEY`, no api.wandb.ai entry in ~/.netrc) and no
    `WANDB_MODE` set, the run is written offline into `run_dir/wandb`, so nothing prompts or
    reaches the network.

    Returns:
        The `wandb sync ...` command that uploads an offline run, or None when it ran online.
    """
    from hf_initvar.experiments.sweep import RUN_COLUMNS

    run_dir = _results_folder(run_dir)
    summary = load_sweep_results(run_dir)
    rows = [[entry[column] for column in RUN_COLUMNS] for entry in summary["runs"]]
    values = {}
    for name, band in summary["bands"].items():
        if band.get("low") and band.get("high"):
            values[f"band/{name}/low"] = band["low"]["mean"]
            values[f"band/{name}/high"] = band["high"]["mean"]
    if summary["theory"]["band"] is not None:
        values["band/theory/low"], values["band/theory/high"] = summary["theory"]["band"]
    return _log_results_to_wandb(
        run_dir, summary["config"], "mlp_std_sweep", "sweep", "runs", RUN_COLUMNS, rows, values, project, run_name
    )


def log_compare_to_wandb(run_dir: str | Path, project: str = "hf-initvar", run_name: str | None = None) -> str | None:
    """Log a saved comparison to Weights & Biases: a table with one row per scheme, the summary and the PNGs.

    Offline without credentials, like `log_sweep_to_wandb`.

    Returns:
        The `wandb sync ...` command that uploads an offline run, or None when it ran online.
    """
    run_dir = _results_folder(run_dir)
    summary = load_compare_results(run_dir)
    columns = ["scheme", "hidden_weight_std", "steps_to_threshold", "steps_ci_low", "steps_ci_high", "seeds_reached",
               "test_accuracy", "accuracy_ci_low", "accuracy_ci_high"]
    rows, values = [], {}
    for name, scheme in summary["schemes"].items():
        steps, accuracy = scheme["steps_to_threshold"], scheme["final_test_accuracy"]
        rows.append([name, scheme["hidden_weight_std"], steps["mean"], steps["ci_low"], steps["ci_high"], steps["reached"],
                     accuracy["mean"], accuracy["ci_low"], accuracy["ci_high"]])
        if steps["mean"] is not None:
            values[f"steps_to_threshold/{name}"] = steps["mean"]
        values[f"test_accuracy/{name}"] = accuracy["mean"]
    return _log_results_to_wandb(
        run_dir, summary["config"], "mlp_init_compare", "compare", "schemes", columns, rows, values, project, run_name
    )


def _log_results_to_wandb(
    run_dir: Path, config: dict, job_type: str, prefix: str, table_name: str, columns: list[str], rows: list[list],
    values: dict[str, float], project: str, run_name: str | None,
) -> str | None:
    """Log the table `{prefix}/{table_name}`, the `{prefix}_*.png` figures of `run_dir` and summary values as one W&B run."""
    import os

    import wandb

    if not os.environ.get("WANDB_MODE") and not _has_wandb_credentials():
        os.environ["WANDB_MODE"] = "offline"
    run = wandb.init(project=project, name=run_name, dir=str(run_dir), config=config, job_type=job_type)

    table = wandb.Table(columns=columns)
    for row in rows:
        table.add_data(*row)
    run.log({f"{prefix}/{table_name}": table})
    for png in sorted(run_dir.glob(f"{prefix}_*.png")):
        run.log({f"{prefix}/{png.stem}": wandb.Image(str(png))})
    for key, value in values.items():
        run.summary[key] = value

    offline = run.settings.mode == "offline"
    run_folder = Path(run.dir).parent
    run.finish()
    return f"wandb sync {run_folder}" if offline else None


def _has_wandb_credentials() -> bool:
    import os

    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
