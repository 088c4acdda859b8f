"""Inception v3, identical to torchvision's ``Inception3``, in Flax NNX.

Attribute paths mirror torchvision's parameter names (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ``AuxLogits.fc.bias``, ``fc.weight``),
see `adaptgrad_jax.models._loading`. Inputs are NHWC; torchvision's NCHW
concatenations along channels become concatenations along the last axis.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from adaptgrad_jax.models._loading import build_model

__all__ = [
  "INCEPTION_V3_MIN_SIZE",
  "BasicConv2d",
  "Inception3",
  "InceptionA",
  "InceptionAux",
  "InceptionB",
  "InceptionC",
  "InceptionD",
  "InceptionE",
  "inception_v3",
]

INCEPTION_V3_MIN_SIZE = 75
"""Smallest valid height and width (torchvision's limit): Mixed_7a then sees 3 x 3."""

_Pair = int | tuple[int, int]


def _pair(v: _Pair) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def _max_pool(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
  """``F.max_pool2d(x, window, stride)``: no padding, floor mode."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID")


def _avg_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """``F.avg_pool2d(x, window, stride, padding)``, zero padding counted (torch's default)."""
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, window, window, 1), (1, stride, stride, 1), pads)
  return total / (window * window)


class BasicConv2d(nnx.Module):
  """``conv`` (no bias) -> ``bn`` (eps 0.001) -> ReLU, torchvision's building block."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: _Pair,
    *,
    stride: _Pair = 1,
    padding: _Pair = 0,
    rngs: nnx.Rngs,
  ):
    ph, pw = _pair(padding)
    self.conv = nnx.Conv(
      in_features,
      out_features,
      _pair(kernel_size),
      strides=_pair(stride),
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      rngs=rngs,
    )
    self.bn = nnx.BatchNorm(out_features, epsilon=0.001, momentum=0.9, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
  """35 x 35 block: 1x1, 5x5, double 3x3 and pooled branches (Mixed_5b..5d)."""

  def __init__(self, in_features: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(in_features, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(in_features, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_features, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(in_features, pool_features, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg_pool(x, 3, 1, 1))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """Grid reduction 35 -> 17 (Mixed_6a)."""

  def __init__(self, in_features: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(in_features, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_features, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3(x)
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nnx.Module):
  """17 x 17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

  def __init__(self, in_features: int, channels_7x7: int, *, rngs: nnx.Rngs):
    c7 = channels_7x7
    self.branch1x1 = BasicConv2d(in_features, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(in_features, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(in_features, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(in_features, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
    bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(bd)))
    bp = self.branch_pool(_avg_pool(x, 3, 1, 1))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  """Grid reduction 17 -> 8 (Mixed_7a)."""

  def __init__(self, in_features: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(in_features, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(in_features, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = x
    for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = layer(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nnx.Module):
  """8 x 8 block with expanded 1x3 / 3x1 filter banks (Mixed_7b, 7c)."""

  def __init__(self, in_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(in_features, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(in_features, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(in_features, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(in_features, 192, 1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    bp = self.branch_pool(_avg_pool(x, 3, 1, 1))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nnx.Module):
  """Auxiliary classifier on the 17 x 17 map: avg pool 5/3, ``conv0`` 1x1, ``conv1`` 5x5, ``fc``."""

  def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs):
    self.conv0 = BasicConv2d(in_features, 128, 1, rngs=rngs)
    self.conv1 = BasicConv2d(128, 768, 5, rngs=rngs)
    self.fc = nnx.Linear(768, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if min(x.shape[1:3]) < 17:
      raise ValueError(
        f"the auxiliary classifier needs a feature map of at least 17 x 17 (a 299 x 299 input gives 17 x 17), "
        f"got {x.shape[1]} x {x.shape[2]}; use return_aux=False for smaller inputs"
      )
    x = self.conv1(self.conv0(_avg_pool(x, 5, 3)))
    return self.fc(jnp.mean(x, axis=(1, 2)))


class Inception3(nnx.Module):
  """torchvision's Inception3 (Szegedy et al., 2016) on NHWC inputs.

  Args:
    num_classes: number of logits.
    aux_logits: whether to build the auxiliary classifier ``AuxLogits``
      (torchvision's official checkpoint contains it).
    transform_input: whether to map ImageNet-normalised inputs to the
      ``(x - 0.5) / 0.5`` normalisation the Google weights were trained on, as
      torchvision does for its pretrained model.
    dropout_rate: dropout before ``fc`` (0.5; off in eval mode).
    rngs: the random streams for initialisation and dropout.
  """

  def __init__(
    self,
    num_classes: int = 1000,
    *,
    aux_logits: bool = False,
    transform_input: bool = False,
    dropout_rate: float = 0.5,
    rngs: nnx.Rngs,
  ):
    self.aux_logits = aux_logits
    self.transform_input = transform_input
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    if aux_logits:
      self.AuxLogits = InceptionAux(768, num_classes, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, rngs=rngs)
    self.Mixed_7c = InceptionE(2048, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.fc = nnx.Linear(2048, num_classes, rngs=rngs)

  def _transform_input(self, x: jax.Array) -> jax.Array:
    mean = jnp.asarray([0.485, 0.456, 0.406], x.dtype)
    std = jnp.asarray([0.229, 0.224, 0.225], x.dtype)
    return x * (std / 0.5) + (mean - 0.5) / 0.5

  def __call__(self, x: jax.Array, *, return_aux: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Maps NHWC images ``(B, H, W, 3)``, H, W >= 75, to logits ``(B, num_classes)``.

    Args:
      x: the images, ImageNet-normalised for torchvision's weights.
      return_aux: also return the auxiliary classifier's logits (needs
        ``aux_logits=True`` and inputs of at least 299 x 299). torchvision
        computes them in training mode only; here they are asked for explicitly.

    Returns:
      The logits, or ``(logits, aux_logits)`` when ``return_aux``.
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(
        f"Inception v3 expects NHWC images (B, H, W, 3), got shape {x.shape}; "
        "add a batch axis with x[None] or move channels last with x.transpose(0, 2, 3, 1)"
      )
    if min(x.shape[1:3]) < INCEPTION_V3_MIN_SIZE:
      raise ValueError(
        f"Inception v3 needs inputs of at least {INCEPTION_V3_MIN_SIZE} x {INCEPTION_V3_MIN_SIZE}, "
        f"got {x.shape[1]} x {x.shape[2]}; resize the images (299 x 299 is the native size)"
      )
    if return_aux and not self.aux_logits:
      raise ValueError("return_aux=True needs a model built with aux_logits=True")
    if self.transform_input:
      x = self._transform_input(x)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max_pool(x)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = _max_pool(x)
    x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
    x = self.Mixed_6a(x)
    x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
    aux = self.AuxLogits(x) if return_aux else None
    x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
    x = self.fc(self.dropout(jnp.mean(x, axis=(1, 2))))
    return (x, aux) if return_aux else x


def inception_v3(
  num_classes: int = 1000,
  *,
  aux_logits: bool = False,
  transform_input: bool = False,
  weights: Any = None,
  rngs: nnx.Rngs,
) -> Inception3:
  """Inception v3 (23.8 M parameters), architecture and parameter names as torchvision's.

  For torchvision's ImageNet weights (``weights.pretrained("inception_v3")``)
  pass ``transform_input=True`` as torchvision does, and feed 299 x 299 images
  preprocessed by ``preprocess_imagenet(image, resize=342, crop=299)`` with
  ``bounds=IMAGENET_BOUNDS`` for the smoothing transforms. That checkpoint holds
  the auxiliary classifier: with ``aux_logits=False`` its ``AuxLogits.*``
  entries are dropped while loading (as torchvision does). Call
  ``model.eval()`` before explaining.

  Args:
    num_classes: number of logits.
    aux_logits: build the auxiliary classifier (see `Inception3.__call__`).
    transform_input: re-normalise ImageNet-normalised inputs for the Google weights.
    weights: None, a checkpoint path or a mapping of torchvision-named arrays.
    rngs: the random streams for initialisation and dropout.

  Returns:
    An `Inception3` module, in training mode as built by Flax.

  Raises:
    ValueError: if the weights do not match the architecture (all mismatches
      listed), or for ``weights="pretrained"`` (use `adaptgrad_jax.weights.pretrained`).

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = nnx.eval_shape(lambda: models.inception_v3(num_classes=10, rngs=nnx.Rngs(0)))  # shapes only
    >>> model.eval()
    >>> graphdef, state = nnx.split(model)
    >>> jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.zeros((1, 75, 75, 3))).shape
    (1, 10)

  References:
    Szegedy et al., "Rethinking the Inception Architecture for Computer
    Vision", CVPR 2016; torchvision.models.inception_v3.
  """
  if isinstance(weights, str) and weights == "pretrained":
    raise ValueError(
      'weights="pretrained" is only offline for efficientnet_lite0; for torchvision\'s Inception v3 weights use '
      'weights=adaptgrad_jax.weights.pretrained("inception_v3") (downloads 104 MB once) with transform_input=True'
    )
  if weights is not None and not aux_logits:
    if isinstance(weights, (str, os.PathLike)):
      from adaptgrad_jax.weights import read_checkpoint  # pylint: disable=import-outside-toplevel

      weights = read_checkpoint(weights)
    if isinstance(weights, Mapping):
      weights = {k: v for k, v in weights.items() if not k.startswith("AuxLogits.")}
  make = lambda r: Inception3(num_classes, aux_logits=aux_logits, transform_input=transform_input, rngs=r)
  return build_model(make, weights, rngs)
