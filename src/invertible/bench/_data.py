"""Data sets for `train`: scikit-learn's digits (shipped with scikit-learn, no
download) and CIFAR-10 from the standard python-pickle batches in a local folder."""

import dataclasses
import pathlib
import pickle

import numpy as np

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images `(N, channels, height, width)` float32, standardised with the training
    set's mean and standard deviation per channel; labels int32."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


def _standardise(name, x_train, y_train, x_test, y_test, classes) -> Dataset:
    axes = (0, 2, 3)
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True) + 1e-6
    f32 = lambda x: ((x - mean) / std).astype(np.float32)
    i32 = lambda y: np.asarray(y, np.int32)
    return Dataset(name, f32(x_train), i32(y_train), f32(x_test), i32(y_test), classes)


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 1797 8x8 grey-scale digits of scikit-learn, split stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = images.reshape(-1, 1, 8, 8)
    split = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    x_train, x_test, y_train, y_test = split
    return _standardise("digits", x_train, y_train, x_test, y_test, classes=10)


def _cifar10_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as file:
        batch = pickle.load(file, encoding="bytes")
    # Each row: 1024 red, then 1024 green, then 1024 blue bytes, row-major 32x32.
    images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
    return images.astype(np.float32) / 255, np.asarray(batch[b"labels"])


def cifar10(data_dir) -> Dataset:
    """CIFAR-10 from `data_dir` holding the python version's `data_batch_1` to
    `data_batch_5` and `test_batch` (as in `cifar-10-python.tar.gz`'s
    `cifar-10-batches-py/`)."""
    data_dir = pathlib.Path(data_dir)
    missing = [
        name
        for name in (*CIFAR10_TRAIN, CIFAR10_TEST)
        if not (data_dir / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10: {data_dir} lacks {', '.join(missing)}; give the folder "
            "cifar-10-batches-py of the python version of CIFAR-10."
        )
    train = [_cifar10_batch(data_dir / name) for name in CIFAR10_TRAIN]
    x_test, y_test = _cifar10_batch(data_dir / CIFAR10_TEST)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _standardise("cifar10", x_train, y_train, x_test, y_test, classes=10)


def batches(size: int, batch_size: int, rng: np.random.Generator):
    """Index arrays of a random permutation of `range(size)`, full batches only."""
    order = rng.permutation(size)
    for start in range(0, size - batch_size + 1, batch_size):
        yield order[start : start + batch_size]
