"""Variance ratio to the init scheme's intent, non-finite weights, and append cost at scale."""

import math
import time

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from hf_initvar import VarianceCallback
from hf_initvar.init import apply_init
from hf_initvar.tracking.history import COLUMNS, HistoryWriter, load_history
from hf_initvar.tracking.layouts import detect_layout
from hf_initvar.tracking.stats import row_keys


def _blocks(n_blocks=32, length=16, vocab=50):
    ids = torch.randint(0, vocab, (n_blocks, length), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _train(model, output_dir, callbacks, **overrides):
    arguments = dict(
        output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    arguments.update(overrides)
    trainer = Trainer(model=model, args=TrainingArguments(**arguments), train_dataset=_blocks(), callbacks=callbacks)
    trainer.train()
    return trainer


def _wide_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=16, vocab_size=50))


def test_variance_ratio_matches_init_scheme(tmp_path):
    model = _wide_gpt2()
    apply_init(model, "normal", std=0.05)
    _train(model, tmp_path, [VarianceCallback(figures=False)], learning_rate=1e-6)
    frame, _ = load_history(tmp_path)
    first = frame[(frame["step"] == 0) & (frame["head"] == -1)]

    # Each projection contains 64 x 64 draws of N(0, 0.05^2), so the measured variance is off from
    # the intended 0.0025 by about sqrt(2 / 4096) = 2.2% relative. Five sigma is 11%.
    assert len(first) == 6
    np.testing.assert_allclose(first["variance_ratio"].to_numpy(), 1.0, atol=5 * math.sqrt(2 / 4096))
    np.testing.assert_allclose(first["variance_ratio"], first["variance"] / 0.05**2, rtol=1e-12)


def test_variance_ratio_empty_without_scheme(tiny_gpt2, tmp_path):
    _train(tiny_gpt2, tmp_path, [VarianceCallback(figures=False)], max_steps=1)
    frame, _ = load_history(tmp_path)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["variance_ratio"].isna().all()


class _PoisonAfterStep(TrainerCallback):
    """Write a NaN into layer 1's K weights once `step` is reached, as a diverging run would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.transformer.h[1].attn.c_attn.weight[0, 30] = float("nan")


def test_nonfinite_weights_are_counted_and_written(tiny_gpt2, tmp_path, caplog):
    # The poisoning callback runs before VarianceCallback, so step 2 is the first one measured with the NaN.
    with caplog.at_level("WARNING", logger="hf_initvar.tracking.callback"):
        _train(tiny_gpt2, tmp_path, [_PoisonAfterStep(2), VarianceCallback(figures=False)], max_steps=3, learning_rate=0.0)
    frame, _ = load_history(tmp_path)
    step_two = frame[frame["step"] == 2].set_index(["layer", "projection"])

    assert sorted(frame["step"].unique()) == [0, 1, 2, 3]
    assert math.isnan(step_two.loc[(1, "k"), "variance"])
    assert np.isfinite(step_two.drop(index=(1, "k"))["variance"]).all()
    assert "1 of 9 Q/K/V statistics rows are NaN or infinite at step 2" in caplog.text


def test_stop_on_nonfinite_ends_training(tiny_gpt2, tmp_path):
    trainer = _train(
        tiny_gpt2, tmp_path, [_PoisonAfterStep(2), VarianceCallback(figures=False, stop_on_nonfinite=True)], max_steps=6, learning_rate=0.0
    )
    frame, _ = load_history(tmp_path)
    assert trainer.state.global_step == 2
    assert sorted(frame["step"].unique()) == [0, 1, 2]


def test_history_append_time_stays_flat(tmp_path):
    """2,000 logged steps of a 48-layer, 25-head layout: the last appends cost what the first did."""
    config = GPT2Config(n_layer=48, n_embd=100, n_head=25, n_positions=16, vocab_size=50)
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    layout = detect_layout(model)
    keys = row_keys(layout, per_head=False)
    rng = np.random.default_rng(0)
    statistics = {name: rng.random(len(keys)) for name in ("variance", "std", "mean", "rms", "variance_ratio", "count")}
    writer = HistoryWriter(tmp_path, {"n_layer": 48})
    seconds = []
    for step in range(2000):
        started = time.perf_counter()
        writer.append(step, keys, statistics)
        seconds.append(time.perf_counter() - started)
    writer.close()

    assert len(keys) == 48 * 3
    first, last = np.median(seconds[100:300]), np.median(seconds[-200:])
    # O(1) appends keep the ratio near 1; anything that rereads the file would grow ~10x by the end.
    assert last < 2.0 * first, f"append took {first * 1e3:.2f} ms early and {last * 1e3:.2f} ms late"
    frame, _ = load_history(tmp_path)
    assert len(frame) == 2000 * 48 * 3


class _Recorder(TrainerCallback):
    """Keep copies of layer 0's c_attn gradient before each optimizer step and of its weight after."""

    def __init__(self):
        self.gradients, self.weights = {}, {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights[0] = model.transformer.h[0].attn.c_attn.weight.detach().double().clone()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients[state.global_step + 1] = model.transformer.h[0].attn.c_attn.weight.grad.double().clone()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = model.transformer.h[0].attn.c_attn.weight.detach().double().clone()


def test_gradient_and_update_rows_match_tensors(tiny_gpt2, tmp_path):
    recorder = _Recorder()
    callback = VarianceCallback(figures=False, every_n_steps=2, track_gradients=True, track_updates=True, per_head=True)
    _train(tiny_gpt2, tmp_path, [recorder, callback], max_steps=4, max_grad_norm=0.5)
    gradients, _ = load_history(tmp_path, quantity="gradient")
    updates, meta = load_history(tmp_path, quantity="update")
    weights, _ = load_history(tmp_path)

    assert meta["quantities"] == ["weight", "gradient", "update"]
    assert sorted(weights["step"].unique()) == [0, 2, 4]
    assert sorted(gradients["step"].unique()) == [2, 4]
    assert sorted(updates["step"].unique()) == [2, 4]
    for step in (2, 4):
        k_gradient = recorder.gradients[step][:, 24:48]  # layer 0, k
        k_update = (recorder.weights[step] - recorder.weights[step - 2])[:, 24:48]
        gradient_row = gradients[(gradients["step"] == step) & (gradients["layer"] == 0) & (gradients["projection"] == "k") & (gradients["head"] == -1)]
        update_row = updates[(updates["step"] == step) & (updates["layer"] == 0) & (updates["projection"] == "k") & (updates["head"] == -1)]
        head_row = updates[(updates["step"] == step) & (updates["layer"] == 0) & (updates["projection"] == "k") & (updates["head"] == 2)]
        assert gradient_row["variance"].item() == pytest.approx(k_gradient.var(unbiased=False).item(), rel=1e-9)
        assert gradient_row["rms"].item() == pytest.approx(k_gradient.pow(2).mean().sqrt().item(), rel=1e-9)
        # The callback subtracts the float32 weights in float32, the reference in float64. Each
        # element of the update is then rounded by up to 2**-24 of itself, so its variance by up to
        # about 2 * 2**-24 = 1.2e-7.
        assert update_row["variance"].item() == pytest.approx(k_update.var(unbiased=False).item(), rel=2.5e-7)
        assert head_row["variance"].item() == pytest.approx(k_update[:, 16:24].var(unbiased=False).item(), rel=2.5e-7)


def test_gradient_metric_keys_reach_tensorboard(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tiny_gpt2, tmp_path, [VarianceCallback(figures=False, track_gradients=True, track_updates=True)], report_to="tensorboard", max_steps=2)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]

    assert "train/qkv_gradient/variance/layer_02/v" in tags
    assert "train/qkv_update/rms/layer_00/q" in tags
    assert [event.step for event in events.Scalars("train/qkv_gradient/variance/layer_02/v")] == [1, 2]
    assert [event.value for event in events.Scalars("train/qkv/nonfinite_rows")] == [0, 0, 0]
