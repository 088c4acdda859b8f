"""The data domain ``[x_min, x_max]``: validation, broadcasting and the eager check."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax._pytree import broadcast_like
from adaptgrad_jax._typing import Bounds, PyTree


def require_bounds(bounds: Bounds, where: str, *, sigma_ok: bool = False,
                   why: str = "the noise scale depends on it") -> tuple[Any, Any]:
  """``validate_bounds`` for a transform whose noise scale depends on the data range: no default.

  Raises:
    TypeError: if ``bounds`` is None, explaining the convention.
  """
  if bounds is None:
    alternative = " (or an absolute sigma=...)" if sigma_ok else ""
    raise TypeError(
        f"{where} needs bounds=(x_min, x_max){alternative}: the range of the"
        f" data as the model sees it, after normalisation, because {why}. Use"
        " bounds=(0.0, 1.0) for inputs in [0, 1] and"
        " bounds=adaptgrad_jax.models.IMAGENET_BOUNDS for torchvision's"
        " ImageNet normalisation ((0 - mean) / std, (1 - mean) / std per"
        " channel). There is no default: a wrong range silently gives a wrong"
        " result."
    )
  return validate_bounds(bounds)


def validate_bounds(bounds: Bounds, name: str = "bounds") -> tuple[Any, Any]:
  """Checks ``bounds`` when a transform is built and returns ``(lower, upper)``.

  Concrete bounds (Python numbers, NumPy or concrete JAX arrays) are checked for
  ``lower < upper`` elementwise; traced bounds are passed through unchecked.
  """
  if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
    raise TypeError(
        f"{name}={bounds!r} must be a pair (lower, upper), e.g. (0.0, 1.0) for"
        " images in [0, 1]; each may be a scalar, an array broadcastable to the"
        " input (e.g. per channel) or a pytree shaped like the input."
    )
  lower, upper = bounds
  lo_leaves, lo_tree = jax.tree.flatten(lower)
  hi_leaves, hi_tree = jax.tree.flatten(upper)
  if lo_tree != hi_tree:
    raise ValueError(
        f"{name}: lower and upper have different tree structures ({lo_tree} vs"
        f" {hi_tree}); give both as scalars, arrays or pytrees of one shape."
    )
  for lo, hi in zip(lo_leaves, hi_leaves):
    if isinstance(lo, jax.core.Tracer) or isinstance(hi, jax.core.Tracer):
      continue
    lo_np, hi_np = np.asarray(lo), np.asarray(hi)
    if not (np.all(np.isfinite(lo_np)) and np.all(np.isfinite(hi_np))):
      raise ValueError(f"{name}=({lower!r}, {upper!r}) must be finite.")
    try:
      bad = ~(lo_np < hi_np)
    except ValueError as err:  # shapes that do not broadcast
      raise ValueError(
          f"{name}: lower {lo_np.shape} and upper {hi_np.shape} do not"
          " broadcast against each other."
      ) from err
    if np.any(bad):
      raise ValueError(
          f"{name}=({lower!r}, {upper!r}) needs lower < upper everywhere"
          f" ({int(np.sum(bad))} element(s) violate it); pass the data range,"
          " e.g. (0.0, 1.0) for images in [0, 1]."
      )
  return lower, upper


def layout_hint(value_shape: tuple, x_shape: tuple) -> str:
  """How to pass per-channel values for ``x_shape``: the layout convention, with a shape that fits.

  For a 1-D ``value_shape`` of length C that matches an axis of ``x_shape``
  other than the last, the suggested shape puts C on that axis and 1 after
  it, e.g. ``(3, 1, 1)`` for a channels-first ``(3, 32, 32)`` input.
  """
  hint = (
      " The library's layout is channels last (NHWC; HWC for one example),"
      " where per-channel values have shape (C,)."
  )
  if len(value_shape) == 1 and value_shape[0] > 1:
    axes = [i for i, size in enumerate(x_shape[:-1]) if size == value_shape[0]]
    if axes:
      fit = (value_shape[0],) + (1,) * (len(x_shape) - axes[0] - 1)
      return (
          f"{hint} For an input with channels on axis {axes[0]} (e.g. NCHW / CHW),"
          f" pass them with shape {fit} (jnp.reshape(v, {fit})), or an array"
          " shaped like the input; or transpose the input to channels last."
      )
  return f"{hint} Pass a scalar, such a per-channel array, or an array broadcastable to the input."


def check_broadcasts(value_shape: tuple, x_shape: tuple, what: str) -> None:
  """Raises unless ``value_shape`` broadcasts to ``x_shape`` without changing it, naming the layout."""
  value_shape, x_shape = tuple(value_shape), tuple(x_shape)
  try:
    shape = np.broadcast_shapes(value_shape, x_shape)
  except ValueError:
    shape = None
  if shape != x_shape:
    raise ValueError(
        f"{what} has shape {value_shape}, which does not broadcast to the"
        f" input's shape {x_shape}.{layout_hint(value_shape, x_shape)}"
    )


def broadcast_bounds(x: PyTree, bounds: Bounds) -> tuple[PyTree, PyTree]:
  """Returns ``(lower, upper)`` as pytrees with ``x``'s structure (one array is used for every leaf).

  Raises:
    ValueError: if a bound does not broadcast to its leaf of ``x`` (e.g.
      per-channel bounds of shape (C,) for a channels-first input), saying
      the layout and the shape that fits.
  """
  lower, upper = bounds
  lower = broadcast_like(lower, x, "the lower bound")
  upper = broadcast_like(upper, x, "the upper bound")
  for leaf, lo, hi in zip(jax.tree.leaves(x), jax.tree.leaves(lower), jax.tree.leaves(upper)):
    check_broadcasts(np.shape(lo), np.shape(leaf), "bounds: the lower bound")
    check_broadcasts(np.shape(hi), np.shape(leaf), "bounds: the upper bound")
  return lower, upper


def check_bounds(x: PyTree, bounds: Bounds) -> None:
  """Raises if any element of ``x`` lies outside ``bounds``; call it eagerly.

  The smoothing transforms give an element outside its bounds no noise at all
  (sigma = 0, see :func:`adaptive_sigma`): its distance to the wrong edge is
  never used. This check makes such inputs loud instead, e.g. an image
  normalised with the wrong mean and std.

  Args:
    x: the input, an array or a pytree of arrays (concrete, not traced).
    bounds: ``(lower, upper)`` as accepted by :func:`adapt_smooth`.

  Raises:
    ValueError: with the number of offending elements and the range seen.

  Example:
    >>> import adaptgrad_jax as ag
    >>> ag.check_bounds(jnp.array([0.0, 0.5, 1.0]), (0.0, 1.0))
  """
  lower, upper = broadcast_bounds(x, require_bounds(bounds, "check_bounds"))
  total = nans = 0
  seen_lo, seen_hi = np.inf, -np.inf
  for leaf, lo, hi in zip(
      jax.tree.leaves(x), jax.tree.leaves(lower), jax.tree.leaves(upper)
  ):
    leaf = np.asarray(leaf, dtype=np.float64)
    nan = np.isnan(leaf)
    outside = (leaf < np.asarray(lo)) | (leaf > np.asarray(hi)) | nan
    total += int(np.sum(outside))
    nans += int(np.sum(nan))
    finite = leaf[~nan]
    if finite.size:  # np.nanmin of an all-NaN leaf warns
      seen_lo, seen_hi = min(seen_lo, finite.min()), max(seen_hi, finite.max())
  if total:
    spans = (f"the input spans [{seen_lo:.4g}, {seen_hi:.4g}]" if seen_lo <= seen_hi
             else "the input has no number")
    if nans:
      spans += f" and {nans} NaN(s)"
    raise ValueError(
        f"{total} input element(s) lie outside bounds=({bounds[0]!r},"
        f" {bounds[1]!r}) ({spans});"
        " pass the bounds of the space the model sees (after normalisation), or"
        " clip the input."
    )


def distance_to_bounds(x: jax.Array, lower: Any, upper: Any) -> jax.Array:
  """``d_i = min(x_i - x_min, x_max - x_i)``, and 0 outside the bounds."""
  return jnp.maximum(jnp.minimum(x - lower, upper - x), 0)
