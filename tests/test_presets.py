import pytest

from engine.config import TransferConfig
from engine.errors import ConfigError
from engine.presets import PRESETS, preset_config
from engine.run.engine import scale_plan

VGG16_STYLE = ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"]

# Copied from the seed notebook's "Generate pictures" cells and Part F.
SEED_PARAMS = {
    "wave_chicago": dict(convnet="vgg16", content_weight=500, style_weights=(20, 20, 30, 10, 10),
                         tv_weight=200, content_layer="block4_conv2", style_layers=VGG16_STYLE, iterations=50),
    "starry_tubingen": dict(convnet="vgg16", content_weight=100, style_weights=(1000, 100, 12, 1, 1),
                            tv_weight=200, content_layer="block4_conv2", style_layers=VGG16_STYLE, iterations=50),
    "portrait_of_pavlos": dict(convnet="vgg16", content_weight=1000, style_weights=(500, 100, 12, 1, 1),
                               tv_weight=200, content_layer="block4_conv2", style_layers=VGG16_STYLE,
                               iterations=50),
    "pavlos_grandma_woman_with_hat": dict(
        convnet="vgg19", content_weight=1000, style_weights=(500, 100, 12, 1, 1), tv_weight=200,
        content_layer="block4_conv2",
        style_layers=["block1_conv2", "block2_conv2", "block3_conv4", "block4_conv4", "block5_conv4"],
        iterations=50),
}


def test_the_four_seed_parameter_sets_are_there_by_name():
    assert set(PRESETS) == set(SEED_PARAMS)


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_preset_config_has_the_seeds_values(name):
    config = preset_config(name)
    expected = SEED_PARAMS[name]
    assert config.convnet == expected["convnet"]
    assert config.content_weight == expected["content_weight"]
    assert config.style_weights == tuple(float(w) for w in expected["style_weights"])
    assert config.tv_weight == expected["tv_weight"]
    assert config.content_layer == expected["content_layer"]
    assert config.style_layers == tuple(expected["style_layers"])
    assert config.iterations == expected["iterations"]


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_presets_pin_the_seeds_loop_where_the_defaults_take_the_fast_path(name):
    config = preset_config(name)
    assert (config.optimizer_mode.value, config.init, config.tol) == ("seed", "noise", None)   # every iteration
    assert scale_plan(config, (640, 480)) == ([640], (50,))   # the seed's one size, the content's own
    defaults = TransferConfig()
    assert (defaults.optimizer_mode.value, defaults.init) == ("continuous", "content")
    assert defaults.tol > 0 and len(scale_plan(defaults, (640, 480))[0]) == 2


def test_fields_a_preset_does_not_set_keep_the_config_defaults():
    config = preset_config("starry_tubingen")
    assert config.maxfun == TransferConfig().maxfun
    assert config.seed == TransferConfig().seed


def test_overrides_replace_preset_values():
    config = preset_config("wave_chicago", iterations=3, tv_weight=1.5, size=64)
    assert (config.iterations, config.tv_weight, config.size) == (3, 1.5, 64)
    assert config.content_weight == 500


def test_overrides_left_as_none_keep_the_preset_value():
    config = preset_config("wave_chicago", iterations=None, content_weight=None)
    assert config.iterations == 50 and config.content_weight == 500


def test_overrides_are_validated():
    with pytest.raises(ConfigError, match="iterations"):
        preset_config("wave_chicago", iterations=0)


def test_unknown_preset_lists_the_names():
    with pytest.raises(ConfigError) as error:
        preset_config("mona_lisa")
    for name in SEED_PARAMS:
        assert name in str(error.value)
