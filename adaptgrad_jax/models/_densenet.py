"""DenseNet (torchvision architecture) in Flax NNX.

A 7 x 7 stride-2 stem with batch norm, ReLU and a 3 x 3 stride-2 max pool;
four dense blocks, in which every layer (BN, ReLU, 1 x 1 conv to ``bn_size *
growth_rate``, BN, ReLU, 3 x 3 conv to ``growth_rate``) reads the
concatenation of all earlier feature maps of its block; transitions (BN, ReLU,
1 x 1 conv halving the channels, 2 x 2 average pool) between blocks; a final
batch norm, ReLU, global average pooling and ``classifier``.

Attribute paths mirror torchvision's ``DenseNet``: ``features.conv0``,
``features.norm0``, ``features.denseblock1.denselayer1.norm1`` ..
``conv2``, ``features.transition1.norm`` / ``conv``, ``features.norm5`` and
``classifier``. torchvision's pretrained DenseNet files use an older naming
(``denselayer1.norm.1.weight``); the constructors rename it as torchvision's
loader does. Inputs are NHWC ``(B, H, W, 3)``, ImageNet-normalised
(`preprocess_imagenet`, so ``bounds=IMAGENET_BOUNDS``); call ``model.eval()``
before explaining. Dropout inside dense layers (``drop_rate``, 0 in every
torchvision preset) and memory-efficient checkpointing are not implemented.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from adaptgrad_jax.models import _loading
from adaptgrad_jax.models._loading import build_model
from adaptgrad_jax.models._vgg import max_pool

__all__ = [
  "DenseBlock",
  "DenseLayer",
  "DenseNet",
  "Transition",
  "densenet121",
  "densenet161",
  "densenet169",
  "densenet201",
  "densenet_micro",
]


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm with torch's defaults (eps 1e-5, momentum 0.1, i.e. Flax momentum 0.9)."""
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _conv(cin: int, cout: int, size: int, stride: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
  """A bias-free conv with torch's symmetric padding ``size // 2``."""
  pad = size // 2
  return nnx.Conv(cin, cout, (size, size), strides=stride, padding=((pad, pad), (pad, pad)), use_bias=False, rngs=rngs)


def _avg_pool_2x2(x: jax.Array) -> jax.Array:
  """torch's ``AvgPool2d(2, stride=2)`` (floor mode: an odd last row or column is dropped)."""
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class DenseLayer(nnx.Module):
  """BN (``norm1``), ReLU, 1 x 1 conv (``conv1``), BN (``norm2``), ReLU, 3 x 3 conv (``conv2``)."""

  def __init__(self, cin: int, growth_rate: int, bn_size: int, *, rngs: nnx.Rngs):
    self.norm1 = _bn(cin, rngs)
    self.conv1 = _conv(cin, bn_size * growth_rate, 1, rngs=rngs)
    self.norm2 = _bn(bn_size * growth_rate, rngs)
    self.conv2 = _conv(bn_size * growth_rate, growth_rate, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps the concatenated maps ``(B, H, W, cin)`` to ``growth_rate`` new channels."""
    x = self.conv1(jax.nn.relu(self.norm1(x)))
    return self.conv2(jax.nn.relu(self.norm2(x)))


class DenseBlock(nnx.Module):
  """Layers ``denselayer1`` .. ``denselayer{n}``; each appends ``growth_rate`` channels."""

  def __init__(self, num_layers: int, cin: int, bn_size: int, growth_rate: int, *, rngs: nnx.Rngs):
    self.num_layers = num_layers
    for i in range(num_layers):
      setattr(self, f"denselayer{i + 1}", DenseLayer(cin + i * growth_rate, growth_rate, bn_size, rngs=rngs))

  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x = jnp.concatenate([x, getattr(self, f"denselayer{i + 1}")(x)], axis=-1)
    return x


class Transition(nnx.Module):
  """BN (``norm``), ReLU, 1 x 1 conv (``conv``), 2 x 2 average pool."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    self.norm = _bn(cin, rngs)
    self.conv = _conv(cin, cout, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return _avg_pool_2x2(self.conv(jax.nn.relu(self.norm(x))))


class _Features(nnx.Module):
  """torchvision's ``features`` Sequential: ``conv0``, ``norm0``, blocks, transitions, ``norm5``."""

  def __init__(
    self, growth_rate: int, block_config: Sequence[int], num_init_features: int, bn_size: int, in_channels: int, *, rngs
  ):
    self.num_blocks = len(block_config)
    self.conv0 = _conv(in_channels, num_init_features, 7, 2, rngs=rngs)
    self.norm0 = _bn(num_init_features, rngs)
    features = num_init_features
    for i, count in enumerate(block_config):
      setattr(self, f"denseblock{i + 1}", DenseBlock(count, features, bn_size, growth_rate, rngs=rngs))
      features += count * growth_rate
      if i != len(block_config) - 1:
        setattr(self, f"transition{i + 1}", Transition(features, features // 2, rngs=rngs))
        features //= 2
    self.norm5 = _bn(features, rngs)
    self.out_features = features

  def __call__(self, x: jax.Array) -> jax.Array:
    x = max_pool(jax.nn.relu(self.norm0(self.conv0(x))), 3, 2, padding=1)
    for i in range(self.num_blocks):
      x = getattr(self, f"denseblock{i + 1}")(x)
      if i != self.num_blocks - 1:
        x = getattr(self, f"transition{i + 1}")(x)
    return self.norm5(x)


class DenseNet(nnx.Module):
  """torchvision's ``DenseNet``.

  Args:
    growth_rate: channels each dense layer adds (32; 48 for DenseNet-161).
    block_config: layers per dense block, e.g. ``(6, 12, 24, 16)`` for DenseNet-121.
    num_init_features: channels of the stem (64; 96 for DenseNet-161).
    bn_size: bottleneck width as a multiple of ``growth_rate`` (4).
    num_classes: number of logits.
    in_channels: input channels.
    rngs: the random streams for initialisation.
  """

  def __init__(
    self,
    growth_rate: int = 32,
    block_config: Sequence[int] = (6, 12, 24, 16),
    num_init_features: int = 64,
    bn_size: int = 4,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    rngs: nnx.Rngs,
  ):
    if not block_config or any(int(n) < 1 for n in block_config):
      raise ValueError(f"block_config={block_config} must list at least one dense block of at least one layer")
    self.features = _Features(growth_rate, block_config, num_init_features, bn_size, in_channels, rngs=rngs)
    self.classifier = nnx.Linear(self.features.out_features, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(B, H, W, C)`` to logits ``(B, num_classes)``."""
    if x.ndim != 4:
      raise ValueError(f"DenseNet expects NHWC images (B, H, W, C), got shape {x.shape}; add a batch axis with x[None]")
    return self.classifier(jax.nn.relu(self.features(x)).mean(axis=(1, 2)))


# torchvision's `_load_state_dict`: '...denselayer1.norm.1.weight' -> '...denselayer1.norm1.weight'.
_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _densenet_state_dict(weights: Any) -> Any:
  """Renames the layer keys of torchvision's pretrained DenseNet files, as torchvision does."""
  if weights is None:
    return None
  state_dict = _loading._as_state_dict(weights)  # pylint: disable=protected-access
  renamed = {}
  for key, value in state_dict.items():
    match = _LEGACY.match(key)
    renamed[match[1] + match[2] if match else key] = value
  return renamed


def _densenet(config: tuple[int, tuple[int, ...], int], weights, rngs, kwargs) -> DenseNet:
  growth, blocks, init = config
  return build_model(lambda r: DenseNet(growth, blocks, init, rngs=r, **kwargs), _densenet_state_dict(weights), rngs)


# The presets take `weights=` (None, a checkpoint path or a mapping of torchvision-named arrays, in the
# current or the older naming of torchvision's pretrained files), `rngs=` and `DenseNet` options
# (`num_classes`, `bn_size`, `in_channels`). Call `model.eval()` before explaining.


def densenet121(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> DenseNet:
  """DenseNet-121 (8.0 M parameters), torchvision's ``densenet121``.

  Args:
    weights: None (random initialisation), a checkpoint path or a mapping of
      torchvision-named arrays (``features.denseblock1.denselayer1.norm1.weight``,
      or the older ``...denselayer1.norm.1.weight`` of torchvision's files).
    rngs: the random streams for initialisation.
    **kwargs: `DenseNet` options: ``num_classes``, ``bn_size``, ``in_channels``.

  Returns:
    A `DenseNet`; call ``model.eval()`` before explaining.

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> abstract = nnx.eval_shape(lambda: models.densenet121(rngs=nnx.Rngs(0)))  # shapes only
    >>> sd = models.state_dict_from_model(abstract)
    >>> sd["features.denseblock4.denselayer16.conv1.weight"].shape, sd["classifier.weight"].shape
    ((128, 992, 1, 1), (1000, 1024))

  References:
    Huang et al., "Densely connected convolutional networks", CVPR 2017.
  """
  return _densenet((32, (6, 12, 24, 16), 64), weights, rngs, kwargs)


def densenet161(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> DenseNet:
  """DenseNet-161, torchvision's ``densenet161``; ``weights`` and ``**kwargs`` as in `densenet121`."""
  return _densenet((48, (6, 12, 36, 24), 96), weights, rngs, kwargs)


def densenet169(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> DenseNet:
  """DenseNet-169, torchvision's ``densenet169``; ``weights`` and ``**kwargs`` as in `densenet121`."""
  return _densenet((32, (6, 12, 32, 32), 64), weights, rngs, kwargs)


def densenet201(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> DenseNet:
  """DenseNet-201, torchvision's ``densenet201``; ``weights`` and ``**kwargs`` as in `densenet121`."""
  return _densenet((32, (6, 12, 48, 32), 64), weights, rngs, kwargs)


def densenet_micro(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> DenseNet:
  """A tiny test-size DenseNet: growth 4, blocks of 2, 2, 2, 2 layers, 8 stem channels, bn_size 2,
  10 classes, for 32 x 32 inputs.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = models.densenet_micro(rngs=nnx.Rngs(0))
    >>> model.eval()
    >>> model(jnp.zeros((2, 32, 32, 3))).shape
    (2, 10)
  """
  return _densenet((4, (2, 2, 2, 2), 8), weights, rngs, {"num_classes": 10, "bn_size": 2, **kwargs})
