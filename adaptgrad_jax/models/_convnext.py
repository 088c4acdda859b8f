"""ConvNeXt (torchvision architecture) in Flax NNX.

A 4 x 4 stride-4 "patchify" stem, four stages of ConvNeXt blocks (7 x 7
depthwise conv, LayerNorm, a 4x-wide MLP with exact GELU, a learned per-channel
``layer_scale``, a residual connection) separated by LayerNorm + 2 x 2 stride-2
downsampling convs, global average pooling, LayerNorm and a Linear.

Attribute paths mirror torchvision's ``ConvNeXt``: ``features`` is an
`nnx.List` (stem at 0, stages at 1, 3, 5, 7, downsampling at 2, 4, 6), each
block's ``block`` an `nnx.List` with torchvision's indices (``block.0`` the
depthwise conv, ``block.2`` the LayerNorm, ``block.3`` and ``block.5`` the
Linears; the permutes at 1 and 6 are identities in NHWC), ``classifier.0`` the
LayerNorm and ``classifier.2`` the Linear. ``layer_scale`` is stored in torch's
layout ``(C, 1, 1)`` under its torch name. Stochastic depth (training only) is
not implemented: the model computes the evaluation-mode function. Inputs are
NHWC ``(B, H, W, 3)``, ImageNet-normalised (`preprocess_imagenet`, so
``bounds=IMAGENET_BOUNDS``), with H and W multiples of 32 for the maps to
divide evenly (any size of at least 32 works, as in torch, which floors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from adaptgrad_jax.models import _layers
from adaptgrad_jax.models._loading import build_model

__all__ = [
  "CNBlock",
  "ConvNeXt",
  "convnext_base",
  "convnext_large",
  "convnext_micro",
  "convnext_small",
  "convnext_tiny",
]

# `layer_scale` is stored in torch's layout (C, 1, 1) under its torch name (see `_loading._LEAF_NAMES`).

_layer_norm, _identity, _gelu = _layers.layer_norm, _layers.identity, _layers.gelu


def _global_pool(x: jax.Array) -> jax.Array:
  return x.mean(axis=(1, 2))  # avgpool + Flatten: (B, H, W, C) -> (B, C)


class CNBlock(nnx.Module):
  """The ConvNeXt block: ``x + layer_scale * block(x)``.

  ``block``: depthwise 7 x 7 conv (0), permute (1, identity), LayerNorm (2),
  Linear to 4 C (3), GELU (4), Linear back to C (5), permute (6, identity).

  Args:
    dim: channels.
    layer_scale: initial value of the per-channel scale (torchvision: 1e-6).
    rngs: the random streams for initialisation.
  """

  def __init__(self, dim: int, layer_scale: float = 1e-6, *, rngs: nnx.Rngs):
    self.block = nnx.List(
      [
        nnx.Conv(dim, dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=dim, rngs=rngs),
        _identity,
        _layer_norm(dim, rngs),
        nnx.Linear(dim, 4 * dim, rngs=rngs),
        _gelu,
        nnx.Linear(4 * dim, dim, rngs=rngs),
        _identity,
      ]
    )
    self.layer_scale = nnx.Param(jnp.full((dim, 1, 1), layer_scale, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x
    for layer in self.block:
      y = layer(y)
    return x + self.layer_scale[...].reshape(-1) * y


class ConvNeXt(nnx.Module):
  """torchvision's ``ConvNeXt``.

  Args:
    stages: per stage ``(input_channels, out_channels, num_layers)`` as
      torchvision's ``CNBlockConfig`` list, ``out_channels`` None for the last
      stage; ConvNeXt-Tiny is ``((96, 192, 3), (192, 384, 3), (384, 768, 9),
      (768, None, 3))``.
    num_classes: number of logits.
    layer_scale: initial value of the blocks' ``layer_scale``.
    in_channels: input channels.
    rngs: the random streams for initialisation.
  """

  def __init__(
    self,
    stages: Sequence[tuple[int, int | None, int]],
    *,
    num_classes: int = 1000,
    layer_scale: float = 1e-6,
    in_channels: int = 3,
    rngs: nnx.Rngs,
  ):
    stages = tuple(tuple(s) for s in stages)
    if not stages or any(len(s) != 3 for s in stages) or stages[-1][1] is not None:
      raise ValueError(
        f"stages={stages} must be a non-empty list of (input_channels, out_channels, num_layers) with "
        "out_channels None for the last stage, e.g. ((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3))"
      )
    first = stages[0][0]
    features: list[Any] = [
      nnx.List(
        [nnx.Conv(in_channels, first, (4, 4), strides=4, padding="VALID", rngs=rngs), _layer_norm(first, rngs)]
      )
    ]
    for cin, cout, count in stages:
      features.append(nnx.List([CNBlock(cin, layer_scale, rngs=rngs) for _ in range(count)]))
      if cout is not None:
        features.append(
          nnx.List([_layer_norm(cin, rngs), nnx.Conv(cin, cout, (2, 2), strides=2, padding="VALID", rngs=rngs)])
        )
    self.features = nnx.List(features)
    last = stages[-1][0]
    self.classifier = nnx.List([_layer_norm(last, rngs), _identity, nnx.Linear(last, num_classes, rngs=rngs)])

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(B, H, W, C)`` to logits ``(B, num_classes)``."""
    if x.ndim != 4:
      raise ValueError(
        f"ConvNeXt expects NHWC images (B, H, W, C), got shape {x.shape}; add a batch axis with x[None]"
      )
    for stage in self.features:
      for layer in stage:
        x = layer(x)
    x = _global_pool(x)  # torch pools before classifier.0; a LayerNorm over C of a (B, C) is the same
    for layer in self.classifier:
      x = layer(x)
    return x


_TINY = ((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3))
_SMALL = ((96, 192, 3), (192, 384, 3), (384, 768, 27), (768, None, 3))
_BASE = ((128, 256, 3), (256, 512, 3), (512, 1024, 27), (1024, None, 3))
_LARGE = ((192, 384, 3), (384, 768, 3), (768, 1536, 27), (1536, None, 3))
_MICRO = ((8, 16, 1), (16, 24, 1), (24, 32, 2), (32, None, 1))


def _convnext(stages, weights: Any, rngs: nnx.Rngs, kwargs: dict[str, Any]) -> ConvNeXt:
  return build_model(lambda r: ConvNeXt(stages, rngs=r, **kwargs), weights, rngs)


# The presets take `weights=` (None, a checkpoint path or a mapping of torchvision-named arrays), `rngs=`
# and `ConvNeXt` options (`num_classes`, `layer_scale`, `in_channels`).


def convnext_tiny(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  """ConvNeXt-Tiny (28.6 M parameters), torchvision's ``convnext_tiny``.

  Args:
    weights: None (random initialisation), a checkpoint path or a mapping of
      torchvision-named arrays (``features.1.0.block.0.weight``,
      ``features.1.0.layer_scale``, ``classifier.2.bias``, ...).
    rngs: the random streams for initialisation.
    **kwargs: `ConvNeXt` options: ``num_classes``, ``layer_scale``, ``in_channels``.

  Returns:
    A `ConvNeXt`. It has no batch norm or dropout; ``model.eval()`` is harmless.

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> abstract = nnx.eval_shape(lambda: models.convnext_tiny(rngs=nnx.Rngs(0)))  # shapes only
    >>> sd = models.state_dict_from_model(abstract)
    >>> sd["features.5.8.layer_scale"].shape, sd["features.6.1.weight"].shape
    ((384, 1, 1), (768, 384, 2, 2))

  References:
    Liu et al., "A ConvNet for the 2020s", CVPR 2022.
  """
  return _convnext(_TINY, weights, rngs, kwargs)


def convnext_small(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  """ConvNeXt-Small, torchvision's ``convnext_small``; ``weights`` and ``**kwargs`` as in `convnext_tiny`."""
  return _convnext(_SMALL, weights, rngs, kwargs)


def convnext_base(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  """ConvNeXt-Base, torchvision's ``convnext_base``; ``weights`` and ``**kwargs`` as in `convnext_tiny`."""
  return _convnext(_BASE, weights, rngs, kwargs)


def convnext_large(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  """ConvNeXt-Large, torchvision's ``convnext_large``; ``weights`` and ``**kwargs`` as in `convnext_tiny`."""
  return _convnext(_LARGE, weights, rngs, kwargs)


def convnext_micro(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  """A tiny test-size ConvNeXt: widths 8, 16, 24, 32 with 1, 1, 2, 1 blocks, 10 classes, for 32 x 32 inputs.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = nnx.eval_shape(lambda: models.convnext_micro(rngs=nnx.Rngs(0)))  # shapes only; drop eval_shape to build
    >>> model.eval()
    >>> nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)).shape
    (2, 10)
  """
  return _convnext(_MICRO, weights, rngs, {"num_classes": 10, **kwargs})
