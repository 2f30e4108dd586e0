"""VarianceCallback on a ReluMLP: one `weight` row per linear layer, through the real Trainer."""

import copy

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_initvar import VarianceCallback
from hf_initvar.experiments.mlp_data import load_classification_data
from hf_initvar.models.mlp import ReluMLP, ReluMLPConfig
from hf_initvar.reporting.report import write_report
from hf_initvar.reporting.targets import intended_variances
from hf_initvar.tracking.history import load_history
from hf_initvar.tracking.layouts import detect_layout


@pytest.fixture(scope="module")
def digits():
    return load_classification_data("digits", max_samples=300)


def _mlp(init_scheme="kaiming_normal"):
    torch.manual_seed(0)
    config = ReluMLPConfig(input_size=64, hidden_sizes=[32, 24], num_labels=10, bias=True, init_scheme=init_scheme)
    return ReluMLP(config)


def _train(model, data, output_dir, callback, report_to="none", max_steps=4):
    train, _ = data.to_datasets()
    arguments = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=16, learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=report_to, use_cpu=True,
        disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=train, callbacks=[callback])
    trainer.train()
    return trainer


def test_layout_views_are_the_layer_weights():
    model = _mlp()
    layout = detect_layout(model)
    assert layout.name == "relu_mlp"
    assert layout.projections == ("weight",)
    assert layout.n_layer == 3
    for view, linear in zip(layout.views(), model.layers):
        assert view.projection == "weight"
        # (heads, in_features, head_dim): one head spanning every output feature.
        assert view.weight.shape == (1, linear.in_features, linear.out_features)
        torch.testing.assert_close(view.weight[0], linear.weight.T, rtol=0, atol=0)
        assert view.weight.untyped_storage().data_ptr() == linear.weight.untyped_storage().data_ptr()


def test_history_matches_each_layer_weight(digits, tmp_path):
    model = _mlp()
    initial = copy.deepcopy(model)
    _train(model, digits, tmp_path, VarianceCallback(figures=False))
    frame, meta = load_history(tmp_path)

    assert meta["layout"] == "relu_mlp"
    assert meta["projections"] == ["weight"]
    assert sorted(frame["step"].unique()) == [0, 1, 2, 3, 4]
    assert len(frame) == 5 * 3
    assert set(frame["projection"]) == {"weight"}
    for step, snapshot in ((0, initial), (4, model)):
        rows = frame[frame["step"] == step].set_index("layer")
        for layer, linear in enumerate(snapshot.layers):
            weight = linear.weight.detach().double()
            assert rows.loc[layer, "variance"] == pytest.approx(weight.var(unbiased=False).item(), rel=1e-9)
            assert rows.loc[layer, "mean"] == pytest.approx(weight.mean().item(), rel=1e-9, abs=1e-12)
            assert rows.loc[layer, "count"] == weight.numel()


def test_variance_ratio_uses_kaiming_target(digits, tmp_path):
    model = _mlp()
    _train(model, digits, tmp_path, VarianceCallback(figures=False), max_steps=1)
    frame, _ = load_history(tmp_path)
    start = frame[frame["step"] == 0].set_index("layer")
    for layer, linear in enumerate(model.layers):
        # kaiming_normal (fan_in, ReLU gain) intends variance 2 / fan_in for every layer.
        intended = 2.0 / linear.in_features
        assert start.loc[layer, "variance_ratio"] == pytest.approx(start.loc[layer, "variance"] / intended, rel=1e-9)
        # A draw of n normal values has a relative variance error of about sqrt(2 / n).
        tolerance = 5 * np.sqrt(2.0 / linear.weight.numel())
        assert abs(start.loc[layer, "variance_ratio"] - 1) < tolerance


def test_tensorboard_gets_mlp_keys(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(_mlp(), digits, tmp_path, VarianceCallback(figures=False), report_to="tensorboard")
    frame, _ = load_history(tmp_path)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]

    for layer in range(3):
        for statistic in ("variance", "std", "mean", "variance_ratio"):
            assert f"train/mlp/{statistic}/layer_{layer:02d}/weight" in tags
    assert not [tag for tag in tags if "/qkv/" in tag]
    scalars = events.Scalars("train/mlp/variance/layer_01/weight")
    assert [event.step for event in scalars] == [0, 1, 2, 3, 4]
    expected = frame[frame["layer"] == 1].sort_values("step")["variance"]
    np.testing.assert_allclose([event.value for event in scalars], expected, rtol=1e-6)


def test_figures_and_report_for_mlp_history(digits, tmp_path):
    model = _mlp()
    trainer = _train(model, digits, tmp_path, VarianceCallback(histogram_steps=[0, 8], histogram_layers=[0, -1]), max_steps=8)
    trainer.save_model(str(tmp_path))

    history = tmp_path / "variance"
    assert (history / "variance_heatmap.png").stat().st_size > 10_000
    assert (history / "variance_curves.png").stat().st_size > 10_000
    targets = intended_variances(load_history(tmp_path)[1], tmp_path)
    assert targets == pytest.approx({(0, "weight"): 2 / 64, (1, "weight"): 2 / 32, (2, "weight"): 2 / 24})

    report = write_report(tmp_path)
    text = report.markdown.read_text()
    assert "| 0 | weight |" in text
    assert report.figures["histograms"].stat().st_size > 10_000
    assert set(report.analysis.projections()["projection"]) == {"weight"}


def test_report_targets_without_saved_config(digits, tmp_path):
    _train(_mlp(), digits, tmp_path, VarianceCallback(figures=False), max_steps=6)
    assert not (tmp_path / "config.json").exists()

    _, meta = load_history(tmp_path)
    targets = intended_variances(meta, tmp_path)
    report = write_report(tmp_path)
    text = report.markdown.read_text()

    assert meta["model_config"]["hidden_sizes"] == [32, 24]
    assert targets == pytest.approx({(0, "weight"): 2 / 64, (1, "weight"): 2 / 32, (2, "weight"): 2 / 24})
    assert text.startswith("# Layer weight variance report")
    assert "3 linear layers" in text
    assert "pooled" not in text


def test_compare_runs_rejects_mixed_projections(digits, tiny_gpt2, tmp_path):
    from datasets import Dataset

    from hf_initvar.reporting.report import compare_runs

    _train(_mlp(), digits, tmp_path / "mlp", VarianceCallback(figures=False), max_steps=2)
    ids = torch.randint(0, 50, (16, 8), generator=torch.Generator().manual_seed(0)).tolist()
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "gpt2"), max_steps=2, per_device_train_batch_size=4, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True,
    )
    Trainer(model=tiny_gpt2, args=arguments, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
            callbacks=[VarianceCallback(figures=False)]).train()

    with pytest.raises(ValueError, match="compare-runs needs runs that track the same projections"):
        compare_runs([tmp_path / "mlp", tmp_path / "gpt2"], tmp_path / "compared")
    assert not (tmp_path / "compared").exists()
