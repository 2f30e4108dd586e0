"""Classification data for the MLP experiments: scikit-learn's bundled sets or an image dataset.

Every dataset is split once by a seeded, stratified shuffle and standardized with the mean and
standard deviation of the training split only, so no test statistic leaks into training.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

# Bundled with scikit-learn, so they load without a download.
SKLEARN_DATASETS = ("digits", "wine")

_DECODE_BATCH_SIZE = 1000

_LOCAL_FOLDER_HELP = (
    "A local dataset is a folder in the imagefolder layout (`<folder>/<class_name>/<image>`), a folder of "
    "parquet or arrow files with an image and a label column, or a folder written by `save_to_disk`."
)


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
            features, 3 classes), both bundled with scikit-learn. Any other name is an
            image-classification dataset that `datasets` loads: a local folder in the imagefolder
            layout (`<folder>/<class_name>/<image>`, labels from the sorted class folder names), a
            folder of parquet or arrow files, a folder written by `save_to_disk`, or a Hub dataset
            id such as `mnist`, which needs the Hub or, with `HF_HUB_OFFLINE=1`, its local cache.
            Its `train` split is used, and each image is flattened to `height * width * channels`
            features in that order.
        test_fraction: share of the samples held out for testing, in (0, 1).
        seed: seed of the shuffle that makes the split.
        max_samples: keep at most this many samples (a stratified subset) before splitting; None keeps all.

    Returns:
        The standardized split.

    Raises:
        ValueError: if `test_fraction` is outside (0, 1), or the dataset cannot be loaded, has no
            `train` split, no image or label column, non-integer or negative labels, or images of
            different shapes.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name in SKLEARN_DATASETS:
        features, labels = _load_sklearn(name)
    else:
        features, labels = _load_images(name)

    from sklearn.model_selection import train_test_split

    num_classes = int(labels.max()) + 1
    try:
        if max_samples is not None and max_samples < len(labels):
            features, _, labels, _ = train_test_split(
                features, labels, train_size=max_samples, random_state=seed, stratify=labels
            )
        train_x, test_x, train_y, test_y = train_test_split(
            features, labels, test_size=test_fraction, random_state=seed, stratify=labels
        )
    except ValueError as error:
        # scikit-learn's message names its own parameters, not the options that set them.
        raise ValueError(
            f"cannot split {len(labels)} samples of {name!r} ({num_classes} classes) with max_samples={max_samples} "
            f"and test_fraction={test_fraction}: a stratified split needs at least 2 samples of every class and "
            f"room for every class on both sides ({error})"
        ) from error

    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    # Features that are constant on the training split (e.g. digits' always-blank corner pixels)
    # have std 0; they are centred and left unscaled instead of divided by zero.
    std[std == 0] = 1.0
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std

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


def _load_images(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load the `train` split of an image-classification dataset and flatten each image to a vector."""
    dataset = _load_train_split(name)
    image_column, label_column = _find_columns(dataset, name)
    return _flatten_images(dataset, image_column, name), _read_labels(dataset, label_column, name)


def _load_train_split(name: str) -> datasets.Dataset:
    path = Path(name).expanduser()
    if path.is_dir():
        splits = _load_local_folder(path, name)
    elif path.exists():
        raise ValueError(f"dataset path {name!r} is a file. {_LOCAL_FOLDER_HELP}")
    elif _is_path_like(name):
        raise ValueError(f"dataset folder {name!r} not found. {_LOCAL_FOLDER_HELP}")
    else:
        splits = _load_from_hub(name)

    if "train" not in splits:
        raise ValueError(
            f"dataset {name!r} has no 'train' split. Found splits: {list(splits)}. Put the training images "
            "in a `train` subfolder, or name the training data files `train-*.parquet` or `train-*.arrow`."
        )
    return splits["train"]


def _is_path_like(name: str) -> bool:
    # A Hub dataset id is `name` or `owner/name` of letters, digits, `-`, `_` and `.`, and it does not
    # start with `.`. So a name that starts with `.`, `~` or `/`, ends with `/` or has two slashes is a path.
    return name.startswith((".", "~")) or os.path.isabs(name) or name.endswith("/") or name.count("/") > 1


def _load_local_folder(path: Path, name: str) -> Mapping[str, datasets.Dataset]:
    import datasets

    try:
        if (path / datasets.config.DATASET_STATE_JSON_FILENAME).exists():
            return {"train": datasets.load_from_disk(str(path))}
        if (path / datasets.config.DATASETDICT_JSON_FILENAME).exists():
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(str(path))
    except Exception as error:  # datasets raises several unrelated types for unreadable folders
        raise ValueError(
            f"could not load dataset folder {name!r} ({type(error).__name__}: {error}). {_LOCAL_FOLDER_HELP}"
        ) from error


def _load_from_hub(name: str) -> Mapping[str, datasets.Dataset]:
    import datasets

    try:
        return datasets.load_dataset(name)
    except Exception as error:  # datasets raises several unrelated types for "not found" and "offline"
        close = difflib.get_close_matches(name, SKLEARN_DATASETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ValueError(
            f"could not load dataset {name!r} from the Hub or its cache with datasets.load_dataset "
            f"({type(error).__name__}: {error}){hint} No local folder {name!r} exists either. "
            f"The bundled datasets {list(SKLEARN_DATASETS)} need no download. Without Hub access, set "
            "HF_HUB_OFFLINE=1 so that datasets reads only its cache instead of retrying the connection."
        ) from error


def _find_columns(dataset: datasets.Dataset, name: str) -> tuple[str, str]:
    image_column = next((c for c in ("image", "img", "pixel_values") if c in dataset.column_names), None)
    label_column = next((c for c in ("label", "labels") if c in dataset.column_names), None)
    if image_column is None or label_column is None:
        raise ValueError(
            f"dataset {name!r} has columns {dataset.column_names}; expected an image column "
            "('image', 'img' or 'pixel_values') and a label column ('label' or 'labels')"
        )
    return image_column, label_column


def _flatten_images(dataset: datasets.Dataset, image_column: str, name: str) -> np.ndarray:
    """Decode the images batch by batch into one float64 `(num_images, height * width * channels)` array."""
    if len(dataset) == 0:
        raise ValueError(f"the 'train' split of dataset {name!r} contains no samples")

    images = dataset.select_columns([image_column])
    if _has_palette_images(images, image_column):
        import datasets

        # A palette ("P") image decodes to palette indices, which are not intensities.
        images = images.cast_column(image_column, datasets.Image(mode="RGB"))
    # The numpy format decodes a whole batch into one array, which is faster than converting
    # each PIL image on its own.
    images = images.with_format("numpy")
    features = None
    image_shape = None
    start = 0
    for batch in images.iter(batch_size=_DECODE_BATCH_SIZE):
        pixels = _stack_images(batch[image_column], name)
        if features is None:
            image_shape = pixels.shape[1:]
            features = np.empty((len(images), math.prod(image_shape)), dtype=np.float64)
        elif pixels.shape[1:] != image_shape:
            raise _image_shape_error(name, image_shape, pixels.shape[1:])
        features[start : start + len(pixels)] = pixels.reshape(len(pixels), -1)
        start += len(pixels)
    return features


def _has_palette_images(dataset: datasets.Dataset, image_column: str) -> bool:
    """Return whether `image_column` is a `datasets.Image` column whose first image is in palette mode."""
    import datasets

    if not isinstance(dataset.features[image_column], datasets.Image):
        return False
    # NOTE: only the first image is checked, so palette images after a grayscale first image
    # would still be read as indices.
    return getattr(dataset[0][image_column], "mode", None) == "P"


def _stack_images(pixels: np.ndarray, name: str) -> np.ndarray:
    # The numpy format returns an object array when the images of a batch differ in shape or dtype.
    if pixels.dtype != object:
        return pixels
    first_shape = np.shape(pixels[0])
    for image in pixels:
        if np.shape(image) != first_shape:
            raise _image_shape_error(name, first_shape, np.shape(image))
    return np.stack([np.asarray(image, dtype=np.float64) for image in pixels])


def _image_shape_error(name: str, shape: tuple[int, ...], other_shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"dataset {name!r} contains images of shape {shape} and of shape {other_shape}. All images must "
        "have one size and one number of channels, so resize or convert them first."
    )


def _read_labels(dataset: datasets.Dataset, label_column: str, name: str) -> np.ndarray:
    labels = np.asarray(dataset[label_column])
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"label column {label_column!r} of dataset {name!r} has dtype {labels.dtype}, but the labels "
            "must be integer class ids, e.g. a datasets.ClassLabel column"
        )
    if labels.min() < 0:
        raise ValueError(
            f"label column {label_column!r} of dataset {name!r} contains the negative label {labels.min()}. "
            "datasets.ClassLabel stores a missing label as -1, so drop those samples first."
        )
    return labels.astype(np.int64)
