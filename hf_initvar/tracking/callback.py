"""`VarianceCallback`: layer-wise Q/K/V weight statistics for any `transformers.Trainer` run.

The same callback tracks the linear layers of a `ReluMLP` (`hf_initvar.tracking.layouts.relu_mlp_layout`).

Events used:

- `on_train_begin`: find the attention layout, open the history, log step 0 (or the resumed step).
- `on_pre_optimizer_step`: with `track_gradients`, reduce the gradients of a step on the interval.
- `on_step_end`: every `every_n_steps` optimizer steps, log one row block.
- `on_save`: copy the history next to the checkpoint, so a resume finds it.
- `on_train_end`: log the last step if the interval skipped it, close the history, draw the figures.

Persisted state: the history folder (`history.csv`, `meta.json`, figures), copied into every
checkpoint. On `resume_from_checkpoint` the checkpoint's copy replaces the history in the output
folder, which drops rows that a crashed run wrote after that checkpoint. The constructor arguments
are stored in `trainer_state.json` (`ExportableState`), so a Trainer with
`restore_callback_states_from_checkpoint=True` recreates the callback as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, ExportableState

from hf_initvar.tracking.histograms import HistogramRecorder
from hf_initvar.tracking.history import HistoryWriter, read_logged_steps
from hf_initvar.tracking.layouts import AttentionLayout, detect_layout, unwrapped_name
from hf_initvar.tracking.shards import ShardPlan
from hf_initvar.tracking.stats import moments_to_statistics

logger = logging.getLogger(__name__)

HISTORY_DIRNAME = "variance"
REPORTED_STATISTICS = ("variance", "std", "mean")


def metric_key(
    statistic: str, layer: int, projection: str, head: int = -1, quantity: str = "weight", prefix: str = "qkv"
) -> str:
    """Key under which a statistic reaches the reporters: `qkv/variance/layer_03/k` or `…/k/head_07`.

    Gradient and update statistics use the prefixes `qkv_gradient/` and `qkv_update/`. A `ReluMLP`
    layout has the prefix `mlp`, giving `mlp/variance/layer_03/weight`.
    """
    if quantity != "weight":
        prefix = f"{prefix}_{quantity}"
    key = f"{prefix}/{statistic}/layer_{layer:02d}/{projection}"
    return key if head < 0 else f"{key}/head_{head:02d}"


class VarianceCallback(TrainerCallback, ExportableState):
    """Log the variance, std, mean and RMS of every layer's Q, K and V weights during training.

    For a `ReluMLP` it logs those of every linear layer's weight instead (projection `weight`).

    Statistics are taken at step 0 (before any update) and every `every_n_steps` optimizer steps,
    keyed by `state.global_step`, so gradient accumulation still gives one row per optimizer step.
    On world rank 0 they are appended to `<output_dir>/variance/history.csv` and sent to every
    reporter of `args.report_to` (W&B, TensorBoard, …) on the step axis those reporters use.

    Args:
        every_n_steps: logging interval in optimizer steps (step 0 and the last step are always logged).
        per_head: also record one row per attention head; reporters then receive per-head variances.
        history_dir: folder for the history; default `<output_dir>/variance`.
        report: send the metrics to the Trainer's reporters.
        figures: draw the layer x step heatmap and per-layer curves when training ends.
        histogram_steps: steps at which to record fixed-bin weight histograms (`histograms.csv`,
            format in `hf_initvar.tracking.histograms`); none by default.
        histogram_layers: layers whose Q/K/V the histograms cover (negative counts from the last).
        histogram_bins: number of equal bins of each histogram.
        track_gradients: also record the statistics of the Q/K/V gradients (after clipping, before
            the optimizer step) at the logged steps on the interval. Not under ZeRO-3.
        track_updates: also record the statistics of the weight change since the previous logged
            step. Keeps one copy of the Q/K/V weights (of this rank's shards under sharding).
        stop_on_nonfinite: stop training (on every rank) at the first logged step whose Q/K/V
            statistics are NaN or infinite. Without it, such rows are written and reported as they
            are, and a warning gives their count.

    Example:
        ```python
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[VarianceCallback()])
        ```
    """

    def __init__(
        self,
        every_n_steps: int = 1,
        per_head: bool = False,
        history_dir: str | None = None,
        report: bool = True,
        figures: bool = True,
        histogram_steps: list[int] | None = None,
        histogram_layers: list[int] | None = None,
        histogram_bins: int = 80,
        stop_on_nonfinite: bool = False,
        track_gradients: bool = False,
        track_updates: bool = False,
    ):
        # Kept for `state()`, so a Trainer restoring callbacks from a checkpoint rebuilds this one.
        self._constructor_args = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}; use 1 to log every step")
        self.every_n_steps = every_n_steps
        self.per_head = per_head
        self.history_dir = history_dir
        self.report = report
        self.figures = figures
        self.stop_on_nonfinite = stop_on_nonfinite
        self.track_gradients = track_gradients
        self.track_updates = track_updates
        self._gradient: tuple[int, torch.Tensor] | None = None
        self._histograms = (
            HistogramRecorder(histogram_layers if histogram_layers is not None else [0, -1], histogram_steps, bins=histogram_bins)
            if histogram_steps
            else None
        )

        self._layout: AttentionLayout | None = None
        self._plan: ShardPlan | None = None
        self._keys: list[tuple[int, str, int]] = []
        self._writer: HistoryWriter | None = None
        self._reporters: list[TrainerCallback] = []
        self._last_step: int | None = None
        self._intended_variance: np.ndarray | None = None
        self._nonfinite_rows = 0

    # Trainer events

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        self._layout = detect_layout(model)
        self._plan = ShardPlan(model, self._layout, self.per_head)
        self._keys = self._plan.keys
        self._intended_variance = _intended_variances(model, self._layout, self._keys)
        if self.track_gradients and self._plan.sharding == "zero3":
            # Limitation: ZeRO-3 keeps gradients in optimizer partitions, not on the parameters.
            logger.warning("VarianceCallback: gradient statistics are not available under DeepSpeed ZeRO-3; track_gradients is ignored")
            self.track_gradients = False
        self._reporters = _find_reporters(self) if self.report else []

        if state.is_world_process_zero:
            directory = self._resolve_history_dir(args)
            resume_step = state.global_step if state.global_step > 0 else None
            if resume_step is not None:
                _restore_history_from_checkpoint(_resumed_checkpoint(args, state), state, directory)
            self._writer = HistoryWriter(directory, self._meta(model), resume_step=resume_step)
            logger.info(
                "VarianceCallback: tracking %s of %d layers%s (%s layout) every %d steps, %s, into %s; reporting to %s",
                self._layout.label,
                self._layout.n_layer,
                f" x {self._layout.n_head} heads" if self.per_head else "",
                self._layout.name,
                self.every_n_steps,
                self._plan.describe(),
                directory,
                [type(reporter).__name__ for reporter in self._reporters] or "no reporter",
            )

        # On a resume the checkpoint's step may already be in the history. `_log_step` then skips
        # the write, but every rank still computes, so sharded reductions stay in lockstep. A
        # resumed step off the interval is not logged, which keeps the logged steps those of an
        # uninterrupted run.
        if state.global_step % self.every_n_steps == 0:
            self._log_step(args, state, control, model)
        if self._histograms is not None:
            self._histograms.open(self._resolve_history_dir(args), self._layout.n_layer)
            self._record_histograms(state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self._log_step(args, state, control, model)
        self._record_histograms(state)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # The gradient about to be applied belongs to step global_step + 1.
        step = state.global_step + 1
        if self.track_gradients and self._plan is not None and step % self.every_n_steps == 0:
            gradient = self._plan.compute(self._computes_here(state), quantity="gradient")
            self._gradient = None if gradient is None else (step, gradient.clone())

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self._writer is None:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            shutil.copytree(self._writer.directory, checkpoint / HISTORY_DIRNAME, dirs_exist_ok=True)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        if self._layout is None:
            return
        if self._last_step != state.global_step:
            self._log_step(args, state, control, model)
        if self._writer is None:
            return
        self._writer.close()
        if self.figures:
            # Figures are drawn from the saved history, the same way `hf-initvar plot` draws them later.
            # Reporting sits below tracking, so it is imported only here, at the end of training.
            from hf_initvar.reporting.figures import draw_history_figures

            for path in draw_history_figures(self._writer.directory):
                logger.info("VarianceCallback: wrote %s", path)

    def state(self) -> dict[str, Any]:
        """Return the constructor arguments, stored in `trainer_state.json` with every checkpoint."""
        return {"args": dict(self._constructor_args), "attributes": {}}

    # One logged step

    def _log_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model) -> None:
        merged = self._plan.compute(self._computes_here(state))
        parts = {"weight": merged}
        if self.track_updates:
            parts["update"] = self._plan.compute(self._computes_here(state), quantity="update")
        if self._gradient is not None and self._gradient[0] == state.global_step:
            parts["gradient"] = self._gradient[1]
        self._gradient = None
        self._last_step = state.global_step
        if merged is None:
            return

        parts = {quantity: moments for quantity, moments in parts.items() if moments is not None}
        stacked = torch.stack(list(parts.values())).cpu().numpy()  # the one host synchronization of this step
        moments = stacked[0]
        statistics = moments_to_statistics(moments)
        statistics["count"] = moments[:, 0]
        statistics["variance_ratio"] = statistics["variance"] / self._intended_variance
        nonfinite_rows = int(np.count_nonzero(~np.isfinite(statistics["variance"]) | ~np.isfinite(statistics["mean"])))
        if nonfinite_rows:
            self._handle_nonfinite(state, control, nonfinite_rows)
        if self._writer is None or state.global_step in self._writer.logged_steps:
            return

        self._writer.append(state.global_step, self._keys, statistics)
        others = {}
        for quantity, other_moments in zip(list(parts)[1:], stacked[1:]):
            others[quantity] = moments_to_statistics(other_moments)
            others[quantity]["count"] = other_moments[:, 0]
            self._writer.append(state.global_step, self._keys, others[quantity], quantity=quantity)
        if self._reporters:
            metrics = self._metrics(statistics)
            for quantity, other in others.items():
                for i, (layer, projection, head) in enumerate(self._keys):
                    if head < 0:
                        metrics[self._key("variance", layer, projection, quantity=quantity)] = float(other["variance"][i])
                        metrics[self._key("rms", layer, projection, quantity=quantity)] = float(other["rms"][i])
            metrics[f"{self._layout.metric_prefix}/nonfinite_rows"] = nonfinite_rows
            for reporter in self._reporters:
                reporter.on_log(args, state, control, logs=dict(metrics), model=model)

    def _computes_here(self, state: TrainerState) -> bool:
        # Stopping must happen on every rank, so with stop_on_nonfinite every rank computes.
        return state.is_world_process_zero or self.stop_on_nonfinite

    def _handle_nonfinite(self, state: TrainerState, control: TrainerControl, nonfinite_rows: int) -> None:
        if self.stop_on_nonfinite:
            control.should_training_stop = True
        # One warning when the count first rises, not one per step.
        if state.is_world_process_zero and nonfinite_rows > self._nonfinite_rows:
            logger.warning(
                "VarianceCallback: %d of %d %s statistics rows are NaN or infinite at step %d%s",
                nonfinite_rows,
                len(self._keys),
                self._layout.label,
                state.global_step,
                "; stopping training (stop_on_nonfinite=True)" if self.stop_on_nonfinite else "",
            )
        self._nonfinite_rows = max(self._nonfinite_rows, nonfinite_rows)

    def _record_histograms(self, state: TrainerState) -> None:
        if self._histograms is None or not self._histograms.wants(state.global_step):
            return
        rows = self._histograms.compute(self._layout.views(), state.global_step)
        if state.is_world_process_zero:
            self._histograms.append(rows)

    def _metrics(self, statistics: dict[str, np.ndarray]) -> dict[str, float]:
        metrics = {}
        for i, (layer, projection, head) in enumerate(self._keys):
            # Per-head rows send only their variance, which keeps a 12-head model at ~500 keys a step.
            names = REPORTED_STATISTICS if head < 0 else ("variance",)
            for name in names:
                metrics[self._key(name, layer, projection, head)] = float(statistics[name][i])
            if head < 0 and np.isfinite(self._intended_variance[i]):
                metrics[self._key("variance_ratio", layer, projection)] = float(statistics["variance_ratio"][i])
        return metrics

    def _key(self, statistic: str, layer: int, projection: str, head: int = -1, quantity: str = "weight") -> str:
        return metric_key(statistic, layer, projection, head, quantity, prefix=self._layout.metric_prefix)

    def _resolve_history_dir(self, args: TrainingArguments) -> Path:
        if self.history_dir is not None:
            return Path(self.history_dir)
        if args.output_dir is None:
            raise ValueError("VarianceCallback needs TrainingArguments.output_dir or an explicit history_dir")
        return Path(args.output_dir) / HISTORY_DIRNAME

    def _meta(self, model) -> dict[str, Any]:
        config = getattr(model, "config", None)
        return {
            "layout": self._layout.name,
            "model_type": getattr(config, "model_type", None),
            "n_layer": self._layout.n_layer,
            "n_head": self._layout.n_head,
            "n_kv_head": self._layout.n_kv_head,
            "head_dim": self._layout.head_dim,
            "sharding": self._plan.sharding,
            "projections": list(self._layout.projections),
            "metric_prefix": self._layout.metric_prefix,
            "every_n_steps": self.every_n_steps,
            "quantities": ["weight"] + ["gradient"] * self.track_gradients + ["update"] * self.track_updates,
            "per_head": self.per_head,
            "init_scheme": getattr(config, "init_scheme", None),
            "init_args": getattr(config, "init_args", None),
            # The whole config, so that reports can rebuild the model's shapes without config.json.
            "model_config": json.loads(config.to_json_string(use_diff=False)) if hasattr(config, "to_json_string") else None,
        }


def _intended_variances(model, layout: AttentionLayout, keys: list[tuple[int, str, int]]) -> np.ndarray:
    """Return, per row, the variance the model's recorded init scheme intended (NaN when unknown).

    Only a scheme recorded on `model.config.init_scheme` (by `hf_initvar.init.apply_init`) counts.
    A scheme that intends a constant (std 0) gives NaN as well, so the ratio is never infinite.
    """
    intended = np.full(len(keys), np.nan)
    if getattr(getattr(model, "config", None), "init_scheme", None) is None:
        return intended
    # init sits above tracking in the package layers, so this import keeps the order.
    from hf_initvar.init import intended_stds

    try:
        stds = {unwrapped_name(name): std for name, std in intended_stds(model).items()}
    except (ValueError, KeyError, AttributeError, RuntimeError) as error:
        logger.warning("VarianceCallback: no intended variances for %s (%s); variance_ratio is left empty", type(model).__name__, error)
        return intended
    by_projection = {(placement.layer, placement.projection): stds.get(placement.name) for placement in layout.placements}
    for row, (layer, projection, _head) in enumerate(keys):
        std = by_projection[(layer, projection)]
        if std:
            intended[row] = std**2
    return intended


def _find_reporters(callback: TrainerCallback) -> list[TrainerCallback]:
    """Return the reporting integrations (W&B, TensorBoard, …) registered before `callback`.

    The Trainer runs user callbacks after its reporters, so metrics added to `logs` in `on_log`
    would reach none of them. Instead, the callback calls each reporter's `on_log` itself, the way
    `Trainer.log` does. A callback is not handed the `CallbackHandler`, so it is found on the
    stack: the event being handled was dispatched by `CallbackHandler.call_event`.
    """
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    handler = None
    frame = sys._getframe(1)
    while frame is not None and handler is None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, CallbackHandler):
            handler = candidate
        frame = frame.f_back
    if handler is None:
        logger.warning(
            "VarianceCallback: not called by a transformers CallbackHandler, so the statistics go to "
            "the history file only, not to the reporters in report_to"
        )
        return []

    reporter_types = tuple(INTEGRATION_TO_CALLBACK.values())
    return [other for other in handler.callbacks if isinstance(other, reporter_types) and other is not callback]


def _resumed_checkpoint(args: TrainingArguments, state: TrainerState) -> Path:
    """Return the checkpoint folder the Trainer is resuming from.

    `Trainer.train(resume_from_checkpoint=...)` does not pass the path to callbacks. Its resolved
    value is a local variable of the `train` call that dispatched this event, so it is read from
    the stack. Without one, the checkpoint of the resumed step in `output_dir` is assumed.
    """
    from transformers import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), Trainer):
            checkpoint = frame.f_locals.get("resume_from_checkpoint")
            if isinstance(checkpoint, (str, Path)):
                return Path(checkpoint)
        frame = frame.f_back
    if isinstance(args.resume_from_checkpoint, str):
        return Path(args.resume_from_checkpoint)
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def _restore_history_from_checkpoint(checkpoint: Path, state: TrainerState, directory: Path) -> None:
    """On resume, replace the history with the checkpoint's copy, which ends at the resumed step.

    Without a copy in the checkpoint, the history in `directory` is kept, and `HistoryWriter`
    drops its rows past the resumed step.
    """
    saved = checkpoint / HISTORY_DIRNAME
    if (saved / "history.csv").exists():
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copytree(saved, directory, dirs_exist_ok=True)
        logger.info("VarianceCallback: restored the history of %s (up to step %d)", checkpoint, state.global_step)
    elif read_logged_steps(directory):
        logger.warning(
            "VarianceCallback: no history copy found in %s; keeping %s up to step %d", checkpoint, directory, state.global_step
        )
    else:
        logger.warning("VarianceCallback: resumed at step %d with no saved history; starting a new one", state.global_step)
