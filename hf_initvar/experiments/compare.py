"""Kaiming fan-in vs Xavier vs torch's default on one ReLU MLP, over seeds, with 95% confidence intervals.

Each (scheme, seed) is one model; all of them train at once as a `StackedMLP` with the same
architecture, data and schedule, and model `(scheme, seed)` sees the data in the order of `seed`,
so the schemes are compared on identical mini-batch sequences. Reported per scheme: the mean
training-loss curve with its 95% Student-t interval over seeds, the steps until the loss first
reaches a threshold, and the final test accuracy.

The training loss of one step is noisy, so curves and the threshold use the trailing mean over
one epoch of steps (fewer at the start).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hf_initvar.experiments.batched import StackedMLP, TrainingSchedule, init_statistics, train_stacked
from hf_initvar.experiments.mlp_data import load_classification_data
from hf_initvar.experiments.sweep import (
    evaluate_stacked,
    finite_or_none,
    fixed_init_batch,
    load_results_file,
    mean_confidence_interval,
    reject_repeated_seeds,
    t95_quantile,
)
from hf_initvar.experiments.theory import xavier_relu_shrink_factor
from hf_initvar.models.mlp import ReluMLP, ReluMLPConfig

logger = logging.getLogger(__name__)

DEFAULT_SCHEMES = ["kaiming_normal", "xavier_normal", "xavier_uniform", "torch_default"]


@dataclass
class CompareConfig:
    """Everything that defines a comparison; saved next to its results.

    Attributes:
        schemes: init scheme names of the registry (`hf_initvar.init.list_schemes()`).
        seeds: seeds of the weights and of the data order, at least 2 for a confidence interval.
        dataset: `digits`, `wine`, a Hub image-classification dataset id such as `mnist` (needs the
            Hub or its cache), or a local folder of images (`<folder>/<class_name>/<image>`),
            parquet or arrow files, or a `save_to_disk` output.
        hidden_size: width of every hidden layer.
        num_hidden_layers: number of hidden layers.
        activation: `relu`, `gelu` or `tanh`.
        optimizer: `sgd` or `adam`.
        learning_rate: step size.
        momentum: SGD momentum.
        epochs: passes over the training split.
        batch_size: samples per optimizer step.
        loss_threshold: training loss (epoch-window mean, nats) whose first crossing is reported.
        test_fraction: share of the samples held out for testing.
        split_seed: seed of the train/test split.
    """

    schemes: list[str] = field(default_factory=lambda: list(DEFAULT_SCHEMES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    dataset: str = "digits"
    hidden_size: int = 128
    num_hidden_layers: int = 6
    activation: str = "relu"
    optimizer: str = "sgd"
    learning_rate: float = 0.02
    momentum: float = 0.0
    epochs: int = 15
    batch_size: int = 64
    loss_threshold: float = 0.3
    test_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self) -> None:
        if not self.schemes:
            raise ValueError("schemes must name at least one init scheme")
        if len(self.seeds) < 2:
            raise ValueError(f"need at least 2 seeds for a confidence interval, got {self.seeds}")
        reject_repeated_seeds(self.seeds)
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be at least 1 for a ReLU network, got {self.num_hidden_layers}")
        if self.loss_threshold <= 0:
            raise ValueError(f"loss_threshold must be positive, got {self.loss_threshold}")
        self.schedule()  # raises for an unknown optimizer or a bad step size

    def schedule(self) -> TrainingSchedule:
        """Return the training schedule shared by every model."""
        return TrainingSchedule(self.optimizer, self.learning_rate, self.epochs, self.batch_size, self.momentum)


def run_compare(config: CompareConfig, output_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train every (scheme, seed) model, summarize per scheme, and write the results to `output_dir` when given.

    Returns:
        The summary that `compare.json` stores: `config`, `schemes` (per-scheme statistics) and timings.
    """
    started = time.perf_counter()
    data = load_classification_data(config.dataset, test_fraction=config.test_fraction, seed=config.split_seed)
    grid = [(scheme, int(seed)) for scheme in config.schemes for seed in config.seeds]
    models = []
    for scheme, seed in grid:
        torch.manual_seed(seed)
        model_config = ReluMLPConfig(
            input_size=data.num_features,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            activation=config.activation,
            num_labels=data.num_classes,
            init_scheme=scheme,
        )
        models.append(ReluMLP(model_config))
    hidden_stds = [float(m.layers[-2].weight.detach().std()) for m in models]  # the last hidden layer
    layer_sizes = models[0].config.layer_sizes
    stacked = StackedMLP(models)
    del models

    fixed_batch = fixed_init_batch(data, 256)
    statistics = init_statistics(stacked, *fixed_batch)
    output_rms_ratio = (statistics["activation_variance"][:, -1] / statistics["input_second_moment"]).sqrt()

    schedule = config.schedule()
    result = train_stacked(
        stacked, data.train_features, data.train_labels, [seed for _, seed in grid], schedule,
        progress=progress, description=f"compare ({len(grid)} models)",
    )
    test_metrics = evaluate_stacked(stacked, data.test_features, data.test_labels)
    steps_per_epoch = schedule.steps_per_epoch(len(data.train_labels))
    smoothed = trailing_mean(result.losses.numpy(), steps_per_epoch)  # (steps, models)

    schemes = {}
    for scheme in config.schemes:
        columns = [i for i, (name, _) in enumerate(grid) if name == scheme]
        schemes[scheme] = _summarize_scheme(
            scheme, columns, grid, smoothed, test_metrics, hidden_stds, output_rms_ratio, config.loss_threshold
        )

    summary = {
        "config": asdict(config),
        "dataset": {"name": data.name, "num_train": len(data.train_labels), "num_test": len(data.test_labels)},
        "layer_sizes": layer_sizes,
        "steps_per_epoch": steps_per_epoch,
        "theory": {
            "critical_std": math.sqrt(2.0 / layer_sizes[1]),
            "xavier_relu_shrink_factor": xavier_relu_shrink_factor(len(layer_sizes) - 1),
        },
        "schemes": schemes,
        "timings": {"total_seconds": time.perf_counter() - started},
    }
    if output_dir is not None:
        write_compare_results(summary, smoothed, result.losses.numpy(), grid, output_dir)
    return summary


def trailing_mean(losses: np.ndarray, window: int) -> np.ndarray:
    """Return the mean of each step's loss and the `window - 1` before it (fewer at the start), along axis 0.

    A NaN or infinite loss makes every later mean of that column non-finite too, so a diverged
    run never looks as if it recovered.
    """
    cumulative = np.cumsum(losses, axis=0)
    shifted = np.zeros_like(cumulative)
    shifted[window:] = cumulative[:-window]
    counts = np.minimum(np.arange(1, losses.shape[0] + 1), window).reshape(-1, *([1] * (losses.ndim - 1)))
    return (cumulative - shifted) / counts


def steps_to_threshold(curve: np.ndarray, threshold: float) -> int | None:
    """Return the 1-based step at which `curve` first is at most `threshold`, or None if it never is."""
    reached = np.nonzero(curve <= threshold)[0]
    return int(reached[0]) + 1 if reached.size else None


def _summarize_scheme(
    scheme: str,
    columns: list[int],
    grid: list[tuple[str, int]],
    smoothed: np.ndarray,
    test_metrics: list[dict],
    hidden_stds: list[float],
    output_rms_ratio: torch.Tensor,
    threshold: float,
) -> dict:
    curves = smoothed[:, columns]  # (steps, seeds)
    mean = curves.mean(axis=1)
    half_width = t95_quantile(len(columns) - 1) * curves.std(axis=1, ddof=1) / math.sqrt(len(columns))

    steps = [steps_to_threshold(curves[:, k], threshold) for k in range(len(columns))]
    reached = [s for s in steps if s is not None]
    steps_mean, steps_low, steps_high = mean_confidence_interval(reached) if reached else (None, None, None)

    accuracies = [test_metrics[i]["accuracy"] for i in columns if test_metrics[i]["accuracy"] is not None]
    accuracy_mean, accuracy_low, accuracy_high = (
        mean_confidence_interval(accuracies, limits=(0.0, 1.0)) if accuracies else (None, None, None)
    )
    return {
        "seeds": [grid[i][1] for i in columns],
        "hidden_weight_std": float(np.mean([hidden_stds[i] for i in columns])),
        "output_rms_ratio_at_init": float(output_rms_ratio[columns].mean()),
        "curve_mean": [finite_or_none(v) for v in mean],
        "curve_ci_low": [finite_or_none(v) for v in mean - half_width],
        "curve_ci_high": [finite_or_none(v) for v in mean + half_width],
        "steps_to_threshold": {
            "per_seed": steps,
            "reached": len(reached),
            "mean": steps_mean,
            "ci_low": steps_low,
            "ci_high": steps_high,
        },
        "final_train_loss": {"per_seed": [finite_or_none(v) for v in curves[-1]]},
        "final_test_accuracy": {
            "per_seed": [test_metrics[i]["accuracy"] for i in columns],
            "mean": accuracy_mean,
            "ci_low": accuracy_low,
            "ci_high": accuracy_high,
        },
    }


def format_summary_table(summary: dict) -> str:
    """Return a Markdown table: per scheme, steps to the loss threshold, final loss and test accuracy."""
    threshold = summary["config"]["loss_threshold"]
    lines = [
        f"| scheme | hidden weight std | logits RMS / input RMS at init | steps to loss <= {threshold:g} (95% CI) "
        "| reached | final train loss | final test accuracy (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, scheme in summary["schemes"].items():
        steps = scheme["steps_to_threshold"]
        accuracy = scheme["final_test_accuracy"]
        losses = [v for v in scheme["final_train_loss"]["per_seed"] if v is not None]
        lines.append(
            f"| {name} | {scheme['hidden_weight_std']:.4f} | {scheme['output_rms_ratio_at_init']:.3g} "
            f"| {_format_interval(steps['mean'], steps['ci_low'], steps['ci_high'], '.0f')} "
            f"| {steps['reached']}/{len(steps['per_seed'])} "
            f"| {np.mean(losses):.3f} "
            f"| {_format_interval(accuracy['mean'], accuracy['ci_low'], accuracy['ci_high'], '.3f')} |"
        )
    return "\n".join(lines)


def _format_interval(mean: float | None, low: float | None, high: float | None, spec: str) -> str:
    if mean is None:
        return "not reached"
    if low is None:
        return format(mean, spec)
    return f"{format(mean, spec)} [{format(low, spec)}, {format(high, spec)}]"


def write_compare_results(
    summary: dict, smoothed: np.ndarray, losses: np.ndarray, grid: list[tuple[str, int]], output_dir: str | Path
) -> list[Path]:
    """Write `compare.json`, `curves.csv` (every step of every run) and `summary.md` into `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "compare.json", output_dir / "curves.csv", output_dir / "summary.md"]
    temporary = [path.with_suffix(path.suffix + ".tmp") for path in paths]

    temporary[0].write_text(json.dumps(summary, indent=1, allow_nan=False))
    with temporary[1].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scheme", "seed", "step", "loss", "epoch_window_mean_loss"])
        for column, (scheme, seed) in enumerate(grid):
            for step in range(losses.shape[0]):
                writer.writerow([scheme, seed, step + 1, losses[step, column], smoothed[step, column]])
    temporary[2].write_text(format_summary_table(summary) + "\n")
    for source, target in zip(temporary, paths):
        source.replace(target)
    return paths


def load_compare_results(path: str | Path) -> dict:
    """Read a `compare.json`, given the file or the folder that contains it."""
    return load_results_file(path, "compare.json", "compare")
