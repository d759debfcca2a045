"""VGG16 / VGG19 layer tables and the input convention every graph uses.

Layer names are Keras's (``block1_conv1`` ... ``block5_conv4``); the seed's
``m1_layers`` / ``m2_layers`` cells list them for the notop models.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

ARCHITECTURES = ("vgg16", "vgg19")
_CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_BLOCK_CHANNELS = (64, 128, 256, 512, 512)

# The seed's (Keras "caffe") convention: BGR order, ImageNet mean subtracted, 0-255.
MEAN_BGR = (103.939, 116.779, 123.68)
INPUT_CONVENTION = (
    "NCHW float32, BGR channel order, ImageNet mean (B 103.939, G 116.779, R 123.68) "
    "subtracted, 0-255 scale (Keras 'caffe' preprocessing)"
)


@dataclass(frozen=True)
class ConvLayer:
    name: str
    block: int
    in_channels: int
    out_channels: int

    @property
    def downsampling(self) -> int:
        """How many times smaller than the image this layer's feature maps are."""
        return 2 ** (self.block - 1)


def check_architecture(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown network '{arch}': choose one of {', '.join(ARCHITECTURES)}")
    return arch


def conv_layers(arch: str) -> tuple[ConvLayer, ...]:
    """The conv layers of ``arch`` in forward order, with their channel counts."""
    check_architecture(arch)
    layers, in_ch = [], 3
    for block, (count, out_ch) in enumerate(zip(_CONVS_PER_BLOCK[arch], _BLOCK_CHANNELS), start=1):
        for i in range(1, count + 1):
            layers.append(ConvLayer(f"block{block}_conv{i}", block, in_ch, out_ch))
            in_ch = out_ch
    return tuple(layers)


def conv_layer_names(arch: str) -> tuple[str, ...]:
    return tuple(layer.name for layer in conv_layers(arch))


def keras_layer_names(arch: str) -> tuple[str, ...]:
    """All layer names of the Keras notop model, as the seed's ``m1_layers`` cell shows."""
    names = ["input_1"]
    for block in range(1, 6):
        names += [layer.name for layer in conv_layers(arch) if layer.block == block]
        names.append(f"block{block}_pool")
    return tuple(names)


def conv_layer(arch: str, name: str) -> ConvLayer:
    for layer in conv_layers(arch):
        if layer.name == name:
            return layer
    raise ConfigError(
        f"unknown layer '{name}' for {arch}: valid layers are {', '.join(conv_layer_names(arch))}"
    )


def architecture_for_conv_count(count: int) -> str | None:
    for arch in ARCHITECTURES:
        if len(conv_layers(arch)) == count:
            return arch
    return None
