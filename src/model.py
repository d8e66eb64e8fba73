"""The tutorial's MNIST CNN, built with the Functional API. Knows nothing of Hydra or MLflow."""

from __future__ import annotations

import keras
from keras import layers

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def build_cnn(
    conv_dropout: float,
    dense_dropout: float,
    name: str = "cnn",
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> keras.Model:
    """Two conv blocks (32 then 64 filters, 3x3 same, relu, 2x2 max-pool, dropout), then a
    512-unit relu layer with dropout and a softmax over the classes.

    Args:
        conv_dropout: Dropout rate after each of the two conv blocks.
        dense_dropout: Dropout rate after the 512-unit dense layer.
        name: The Keras model's name.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    net = inputs
    for block, filters in enumerate((32, 64), start=1):
        net = layers.Conv2D(filters, (3, 3), padding="same", name=f"conv{block}")(net)
        net = layers.Activation("relu", name=f"conv{block}_relu")(net)
        net = layers.MaxPooling2D(pool_size=(2, 2), name=f"pool{block}")(net)
        net = layers.Dropout(conv_dropout, name=f"conv{block}_dropout")(net)
    net = layers.Flatten(name="flatten")(net)
    net = layers.Dense(512, name="dense")(net)
    net = layers.Activation("relu", name="dense_relu")(net)
    net = layers.Dropout(dense_dropout, name="dense_dropout")(net)
    net = layers.Dense(num_classes, name="logits")(net)
    # The softmax is computed in float32 whatever the compute precision of the layers above.
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(net)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)
