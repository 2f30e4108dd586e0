"""Classification data for the MLP experiments: scikit-learn's bundled sets or an image dataset.

Every dataset is split once by a seeded, stratified shuffle and standardized with the mean and
standard deviation of the training split only, so no test statistic leaks into training.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Bundled with scikit-learn, so they load without a download.
SKLEARN_DATASETS = ("digits", "wine")


@dataclass
class ClassificationData:
    """A standardized train/test split of a classification dataset.

    Attributes:
        name: dataset name, e.g. `digits`.
        train_features: `(n_train, num_features)` float32 tensor, standardized.
        train_labels: `(n_train,)` int64 tensor.
        test_features: `(n_test, num_features)` float32 tensor, standardized with the training statistics.
        test_labels: `(n_test,)` int64 tensor.
        num_classes: number of classes.
    """

    name: str
    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        """Number of input features."""
        return self.train_features.shape[1]

    def to(self, dtype: torch.dtype) -> ClassificationData:
        """Return a copy whose features have `dtype` (labels stay int64)."""
        return ClassificationData(
            self.name,
            self.train_features.to(dtype),
            self.train_labels,
            self.test_features.to(dtype),
            self.test_labels,
            self.num_classes,
        )

    def to_datasets(self):
        """Return `(train, test)` as `datasets.Dataset` with `features` and `labels` columns, for the `Trainer`."""
        from datasets import Dataset

        def build(features: torch.Tensor, labels: torch.Tensor) -> Dataset:
            dataset = Dataset.from_dict({"features": features.numpy(), "labels": labels.numpy()})
            return dataset.with_format("torch")

        return build(self.train_features, self.train_labels), build(self.test_features, self.test_labels)


def load_classification_data(
    name: str = "digits", test_fraction: float = 0.2, seed: int = 0, max_samples: int | None = None
) -> ClassificationData:
    """Load, split and standardize a classification dataset.

    Args:
        name: `digits` (1797 8x8 images, 64 features, 10 classes) or `wine` (178 samples, 13
            features, 3 classes), both bundled with scikit-learn; any other name is loaded with
            `datasets.load_dataset(name)` as an image-classification set (e.g. `mnist`), which needs
            the Hub or a local cache.
        test_fraction: share of the samples held out for testing, in (0, 1).
        seed: seed of the shuffle that makes the split.
        max_samples: keep at most this many samples (a stratified subset) before splitting; None keeps all.

    Returns:
        The standardized split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name in SKLEARN_DATASETS:
        features, labels = _load_sklearn(name)
    else:
        features, labels = _load_hub_images(name)

    from sklearn.model_selection import train_test_split

    if max_samples is not None and max_samples < len(labels):
        features, _, labels, _ = train_test_split(
            features, labels, train_size=max_samples, random_state=seed, stratify=labels
        )
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )

    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    # Features that are constant on the training split (e.g. digits' always-blank corner pixels)
    # have std 0; they are centred and left unscaled instead of divided by zero.
    std[std == 0] = 1.0
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std

    num_classes = int(labels.max()) + 1
    logger.info(
        "loaded %s: %d train / %d test samples, %d features, %d classes",
        name, len(train_y), len(test_y), features.shape[1], num_classes,
    )
    return ClassificationData(
        name=name,
        train_features=torch.from_numpy(train_x.astype(np.float32)),
        train_labels=torch.from_numpy(train_y.astype(np.int64)),
        test_features=torch.from_numpy(test_x.astype(np.float32)),
        test_labels=torch.from_numpy(test_y.astype(np.int64)),
        num_classes=num_classes,
    )


def _load_sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets as sklearn_datasets

    loader = {"digits": sklearn_datasets.load_digits, "wine": sklearn_datasets.load_wine}[name]
    bunch = loader()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def _load_hub_images(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load the `train` split of an image-classification dataset and flatten each image to a vector."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as error:  # datasets raises several unrelated types for "not found" and "offline"
        close = difflib.get_close_matches(name, SKLEARN_DATASETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"could not load dataset {name!r} with datasets.load_dataset ({type(error).__name__}: {error}){hint} "
            f"The bundled datasets {list(SKLEARN_DATASETS)} need no download."
        ) from error

    image_column = next((c for c in ("image", "img", "pixel_values") if c in dataset.column_names), None)
    label_column = next((c for c in ("label", "labels") if c in dataset.column_names), None)
    if image_column is None or label_column is None:
        raise ValueError(
            f"dataset {name!r} has columns {dataset.column_names}; expected an image column "
            "('image', 'img' or 'pixel_values') and a label column ('label' or 'labels')"
        )
    features = np.stack([np.asarray(image, dtype=np.float64).reshape(-1) for image in dataset[image_column]])
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    return features, labels
