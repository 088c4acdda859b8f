"""Input invariance (Kindermans et al.): a constant input shift."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common
from adaptgrad_jax.metrics import _correlation
from adaptgrad_jax.metrics import _randomisation

PyTree = Any
SIMILARITIES = ("rank_correlation", "mean_abs_difference")


def invariance(
    maps: ArrayLike,
    shifted_maps: ArrayLike,
    *,
    similarity: str = "rank_correlation",
    scaling: str | None = "no_abs",
    clip_percentile: float = 99.0,
    reduce_channels: str | None = None,
    reduce: str | None = "mean_abs",
) -> jax.Array:
  """Input-invariance test: explanations of x by model 1 vs x + s by model 2.

  Kindermans et al. (2019) train one network on inputs x and a second,
  otherwise identical, on x + s for a constant shift s (the AdaptGrad paper
  uses MNIST in [0, 1] and s = 1). Both models then compute the same function
  of the digit, so an input-invariant explanation of ``x`` under model 1
  equals that of ``x + s`` under model 2.

  Two similarity conventions are offered:

  * ``"rank_correlation"`` (default, the AdaptGrad code's convention, Table 1
    reports 0.3483 for the plain gradient): per-example Spearman correlation
    of the scaled maps, aggregated as the mean absolute correlation. HIGHER
    means more invariant.
  * ``"mean_abs_difference"``: the mean over elements of |e1 - e2| per
    example, then the mean over examples (``reduce`` is then ``"mean"`` or
    None). 0 means exactly invariant; this is the quantity Kindermans et al.
    show is 0 for the gradient under a bias-compensated shift.

  Args:
    maps: explanations of x under the model trained on x, shape (B, ...).
    shifted_maps: explanations of x + s under the model trained on x + s.
    similarity: ``"rank_correlation"`` or ``"mean_abs_difference"``.
    scaling: map scaling before ranking (rank correlation only).
    clip_percentile: percentile used by the scaling.
    reduce_channels: optional channel reduction of (H, W, C) maps.
    reduce: ``"mean_abs"`` (default), ``"mean"`` or None (per example).

  Returns:
    A scalar, or the (B,) per-example values when ``reduce`` is None.

  Raises:
    ValueError: maps of different shapes, NaN in a map, unknown options.

  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import invariance
    >>> m = jnp.arange(12.0).reshape(2, 6)
    >>> float(invariance(m, m, similarity="mean_abs_difference"))
    0.0

  References:
    Kindermans et al., "The (un)reliability of saliency methods", 2019.
    Zhou et al., "AdaptGrad", NeurIPS 2025, Sec. 5.1, Table 1.
  """
  _common.check_choice(similarity, "similarity", SIMILARITIES)
  if similarity == "rank_correlation":
    corrs = _correlation.paired_rank_correlations(
        maps, shifted_maps, scaling=scaling, clip_percentile=clip_percentile,
        reduce_channels=reduce_channels, names=("maps", "shifted_maps"))
    return _randomisation.reduce_correlations(corrs, reduce)
  _common.check_choice(reduce, "reduce", _randomisation.REDUCTIONS)
  a = _common.as_float_array(maps, "maps")
  b = _common.as_float_array(shifted_maps, "shifted_maps")
  _common.check_same_shape(a, b, "maps", "shifted_maps")
  _common.check_finite(a, "maps")
  _common.check_finite(b, "shifted_maps")
  if a.ndim < 2:
    raise ValueError(
        f"maps has shape {a.shape}; pass a batch of maps with the examples on "
        f"the leading axis (add one with maps[None]).")
  _common.reduce_channels(jnp.zeros((1, 1, 1)), reduce_channels)  # validates
  per_example = _mean_abs_difference(a, b, reduce_channels)
  return per_example if reduce is None else jnp.mean(per_example)


@functools.partial(jax.jit, static_argnums=2)
def _mean_abs_difference(a, b, reduce_channels):
  a = jax.vmap(lambda x: _common.reduce_channels(x, reduce_channels))(a)
  b = jax.vmap(lambda x: _common.reduce_channels(x, reduce_channels))(b)
  return jnp.mean(jnp.abs(a - b).reshape(a.shape[0], -1), axis=1)


def shift_first_layer_bias(
    params: PyTree,
    shift: ArrayLike,
    *,
    layer: str,
    kernel: str = "kernel",
    bias: str = "bias",
) -> PyTree:
  """Parameters of a model that sees x + shift and computes what ``params`` did on x.

  For a first dense layer ``y = x @ W + b`` (Flax layout, W of shape
  (in, out)), feeding ``x + s`` and replacing the bias by
  ``b' = b - s @ W`` gives ``(x + s) @ W + b' = x @ W + b``: every later
  activation, the output and hence the plain gradient are unchanged. This is
  the analytic alternative to retraining on shifted data used by Kindermans
  et al. (2019, Sec. 2) to test input invariance without training noise.

  Args:
    params: a pytree of parameters (e.g. ``nnx.split(model)[1]``).
    shift: the input shift, a scalar or an array of the layer's input shape
      (flattened, it must have ``in`` elements).
    layer: path prefix of the first dense layer, e.g. ``"linear1"``.
    kernel: name of the kernel leaf under ``layer``.
    bias: name of the bias leaf under ``layer``.

  Returns:
    A pytree like ``params`` with only that bias replaced.

  Raises:
    ValueError: if ``layer/kernel`` or ``layer/bias`` is missing, the kernel
      is not 2-D, or the shift's size does not match the kernel's input size.

  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import shift_first_layer_bias
    >>> p = {"l1": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    >>> shift_first_layer_bias(p, 1.0, layer="l1")["l1"]["bias"].tolist()
    [-3.0, -3.0]

  References:
    Kindermans et al., "The (un)reliability of saliency methods", 2019.
  """
  layer = layer.strip("/")
  kpath, bpath = f"{layer}/{kernel}", f"{layer}/{bias}"
  leaves = {
      _common.path_str(p): x
      for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  for name in (kpath, bpath):
    if name not in leaves:
      raise ValueError(
          f"layer={layer!r}: no parameter {name!r} in params; available "
          f"parameters are {sorted(leaves)}.")
  w = jnp.asarray(leaves[kpath])
  if w.ndim != 2:
    raise ValueError(
        f"{kpath} has shape {w.shape}; the analytic shift needs a dense "
        f"(in, out) kernel as the first layer (convolutions with padding do "
        f"not shift exactly).")
  s = jnp.asarray(shift, dtype=w.dtype)
  s = jnp.broadcast_to(s, (w.shape[0],)) if s.ndim == 0 else s.reshape(-1)
  if s.shape[0] != w.shape[0]:
    raise ValueError(
        f"shift has {s.shape[0]} elements but {kpath} expects {w.shape[0]} "
        f"inputs; pass a scalar or an array of the input's shape.")
  new_bias = jnp.asarray(leaves[bpath]) - s @ w
  return jax.tree_util.tree_map_with_path(
      lambda p, x: new_bias if _common.path_str(p) == bpath else x, params)
