"""The CNN matches the tutorial's layer structure and takes its dropout rates from the config."""

from __future__ import annotations

import keras
import pytest
from hydra.utils import instantiate

from src.model import build_cnn
from tests.conftest import compose_config


def _structure(model: keras.Model) -> list[tuple]:
    rows: list[tuple] = []
    for layer in model.layers:
        config = layer.get_config()
        if isinstance(layer, keras.layers.Conv2D):
            rows.append(
                ("Conv2D", config["filters"], tuple(config["kernel_size"]), config["padding"])
            )
        elif isinstance(layer, keras.layers.Activation):
            rows.append(("Activation", config["activation"]))
        elif isinstance(layer, keras.layers.MaxPooling2D):
            rows.append(("MaxPooling2D", tuple(config["pool_size"])))
        elif isinstance(layer, keras.layers.Dropout):
            rows.append(("Dropout", config["rate"]))
        elif isinstance(layer, keras.layers.Dense):
            rows.append(("Dense", config["units"]))
        else:
            rows.append((type(layer).__name__,))
    return rows


def test_layer_structure_and_parameter_count_match_the_tutorial():
    model = build_cnn(conv_dropout=0.25, dense_dropout=0.5)
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    assert _structure(model) == [
        ("InputLayer",),
        ("Conv2D", 32, (3, 3), "same"),
        ("Activation", "relu"),
        ("MaxPooling2D", (2, 2)),
        ("Dropout", 0.25),
        ("Conv2D", 64, (3, 3), "same"),
        ("Activation", "relu"),
        ("MaxPooling2D", (2, 2)),
        ("Dropout", 0.25),
        ("Flatten",),
        ("Dense", 512),
        ("Activation", "relu"),
        ("Dropout", 0.5),
        ("Dense", 10),
        ("Activation", "softmax"),
    ]
    assert model.count_params() == 1_630_090


@pytest.mark.parametrize(
    ("overrides", "rates"),
    [
        ([], [0.25, 0.25, 0.5]),
        (["model.conv_dropout=0.1", "model.dense_dropout=0.3"], [0.1, 0.1, 0.3]),
        (["model=no_dropout"], [0.0, 0.0, 0.0]),
    ],
)
def test_dropout_rates_come_from_the_config(overrides, rates):
    model = instantiate(compose_config(overrides).model)
    assert [
        layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)
    ] == rates
    assert model.count_params() == 1_630_090
