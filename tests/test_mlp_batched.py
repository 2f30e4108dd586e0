import copy
import math

import pytest
import torch

from hf_initvar.experiments.batched import (
    FusedSGD,
    StackedMLP,
    TrainingSchedule,
    init_statistics,
    stacked_logits,
    train_one_model,
    train_stacked,
)
from hf_initvar.experiments.mlp_data import load_classification_data
from hf_initvar.experiments.sweep import classify_outcome
from hf_initvar.models.mlp import ReluMLP, ReluMLPConfig

# vanishing, stable, stable, exploding: covers every regime the sweep distinguishes.
STDS = [0.003, 0.15, 0.3, 3.0]
SEEDS = [0, 1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_classification_data("digits", max_samples=480).to(torch.float64)


def _models(stds, seeds):
    models = []
    for std in stds:
        for seed in seeds:
            torch.manual_seed(seed)
            config = ReluMLPConfig(hidden_size=32, num_hidden_layers=3, num_labels=10, init_scheme="normal",
                                   init_args={"std": std})
            models.append(ReluMLP(config).double())
    return models


def _outcome(losses, model_logits, data, ratio):
    train_loss = torch.nn.functional.cross_entropy(model_logits, data.train_labels).item()
    return classify_outcome(losses.numpy(), train_loss, train_loss, ratio, math.log(10), 0.5)


@pytest.mark.parametrize(
    "schedule",
    [
        TrainingSchedule("sgd", 0.1, epochs=4, batch_size=32),
        TrainingSchedule("sgd", 0.1, epochs=4, batch_size=32, momentum=0.9),
        TrainingSchedule("adam", 3e-3, epochs=4, batch_size=32),
    ],
    ids=["sgd", "sgd_momentum", "adam"],
)
def test_stacked_training_matches_one_at_a_time(digits, schedule):
    models = _models(STDS, SEEDS)
    seeds = [seed for _ in STDS for seed in SEEDS]
    stacked = StackedMLP(models, dtype=torch.float64)
    ratios = (init_statistics(stacked, digits.train_features[:256], digits.train_labels[:256])["activation_variance"][:, -1]
              / digits.train_features[:256].pow(2).mean()).sqrt()
    stacked_result = train_stacked(stacked, digits.train_features, digits.train_labels, seeds, schedule)
    stacked_final = stacked_logits(stacked, digits.train_features)

    outcomes = []
    for index, model in enumerate(models):
        alone = copy.deepcopy(model)
        losses = train_one_model(alone, digits.train_features, digits.train_labels, seeds[index], schedule)
        with torch.no_grad():
            alone_logits = alone(digits.train_features).logits
        stacked_losses = stacked_result.losses[:, index]
        alone_outcome = _outcome(losses, alone_logits, digits, float(ratios[index]))
        stacked_outcome = _outcome(stacked_losses, stacked_final[index], digits, float(ratios[index]))
        outcomes.append(alone_outcome)

        # Every run lands in the same regime; chaotic runs may drift apart in value, stable ones may not.
        assert stacked_outcome == alone_outcome, f"std {STDS[index // 2]} seed {seeds[index]}"
        if alone_outcome == "stable":
            # float64 rounding differences of a few 1e-16 per op, amplified over 40 steps of a
            # well-conditioned run, stay far below 1e-9.
            torch.testing.assert_close(stacked_losses, losses, rtol=1e-9, atol=1e-10)
            for layer_index, layer in enumerate(alone.layers):
                torch.testing.assert_close(
                    stacked.layer_weight(layer_index, index), layer.weight.detach(), rtol=1e-9, atol=1e-10
                )

    assert "stable" in outcomes
    assert "vanishing" in outcomes
    assert set(outcomes) & {"exploding", "diverged"}


def test_init_statistics_match_single_model_forward():
    torch.manual_seed(0)
    models = _models([0.05, 0.4], [0])
    features = torch.randn(64, 64, dtype=torch.float64)
    labels = torch.randint(0, 10, (64,))

    statistics = init_statistics(StackedMLP(models, dtype=torch.float64), features, labels)

    for index, model in enumerate(models):
        output = model(features, labels=labels, output_hidden_states=True)
        output.loss.backward()
        for layer, hidden in enumerate(output.hidden_states):
            expected = hidden.detach().var(unbiased=False).item()
            assert statistics["activation_variance"][index, layer].item() == pytest.approx(expected, rel=1e-10)
            gradient = model.layers[layer].weight.grad.var(unbiased=False).item()
            assert statistics["gradient_variance"][index, layer].item() == pytest.approx(gradient, rel=1e-10)


def test_tiny_std_variance_is_not_flushed_to_zero():
    # At std 1e-4 the logits' variance is far below float32's smallest normal number.
    models = _models([1e-4], [0])
    features = torch.randn(32, 64)

    statistics = init_statistics(StackedMLP([m.float() for m in models]), features, torch.zeros(32, dtype=torch.long))

    assert (statistics["activation_variance"] > 0).all()
    assert statistics["activation_variance"][0, -1] < 1e-20


def test_stacking_rejects_mixed_architectures():
    small = ReluMLP(ReluMLPConfig(hidden_size=8, num_hidden_layers=2, num_labels=3))
    large = ReluMLP(ReluMLPConfig(hidden_size=16, num_hidden_layers=2, num_labels=3))

    with pytest.raises(ValueError, match="one architecture"):
        StackedMLP([small, large])


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="Did you mean 'adam'"):
        TrainingSchedule("adma")


def test_copy_into_restores_a_trained_model(digits):
    models = _models([0.2], [0, 1])
    stacked = StackedMLP(models, dtype=torch.float64)
    train_stacked(stacked, digits.train_features, digits.train_labels, [0, 1], TrainingSchedule("sgd", 0.05, epochs=1))

    restored = stacked.copy_into(1, copy.deepcopy(models[1]))

    with torch.no_grad():
        torch.testing.assert_close(restored(digits.test_features).logits, stacked_logits(stacked, digits.test_features)[1])


def _small_models(activation, bias, count=3):
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        config = ReluMLPConfig(input_size=12, hidden_sizes=[16, 8], num_labels=5, activation=activation, bias=bias,
                               init_scheme="normal", init_args={"std": 0.4})
        model = ReluMLP(config).double()
        if bias:
            # Zero biases would hide a wrong bias gradient behind a zero update; give them values.
            for layer in model.layers:
                torch.nn.init.normal_(layer.bias, std=0.3)
        models.append(model)
    return models


def _batch(count, generator_seed=0):
    generator = torch.Generator().manual_seed(generator_seed)
    features = torch.randn(count, 20, 12, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (count, 20), generator=generator)
    return features, labels


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_train_step_gradients_match_autograd(activation, bias):
    models = _small_models(activation, bias)
    features, labels = _batch(len(models))
    reference = StackedMLP(models, dtype=torch.float64)
    reference_losses = reference.per_model_loss(features, labels)
    reference_losses.sum().backward()

    stacked = StackedMLP(models, dtype=torch.float64)
    losses = stacked.train_step(features, labels)

    torch.testing.assert_close(losses, reference_losses.detach(), rtol=1e-13, atol=0)
    for layer, (weight, expected) in enumerate(zip(stacked.weights, reference.weights)):
        torch.testing.assert_close(weight.grad, expected.grad, rtol=1e-12, atol=1e-15, msg=f"weight {layer}")
    if bias:
        for layer, (bias_parameter, expected) in enumerate(zip(stacked.biases, reference.biases)):
            torch.testing.assert_close(bias_parameter.grad, expected.grad, rtol=1e-12, atol=1e-15, msg=f"bias {layer}")


def test_train_step_overwrites_stored_gradients():
    models = _small_models("relu", bias=True)
    stacked = StackedMLP(models, dtype=torch.float64)
    first_features, first_labels = _batch(len(models), generator_seed=0)
    second_features, second_labels = _batch(len(models), generator_seed=1)
    stacked.train_step(first_features, first_labels)
    stacked.train_step(second_features, second_labels)
    second_gradient = stacked.weights[1].grad.clone()

    fresh = StackedMLP(models, dtype=torch.float64)
    fresh.train_step(second_features, second_labels)

    # The second step's gradient replaces the first one instead of adding to it.
    torch.testing.assert_close(second_gradient, fresh.weights[1].grad, rtol=0, atol=0)


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain", "momentum"])
def test_fused_sgd_matches_torch_sgd(momentum):
    models = _small_models("gelu", bias=True)
    fused = StackedMLP(models, dtype=torch.float64)
    reference = StackedMLP(models, dtype=torch.float64)
    sgd = FusedSGD(learning_rate=0.2, momentum=momentum)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.2, momentum=momentum)

    for step in range(4):
        features, labels = _batch(len(models), generator_seed=step)
        fused.train_step(features, labels, sgd)
        optimizer.zero_grad()
        reference.per_model_loss(features, labels).sum().backward()
        optimizer.step()

    for layer, (weight, expected) in enumerate(zip(fused.weights, reference.weights)):
        torch.testing.assert_close(weight.detach(), expected.detach(), rtol=1e-12, atol=1e-14, msg=f"weight {layer}")
    for layer, (bias_parameter, expected) in enumerate(zip(fused.biases, reference.biases)):
        torch.testing.assert_close(bias_parameter.detach(), expected.detach(), rtol=1e-12, atol=1e-14, msg=f"bias {layer}")
    assert all(weight.grad is None for weight in fused.weights)
