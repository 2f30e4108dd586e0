import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_initvar.experiments.metrics import load_metric
from hf_initvar.experiments.mlp_data import load_classification_data
from hf_initvar.init import classify_parameters
from hf_initvar.models.mlp import ReluMLP, ReluMLPConfig


def _sampled_std_tolerance(std: float, count: int) -> float:
    # A std estimated from N draws is off by about std / sqrt(2N); allow 5 of those.
    return 5 * std / math.sqrt(2 * count)


def test_layers_are_linears_with_classifier_last():
    model = ReluMLP(ReluMLPConfig(input_size=13, hidden_sizes=[32, 16], num_labels=3))

    assert isinstance(model.layers, nn.ModuleList)
    assert [type(layer) for layer in model.layers] == [nn.Linear] * 3
    assert [(l.in_features, l.out_features) for l in model.layers] == [(13, 32), (32, 16), (16, 3)]
    roles = {name: info.role for name, info in classify_parameters(model).items()}
    assert roles == {"layers.0.weight": "hidden", "layers.1.weight": "hidden", "layers.2.weight": "classifier"}


def test_width_times_depth_config():
    config = ReluMLPConfig(hidden_size=24, num_hidden_layers=3, num_labels=10)

    assert config.hidden_sizes == [24, 24, 24]
    assert config.layer_sizes == [64, 24, 24, 24, 10]


def test_normal_init_std_matches_every_layer():
    torch.manual_seed(0)
    model = ReluMLP(ReluMLPConfig(hidden_size=128, num_hidden_layers=3, num_labels=10,
                                  init_scheme="normal", init_args={"std": 0.05}))

    for layer in model.layers:
        weight = layer.weight.detach()
        assert abs(weight.std().item() - 0.05) < _sampled_std_tolerance(0.05, weight.numel())


def test_kaiming_normal_std_is_sqrt_two_over_fan_in():
    torch.manual_seed(0)
    model = ReluMLP(ReluMLPConfig(hidden_size=256, num_hidden_layers=2, num_labels=10, init_scheme="kaiming_normal"))

    for layer in model.layers:
        expected = math.sqrt(2.0 / layer.in_features)
        weight = layer.weight.detach()
        assert abs(weight.std().item() - expected) < _sampled_std_tolerance(expected, weight.numel())


def test_biases_start_at_zero():
    model = ReluMLP(ReluMLPConfig(hidden_size=16, num_hidden_layers=2, num_labels=4, bias=True))

    for layer in model.layers:
        assert torch.count_nonzero(layer.bias) == 0


def test_same_seed_gives_same_weights():
    config = ReluMLPConfig(hidden_size=16, num_hidden_layers=2, num_labels=4, init_scheme="normal", init_args={"std": 0.1})
    torch.manual_seed(3)
    first = ReluMLP(config)
    torch.manual_seed(3)
    second = ReluMLP(config)

    for a, b in zip(first.layers, second.layers):
        assert torch.equal(a.weight, b.weight)


def test_save_pretrained_reload_keeps_weights_and_scheme(tmp_path):
    torch.manual_seed(0)
    model = ReluMLP(ReluMLPConfig(hidden_size=16, num_hidden_layers=2, num_labels=4, init_scheme="normal", init_args={"std": 0.3}))
    model.save_pretrained(tmp_path)

    torch.manual_seed(99)  # a fresh draw would differ; loading must not draw
    reloaded = ReluMLP.from_pretrained(tmp_path)

    for a, b in zip(model.layers, reloaded.layers):
        assert torch.equal(a.weight, b.weight)
    assert reloaded.config.init_scheme == "normal"
    assert reloaded.config.init_args == {"std": 0.3}


def test_auto_model_loads_saved_mlp(tmp_path):
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    model = ReluMLP(ReluMLPConfig(hidden_sizes=[12, 8], num_labels=3, activation="tanh", bias=True))
    model.save_pretrained(tmp_path)

    config = AutoConfig.from_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)

    assert isinstance(config, ReluMLPConfig)
    assert isinstance(loaded, ReluMLP)
    assert config.hidden_sizes == [12, 8]
    for original, reloaded in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(original, reloaded)


def test_hidden_states_are_pre_activations():
    torch.manual_seed(0)
    model = ReluMLP(ReluMLPConfig(input_size=8, hidden_sizes=[12, 12], num_labels=3))
    features = torch.randn(5, 8)

    output = model(features, output_hidden_states=True)

    assert len(output.hidden_states) == 3
    expected_first = features @ model.layers[0].weight.T
    torch.testing.assert_close(output.hidden_states[0], expected_first)
    assert (output.hidden_states[0] < 0).any()  # before the ReLU, so negatives remain
    torch.testing.assert_close(output.hidden_states[-1], output.logits)


def test_loss_is_mean_cross_entropy():
    torch.manual_seed(0)
    model = ReluMLP(ReluMLPConfig(input_size=8, hidden_sizes=[12], num_labels=3))
    features, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])

    output = model(features, labels=labels)

    expected = nn.functional.cross_entropy(output.logits, labels)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"activation": "rleu"}, "did you mean 'relu'"),
        ({"init_scheme": "kaiming_normall"}, "did you mean 'kaiming_normal'"),
        ({"init_scheme": "normal", "init_args": {"sdt": 0.1}}, "did you mean 'std'"),
        ({"num_labels": 1}, "num_labels must be at least 2"),
    ],
)
def test_config_rejects_invalid_values(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        ReluMLPConfig(**kwargs)


@pytest.mark.slow
def test_trainer_trains_and_evaluates_with_shipped_metrics(tmp_path):
    from transformers import Trainer, TrainingArguments

    data = load_classification_data("digits", max_samples=400)
    train, test = data.to_datasets()
    torch.manual_seed(0)
    model = ReluMLP(ReluMLPConfig(input_size=64, hidden_sizes=[64, 64], num_labels=10))
    accuracy = load_metric("accuracy")
    cross_entropy = load_metric("cross_entropy")

    def compute_metrics(prediction):
        logits, labels = prediction
        return {
            **accuracy.compute(predictions=np.argmax(logits, axis=1), references=labels),
            **cross_entropy.compute(predictions=logits, references=labels),
        }

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=32, num_train_epochs=4, learning_rate=1e-2,
        report_to=[], use_cpu=True, logging_nan_inf_filter=False, save_strategy="no", disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=test, compute_metrics=compute_metrics)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()

    assert before["eval_accuracy"] < 0.3  # 10 classes: chance is about 0.1
    assert after["eval_accuracy"] > 0.8
    # The shipped metric reproduces the Trainer's own loss on the same logits.
    assert after["eval_cross_entropy"] == pytest.approx(after["eval_loss"], rel=1e-4)
