"""The plain program in Keras 3 form: the tutorial's CNN, compile and fit, with nothing of the
project, on whichever backend ``KERAS_BACKEND`` names (TensorFlow, JAX). The reference of the
backend comparisons, where the TensorFlow-only program in ``../shared/anchors/`` cannot run.

    KERAS_BACKEND=jax python benchmarks/plain_keras.py --data-dir DIR [--epochs 1] [--limit N]

Prints one JSON line as the TensorFlow reference does (fit seconds, samples per second, test
loss and accuracy), plus the backend and the device it trained on.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import keras
import numpy as np


def read_idx(path: Path) -> np.ndarray:
    """An IDX file's array: images (n, 28, 28) or labels (n,), as uint8."""
    data = gzip.decompress(path.read_bytes())
    dimensions = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def cnn() -> keras.Model:
    layers = keras.layers
    model = keras.Sequential([keras.Input((28, 28, 1))])
    for filters in (32, 64):
        model.add(layers.Conv2D(filters, (3, 3), padding="same", activation="relu"))
        model.add(layers.MaxPooling2D((2, 2)))
        model.add(layers.Dropout(0.25))
    model.add(layers.Flatten())
    model.add(layers.Dense(512, activation="relu"))
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(10, activation="softmax"))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="the first N training images only")
    args = parser.parse_args()

    def images(name: str) -> np.ndarray:
        return read_idx(args.data_dir / name)[..., None].astype("float32") / 255

    x_train = images("train-images-idx3-ubyte.gz")
    y_train = read_idx(args.data_dir / "train-labels-idx1-ubyte.gz")
    x_test = images("t10k-images-idx3-ubyte.gz")
    y_test = read_idx(args.data_dir / "t10k-labels-idx1-ubyte.gz")
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]

    model = cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    fit_seconds = time.perf_counter() - started
    test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    result = {
        "fit_s": round(fit_seconds, 3),
        "samples_per_s": round(len(x_train) * args.epochs / fit_seconds, 1),
        "test_loss": round(float(test_loss), 5),
        "test_accuracy": round(float(test_accuracy), 5),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "backend": keras.backend.backend(),
        "device": str(keras.distribution.list_devices()[0]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
