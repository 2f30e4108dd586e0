"""The log sweep of the initial weight std for ReLU MLPs: regimes, the stability band, and the theory beside it.

Every (std, seed) pair is one MLP whose weights are all drawn from N(0, std**2); the same seed
draws the same underlying noise at every std, so neighbouring stds differ only in scale. All
models of one optimizer train at once as a `StackedMLP`. Each run records its per-layer variance
at initialization, its loss curve, its final train/test loss and accuracy, and an outcome:

1. `diverged`: a training loss or a final loss is NaN or infinite.
2. `stable`: the final training loss is at most `learned_fraction * ln(num_classes)`, i.e. the
   model learned well beyond chance level (the loss of a uniform prediction is ln(num_classes)).
3. `vanishing` / `exploding`: otherwise, by the direction the signal took at initialization:
   `vanishing` when the logits' RMS was below the input's RMS, `exploding` when above.

The measured band of a seed is the longest run of consecutive grid stds whose outcome is
`stable`; the propagation band is the longest run whose logits' RMS at initialization stayed
within a factor `tolerance` of the input's RMS.
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

from hf_initvar.experiments.batched import (
    StackedMLP,
    TrainingSchedule,
    init_statistics,
    stacked_logits,
    train_stacked,
)
from hf_initvar.experiments.metrics import load_metric
from hf_initvar.experiments.mlp_data import ClassificationData, load_classification_data
from hf_initvar.experiments.theory import forward_stable_band, predicted_activation_variance
from hf_initvar.models.mlp import ReluMLP, ReluMLPConfig

logger = logging.getLogger(__name__)

OUTCOMES = ("vanishing", "stable", "exploding", "diverged")
# Stability band of compact ReLU MLPs reported by Han (2025), arXiv:2510.09423.
PAPER_BAND = (1e-2, 1e-1)
# Two-sided 95% Student-t quantiles by degrees of freedom; beyond 30 the normal 1.96 is used.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


@dataclass
class SweepConfig:
    """Everything that defines a sweep; saved next to its results.

    Attributes:
        dataset: `digits`, `wine`, a Hub image-classification dataset id such as `mnist` (needs the
            Hub or its cache), or a local folder of images (`<folder>/<class_name>/<image>`),
            parquet or arrow files, or a `save_to_disk` output.
        hidden_size: width of every hidden layer.
        num_hidden_layers: number of hidden layers.
        activation: `relu`, `gelu` or `tanh`.
        bias: whether the linear layers have biases (initialized to zero).
        std_min: smallest std of the log grid.
        std_max: largest std of the log grid.
        num_stds: number of grid points, log-spaced from `std_min` to `std_max`.
        seeds: seeds of the weights and of the data order; one run per (std, seed, optimizer).
        optimizers: `sgd` and/or `adam`.
        sgd_learning_rate: SGD step size.
        sgd_momentum: SGD momentum.
        adam_learning_rate: Adam step size.
        epochs: passes over the training split.
        batch_size: samples per optimizer step.
        tolerance: factor R on the RMS that defines the propagation band.
        learned_fraction: a run is `stable` when its final training loss is at most this fraction of ln(classes).
        init_batch_size: samples in the fixed batch of the initialization statistics.
        test_fraction: share of the samples held out for testing.
        split_seed: seed of the train/test split.
        max_samples: keep at most this many samples of the dataset (default: all).
    """

    dataset: str = "digits"
    hidden_size: int = 128
    num_hidden_layers: int = 4
    activation: str = "relu"
    bias: bool = False
    std_min: float = 1e-4
    std_max: float = 10.0
    num_stds: int = 31
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    optimizers: list[str] = field(default_factory=lambda: ["sgd", "adam"])
    sgd_learning_rate: float = 0.05
    sgd_momentum: float = 0.9
    adam_learning_rate: float = 1e-3
    epochs: int = 15
    batch_size: int = 64
    tolerance: float = 100.0
    learned_fraction: float = 0.5
    init_batch_size: int = 256
    test_fraction: float = 0.2
    split_seed: int = 0
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.std_min < self.std_max:
            raise ValueError(f"need 0 < std_min < std_max, got std_min={self.std_min}, std_max={self.std_max}")
        if self.num_stds < 2:
            raise ValueError(f"num_stds must be at least 2, got {self.num_stds}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        reject_repeated_seeds(self.seeds)
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be at least 1 for a ReLU network, got {self.num_hidden_layers}")
        if self.init_batch_size < 1:
            raise ValueError(f"init_batch_size must be at least 1, got {self.init_batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be at least 1 (or left out to keep every sample), got {self.max_samples}")
        if not 0 < self.learned_fraction < 1:
            raise ValueError(f"learned_fraction must be in (0, 1), got {self.learned_fraction}")
        for optimizer in self.optimizers:
            self.schedule(optimizer)  # raises for an unknown optimizer name

    def stds(self) -> np.ndarray:
        """Return the log-spaced grid of stds."""
        return np.logspace(math.log10(self.std_min), math.log10(self.std_max), self.num_stds)

    def schedule(self, optimizer: str) -> TrainingSchedule:
        """Return the training schedule of `optimizer`."""
        if optimizer == "sgd":
            return TrainingSchedule("sgd", self.sgd_learning_rate, self.epochs, self.batch_size, self.sgd_momentum)
        return TrainingSchedule(optimizer, self.adam_learning_rate, self.epochs, self.batch_size)

    def model_config(self, num_features: int, num_classes: int, std: float) -> ReluMLPConfig:
        """Return the MLP config of one run."""
        return ReluMLPConfig(
            input_size=num_features,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            activation=self.activation,
            bias=self.bias,
            num_labels=num_classes,
            init_scheme="normal",
            init_args={"std": float(std)},
        )


def run_sweep(config: SweepConfig, output_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run the sweep, summarize it, and write `sweep.json` and `runs.csv` to `output_dir` when given.

    Returns:
        The summary dict that `sweep.json` stores: `config`, `theory`, `bands`, `runs` and timings.
    """
    started = time.perf_counter()
    data = load_classification_data(
        config.dataset, test_fraction=config.test_fraction, seed=config.split_seed, max_samples=config.max_samples
    )
    stds = config.stds()
    fixed_batch = fixed_init_batch(data, config.init_batch_size)
    layer_sizes = config.model_config(data.num_features, data.num_classes, 1.0).layer_sizes

    runs: list[dict] = []
    timings: dict[str, float] = {}
    for optimizer in config.optimizers:
        optimizer_started = time.perf_counter()
        runs.extend(_run_optimizer(config, optimizer, stds, data, fixed_batch, progress))
        timings[f"{optimizer}_seconds"] = time.perf_counter() - optimizer_started

    input_second_moment = float(fixed_batch[0].double().pow(2).mean())
    summary = {
        "config": asdict(config),
        "dataset": {
            "name": data.name,
            "num_train": len(data.train_labels),
            "num_test": len(data.test_labels),
            "num_features": data.num_features,
            "num_classes": data.num_classes,
        },
        "layer_sizes": layer_sizes,
        "stds": stds.tolist(),
        "theory": _theory_summary(config, layer_sizes, stds, input_second_moment),
        "bands": summarize_bands(runs, config, stds),
        "runs": runs,
        "timings": {**timings, "total_seconds": time.perf_counter() - started},
    }
    if output_dir is not None:
        write_sweep_results(summary, output_dir)
    return summary


def _run_optimizer(
    config: SweepConfig,
    optimizer: str,
    stds: np.ndarray,
    data: ClassificationData,
    fixed_batch: tuple[torch.Tensor, torch.Tensor],
    progress: bool,
) -> list[dict]:
    grid = [(float(std), int(seed)) for std in stds for seed in config.seeds]
    models = []
    for std, seed in grid:
        torch.manual_seed(seed)
        models.append(ReluMLP(config.model_config(data.num_features, data.num_classes, std)))
    stacked = StackedMLP(models)
    del models

    statistics = init_statistics(stacked, *fixed_batch)
    schedule = config.schedule(optimizer)
    result = train_stacked(
        stacked,
        data.train_features,
        data.train_labels,
        data_seeds=[seed for _, seed in grid],
        schedule=schedule,
        progress=progress,
        description=f"sweep {optimizer} ({len(grid)} models)",
    )
    train_metrics = evaluate_stacked(stacked, data.train_features, data.train_labels)
    test_metrics = evaluate_stacked(stacked, data.test_features, data.test_labels)

    chance_loss = math.log(data.num_classes)
    input_second_moment = float(statistics["input_second_moment"])
    runs = []
    for index, (std, seed) in enumerate(grid):
        losses = result.losses[:, index].numpy()
        activation_variance = statistics["activation_variance"][index].numpy()
        output_rms_ratio = math.sqrt(activation_variance[-1] / input_second_moment)
        run = {
            "optimizer": optimizer,
            "std": std,
            "seed": seed,
            "learning_rate": schedule.learning_rate,
            "activation_variance": [finite_or_none(v) for v in activation_variance],
            "gradient_variance": [finite_or_none(v) for v in statistics["gradient_variance"][index].numpy()],
            "output_rms_ratio": finite_or_none(output_rms_ratio),
            "loss_curve": [finite_or_none(v) for v in losses],
            "train_loss": train_metrics[index]["cross_entropy"],
            "train_accuracy": train_metrics[index]["accuracy"],
            "test_loss": test_metrics[index]["cross_entropy"],
            "test_accuracy": test_metrics[index]["accuracy"],
        }
        run["outcome"] = classify_outcome(
            losses, run["train_loss"], run["test_loss"], output_rms_ratio, chance_loss, config.learned_fraction
        )
        runs.append(run)
    counts = {outcome: sum(r["outcome"] == outcome for r in runs) for outcome in OUTCOMES}
    logger.info("sweep %s: %s", optimizer, counts)
    return runs


def classify_outcome(
    losses: np.ndarray,
    train_loss: float | None,
    test_loss: float | None,
    output_rms_ratio: float | None,
    chance_loss: float,
    learned_fraction: float,
) -> str:
    """Return a run's outcome by the rule in the module docstring.

    Args:
        losses: the per-step training losses.
        train_loss: final loss on the training split (None or non-finite when it diverged).
        test_loss: final loss on the test split.
        output_rms_ratio: RMS of the logits over RMS of the inputs, at initialization.
        chance_loss: ln(num_classes), the loss of a uniform prediction.
        learned_fraction: the share of `chance_loss` below which the run learned.
    """
    finals = [train_loss, test_loss]
    if not np.all(np.isfinite(losses)) or any(v is None or not math.isfinite(v) for v in finals):
        return "diverged"
    if train_loss <= learned_fraction * chance_loss:
        return "stable"
    # An overflowed (None or non-finite) ratio at initialization can only mean growth.
    return "vanishing" if output_rms_ratio is not None and output_rms_ratio < 1.0 else "exploding"


def evaluate_stacked(stacked: StackedMLP, features: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Compute each model's loss and accuracy with the shipped `evaluate` metrics.

    Returns:
        One dict per model with `cross_entropy` and `accuracy`; a non-finite loss is None, so
        that a diverged run is never reported with a finite stand-in.
    """
    accuracy_metric = load_metric("accuracy")
    loss_metric = load_metric("cross_entropy")
    logits = stacked_logits(stacked, features).double().numpy()
    references = labels.numpy()
    results = []
    for model_logits in logits:
        loss = loss_metric.compute(predictions=model_logits, references=references)["cross_entropy"]
        finite = np.isfinite(model_logits).all()
        accuracy = (
            accuracy_metric.compute(predictions=model_logits.argmax(axis=1), references=references)["accuracy"]
            if finite
            else None
        )
        results.append({"cross_entropy": finite_or_none(loss), "accuracy": accuracy})
    return results


def summarize_bands(runs: list[dict], config: SweepConfig, stds: np.ndarray) -> dict:
    """Return the measured bands per optimizer and the propagation band, each per seed and over seeds.

    Each band entry has `per_seed` (`[low, high]` or None per seed) and `low`/`high` dicts with
    the geometric mean over seeds and its 95% confidence interval (Student t on log10 of the
    edges); `seeds_with_band` counts the seeds that had any such std.
    """
    bands = {}
    for optimizer in config.optimizers:
        per_seed = []
        for seed in config.seeds:
            stable = {r["std"] for r in runs if r["optimizer"] == optimizer and r["seed"] == seed and r["outcome"] == "stable"}
            per_seed.append(longest_run(stds, [float(s) in stable for s in stds]))
        bands[optimizer] = _aggregate(per_seed, config.seeds)

    first = config.optimizers[0]
    per_seed = []
    for seed in config.seeds:
        ratio = {r["std"]: r["output_rms_ratio"] for r in runs if r["optimizer"] == first and r["seed"] == seed}
        inside = [
            ratio[float(s)] is not None and ratio[float(s)] > 0
            and abs(math.log10(ratio[float(s)])) <= math.log10(config.tolerance)
            for s in stds
        ]
        per_seed.append(longest_run(stds, inside))
    bands["propagation"] = _aggregate(per_seed, config.seeds)
    bands["paper"] = {"low": {"mean": PAPER_BAND[0]}, "high": {"mean": PAPER_BAND[1]}}
    return bands


def longest_run(stds: np.ndarray, mask: list[bool]) -> list[float] | None:
    """Return `[low, high]` of the longest run of consecutive grid points where `mask` is True, or None."""
    best, start = None, None
    for index, inside in enumerate([*mask, False]):
        if inside and start is None:
            start = index
        elif not inside and start is not None:
            if best is None or index - start > best[1] - best[0] + 1:
                best = (start, index - 1)
            start = None
    return None if best is None else [float(stds[best[0]]), float(stds[best[1]])]


def mean_confidence_interval(
    values: list[float], limits: tuple[float, float] | None = None
) -> tuple[float, float | None, float | None]:
    """Return the mean and the 95% Student-t confidence interval of `values` (None bounds for one value).

    With `limits`, the interval is clipped to the range the quantity can take, e.g. `(0, 1)` for an
    accuracy, where the symmetric t interval of a few seeds can reach past 1.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    half_width = t95_quantile(len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    low, high = mean - half_width, mean + half_width
    if limits is not None:
        low, high = max(low, limits[0]), min(high, limits[1])
    return mean, low, high


def t95_quantile(degrees: int) -> float:
    """Return the two-sided 95% Student-t quantile for `degrees` degrees of freedom (>= 1)."""
    if degrees < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {degrees}")
    if degrees > 30:
        return 1.96
    # Between tabulated values the next smaller tabulated degree is used, a slightly wider interval.
    return _T95[max(k for k in _T95 if k <= degrees)]


def reject_repeated_seeds(seeds: list[int]) -> None:
    """Raise ValueError when a seed repeats: repeated seeds give identical runs, which would narrow the confidence interval."""
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:
        raise ValueError(
            f"seeds must be distinct, got {list(seeds)}: {repeated} repeat, and a repeated seed trains an identical "
            "run that would count as independent evidence in the confidence interval"
        )


def _aggregate(per_seed: list[list[float] | None], seeds: list[int]) -> dict:
    found = [band for band in per_seed if band is not None]
    entry = {"per_seed": dict(zip(map(str, seeds), per_seed)), "seeds_with_band": len(found)}
    for side, position in (("low", 0), ("high", 1)):
        if not found:
            entry[side] = None
            continue
        mean, low, high = mean_confidence_interval([math.log10(band[position]) for band in found])
        entry[side] = {
            "mean": 10**mean,
            "ci_low": None if low is None else 10**low,
            "ci_high": None if high is None else 10**high,
        }
    return entry


def _theory_summary(config: SweepConfig, layer_sizes: list[int], stds: np.ndarray, input_second_moment: float) -> dict:
    """Return the ReLU propagation theory of the sweep; its band, std and lines are None for another activation."""
    summary = {
        "activation": config.activation,
        "tolerance": config.tolerance,
        "num_weight_layers": len(layer_sizes) - 1,
        "input_second_moment": input_second_moment,
        "critical_std": None,
        "band": None,
        "predicted_activation_variance": None,
    }
    if config.activation != "relu":
        # The halving of the second moment per layer is a property of ReLU. tanh and GELU have no
        # constant factor, so no line or band is drawn rather than a wrong one.
        logger.warning("the propagation theory is derived for relu only; the sweep of %s has no theory band", config.activation)
        return summary
    hidden_fan_in = layer_sizes[1] if len(layer_sizes) > 2 else layer_sizes[0]
    summary["critical_std"] = math.sqrt(2.0 / hidden_fan_in)
    summary["band"] = list(forward_stable_band(layer_sizes, config.tolerance))
    summary["predicted_activation_variance"] = predicted_activation_variance(stds, layer_sizes, input_second_moment).tolist()
    return summary


def fixed_init_batch(data: ClassificationData, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the batch the initialization statistics use: the first `size` samples of a fixed permutation of the training split."""
    order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(0))[:size]
    return data.train_features[order], data.train_labels[order]


def finite_or_none(value: float) -> float | None:
    """Return `value` as a float, or None when it is NaN or infinite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def format_band_table(summary: dict) -> str:
    """Return a Markdown table of the measured, propagation, theory and paper bands of a sweep."""
    bands = summary["bands"]
    theory = summary["theory"]
    seeds = len(summary["config"]["seeds"])
    lines = [
        "| band | low std (95% CI) | high std (95% CI) | seeds with a band |",
        "|---|---|---|---|",
    ]
    for optimizer in summary["config"]["optimizers"]:
        lines.append(_band_row(f"measured, trained with {optimizer}", bands[optimizer], seeds))
    lines.append(_band_row(f"measured propagation (logits RMS within x{theory['tolerance']:g})", bands["propagation"], seeds))
    if theory["band"] is None:
        lines.append(f"| theory propagation, L={theory['num_weight_layers']} | derived for relu only, not {theory['activation']} | - | - |")
    else:
        low, high = theory["band"]
        lines.append(f"| theory propagation, L={theory['num_weight_layers']} | {low:.3g} | {high:.3g} | - |")
    lines.append(f"| paper (arXiv:2510.09423) | {PAPER_BAND[0]:g} | {PAPER_BAND[1]:g} | - |")
    return "\n".join(lines)


def _band_row(label: str, band: dict, seeds: int) -> str:
    if band["low"] is None:
        return f"| {label} | none | none | 0/{seeds} |"
    cells = []
    for side in ("low", "high"):
        edge = band[side]
        interval = "" if edge["ci_low"] is None else f" [{edge['ci_low']:.3g}, {edge['ci_high']:.3g}]"
        cells.append(f"{edge['mean']:.3g}{interval}")
    return f"| {label} | {cells[0]} | {cells[1]} | {band['seeds_with_band']}/{seeds} |"


RUN_COLUMNS = [
    "optimizer", "std", "seed", "learning_rate", "outcome", "train_loss", "test_loss", "train_accuracy",
    "test_accuracy", "output_rms_ratio",
]


def write_sweep_results(summary: dict, output_dir: str | Path) -> list[Path]:
    """Write `sweep.json` (everything) and `runs.csv` (one row per run) into `output_dir`.

    Non-finite values are written as JSON `null` and as `nan` in the CSV, never as a number.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "sweep.json"
    csv_path = output_dir / "runs.csv"

    num_layers = len(summary["layer_sizes"]) - 1
    columns = RUN_COLUMNS + [f"activation_variance_{l}" for l in range(num_layers)] + [
        f"gradient_variance_{l}" for l in range(num_layers)
    ]
    # Write to temporary names first so an interrupted run leaves no half-written result.
    json_tmp = json_path.with_suffix(".json.tmp")
    json_tmp.write_text(json.dumps(summary, indent=1, allow_nan=False))
    csv_tmp = csv_path.with_suffix(".csv.tmp")
    with csv_tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for run in summary["runs"]:
            row = [run[c] for c in RUN_COLUMNS] + run["activation_variance"] + run["gradient_variance"]
            writer.writerow(["nan" if v is None else v for v in row])
    json_tmp.replace(json_path)
    csv_tmp.replace(csv_path)
    return [json_path, csv_path]


def load_sweep_results(path: str | Path) -> dict:
    """Read a `sweep.json`, given the file or the folder that contains it."""
    return load_results_file(path, "sweep.json", "sweep")


def load_results_file(path: str | Path, filename: str, command: str) -> dict:
    """Read the JSON results `filename` that `hf-initvar {command}` writes, given the file or its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / filename
    if not path.exists():
        raise FileNotFoundError(f"no {command} results at {path}; run `hf-initvar {command} --output_dir DIR` first")
    return json.loads(path.read_text())
