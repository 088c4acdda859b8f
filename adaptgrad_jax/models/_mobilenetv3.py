"""MobileNetV3 (torchvision architecture) in Flax NNX.

A 3 x 3 stride-2 stem with hard-swish, inverted-residual blocks (1 x 1
expansion, k x k depthwise conv, optional squeeze-and-excitation with a hard
sigmoid gate, 1 x 1 linear projection, a residual connection when the stride
is 1 and the widths agree), a 1 x 1 conv to 6x the last width, global average
pooling and a classifier ``Linear, hard-swish, Dropout, Linear``.

Attribute paths mirror torchvision's ``MobileNetV3``: ``features`` is an
`nnx.List` (``features.0`` the stem, ``features.1`` .. ``features.15`` the
blocks of the Large model, ``features.16`` the last conv), each conv-BN-act an
`nnx.List` ``[conv, batch norm, activation]`` (torchvision's
``Conv2dNormActivation``, so ``features.0.0.weight``, ``features.0.1.running_mean``),
a block's layers in ``block`` (``features.4.block.2.fc1.weight`` is a
squeeze-excite conv) and ``classifier.0`` / ``classifier.3`` the Linears.
Batch norm uses torchvision's eps 1e-3 and momentum 0.01. Inputs are NHWC
``(B, H, W, 3)``, ImageNet-normalised (`preprocess_imagenet`, so
``bounds=IMAGENET_BOUNDS``). Call ``model.eval()`` before explaining.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from adaptgrad_jax.models._loading import build_model

__all__ = [
  "MOBILENET_V3_LARGE",
  "MOBILENET_V3_SMALL",
  "InvertedResidual",
  "InvertedResidualConfig",
  "MobileNetV3",
  "SqueezeExcitation",
  "mobilenet_v3_large",
  "mobilenet_v3_micro",
  "mobilenet_v3_small",
]


class InvertedResidualConfig(NamedTuple):
  """One block of torchvision's table: ``activation`` is ``"RE"`` (ReLU) or ``"HS"`` (hard-swish)."""

  input_channels: int
  kernel: int
  expanded_channels: int
  out_channels: int
  use_se: bool
  activation: str
  stride: int


_C = InvertedResidualConfig
MOBILENET_V3_LARGE = (
  _C(16, 3, 16, 16, False, "RE", 1),
  _C(16, 3, 64, 24, False, "RE", 2),
  _C(24, 3, 72, 24, False, "RE", 1),
  _C(24, 5, 72, 40, True, "RE", 2),
  _C(40, 5, 120, 40, True, "RE", 1),
  _C(40, 5, 120, 40, True, "RE", 1),
  _C(40, 3, 240, 80, False, "HS", 2),
  _C(80, 3, 200, 80, False, "HS", 1),
  _C(80, 3, 184, 80, False, "HS", 1),
  _C(80, 3, 184, 80, False, "HS", 1),
  _C(80, 3, 480, 112, True, "HS", 1),
  _C(112, 3, 672, 112, True, "HS", 1),
  _C(112, 5, 672, 160, True, "HS", 2),
  _C(160, 5, 960, 160, True, "HS", 1),
  _C(160, 5, 960, 160, True, "HS", 1),
)
MOBILENET_V3_SMALL = (
  _C(16, 3, 16, 16, True, "RE", 2),
  _C(16, 3, 72, 24, False, "RE", 2),
  _C(24, 3, 88, 24, False, "RE", 1),
  _C(24, 5, 96, 40, True, "HS", 2),
  _C(40, 5, 240, 40, True, "HS", 1),
  _C(40, 5, 240, 40, True, "HS", 1),
  _C(40, 5, 120, 48, True, "HS", 1),
  _C(48, 5, 144, 48, True, "HS", 1),
  _C(48, 5, 288, 96, True, "HS", 2),
  _C(96, 5, 576, 96, True, "HS", 1),
  _C(96, 5, 576, 96, True, "HS", 1),
)
_MICRO = (
  _C(8, 3, 8, 8, True, "RE", 2),
  _C(8, 3, 24, 16, False, "RE", 2),
  _C(16, 5, 48, 16, True, "HS", 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's channel rounding: to a multiple of ``divisor``, never below 90% of ``value``."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * value else new


def _hard_sigmoid(x: jax.Array) -> jax.Array:
  return jax.nn.relu6(x + 3.0) / 6.0  # torch's F.hardsigmoid


def _hard_swish(x: jax.Array) -> jax.Array:
  return x * jax.nn.relu6(x + 3.0) / 6.0  # torch's nn.Hardswish


_ACTIVATIONS = {"RE": jax.nn.relu, "HS": _hard_swish}


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, activation=None, *, rngs) -> nnx.List:
  """torchvision's ``Conv2dNormActivation``: bias-free conv (0), BatchNorm (1), activation (2) if any."""
  pad = (kernel - 1) // 2
  layers = [
    nnx.Conv(
      cin,
      cout,
      (kernel, kernel),
      strides=stride,
      padding=((pad, pad), (pad, pad)),
      feature_group_count=groups,
      use_bias=False,
      rngs=rngs,
    ),
    nnx.BatchNorm(cout, momentum=0.99, epsilon=1e-3, rngs=rngs),  # torch momentum 0.01
  ]
  if activation is not None:
    layers.append(activation)
  return nnx.List(layers)


def _run(layers: nnx.List, x: jax.Array) -> jax.Array:
  """Applies a torch-Sequential-like list in order, descending into nested lists."""
  for layer in layers:
    x = _run(layer, x) if isinstance(layer, nnx.List) else layer(x)
  return x


class SqueezeExcitation(nnx.Module):
  """``x * hardsigmoid(fc2(relu(fc1(mean(x)))))``; ``fc1`` and ``fc2`` are 1 x 1 convs with bias."""

  def __init__(self, channels: int, squeeze: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Conv(channels, squeeze, (1, 1), rngs=rngs)
    self.fc2 = nnx.Conv(squeeze, channels, (1, 1), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    scale = x.mean(axis=(1, 2), keepdims=True)
    return _hard_sigmoid(self.fc2(jax.nn.relu(self.fc1(scale)))) * x


def _check_config(config: InvertedResidualConfig) -> None:
  if config.activation not in _ACTIVATIONS or config.stride not in (1, 2):
    raise ValueError(
      f"{config}: activation must be 'RE' (ReLU) or 'HS' (hard-swish) and stride 1 or 2, as in torchvision's table"
    )


class InvertedResidual(nnx.Module):
  """torchvision's MobileNetV3 block; ``block`` holds expand (if any), depthwise, SE (if any), project."""

  def __init__(self, config: InvertedResidualConfig, *, rngs: nnx.Rngs):
    _check_config(config)
    cin, kernel, mid, cout, use_se, activation, stride = config
    act = _ACTIVATIONS[activation]
    layers: list[Any] = []
    if mid != cin:
      layers.append(_conv_bn(cin, mid, 1, activation=act, rngs=rngs))
    layers.append(_conv_bn(mid, mid, kernel, stride, groups=mid, activation=act, rngs=rngs))
    if use_se:
      layers.append(SqueezeExcitation(mid, _make_divisible(mid // 4, 8), rngs=rngs))
    layers.append(_conv_bn(mid, cout, 1, rngs=rngs))
    self.block = nnx.List(layers)
    self.use_res_connect = stride == 1 and cin == cout

  def __call__(self, x: jax.Array) -> jax.Array:
    y = _run(self.block, x)
    return x + y if self.use_res_connect else y


class MobileNetV3(nnx.Module):
  """torchvision's ``MobileNetV3``.

  Args:
    settings: the blocks, `InvertedResidualConfig` tuples (`MOBILENET_V3_LARGE`,
      `MOBILENET_V3_SMALL`).
    last_channel: width of the classifier's hidden layer (1280 Large, 1024 Small).
    num_classes: number of logits.
    dropout: dropout rate in the classifier (0.2; off in eval mode).
    in_channels: input channels.
    rngs: the random streams for initialisation and dropout.
  """

  def __init__(
    self,
    settings: Sequence[InvertedResidualConfig],
    last_channel: int,
    *,
    num_classes: int = 1000,
    dropout: float = 0.2,
    in_channels: int = 3,
    rngs: nnx.Rngs,
  ):
    settings = [InvertedResidualConfig(*s) for s in settings]
    if not settings:
      raise ValueError("settings must list at least one InvertedResidualConfig, e.g. MOBILENET_V3_LARGE")
    for config in settings:
      _check_config(config)
    first, last_in = settings[0].input_channels, settings[-1].out_channels
    features: list[Any] = [_conv_bn(in_channels, first, 3, 2, activation=_hard_swish, rngs=rngs)]
    features += [InvertedResidual(s, rngs=rngs) for s in settings]
    features.append(_conv_bn(last_in, 6 * last_in, 1, activation=_hard_swish, rngs=rngs))
    self.features = nnx.List(features)
    self.classifier = nnx.List(
      [
        nnx.Linear(6 * last_in, last_channel, rngs=rngs),
        _hard_swish,
        nnx.Dropout(dropout, rngs=rngs),
        nnx.Linear(last_channel, num_classes, rngs=rngs),
      ]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(B, H, W, C)`` to logits ``(B, num_classes)``."""
    if x.ndim != 4:
      raise ValueError(
        f"MobileNetV3 expects NHWC images (B, H, W, C), got shape {x.shape}; add a batch axis with x[None]"
      )
    return _run(self.classifier, jnp.mean(_run(self.features, x), axis=(1, 2)))


def _mobilenet(settings, last_channel, weights: Any, rngs: nnx.Rngs, kwargs: dict[str, Any]) -> MobileNetV3:
  return build_model(lambda r: MobileNetV3(settings, last_channel, rngs=r, **kwargs), weights, rngs)


# The presets take `weights=` (None, a checkpoint path or a mapping of torchvision-named arrays), `rngs=`
# and `MobileNetV3` options (`num_classes`, `dropout`, `in_channels`). Call `model.eval()` before explaining.


def mobilenet_v3_large(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> MobileNetV3:
  """MobileNetV3-Large (5.5 M parameters), torchvision's ``mobilenet_v3_large``.

  Args:
    weights: None (random initialisation), a checkpoint path or a mapping of
      torchvision-named arrays (``features.0.0.weight``,
      ``features.4.block.2.fc1.bias``, ``classifier.3.weight``, ...).
    rngs: the random streams for initialisation and dropout.
    **kwargs: `MobileNetV3` options: ``num_classes``, ``dropout``, ``in_channels``.

  Returns:
    A `MobileNetV3`; call ``model.eval()`` before explaining (batch norm then
    uses its running statistics, dropout is off).

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> abstract = nnx.eval_shape(lambda: models.mobilenet_v3_large(rngs=nnx.Rngs(0)))  # shapes only
    >>> sd = models.state_dict_from_model(abstract)
    >>> sd["features.4.block.2.fc1.weight"].shape, sd["classifier.0.weight"].shape
    ((24, 72, 1, 1), (1280, 960))

  References:
    Howard et al., "Searching for MobileNetV3", ICCV 2019.
  """
  return _mobilenet(MOBILENET_V3_LARGE, 1280, weights, rngs, kwargs)


def mobilenet_v3_small(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> MobileNetV3:
  """MobileNetV3-Small, torchvision's ``mobilenet_v3_small``; arguments as in `mobilenet_v3_large`."""
  return _mobilenet(MOBILENET_V3_SMALL, 1024, weights, rngs, kwargs)


def mobilenet_v3_micro(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> MobileNetV3:
  """A tiny test-size MobileNetV3: three blocks (with and without SE, ReLU and hard-swish,
  residual and strided), classifier width 32, 10 classes, for 32 x 32 inputs.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = models.mobilenet_v3_micro(rngs=nnx.Rngs(0))
    >>> model.eval()
    >>> model(jnp.zeros((2, 32, 32, 3))).shape
    (2, 10)
  """
  return _mobilenet(_MICRO, 32, weights, rngs, {"num_classes": 10, **kwargs})
