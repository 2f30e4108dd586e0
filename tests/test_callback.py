import copy
import glob
import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_initvar import VarianceCallback
from hf_initvar.tracking.history import load_history
from hf_initvar.tracking.layouts import ProjectionView, detect_layout
from hf_initvar.tracking.stats import compute_moments, moments_to_statistics, row_keys
from wandb_records import read_history


def _blocks(n_blocks=32, length=16, vocab=50):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n_blocks, length), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _train(model, output_dir, callback, report_to="none", **overrides):
    arguments = dict(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=report_to,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    arguments.update(overrides)
    trainer = Trainer(model=model, args=TrainingArguments(**arguments), train_dataset=_blocks(), callbacks=[callback])
    trainer.train()
    return trainer


def _reference_statistics(model):
    layout = detect_layout(model)
    out = torch.zeros((layout.n_rows, 3), dtype=torch.float64)
    views = [ProjectionView(view.layer, view.projection, view.weight.detach().double()) for view in layout.views()]
    return row_keys(layout, False), moments_to_statistics(compute_moments(views, False, out).numpy())


def test_rows_at_step_zero_and_every_step_match_weights(tiny_gpt2, tmp_path):
    initial = copy.deepcopy(tiny_gpt2)
    _train(tiny_gpt2, tmp_path, VarianceCallback(figures=False))
    frame, meta = load_history(tmp_path)

    assert sorted(frame["step"].unique()) == [0, 1, 2, 3, 4]
    assert len(frame) == 5 * 3 * 3
    assert not frame.duplicated(["step", "layer", "projection", "head"]).any()
    assert meta["n_layer"] == 3
    assert meta["every_n_steps"] == 1
    for step, model in ((0, initial), (4, tiny_gpt2)):
        keys, expected = _reference_statistics(model)
        rows = frame[frame["step"] == step].set_index(["layer", "projection"])
        for index, (layer, projection, _head) in enumerate(keys):
            assert rows.loc[(layer, projection), "variance"] == pytest.approx(expected["variance"][index], rel=1e-9)
            assert rows.loc[(layer, projection), "mean"] == pytest.approx(expected["mean"][index], rel=1e-9, abs=1e-12)

    # The weights moved, so the first and last rows differ.
    first = frame[frame["step"] == 0]["variance"].to_numpy()
    last = frame[frame["step"] == 4]["variance"].to_numpy()
    assert np.all(np.abs(last / first - 1) > 1e-4)


def test_gradient_accumulation_gives_one_row_per_optimizer_step(tiny_gpt2, tmp_path):
    _train(tiny_gpt2, tmp_path, VarianceCallback(figures=False), max_steps=3, gradient_accumulation_steps=2)
    frame, _ = load_history(tmp_path)
    assert frame.groupby("step").size().to_dict() == {0: 9, 1: 9, 2: 9, 3: 9}


def test_interval_logs_multiples_and_last_step(tiny_gpt2, tmp_path):
    _train(tiny_gpt2, tmp_path, VarianceCallback(every_n_steps=2, figures=False), max_steps=5)
    frame, _ = load_history(tmp_path)
    assert sorted(frame["step"].unique()) == [0, 2, 4, 5]


def test_per_head_rows_and_figures(tiny_gpt2, tmp_path):
    _train(tiny_gpt2, tmp_path, VarianceCallback(per_head=True), max_steps=2)
    frame, meta = load_history(tmp_path)
    assert meta["per_head"] is True
    assert len(frame) == 3 * 3 * 3 * (1 + 3)
    heads = frame[(frame["step"] == 2) & (frame["head"] >= 0)]
    whole = frame[(frame["step"] == 2) & (frame["head"] == -1)].set_index(["layer", "projection"])
    # The projection's mean is the mean of its equally sized heads.
    for (layer, projection), group in heads.groupby(["layer", "projection"]):
        assert group["mean"].mean() == pytest.approx(whole.loc[(layer, projection), "mean"], rel=1e-6, abs=1e-12)
    assert (tmp_path / "variance" / "variance_heatmap.png").stat().st_size > 10_000
    assert (tmp_path / "variance" / "variance_curves.png").stat().st_size > 10_000


def test_history_is_on_disk_before_training_ends(tiny_gpt2, tmp_path):
    seen = {}

    class Probe(VarianceCallback):
        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            seen[state.global_step] = pd.read_csv(tmp_path / "variance" / "history.csv")["step"].max()

    _train(tiny_gpt2, tmp_path, Probe(figures=False), max_steps=3)
    assert seen == {1: 1, 2: 2, 3: 3}


def test_tensorboard_events_hold_per_layer_keys(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tiny_gpt2, tmp_path, VarianceCallback(figures=False), report_to="tensorboard")
    frame, _ = load_history(tmp_path)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]

    for layer in range(3):
        for projection in "qkv":
            for statistic in ("variance", "std", "mean"):
                assert f"train/qkv/{statistic}/layer_{layer:02d}/{projection}" in tags
    scalars = events.Scalars("train/qkv/variance/layer_02/v")
    assert [event.step for event in scalars] == [0, 1, 2, 3, 4]
    expected = frame[(frame["layer"] == 2) & (frame["projection"] == "v")].sort_values("step")["variance"]
    np.testing.assert_allclose([event.value for event in scalars], expected, rtol=1e-6)
    # The Trainer's own loss keeps its own tag on the same step axis.
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]


def _read_finished_run(directory, last_step, timeout=60.0):
    """Read the offline run's history once W&B's service process has written its last step.

    `wandb.finish()` can return before the service flushes the run file (seen with wandb 0.31 on
    a loaded machine), so the file is read until it contains `last_step` or `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        [run_file] = glob.glob(str(directory / "wandb" / "offline-run-*" / "*.wandb"))
        rows = read_history(run_file)
        if any(row.get("train/global_step") == last_step for row in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_wandb_offline_run_holds_per_layer_keys(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    _train(tiny_gpt2, tmp_path, VarianceCallback(figures=False), report_to="wandb")
    wandb.finish()
    frame, _ = load_history(tmp_path)
    rows = _read_finished_run(tmp_path, last_step=4)

    variance_rows = [row for row in rows if "train/qkv/variance/layer_01/k" in row]
    assert [row["train/global_step"] for row in variance_rows] == [0, 1, 2, 3, 4]
    expected = frame[(frame["layer"] == 1) & (frame["projection"] == "k")].sort_values("step")["variance"]
    np.testing.assert_allclose([row["train/qkv/variance/layer_01/k"] for row in variance_rows], expected, rtol=1e-12)
    loss_steps = [row["train/global_step"] for row in rows if "train/loss" in row]
    assert loss_steps == [1, 2, 3, 4]
    # No metric is logged with an explicit W&B step, so none of them is dropped.
    assert all(math.isfinite(row["train/qkv/std/layer_00/q"]) for row in variance_rows)


def test_invalid_interval_is_rejected():
    with pytest.raises(ValueError, match="every_n_steps must be a positive integer, got 0"):
        VarianceCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="got 2.5"):
        VarianceCallback(every_n_steps=2.5)


def test_model_without_layout_fails_at_train_begin(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50))
    model.config.model_type = "unknown_arch"
    with pytest.raises(ValueError, match="no weight layout for model type 'unknown_arch'"):
        _train(model, tmp_path, VarianceCallback(figures=False), max_steps=1)


def test_resume_keeps_one_row_per_step(tiny_gpt2, tmp_path):
    reference = copy.deepcopy(tiny_gpt2)
    _train(tiny_gpt2, tmp_path, VarianceCallback(figures=False), max_steps=6, save_strategy="steps", save_steps=3)
    first_run, _ = load_history(tmp_path)
    # A crash after step 6 left rows past the checkpoint at step 3; the resumed run must replace them.
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
        save_strategy="steps", save_steps=3, report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=reference, args=arguments, train_dataset=_blocks(), callbacks=[VarianceCallback(figures=False)])
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    resumed, _ = load_history(tmp_path)

    assert resumed.groupby("step").size().to_dict() == {step: 9 for step in range(7)}
    np.testing.assert_allclose(
        resumed.sort_values(["step", "layer", "projection"])["variance"].to_numpy(),
        first_run.sort_values(["step", "layer", "projection"])["variance"].to_numpy(),
        rtol=1e-5,
    )


def _resume_arguments(output_dir, **overrides):
    arguments = dict(
        output_dir=str(output_dir), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
        save_strategy="steps", save_steps=3, report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    arguments.update(overrides)
    return TrainingArguments(**arguments)


def test_resume_into_new_output_dir_restores_history(tiny_gpt2, tmp_path):
    reference = copy.deepcopy(tiny_gpt2)
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    _train(tiny_gpt2, first_dir, VarianceCallback(figures=False), max_steps=6, save_strategy="steps", save_steps=3)
    first_run, _ = load_history(first_dir)
    assert (first_dir / "checkpoint-3" / "variance" / "history.csv").is_file()

    trainer = Trainer(model=reference, args=_resume_arguments(second_dir), train_dataset=_blocks(), callbacks=[VarianceCallback(figures=False)])
    trainer.train(resume_from_checkpoint=str(first_dir / "checkpoint-3"))
    resumed, _ = load_history(second_dir)

    assert resumed.groupby("step").size().to_dict() == {step: 9 for step in range(7)}
    np.testing.assert_allclose(
        resumed.sort_values(["step", "layer", "projection"])["variance"].to_numpy(),
        first_run.sort_values(["step", "layer", "projection"])["variance"].to_numpy(),
        rtol=1e-5,
    )


def test_restored_callback_keeps_its_arguments(tiny_gpt2, tmp_path):
    reference = copy.deepcopy(tiny_gpt2)
    _train(tiny_gpt2, tmp_path, VarianceCallback(every_n_steps=2, per_head=True, figures=False), max_steps=6, save_strategy="steps", save_steps=3)
    # The resumed Trainer gets a default callback; restoring callback states brings back the saved one.
    arguments = _resume_arguments(tmp_path, restore_callback_states_from_checkpoint=True)
    trainer = Trainer(model=reference, args=arguments, train_dataset=_blocks(), callbacks=[VarianceCallback(figures=False)])
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    [callback] = [c for c in trainer.callback_handler.callbacks if isinstance(c, VarianceCallback)]
    resumed, meta = load_history(tmp_path)

    assert callback.every_n_steps == 2
    assert callback.per_head is True
    assert meta["per_head"] is True
    assert resumed.groupby("step").size().to_dict() == {step: 3 * 3 * (1 + 3) for step in (0, 2, 4, 6)}
