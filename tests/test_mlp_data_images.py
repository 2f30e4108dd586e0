"""Image datasets loaded through `datasets.load_dataset` from local folders built in `tmp_path`."""

import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_initvar.experiments import mlp_data
from hf_initvar.experiments.mlp_data import ClassificationData, load_classification_data

# Created in this order on purpose: imagefolder numbers the classes by sorted folder name.
CLASS_NAMES = ("zebra", "ant", "moth")
PER_CLASS = 8


@pytest.fixture(autouse=True)
def isolated_datasets_cache(tmp_path, monkeypatch):
    """Keep the arrow files that `load_dataset` prepares out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))


def make_pixels(sample_id: int, shape: tuple[int, ...]) -> np.ndarray:
    """Return random uint8 pixels whose first value is `sample_id`, so every sample can be identified."""
    pixels = np.random.default_rng(sample_id).integers(0, 256, size=shape, dtype=np.uint8)
    pixels.flat[0] = sample_id
    return pixels


def write_image_folder(root: Path, shape: tuple[int, ...] = (8, 8)) -> tuple[np.ndarray, np.ndarray]:
    """Write PNGs in the imagefolder layout and return the pixels and label of every sample id."""
    label_of_class = {name: label for label, name in enumerate(sorted(CLASS_NAMES))}
    pixels, labels = [], []
    for class_index, class_name in enumerate(CLASS_NAMES):
        (root / class_name).mkdir(parents=True)
        for position in range(PER_CLASS):
            sample_id = class_index * PER_CLASS + position
            image = make_pixels(sample_id, shape)
            Image.fromarray(image).save(root / class_name / f"{sample_id:03d}.png")
            pixels.append(image)
            labels.append(label_of_class[class_name])
    return np.stack(pixels), np.array(labels)


def mnist_like(pixels: list[np.ndarray], labels: list[int], num_classes: int = 3) -> datasets.Dataset:
    """Build a dataset with the schema of the Hub's `ylecun/mnist`."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(num_classes)])}
    )
    images = [Image.fromarray(p) for p in pixels]
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def make_mnist_samples(first_id: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.stack([make_pixels(first_id + i, (28, 28)) for i in range(count)])
    labels = np.arange(count) % 3
    return pixels, labels


def sample_ids(data: ClassificationData) -> tuple[np.ndarray, np.ndarray]:
    """Return the sample id of every train and test row.

    Feature 0 contains the ids 0..N-1, and standardization maps it by one increasing affine function
    on both splits, so the rank of a row's feature 0 among all rows is its id.
    """
    first_feature = torch.cat([data.train_features[:, 0], data.test_features[:, 0]]).numpy()
    ids = np.argsort(np.argsort(first_feature))
    num_train = len(data.train_labels)
    return ids[:num_train], ids[num_train:]


def expected_features(pixels: np.ndarray, train_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Standardize the flattened pixels of `ids` with the mean and std of the train samples."""
    flat = pixels.reshape(len(pixels), -1).astype(np.float64)
    mean = flat[train_ids].mean(axis=0)
    std = flat[train_ids].std(axis=0)
    return (flat[ids] - mean) / std


def test_image_folder_train_features_standardized(tmp_path):
    pixels, _ = write_image_folder(tmp_path / "images")

    data = load_classification_data(str(tmp_path / "images"))

    train_ids, _ = sample_ids(data)
    expected = expected_features(pixels, train_ids, train_ids)
    np.testing.assert_allclose(data.train_features.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_image_folder_test_features_use_train_statistics(tmp_path):
    pixels, _ = write_image_folder(tmp_path / "images")

    data = load_classification_data(str(tmp_path / "images"))

    train_ids, test_ids = sample_ids(data)
    expected = expected_features(pixels, train_ids, test_ids)
    np.testing.assert_allclose(data.test_features.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_image_folder_labels_follow_class_folders(tmp_path):
    _, labels = write_image_folder(tmp_path / "images")

    data = load_classification_data(str(tmp_path / "images"))

    train_ids, test_ids = sample_ids(data)
    np.testing.assert_array_equal(data.train_labels.numpy(), labels[train_ids])
    np.testing.assert_array_equal(data.test_labels.numpy(), labels[test_ids])


def test_image_folder_sizes(tmp_path):
    write_image_folder(tmp_path / "images")

    data = load_classification_data(str(tmp_path / "images"), test_fraction=0.25)

    assert data.num_features == 64
    assert data.num_classes == 3
    assert len(data.train_labels) == 18
    assert len(data.test_labels) == 6


def test_image_folder_split_fixed_by_seed(tmp_path):
    write_image_folder(tmp_path / "images")

    first = load_classification_data(str(tmp_path / "images"), seed=1)
    again = load_classification_data(str(tmp_path / "images"), seed=1)
    other = load_classification_data(str(tmp_path / "images"), seed=2)

    assert torch.equal(first.train_features, again.train_features)
    assert torch.equal(first.test_labels, again.test_labels)
    assert not torch.equal(first.train_features, other.train_features)


def test_rgb_images_flatten_channels_last(tmp_path):
    pixels, _ = write_image_folder(tmp_path / "images", shape=(6, 5, 3))

    data = load_classification_data(str(tmp_path / "images"))

    assert data.num_features == 6 * 5 * 3
    train_ids, _ = sample_ids(data)
    expected = expected_features(pixels, train_ids, train_ids)
    np.testing.assert_allclose(data.train_features.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_palette_images_read_as_rgb(tmp_path):
    # Palette index i maps to the color (i, 255 - i, 3i mod 256), so red equals the index.
    palette = np.stack([np.arange(256), 255 - np.arange(256), (3 * np.arange(256)) % 256], axis=1).astype(np.uint8)
    pixels = []
    for class_index, class_name in enumerate(CLASS_NAMES):
        (tmp_path / "images" / class_name).mkdir(parents=True)
        for position in range(PER_CLASS):
            sample_id = class_index * PER_CLASS + position
            indices = make_pixels(sample_id, (6, 5))
            image = Image.fromarray(indices, mode="P")
            image.putpalette(palette.flatten().tolist())
            image.save(tmp_path / "images" / class_name / f"{sample_id:03d}.png")
            pixels.append(palette[indices])

    data = load_classification_data(str(tmp_path / "images"))

    assert data.num_features == 6 * 5 * 3
    train_ids, _ = sample_ids(data)
    expected = expected_features(np.stack(pixels), train_ids, train_ids)
    np.testing.assert_allclose(data.train_features.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_decode_batch_size_keeps_features(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "images")
    whole = load_classification_data(str(tmp_path / "images"))

    monkeypatch.setattr(mlp_data, "_DECODE_BATCH_SIZE", 5)
    batched = load_classification_data(str(tmp_path / "images"))

    assert torch.equal(whole.train_features, batched.train_features)
    assert torch.equal(whole.test_features, batched.test_features)


def test_parquet_folder_uses_train_split(tmp_path):
    train_pixels, train_labels = make_mnist_samples(0, 15)
    test_pixels, test_labels = make_mnist_samples(100, 6)
    folder = tmp_path / "mnist"
    mnist_like(list(train_pixels), train_labels.tolist()).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    mnist_like(list(test_pixels), test_labels.tolist()).to_parquet(str(folder / "test-00000-of-00001.parquet"))

    data = load_classification_data(str(folder))

    assert data.num_features == 28 * 28
    assert data.num_classes == 3
    assert len(data.train_labels) + len(data.test_labels) == 15
    train_ids, test_ids = sample_ids(data)
    np.testing.assert_array_equal(data.test_labels.numpy(), train_labels[test_ids])
    expected = expected_features(train_pixels, train_ids, train_ids)
    np.testing.assert_allclose(data.train_features.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_saved_dataset_dict_folder_loads(tmp_path):
    train_pixels, train_labels = make_mnist_samples(0, 15)
    test_pixels, test_labels = make_mnist_samples(100, 6)
    splits = datasets.DatasetDict(
        {
            "train": mnist_like(list(train_pixels), train_labels.tolist()),
            "test": mnist_like(list(test_pixels), test_labels.tolist()),
        }
    )
    splits.save_to_disk(str(tmp_path / "saved"))

    data = load_classification_data(str(tmp_path / "saved"))

    assert len(data.train_labels) + len(data.test_labels) == 15
    train_ids, _ = sample_ids(data)
    np.testing.assert_array_equal(data.train_labels.numpy(), train_labels[train_ids])


def test_saved_dataset_folder_is_train_split(tmp_path):
    pixels, labels = make_mnist_samples(0, 15)
    mnist_like(list(pixels), labels.tolist()).save_to_disk(str(tmp_path / "saved"))

    data = load_classification_data(str(tmp_path / "saved"))

    train_ids, _ = sample_ids(data)
    expected = expected_features(pixels, train_ids, train_ids)
    np.testing.assert_allclose(data.train_features.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_arrow_files_folder_loads(tmp_path):
    pixels, labels = make_mnist_samples(0, 15)
    mnist_like(list(pixels), labels.tolist()).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "arrow").mkdir()
    for shard in (tmp_path / "saved").glob("*.arrow"):
        shutil.copy(shard, tmp_path / "arrow" / f"train-{shard.name}")

    data = load_classification_data(str(tmp_path / "arrow"))

    train_ids, _ = sample_ids(data)
    np.testing.assert_array_equal(data.train_labels.numpy(), labels[train_ids])


def test_mixed_image_sizes_rejected(tmp_path):
    write_image_folder(tmp_path / "images")
    Image.fromarray(make_pixels(99, (9, 8))).save(tmp_path / "images" / "ant" / "large.png")

    with pytest.raises(ValueError) as error:
        load_classification_data(str(tmp_path / "images"))

    message = str(error.value)
    assert "(8, 8)" in message
    assert "(9, 8)" in message
    assert "All images must have one size" in message


@pytest.mark.parametrize("batch_size", [2, 1000], ids=["across_batches", "within_batch"])
def test_mixed_image_shapes_named_in_order(tmp_path, monkeypatch, batch_size):
    pixels = [make_pixels(i, (8, 8)) for i in range(4)] + [make_pixels(4, (8, 8, 3))]
    mnist_like(pixels, [0, 1, 0, 1, 0]).to_parquet(str(tmp_path / "mixed" / "train.parquet"))
    monkeypatch.setattr(mlp_data, "_DECODE_BATCH_SIZE", batch_size)

    with pytest.raises(ValueError, match=r"images of shape \(8, 8\) and of shape \(8, 8, 3\)"):
        load_classification_data(str(tmp_path / "mixed"))


def test_missing_label_column_rejected(tmp_path):
    images = [Image.fromarray(make_pixels(i, (8, 8))) for i in range(4)]
    unlabeled = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    unlabeled.to_parquet(str(tmp_path / "unlabeled" / "train.parquet"))

    with pytest.raises(ValueError, match=r"has columns \['image'\]; expected an image column"):
        load_classification_data(str(tmp_path / "unlabeled"))


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_missing_folder_rejected(tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    name = "data/images/absent" if relative else str(tmp_path / "absent")

    with pytest.raises(ValueError) as error:
        load_classification_data(name)

    message = str(error.value)
    assert message.startswith(f"dataset folder {name!r} not found")
    assert "Hub" not in message


def test_file_path_rejected(tmp_path):
    pixels, labels = make_mnist_samples(0, 6)
    mnist_like(list(pixels), labels.tolist()).to_parquet(str(tmp_path / "train.parquet"))

    with pytest.raises(ValueError, match="is a file"):
        load_classification_data(str(tmp_path / "train.parquet"))


def test_empty_folder_rejected(tmp_path):
    (tmp_path / "empty").mkdir()

    with pytest.raises(ValueError, match="could not load dataset folder"):
        load_classification_data(str(tmp_path / "empty"))


def test_missing_train_split_lists_splits(tmp_path):
    pixels, labels = make_mnist_samples(0, 6)
    mnist_like(list(pixels), labels.tolist()).to_parquet(str(tmp_path / "splits" / "test-00000.parquet"))
    mnist_like(list(pixels), labels.tolist()).to_parquet(str(tmp_path / "splits" / "validation-00000.parquet"))

    with pytest.raises(ValueError) as error:
        load_classification_data(str(tmp_path / "splits"))

    message = str(error.value)
    assert "has no 'train' split" in message
    assert "'test'" in message
    assert "'validation'" in message


def test_negative_labels_rejected(tmp_path):
    pixels, _ = make_mnist_samples(0, 6)
    mnist_like(list(pixels), [0, 1, 2, -1, 0, 1]).to_parquet(str(tmp_path / "partly_labeled" / "train.parquet"))

    with pytest.raises(ValueError, match="contains the negative label -1"):
        load_classification_data(str(tmp_path / "partly_labeled"))


def test_string_labels_rejected(tmp_path):
    images = [Image.fromarray(make_pixels(i, (8, 8))) for i in range(4)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    named = datasets.Dataset.from_dict({"image": images, "label": ["a", "b", "a", "b"]}, features=features)
    named.to_parquet(str(tmp_path / "named" / "train.parquet"))

    with pytest.raises(ValueError, match="must be integer class ids"):
        load_classification_data(str(tmp_path / "named"))


def test_unreachable_hub_name_rejected():
    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 so that nothing contacts the Hub")

    with pytest.raises(ValueError, match="could not load dataset 'no-such-image-set' from the Hub or its cache"):
        load_classification_data("no-such-image-set")
