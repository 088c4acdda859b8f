"""Vision Transformer (torchvision architecture) in Flax NNX.

The image is cut into ``patch_size`` x ``patch_size`` patches by a strided
convolution (``conv_proj``), a class token is prepended, learned position
embeddings are added, and pre-norm encoder blocks (multi-head self-attention
and an MLP with exact GELU) follow; the class token's final state goes through
``heads.head``. Attribute paths mirror torchvision's ``VisionTransformer``, so
its ``state_dict()`` loads with `load_state_dict` (``class_token``,
``encoder.pos_embedding``, ``encoder.layers.encoder_layer_0.self_attention.
in_proj_weight``, ``encoder.layers.encoder_layer_0.mlp.3.bias``, ``heads.head.
weight``, ...). Those four ViT-specific leaves (``class_token``,
``pos_embedding``, ``in_proj_weight``, ``in_proj_bias``) are stored in torch's
layout under their torch names.

Explaining a ViT. Inputs are NHWC images ``(B, H, W, 3)``, normalised as for
any torchvision ImageNet model (`preprocess_imagenet`). Every transform of
`adaptgrad_jax` perturbs and differentiates this normalised image, in pixel
space, before the patching: noise is drawn per pixel and channel, the patch
embedding is part of the differentiated function, and the gradient is a map
over pixels like a CNN's. The bounds are therefore the usual per-channel
ImageNet bounds, ``bounds=models.IMAGENET_BOUNDS`` (the normalised images of 0
and 1), for `adaptgrad_jax.adapt_smooth` and `adaptgrad_jax.smooth_grad`.
Nothing is smoothed in token space.

Image size. A ViT is built for one square ``image_size`` (224 for the
torchvision weights), a multiple of ``patch_size``; its position embeddings
have one entry per patch of that grid plus the class token. Other input sizes
are rejected with an error: resize or crop the image to ``image_size`` (as
`preprocess_imagenet` does), or build the model for another size and load
weights whose position embeddings were resized to that grid by
`interpolate_pos_embedding` (torchvision's ``interpolate_embeddings``: bicubic,
corners aligned; the model then computes a different function from the 224
one, as in torchvision). Dropout is not implemented (torchvision's ViTs train
with dropout rate 0).

Initialisation without weights is Flax's default (the class token and
position embeddings drawn with standard deviation 0.02), not torchvision's
(whose head starts at zero).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptgrad_jax.models import _loading
from adaptgrad_jax.models import _layers
from adaptgrad_jax.models._loading import build_model

__all__ = [
  "EncoderBlock",
  "MultiheadAttention",
  "VisionTransformer",
  "interpolate_pos_embedding",
  "vit_b_16",
  "vit_b_32",
  "vit_l_16",
  "vit_micro",
]

# class_token, pos_embedding, in_proj_weight and in_proj_bias are stored in torch's layout under their
# torch names (see `_loading._LEAF_NAMES`).

_layer_norm, _identity, _gelu = _layers.layer_norm, _layers.identity, _layers.gelu


class MultiheadAttention(nnx.Module):
  """torch's ``nn.MultiheadAttention`` for self-attention (``batch_first=True``, no masks, no dropout).

  ``in_proj_weight`` ``(3 D, D)`` and ``in_proj_bias`` ``(3 D,)`` hold the query,
  key and value projections stacked in torch's layout; ``out_proj`` is a Linear.
  """

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"hidden_dim={dim} must be divisible by num_heads={num_heads}")
    self.num_heads = num_heads
    init = nnx.initializers.xavier_uniform()
    self.in_proj_weight = nnx.Param(init(rngs.params(), (3 * dim, dim)))
    self.in_proj_bias = nnx.Param(jnp.zeros((3 * dim,)))
    self.out_proj = nnx.Linear(dim, dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps tokens ``(B, L, D)`` to ``(B, L, D)``."""
    b, length, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = x @ self.in_proj_weight[...].T + self.in_proj_bias[...]
    q, k, v = (t.reshape(b, length, self.num_heads, head_dim) for t in jnp.split(qkv, 3, axis=-1))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(head_dim), k)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
    return self.out_proj(out.reshape(b, length, dim))


class EncoderBlock(nnx.Module):
  """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``.

  ``mlp`` is an `nnx.List` with torchvision's indices: Linear (0), GELU (1),
  dropout (2, identity), Linear (3), dropout (4, identity).
  """

  def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, *, rngs: nnx.Rngs):
    self.ln_1 = _layer_norm(hidden_dim, rngs)
    self.self_attention = MultiheadAttention(hidden_dim, num_heads, rngs=rngs)
    self.ln_2 = _layer_norm(hidden_dim, rngs)
    self.mlp = nnx.List(
      [
        nnx.Linear(hidden_dim, mlp_dim, rngs=rngs),
        _gelu,
        _identity,
        nnx.Linear(mlp_dim, hidden_dim, rngs=rngs),
        _identity,
      ]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.self_attention(self.ln_1(x))
    y = self.ln_2(x)
    for layer in self.mlp:
      y = layer(y)
    return x + y


class _EncoderLayers(nnx.Module):
  """torchvision's ``encoder.layers``: blocks named ``encoder_layer_0`` .. ``encoder_layer_{n-1}``."""

  def __init__(self, blocks: list[EncoderBlock]):
    self.count = len(blocks)
    for i, block in enumerate(blocks):
      setattr(self, f"encoder_layer_{i}", block)

  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.count):
      x = getattr(self, f"encoder_layer_{i}")(x)
    return x


class _Encoder(nnx.Module):
  """Adds ``pos_embedding`` ``(1, L, D)``, runs ``layers``, then the final LayerNorm ``ln``."""

  def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int, *, rngs):
    self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, seq_length, hidden_dim)))
    self.layers = _EncoderLayers([EncoderBlock(num_heads, hidden_dim, mlp_dim, rngs=rngs) for _ in range(num_layers)])
    self.ln = _layer_norm(hidden_dim, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.ln(self.layers(x + self.pos_embedding[...]))


class _Heads(nnx.Module):
  """torchvision's ``heads``: a Sequential holding one Linear named ``head``."""

  def __init__(self, hidden_dim: int, num_classes: int, *, rngs: nnx.Rngs):
    self.head = nnx.Linear(hidden_dim, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(x)


class VisionTransformer(nnx.Module):
  """torchvision's ``VisionTransformer`` (without the optional pre-logits layer).

  Args:
    image_size: the side of the square inputs, a multiple of ``patch_size``.
    patch_size: the side of the square patches.
    num_layers: encoder blocks.
    num_heads: attention heads per block.
    hidden_dim: token width.
    mlp_dim: hidden width of each block's MLP.
    num_classes: number of logits.
    in_channels: input channels.
    rngs: the random streams for initialisation.
  """

  def __init__(
    self,
    *,
    image_size: int,
    patch_size: int,
    num_layers: int,
    num_heads: int,
    hidden_dim: int,
    mlp_dim: int,
    num_classes: int = 1000,
    in_channels: int = 3,
    rngs: nnx.Rngs,
  ):
    if image_size % patch_size:
      raise ValueError(
        f"image_size={image_size} must be a multiple of patch_size={patch_size}; "
        f"use image_size={image_size // patch_size * patch_size} or {(image_size // patch_size + 1) * patch_size}"
      )
    if hidden_dim % num_heads:
      raise ValueError(f"hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}")
    self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
    self.conv_proj = nnx.Conv(
      in_channels, hidden_dim, (patch_size, patch_size), strides=patch_size, padding="VALID", rngs=rngs
    )
    self.class_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, hidden_dim)))
    seq_length = (image_size // patch_size) ** 2 + 1
    self.encoder = _Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, rngs=rngs)
    self.heads = _Heads(hidden_dim, num_classes, rngs=rngs)

  def _check_input(self, x: jax.Array) -> None:
    want = (self.image_size, self.image_size, self.in_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
      hint = ""
      if x.ndim == 4 and x.shape[-1] == self.in_channels:
        h, w = x.shape[1:3]
        if h % self.patch_size or w % self.patch_size:
          hint = f" ({h} x {w} is not even a multiple of the patch size {self.patch_size})"
      raise ValueError(
        f"this ViT takes NHWC images (B, {self.image_size}, {self.image_size}, {self.in_channels}), got shape "
        f"{tuple(x.shape)}{hint}; resize or crop to {self.image_size} x {self.image_size} (e.g. "
        f"preprocess_imagenet(img, crop={self.image_size})), or build the model with image_size=... and "
        "weights=interpolate_pos_embedding(state_dict, image_size, patch_size=...)"
      )

  def tokens(self, x: jax.Array) -> jax.Array:
    """The final, normalised tokens ``(B, 1 + (H / p) (W / p), D)``; token 0 is the class token."""
    self._check_input(x)
    x = self.conv_proj(x)  # (B, H/p, W/p, D)
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)  # row-major patches, as torch's (D, H/p * W/p) after the permute
    cls = jnp.broadcast_to(self.class_token[...].astype(x.dtype), (b, 1, d))
    return self.encoder(jnp.concatenate([cls, x], axis=1))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(B, image_size, image_size, C)`` to logits ``(B, num_classes)``."""
    return self.heads(self.tokens(x)[:, 0])


def _bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """``(size_out, size_in)`` weights of torch's bicubic resize with ``align_corners=True`` (A = -0.75, clamped)."""
  a = -0.75
  near = lambda t: ((a + 2) * t - (a + 3)) * t * t + 1  # noqa: E731  |t| <= 1
  far = lambda t: ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # noqa: E731  1 < |t| < 2
  scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
  matrix = np.zeros((size_out, size_in))
  for i in range(size_out):
    src = i * scale
    left = math.floor(src)
    t = src - left
    for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
      matrix[i, min(max(left + offset, 0), size_in - 1)] += weight
  return matrix


def interpolate_pos_embedding(
  state_dict: Mapping[str, Any], image_size: int, *, patch_size: int
) -> dict[str, np.ndarray]:
  """Resizes a ViT checkpoint's position embeddings to the patch grid of ``image_size``.

  torchvision's ``interpolate_embeddings``: the class token's embedding is
  kept, the patch embeddings, a square grid, are resized by bicubic
  interpolation with aligned corners (torch's ``F.interpolate(...,
  mode="bicubic", align_corners=True)``), computed here in float64 and cast
  back. Build the model with the same ``image_size`` and load the result.

  Args:
    state_dict: torchvision-named arrays holding ``encoder.pos_embedding``
      ``(1, 1 + g * g, D)``.
    image_size: the new input side, a multiple of ``patch_size``.
    patch_size: the model's patch side (16 for ``vit_b_16``).

  Returns:
    A new dict, ``state_dict`` with ``encoder.pos_embedding`` of shape
    ``(1, 1 + (image_size / patch_size) ** 2, D)`` (NumPy arrays).

  Raises:
    ValueError: if ``image_size`` is not a multiple of ``patch_size`` or the
      checkpoint's embeddings are not a square grid plus a class token.

  Example:
    >>> import jax
    >>> import numpy as np
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> abstract = nnx.eval_shape(lambda: models.vit_micro(rngs=nnx.Rngs(0)))  # 32 x 32 inputs, 8 x 8 patches
    >>> sd = {k: np.zeros(v.shape, v.dtype) for k, v in models.state_dict_from_model(abstract).items()}
    >>> sd48 = models.interpolate_pos_embedding(sd, 48, patch_size=8)
    >>> sd48["encoder.pos_embedding"].shape
    (1, 37, 16)
    >>> model = models.vit_micro(image_size=48, weights=sd48, rngs=nnx.Rngs(0))
    >>> jax.eval_shape(model, jax.ShapeDtypeStruct((1, 48, 48, 3), np.float32)).shape
    (1, 10)
  """
  if image_size % patch_size:
    raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
  key = "encoder.pos_embedding"
  if key not in state_dict:
    raise ValueError(f"state_dict has no {key!r}; pass a torchvision ViT state dict")
  embedding = np.asarray(_loading._as_numpy(state_dict[key]))  # pylint: disable=protected-access
  grid = math.isqrt(embedding.shape[1] - 1) if embedding.ndim == 3 and embedding.shape[1] > 1 else 0
  if embedding.ndim != 3 or embedding.shape[0] != 1 or grid * grid != embedding.shape[1] - 1:
    raise ValueError(
      f"{key} has shape {embedding.shape}; expected (1, 1 + g * g, hidden_dim), a class token and a square grid"
    )
  new_grid = image_size // patch_size
  out = dict(state_dict)
  if new_grid == grid:
    return out
  matrix = _bicubic_matrix(grid, new_grid)
  patches = embedding[0, 1:].astype(np.float64).reshape(grid, grid, -1)
  resized = np.einsum("ih,hwd,jw->ijd", matrix, patches, matrix).reshape(1, new_grid * new_grid, -1)
  out[key] = np.concatenate([embedding[:, :1], resized.astype(embedding.dtype)], axis=1)
  return out


_MLP_LEGACY = re.compile(r"^(.*\.mlp\.)linear_([12])\.(weight|bias)$")


def _vit_state_dict(weights: Any) -> Any:
  """Renames torchvision's pre-0.14 MLP keys (``mlp.linear_1`` -> ``mlp.0``, ``mlp.linear_2`` -> ``mlp.3``)."""
  if weights is None:
    return None
  state_dict = _loading._as_state_dict(weights)  # pylint: disable=protected-access
  renamed = {}
  for key, value in state_dict.items():
    match = _MLP_LEGACY.match(key)
    if match:
      key = f"{match[1]}{0 if match[2] == '1' else 3}.{match[3]}"
    renamed[key] = value
  return renamed


def _vit(weights: Any, rngs: nnx.Rngs, config: Mapping[str, int], kwargs: dict[str, Any]) -> VisionTransformer:
  options = {**config, **kwargs}
  return build_model(lambda r: VisionTransformer(**options, rngs=r), _vit_state_dict(weights), rngs)


# The presets take `weights=` (None, a checkpoint path or a mapping of torchvision-named arrays; keys of
# torchvision's older MLP naming, `mlp.linear_1`, are renamed), `rngs=` and `VisionTransformer` options
# (`num_classes`, `image_size`, ...).


def vit_b_16(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VisionTransformer:
  """ViT-B/16 (86.6 M parameters), torchvision's ``vit_b_16``.

  See the module docstring for how bounds and smoothing apply: the input is
  the normalised image in pixel space (``bounds=models.IMAGENET_BOUNDS``).

  Args:
    weights: None (random initialisation), a checkpoint path or a mapping of
      torchvision-named arrays (``conv_proj.weight``, ``class_token``,
      ``encoder.pos_embedding``, ...); the pre-0.14 names ``mlp.linear_1`` /
      ``mlp.linear_2`` are accepted too.
    rngs: the random streams for initialisation.
    **kwargs: `VisionTransformer` options, e.g. ``num_classes``.

  Returns:
    A `VisionTransformer` for 224 x 224 inputs.

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> abstract = nnx.eval_shape(lambda: models.vit_b_16(rngs=nnx.Rngs(0)))  # shapes only
    >>> sd = models.state_dict_from_model(abstract)
    >>> sd["encoder.pos_embedding"].shape, sd["encoder.layers.encoder_layer_11.self_attention.in_proj_weight"].shape
    ((1, 197, 768), (2304, 768))

  References:
    Dosovitskiy et al., "An image is worth 16x16 words: Transformers for image
    recognition at scale", ICLR 2021.
  """
  config = dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
  return _vit(weights, rngs, config, kwargs)


def vit_b_32(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VisionTransformer:
  """ViT-B/32, torchvision's ``vit_b_32``; ``weights`` and ``**kwargs`` as in `vit_b_16`."""
  config = dict(image_size=224, patch_size=32, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
  return _vit(weights, rngs, config, kwargs)


def vit_l_16(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VisionTransformer:
  """ViT-L/16, torchvision's ``vit_l_16``; ``weights`` and ``**kwargs`` as in `vit_b_16`."""
  config = dict(image_size=224, patch_size=16, num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096)
  return _vit(weights, rngs, config, kwargs)


def vit_micro(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> VisionTransformer:
  """A tiny test-size ViT: 32 x 32 inputs, 8 x 8 patches, 2 blocks of 2 heads, width 16, 10 classes.

  Same code paths as `vit_b_16` at a size where a test runs in a second.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from adaptgrad_jax import models
    >>> model = nnx.eval_shape(lambda: models.vit_micro(rngs=nnx.Rngs(0)))  # shapes only; drop eval_shape to build
    >>> model.eval()
    >>> nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)).shape
    (2, 10)
  """
  config = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)
  return _vit(weights, rngs, config, kwargs)
