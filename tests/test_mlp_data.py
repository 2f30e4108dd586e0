import numpy as np
import pytest
import torch

from hf_initvar.experiments.metrics import load_metric
from hf_initvar.experiments.mlp_data import load_classification_data


def test_digits_split_sizes_and_classes():
    data = load_classification_data("digits")

    assert data.num_features == 64
    assert data.num_classes == 10
    assert len(data.train_labels) + len(data.test_labels) == 1797
    assert len(data.test_labels) == 360  # ceil(0.2 * 1797)
    assert set(data.test_labels.tolist()) == set(range(10))  # stratified


def test_wine_has_three_classes_and_thirteen_features():
    data = load_classification_data("wine")

    assert (data.num_features, data.num_classes) == (13, 3)
    assert len(data.train_labels) + len(data.test_labels) == 178


def test_standardized_with_training_statistics_only():
    data = load_classification_data("wine")
    train = data.train_features.double()

    torch.testing.assert_close(train.mean(dim=0), torch.zeros(13, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(train.std(dim=0, unbiased=False), torch.ones(13, dtype=torch.float64), atol=1e-5, rtol=0)
    # The test split is scaled with the training statistics, so its mean is not forced to 0.
    assert data.test_features.double().mean(dim=0).abs().max() > 1e-3


def test_constant_features_stay_finite():
    data = load_classification_data("digits")

    assert torch.isfinite(data.train_features).all()
    assert torch.isfinite(data.test_features).all()


def test_split_is_fixed_by_seed():
    first = load_classification_data("digits", seed=1)
    again = load_classification_data("digits", seed=1)
    other = load_classification_data("digits", seed=2)

    assert torch.equal(first.train_features, again.train_features)
    assert not torch.equal(first.train_features, other.train_features)


def test_unknown_dataset_error_names_bundled_ones():
    with pytest.raises(ValueError, match="did you mean 'digits'"):
        load_classification_data("digitz")


def test_invalid_test_fraction_is_rejected():
    with pytest.raises(ValueError, match="test_fraction must be in"):
        load_classification_data("digits", test_fraction=1.5)


def test_shipped_accuracy_metric_counts_matches():
    accuracy = load_metric("accuracy")

    result = accuracy.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])

    assert result == {"accuracy": 0.75}


def test_shipped_cross_entropy_matches_torch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (50,), generator=generator)

    result = load_metric("cross_entropy").compute(predictions=logits.numpy(), references=labels.numpy())

    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert result["cross_entropy"] == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_of_non_finite_logits_is_nan():
    logits = np.zeros((3, 4))
    logits[1, 2] = np.nan

    result = load_metric("cross_entropy").compute(predictions=logits, references=[0, 1, 2])

    assert np.isnan(result["cross_entropy"])


def test_unknown_metric_suggests_nearest():
    with pytest.raises(ValueError, match="did you mean 'accuracy'"):
        load_metric("acuracy")


@pytest.mark.parametrize("max_samples", [5, 15])
def test_too_few_samples_names_options(max_samples):
    with pytest.raises(ValueError, match=f"cannot split .* with max_samples={max_samples} and test_fraction=0.2"):
        load_classification_data("digits", max_samples=max_samples)
