"""Scalings that turn raw attribution maps into displayable 2-D maps.

Pure NumPy (JAX arrays are accepted and converted with `np.asarray`); no
matplotlib. Every function takes one map or a batch of maps and returns NumPy
arrays; each map in a batch is scaled on its own, as in the paper's figures.

Layout convention (the same in every function of `adaptgrad_jax.viz`):

* `channel_axis=-1` (default): a 2-D array is one map `HW`, a 3-D array is one
  map `HWC`, a 4-D array is a batch `NHWC`. Use `channel_axis=0` for one `CHW`
  map or `channel_axis=1` for a PyTorch-style `NCHW` batch.
* `channel_axis=None`: the maps have no channel axis; a 2-D array is one map
  `HW` and a 3-D array is a batch `NHW` (e.g. MNIST maps of shape (N, 28, 28)).

A 2-D array is always a single `HW` map, whatever `channel_axis` says.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
  "REDUCTIONS",
  "reduce_channels",
  "normalize_abs",
  "normalize_diverging",
]

REDUCTIONS = ("sum", "abs_sum", "mean", "max_abs", "l2")
"""The channel reductions accepted by `reduce_channels`."""


def _as_finite_array(x: Any, name: str) -> np.ndarray:
  """Converts to a float64 NumPy array; rejects NaN/inf naming the argument."""
  try:
    arr = np.asarray(x)
  except Exception as e:  # e.g. a ragged list
    raise TypeError(
      f"{name} must be an array (NumPy, JAX or nested lists of numbers); got "
      f"{type(x).__name__}: {e}"
    ) from e
  if arr.dtype == object or not (
    np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
  ):
    raise TypeError(
      f"{name} must be a numeric array; got dtype {arr.dtype}"
    )
  arr = arr.astype(np.float64)
  if arr.size == 0:
    raise ValueError(f"{name} is empty (shape {arr.shape}); pass a non-empty map")
  finite = np.isfinite(arr)
  if not finite.all():
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(arr.size - finite.sum() - n_nan)
    raise ValueError(
      f"{name} contains {n_nan} NaN and {n_inf} infinite value(s) (shape "
      f"{arr.shape}); a saliency map must be finite. Check the gradient "
      "computation (e.g. a log of 0 or a division by a zero norm) before "
      "visualising"
    )
  return arr


def _check_percentile(percentile: float) -> float:
  if isinstance(percentile, bool) or not isinstance(
    percentile, (int, float, np.integer, np.floating)
  ):
    raise TypeError(
      f"percentile={percentile!r} must be a number in (0, 100]; the paper's "
      "code uses 99"
    )
  if not 0.0 < float(percentile) <= 100.0:
    raise ValueError(
      f"percentile={percentile} must lie in (0, 100]; the paper's code uses 99 "
      "(100 disables clipping)"
    )
  return float(percentile)


def _reduce(arr: np.ndarray, how: str, channel_axis: int | None) -> np.ndarray:
  """Reduces `arr` (already validated) to `HW` or `NHW`."""
  if how not in REDUCTIONS:
    raise ValueError(
      f"how={how!r} is not a channel reduction; use one of {REDUCTIONS} "
      "('abs_sum' is the paper's grayscale convention, 'sum' keeps the sign)"
    )
  if arr.ndim == 2:
    return arr
  if channel_axis is None:
    if arr.ndim != 3:
      raise ValueError(
        f"map has shape {arr.shape}; with channel_axis=None it must be HW "
        "(2-D) or a batch NHW (3-D). Pass channel_axis=-1 for HWC / NHWC maps"
      )
    return arr
  if arr.ndim not in (3, 4):
    raise ValueError(
      f"map has shape {arr.shape}; expected HW, HWC (3-D) or a batch NHWC "
      "(4-D). For a batch of channel-less maps NHW pass channel_axis=None"
    )
  if not -arr.ndim <= channel_axis < arr.ndim:
    raise ValueError(
      f"channel_axis={channel_axis} is out of range for a map of shape "
      f"{arr.shape}; use -1 for HWC/NHWC, 0 for CHW, 1 for NCHW"
    )
  if how == "sum":
    return arr.sum(axis=channel_axis)
  if how == "abs_sum":
    return np.abs(arr).sum(axis=channel_axis)
  if how == "mean":
    return arr.mean(axis=channel_axis)
  if how == "max_abs":
    return np.abs(arr).max(axis=channel_axis)
  return np.sqrt(np.square(arr).sum(axis=channel_axis))  # "l2"


def reduce_channels(
  map: Any,  # pylint: disable=redefined-builtin
  how: str = "sum",
  *,
  channel_axis: int | None = -1,
) -> np.ndarray:
  """Reduces the channel axis of a saliency map (or a batch of maps).

  Args:
    map: one map (`HW`, `HWC`) or a batch (`NHWC`, or `NHW` with
      `channel_axis=None`); NumPy or JAX array.
    how: `"sum"` (signed sum), `"abs_sum"` (sum of absolute values, the
      convention of the paper's code and PAIR saliency), `"mean"`, `"max_abs"`
      (max of absolute values over channels, Simonyan et al. 2014) or `"l2"`
      (Euclidean norm over channels).
    channel_axis: the channel axis, or None when the maps have none (see the
      module docstring). A 2-D map is returned unchanged.

  Returns:
    A float32 array of shape `HW` (one map) or `NHW` (a batch).

  Raises:
    ValueError: `how` is unknown, the shape does not fit the layout, or the map
      contains NaN or inf.

  Example:
    >>> import numpy as np
    >>> m = np.array([[[1.0, -2.0, 2.0]]])  # one 1x1 map with 3 channels
    >>> reduce_channels(m, "sum"), reduce_channels(m, "abs_sum")
    (array([[1.]], dtype=float32), array([[5.]], dtype=float32))
    >>> reduce_channels(m, "max_abs"), reduce_channels(m, "l2")
    (array([[2.]], dtype=float32), array([[3.]], dtype=float32))
  """
  arr = _as_finite_array(map, "map")
  return _reduce(arr, how, channel_axis).astype(np.float32)


def _per_map(values: np.ndarray, fn) -> np.ndarray:
  """Applies `fn` (flat 2-D `(N, HW)` -> `(N, 1)`) per map of `HW`/`NHW`."""
  flat = values.reshape((1, -1) if values.ndim == 2 else (values.shape[0], -1))
  return fn(flat).reshape((1, 1) if values.ndim == 2 else (-1, 1, 1))


def normalize_abs(
  map: Any,  # pylint: disable=redefined-builtin
  percentile: float = 99,
  *,
  how: str = "abs_sum",
  channel_axis: int | None = -1,
) -> np.ndarray:
  """Absolute-value scaling to [0, 1] with percentile clipping.

  The grayscale convention of the paper's released code, which is PAIR
  saliency's `VisualizeImageGrayscale`: sum the absolute values over channels,
  then map `[min, p-th percentile]` linearly to `[0, 1]` and clip, so the top
  `100 - percentile` % of pixels saturate at 1::

    a = |reduce(map)|;  out = clip((a - min(a)) / (percentile(a, p) - min(a)), 0, 1)

  Each map of a batch is scaled on its own. Where the percentile equals the
  minimum (a sparse map with more than `100 - p` % of its pixels at the
  minimum), the maximum is used instead so the few non-zero pixels still show;
  a constant map (including an all-zero map) has no contrast and gives zeros,
  never NaN.

  Args:
    map: one map (`HW`, `HWC`) or a batch (`NHWC`, or `NHW` with
      `channel_axis=None`).
    percentile: the clipping percentile in (0, 100]; 99 as in the paper's code,
      100 for plain min-max scaling.
    how: the channel reduction (see `reduce_channels`), applied before the
      absolute value: `"abs_sum"` (the paper's) sums magnitudes, `"sum"` takes
      the magnitude of the signed sum (Captum's `sign="absolute_value"`).
    channel_axis: the channel axis, or None for maps without one.

  Returns:
    A float32 array in [0, 1] of shape `HW` or `NHW`.

  Raises:
    ValueError: `percentile` is outside (0, 100], the shape does not fit the
      layout, or the map contains NaN or inf.

  Example:
    >>> import numpy as np
    >>> a = np.arange(100.0).reshape(10, 10)  # 99th percentile: 98.01
    >>> out = normalize_abs(a)
    >>> float(out.min()), float(out.max()), round(float(out[9, 8]), 6)
    (0.0, 1.0, 0.999898)

  References:
    Smilkov et al., SmoothGrad: removing noise by adding noise, 2017 (PAIR
    saliency `VisualizeImageGrayscale`); Zhou et al., AdaptGrad, NeurIPS 2025
    (released code, Figures 1, 2, 4, 5, 6).
  """
  p = _check_percentile(percentile)
  arr = _as_finite_array(map, "map")
  a = np.abs(_reduce(arr, how, channel_axis))
  vmin = _per_map(a, lambda f: f.min(axis=1, keepdims=True))
  vmax = _per_map(a, lambda f: np.percentile(f, p, axis=1, keepdims=True))
  amax = _per_map(a, lambda f: f.max(axis=1, keepdims=True))
  vmax = np.where(vmax > vmin, vmax, amax)
  span = vmax - vmin
  safe = np.where(span > 0, span, 1.0)
  out = np.where(span > 0, np.clip((a - vmin) / safe, 0.0, 1.0), 0.0)
  return out.astype(np.float32)


def normalize_diverging(
  map: Any,  # pylint: disable=redefined-builtin
  percentile: float = 99,
  *,
  how: str = "sum",
  channel_axis: int | None = -1,
) -> np.ndarray:
  """Signed scaling to [-1, 1] with percentile clipping; the sign is kept.

  Like PAIR saliency's `VisualizeImageDiverging`: reduce the channels keeping
  the sign (signed sum by default), divide by the `percentile`-th percentile
  of the absolute values and clip to [-1, 1]::

    s = reduce(map);  out = clip(s / percentile(|s|, p), -1, 1)

  Zero stays at zero, so positive and negative evidence keep their meaning.
  (PAIR uses `|percentile(s, p)|`, which collapses for mostly negative maps; the
  percentile of `|s|` is symmetric in the sign.) Each map of a batch is scaled
  on its own; when the percentile is 0 the maximum of `|s|` is used, and an
  all-zero map gives zeros, never NaN.

  Args:
    map: one map (`HW`, `HWC`) or a batch (`NHWC`, or `NHW` with
      `channel_axis=None`).
    percentile: the clipping percentile of `|s|` in (0, 100]; 99 as in the
      paper's code, 100 to divide by the largest magnitude.
    how: a signed channel reduction, `"sum"` or `"mean"` (the absolute ones
      would lose the sign).
    channel_axis: the channel axis, or None for maps without one.

  Returns:
    A float32 array in [-1, 1] of shape `HW` or `NHW`, with the sign of the
    reduced map.

  Raises:
    ValueError: `percentile` is outside (0, 100], `how` is not signed, the
      shape does not fit the layout, or the map contains NaN or inf.

  Example:
    >>> import numpy as np
    >>> s = np.array([[-4.0, -1.0], [0.0, 2.0]])
    >>> normalize_diverging(s, percentile=100)
    array([[-1.  , -0.25],
           [ 0.  ,  0.5 ]], dtype=float32)

  References:
    Smilkov et al., SmoothGrad: removing noise by adding noise, 2017 (PAIR
    saliency `VisualizeImageDiverging`).
  """
  p = _check_percentile(percentile)
  if how not in ("sum", "mean"):
    raise ValueError(
      f"how={how!r} would lose the sign; normalize_diverging needs a signed "
      "reduction, 'sum' (default) or 'mean'. Use normalize_abs for magnitudes"
    )
  arr = _as_finite_array(map, "map")
  s = _reduce(arr, how, channel_axis)
  a = np.abs(s)
  span = _per_map(a, lambda f: np.percentile(f, p, axis=1, keepdims=True))
  amax = _per_map(a, lambda f: f.max(axis=1, keepdims=True))
  span = np.where(span > 0, span, amax)
  safe = np.where(span > 0, span, 1.0)
  out = np.where(span > 0, np.clip(s / safe, -1.0, 1.0), 0.0)
  return out.astype(np.float32)
