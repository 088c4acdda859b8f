"""VGG (torchvision architecture) in Flax NNX, and the pooling layers it shares with ResNet."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptgrad_jax.models._loading import build_model

__all__ = [
  "VGG",
  "adaptive_avg_pool",
  "max_pool",
  "vgg11",
  "vgg11_bn",
  "vgg13",
  "vgg13_bn",
  "vgg16",
  "vgg16_bn",
  "vgg19",
  "vgg19_bn",
]

# torchvision's configurations: output channels of each 3x3 conv, "M" for a 2x2 max pool.
CONFIGS: dict[str, list[int | str]] = {
  "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
  "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
  "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
  "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def max_pool(x: jax.Array, window: int, stride: int | None = None, padding: int = 0) -> jax.Array:
  """Max pooling over the H and W axes of an NHWC array, as torch's ``MaxPool2d`` (floor mode).

  Non-overlapping windows (``stride == window``, no padding) are computed as
  elementwise maxima of strided slices, after dropping the trailing rows and
  columns that torch's floor mode drops. The values equal
  `jax.lax.reduce_window`'s, and so do the gradients but on ties: where
  elements of a window tie for the max, the gradient is shared among them
  (halved at each tied pairwise max) instead of going to one. The gradient is
  elementwise selects, which XLA fuses with their neighbours, where
  `jax.lax.reduce_window`'s is a select-and-scatter (slow on CPU) and a max
  over a reshape's a reduction that counts ties (which XLA:CPU fused with
  the next convolution into a slower kernel: VGG-16's input gradient at
  64 x 64 took 7% longer). Overlapping windows use `jax.lax.reduce_window`
  with ``-inf`` padding.

  Args:
    x: an array ``(B, H, W, C)``.
    window: the square window size.
    stride: the stride (defaults to ``window``).
    padding: implicit ``-inf`` padding on each side.

  Returns:
    ``(B, floor((H + 2 padding - window) / stride) + 1, ..., C)``.
  """
  stride = window if stride is None else stride
  if stride == window and padding == 0:
    _, h, w, _ = x.shape
    ho, wo = h // window, w // window
    x = x[:, : ho * window, : wo * window]
    rows = functools.reduce(jnp.maximum, [x[:, i::window] for i in range(window)])
    return functools.reduce(jnp.maximum, [rows[:, :, j::window] for j in range(window)])
  return jax.lax.reduce_window(
    x,
    -jnp.inf,
    jax.lax.max,
    (1, window, window, 1),
    (1, stride, stride, 1),
    ((0, 0), (padding, padding), (padding, padding), (0, 0)),
  )


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
  """(out, size) averaging matrix of torch's adaptive pooling along one axis."""
  matrix = np.zeros((out, size), np.float32)
  for i in range(out):
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)  # ceil((i + 1) * size / out)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.Array, output_size: int | tuple[int, int]) -> jax.Array:
  """Average pooling to a fixed output size, as torch's ``AdaptiveAvgPool2d``.

  Output cell ``i`` averages input rows ``floor(i H / out)`` to
  ``ceil((i + 1) H / out)`` (exclusive), likewise for columns, so windows may
  overlap or repeat (a 1 x 1 map is copied to every cell of a 7 x 7 output).

  Args:
    x: an array ``(B, H, W, C)``.
    output_size: ``out`` or ``(out_h, out_w)``.

  Returns:
    ``(B, out_h, out_w, C)``.
  """
  out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
  _, h, w, _ = x.shape
  if (h, w) == (out_h, out_w):
    return x
  if out_h == 1 and out_w == 1:
    return x.mean(axis=(1, 2), keepdims=True)
  rows = jnp.asarray(_adaptive_matrix(h, out_h), x.dtype)
  cols = jnp.asarray(_adaptive_matrix(w, out_w), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  return max_pool(x, 2)


class VGG(nnx.Module):
  """torchvision's VGG: ``features`` (3x3 convs, ReLU, 2x2 max pools), a 7 x 7
  adaptive average pool, and ``classifier`` (Linear, ReLU, Dropout, Linear,
  ReLU, Dropout, Linear).

  ``features`` and ``classifier`` are `nnx.List`s with torchvision's indices
  (``features.0.weight``, ``classifier.6.bias``, ...). Any input size of at
  least 32 x 32 works, as in torchvision.

  Args:
    config: output channels of each conv, ``"M"`` for a max pool (see `CONFIGS`).
    batch_norm: put a BatchNorm after each conv (the ``_bn`` variants).
    num_classes: number of logits.
    hidden: width of the two hidden classifier layers (4096 in torchvision).
    dropout: dropout rate of the classifier (off in eval mode).
    in_channels: input channels.
    rngs: the random streams for initialisation and dropout.
  """

  def __init__(
    self,
    config: Sequence[int | str],
    *,
    batch_norm: bool = False,
    num_classes: int = 1000,
    hidden: int = 4096,
    dropout: float = 0.5,
    in_channels: int = 3,
    rngs: nnx.Rngs,
  ):
    layers: list[Any] = []
    channels = in_channels
    for item in config:
      if item == "M":
        layers.append(_max_pool_2x2)
        continue
      layers.append(nnx.Conv(channels, int(item), (3, 3), padding=((1, 1), (1, 1)), rngs=rngs))
      if batch_norm:
        layers.append(nnx.BatchNorm(int(item), momentum=0.9, epsilon=1e-5, rngs=rngs))
      layers.append(jax.nn.relu)
      channels = int(item)
    self.features = nnx.List(layers)
    first = nnx.Linear(channels * 7 * 7, hidden, rngs=rngs)
    first.torch_flatten_chw = (channels, 7, 7)  # torch flattens C, H, W; see _loading.py
    self.classifier = nnx.List(
      [
        first,
        jax.nn.relu,
        nnx.Dropout(dropout, rngs=rngs),
        nnx.Linear(hidden, hidden, rngs=rngs),
        jax.nn.relu,
        nnx.Dropout(dropout, rngs=rngs),
        nnx.Linear(hidden, num_classes, rngs=rngs),
      ]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(B, H, W, C)`` to logits ``(B, num_classes)``."""
    for layer in self.features:
      x = layer(x)
    first, *rest = self.classifier
    if 3 * x.shape[1] * x.shape[2] < 7 * 7:  # maps up to 4 x 4: see _pooled_linear
      x = _pooled_linear(first, x, 7)
    else:
      x = adaptive_avg_pool(x, 7)
      x = first(x.reshape(x.shape[0], -1))  # (H, W, C) order; the loader permutes classifier.0
    for layer in rest:
      x = layer(x)
    return x


def _pooled_linear(linear: nnx.Linear, x: jax.Array, out: int) -> jax.Array:
  """``linear(adaptive_avg_pool(x, out).reshape(B, -1))``, with the pool folded into the kernel.

  On a map smaller than ``out x out`` (inputs under 224 x 224 in VGG) the
  adaptive pool only repeats and averages cells, so the product equals ``x``
  times a kernel whose rows are weighted sums of the original's: for VGG-16
  at 64 x 64 a 2 x 2 map meets a 2048-row kernel instead of the 25088-row
  ``classifier.0`` (411 MB). Same function and parameters; only the float
  summation order differs. The fold reads the kernel once per call (shared
  by all samples of a vmap) and writes the folded one; the forward and
  backward dots then read the folded one instead of the original. That
  moves fewer bytes even for a single sample when the folded kernel is under
  a third of the original, so `VGG` folds maps of at most 16 cells.
  """
  b, h, w, c = x.shape
  kernel = linear.kernel[...].reshape(out, out, c, -1)
  rows, cols = _adaptive_matrix(h, out), _adaptive_matrix(w, out)
  cells = []
  for i, j in np.ndindex(h, w):
    weights = np.outer(rows[:, i], cols[:, j])  # how much input cell (i, j) feeds each output cell
    terms = [float(weight) * kernel[p, q] for (p, q), weight in np.ndenumerate(weights) if weight]
    cells.append(sum(terms[1:], terms[0]))
  folded = jnp.stack(cells).reshape(h * w * c, -1)
  bias = linear.bias[...] if linear.bias is not None else None
  x, folded, bias = linear.promote_dtype((x.reshape(b, -1), folded, bias), dtype=linear.dtype)
  kwargs = {} if linear.preferred_element_type is None else {"preferred_element_type": linear.preferred_element_type}
  y = linear.dot_general(x, folded, (((1,), (0,)), ((), ())), precision=linear.precision, **kwargs)
  return y if bias is None else y + bias


def _vgg(config: str, batch_norm: bool, weights: Any, rngs: nnx.Rngs, kwargs: dict[str, Any]) -> VGG:
  return build_model(lambda rngs: VGG(CONFIGS[config], batch_norm=batch_norm, rngs=rngs, **kwargs), weights, rngs)


# The presets take `weights=` (None, a checkpoint path or a mapping of torchvision-named arrays, e.g.
# `adaptgrad_jax.weights.pretrained("vgg16")`), `rngs=` and the `VGG` options (`num_classes`, `hidden`,
# `dropout`, `in_channels`). Call `model.eval()` before explaining.


def vgg11(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VGG:
  """VGG-11 (configuration "A"), torchvision's ``vgg11``; ``weights`` and ``**kwargs`` as in `vgg16`."""
  return _vgg("A", False, weights, rngs, kwargs)


def vgg11_bn(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VGG:
  """VGG-11 with batch norm, torchvision's ``vgg11_bn``; ``weights`` and ``**kwargs`` as in `vgg16`."""
  return _vgg("A", True, weights, rngs, kwargs)


def vgg13(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VGG:
  """VGG-13 (configuration "B"), torchvision's ``vgg13``; ``weights`` and ``**kwargs`` as in `vgg16`."""
  return _vgg("B", False, weights, rngs, kwargs)


def vgg13_bn(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VGG:
  """VGG-13 with batch norm, torchvision's ``vgg13_bn``; ``weights`` and ``**kwargs`` as in `vgg16`."""
  return _vgg("B", True, weights, rngs, kwargs)


def vgg16(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VGG:
  """VGG-16 (configuration "D"), torchvision's ``vgg16``, the paper's first model.

  Args:
    weights: None (random initialisation), a checkpoint path or a mapping of
      torchvision-named arrays, e.g. ``adaptgrad_jax.weights.pretrained("vgg16")``.
    rngs: the random streams for initialisation and dropout.
    **kwargs: `VGG` options: ``num_classes``, ``hidden``, ``dropout``, ``in_channels``.

  Returns:
    A `VGG`; call ``model.eval()`` before explaining (dropout off).

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models, weights
    >>> abstract = nnx.eval_shape(lambda: models.vgg16(rngs=nnx.Rngs(0)))  # shapes only
    >>> models.state_dict_from_model(abstract)["classifier.0.weight"].shape
    (4096, 25088)
    >>> model = models.vgg16(weights=weights.pretrained("vgg16"), rngs=nnx.Rngs(0))  # doctest: +SKIP
    >>> model.eval()  # doctest: +SKIP
    >>> logits = model(images)  # (B, 224, 224, 3), ImageNet-normalised  # doctest: +SKIP

  References:
    Simonyan & Zisserman, "Very deep convolutional networks for large-scale
    image recognition", ICLR 2015.
  """
  return _vgg("D", False, weights, rngs, kwargs)


def vgg16_bn(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VGG:
  """VGG-16 with batch norm, torchvision's ``vgg16_bn``; ``weights`` and ``**kwargs`` as in `vgg16`."""
  return _vgg("D", True, weights, rngs, kwargs)


def vgg19(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VGG:
  """VGG-19 (configuration "E"), torchvision's ``vgg19``; ``weights`` and ``**kwargs`` as in `vgg16`."""
  return _vgg("E", False, weights, rngs, kwargs)


def vgg19_bn(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VGG:
  """VGG-19 with batch norm, torchvision's ``vgg19_bn``; ``weights`` and ``**kwargs`` as in `vgg16`."""
  return _vgg("E", True, weights, rngs, kwargs)
