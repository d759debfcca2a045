import dataclasses
import json
import math

import pytest

from engine.config import Init, OptimizerMode, Pooling, Provider, TransferConfig
from engine.errors import ConfigError
from engine.presets import PRESETS

SEED_STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")


def test_defaults_are_the_seeds_style_transfer_defaults_with_its_starry_night_weights():
    config = TransferConfig()
    assert config.convnet == "vgg16"
    assert config.content_layer == "block4_conv2"
    assert config.style_layers == SEED_STYLE_LAYERS
    starry = PRESETS["starry_tubingen"]
    assert (config.content_weight, config.style_weights, config.tv_weight) == (
        starry["content_weight"], starry["style_weights"], starry["tv_weight"]) == (100, (1000, 100, 12, 1, 1), 200)
    assert config.iterations == 50
    assert config.maxfun == 20
    assert config.seed == 0
    assert config.size is None
    assert config.pooling is Pooling.MAX
    assert config.save_every == 1


def test_string_choices_are_str_enums():
    assert Pooling("avg") is Pooling.AVG and Pooling.AVG == "avg"
    assert [p.value for p in Provider] == ["auto", "cuda", "cpu"]
    assert [i.value for i in Init] == ["noise", "content", "style"]
    assert [m.value for m in OptimizerMode] == ["seed", "continuous"]


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TransferConfig().iterations = 3


def test_lists_become_tuples_and_numbers_are_normalised():
    config = TransferConfig(style_layers=["block1_conv1", "block2_conv1"], style_weights=[1, 2],
                            content_weight=5, tv_weight=0, iterations=3.0, size=512.0)
    assert config.style_layers == ("block1_conv1", "block2_conv1")
    assert config.style_weights == (1.0, 2.0)
    assert all(type(w) is float for w in config.style_weights)
    assert type(config.content_weight) is float and type(config.tv_weight) is float
    assert type(config.iterations) is int and type(config.size) is int


def test_a_single_style_layer_may_be_given_as_a_string():
    config = TransferConfig(style_layers="block3_conv1", style_weights=1)
    assert config.style_layers == ("block3_conv1",)
    assert config.style_weights == (1.0,)


def test_pooling_string_becomes_the_enum():
    assert TransferConfig(pooling="avg").pooling is Pooling.AVG


@pytest.mark.parametrize("changes, words", [
    (dict(convnet="resnet50"), ["resnet50", "vgg16", "vgg19"]),
    (dict(content_layer="block9_conv1"), ["content_layer", "block9_conv1", "block1_conv1", "block5_conv3"]),
    (dict(content_layer="block5_conv4"), ["block5_conv4", "vgg16"]),  # exists in VGG19 only
    (dict(style_layers=("block1_conv1", "nope"), style_weights=(1, 1)), ["style_layers", "nope", "block4_conv3"]),
    (dict(style_layers=(), style_weights=()), ["style_layers", "empty"]),
    (dict(style_layers=("block1_conv1", "block1_conv1"), style_weights=(1, 1)), ["block1_conv1", "twice"]),
    (dict(style_weights=(1, 2, 3)), ["3 style_weights", "5 style_layers"]),
    (dict(style_weights=(1, 2, 3, 4, -5)), ["style_weights", "-5"]),
    (dict(style_weights=(1, 2, 3, 4, math.nan)), ["style_weights", "nan"]),
    (dict(style_weights=(1, 2, 3, 4, "x")), ["style_weights", "number"]),
    (dict(content_weight=-1), ["content_weight", "-1"]),
    (dict(content_weight=math.inf), ["content_weight", "inf"]),
    (dict(tv_weight=math.nan), ["tv_weight", "nan"]),
    (dict(tv_weight=-0.5), ["tv_weight", "-0.5"]),
    (dict(iterations=0), ["iterations", "at least 1"]),
    (dict(iterations=2.5), ["iterations", "whole number"]),
    (dict(maxfun=0), ["maxfun", "at least 1"]),
    (dict(size=15), ["size", "at least 16"]),
    (dict(save_every=-1), ["save_every", "at least 0"]),
    (dict(seed=-1), ["seed"]),
    (dict(pooling="median"), ["pooling", "median", "max", "avg"]),
])
def test_invalid_settings_raise_one_line_config_error(changes, words):
    with pytest.raises(ConfigError) as error:
        TransferConfig(**changes)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_valid_edge_values_are_accepted():
    config = TransferConfig(size=16, save_every=0, seed=None, content_weight=0, tv_weight=0, iterations=1, maxfun=1)
    assert (config.size, config.save_every, config.seed) == (16, 0, None)


def test_vgg19_layers_are_valid_for_vgg19():
    config = TransferConfig(convnet="vgg19", content_layer="block5_conv4", style_layers=["block3_conv4"],
                            style_weights=[1])
    assert config.content_layer == "block5_conv4"


def test_replace_changes_fields_and_validates_again():
    config = TransferConfig().replace(iterations=7, pooling="avg")
    assert config.iterations == 7 and config.pooling is Pooling.AVG
    with pytest.raises(ConfigError):
        config.replace(maxfun=0)


def test_to_dict_is_json_ready_and_rebuilds_the_config():
    config = TransferConfig(pooling=Pooling.AVG, size=256)
    data = config.to_dict()
    assert data["pooling"] == "avg"
    assert data["style_layers"] == list(SEED_STYLE_LAYERS)
    assert data["style_weights"] == [1000.0, 100.0, 12.0, 1.0, 1.0]
    assert json.loads(json.dumps(data)) == data
    assert TransferConfig(**data) == config


@pytest.mark.parametrize("content_layer, style_layers, expected", [
    ("block4_conv2", SEED_STYLE_LAYERS, 16),          # block5 sits behind four 2x2 poolings
    ("block4_conv2", ("block1_conv1", "block2_conv1"), 8),
    ("block1_conv2", ("block1_conv1",), 1),
    ("block2_conv1", ("block1_conv1", "block3_conv3"), 4),
])
def test_min_image_size_and_size_multiple_follow_the_deepest_layer(content_layer, style_layers, expected):
    config = TransferConfig(content_layer=content_layer, style_layers=style_layers,
                            style_weights=[1] * len(style_layers))
    assert config.min_image_size() == expected
    assert config.size_multiple() == expected
