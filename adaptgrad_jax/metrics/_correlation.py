"""Rank correlation between explanation maps (Spearman, with average ranks)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common

SCALINGS = ("abs", "no_abs", None)


def abs_scale(x: ArrayLike, clip_percentile: float = 99.0) -> jax.Array:
  """The paper code's ``absscale``: min-max scaling with a clipped maximum.

  ``(x - min(x)) / (|q| - min(x))`` clipped to [0, 1], where ``q`` is the
  ``clip_percentile``-th percentile of ``x``. Despite its name it does not
  take absolute values of ``x``; "abs" refers to the map being shown as
  magnitudes. Values above the percentile saturate at 1 (and tie).
  """
  x = jnp.asarray(x)
  vmax = jnp.abs(jnp.percentile(x, clip_percentile))
  vmin = jnp.min(x)
  return jnp.clip((x - vmin) / (vmax - vmin), 0.0, 1.0)


def no_abs_scale(x: ArrayLike, clip_percentile: float = 99.0) -> jax.Array:
  """The paper code's ``noabsscale``: ``x / (2 |q|)`` clipped to [-1, 1].

  ``q`` is the ``clip_percentile``-th percentile of ``x``; signs are kept.
  """
  x = jnp.asarray(x)
  span = jnp.abs(jnp.percentile(x, clip_percentile))
  return jnp.clip(x / (2.0 * span), -1.0, 1.0)


def average_ranks(x: ArrayLike) -> jax.Array:
  """1-based ranks of the flattened array, ties given the average of their ranks.

  ``jax.scipy.stats.rankdata(x, method="average")``, as ``scipy.stats.rankdata``; jit-compatible.
  """
  return jax.scipy.stats.rankdata(jnp.asarray(x).reshape(-1), method="average")


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pearson's r, NaN when either side is constant.

  Written out rather than ``jnp.corrcoef(a, b)[0, 1]``: in float32 that gives
  0.99999994 for identical rankings, where this gives exactly 1 (as scipy).
  """
  constant = (jnp.max(a) == jnp.min(a)) | (jnp.max(b) == jnp.min(b))
  a = a - jnp.mean(a)
  b = b - jnp.mean(b)
  r = jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
  return jnp.where(constant, jnp.nan, jnp.clip(r, -1.0, 1.0))


def pearson_correlation(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Pearson correlation of two flattened arrays (NaN if one is constant)."""
  a = jnp.asarray(a, dtype=jnp.result_type(float)).reshape(-1)
  b = jnp.asarray(b, dtype=jnp.result_type(float)).reshape(-1)
  return _pearson_jit(a, b)


_pearson_jit = jax.jit(_pearson)


def rank_correlation(
    a: ArrayLike,
    b: ArrayLike,
    *,
    scaling: str | None = None,
    clip_percentile: float = 99.0,
    reduce_channels: str | None = None,
) -> jax.Array:
  """Spearman rank correlation between two explanation maps of one example.

  Both maps are flattened (after an optional channel reduction and scaling),
  ranked with ties given their average rank, and the Pearson correlation of
  the ranks is returned, exactly as ``scipy.stats.spearmanr``. A map that is
  constant (after scaling) has no ranking and gives NaN, as in scipy; the
  aggregates in :func:`consistency` and :func:`invariance` drop those, as the
  paper's code does.

  ``scaling`` reproduces the AdaptGrad code (``experiments/get_correlation.py``)
  which scales each map before correlating. Spearman is invariant to monotone
  maps, so a scaling matters only through its clipping, which makes the
  saturated elements tie:

  * ``"abs"``: ``(x - min x) / (|p99| - min x)`` clipped to [0, 1] (see
    :func:`abs_scale`; the top 1% tie at 1);
  * ``"no_abs"``: ``x / (2 |p99|)`` clipped to [-1, 1] (see
    :func:`no_abs_scale`; the paper's default);
  * None: no scaling, the plain Spearman correlation.

  Args:
    a: first map.
    b: second map, same shape as ``a``.
    scaling: ``"abs"``, ``"no_abs"`` or None (default).
    clip_percentile: the percentile used by the scalings (99 in the paper).
    reduce_channels: optional channel reduction of (H, W, C) maps, as in
      :func:`sparseness` (default None: every element is ranked).

  Returns:
    A scalar in [-1, 1], or NaN when a map is constant.

  Raises:
    ValueError: maps of different shapes, an unknown scaling, a percentile
      outside (0, 100], or (outside jit) NaN or inf in a map.

  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import rank_correlation
    >>> x = jnp.array([0.1, 0.5, 0.2, 0.9])
    >>> float(rank_correlation(x, x ** 3))
    1.0
    >>> float(rank_correlation(x, -x))
    -1.0

  References:
    Spearman, "The proof and measurement of association between two things",
    1904. Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018.
    Zhou et al., "AdaptGrad", NeurIPS 2025 (code: ``metrics/consistency.py``).
  """
  _common.check_choice(scaling, "scaling", SCALINGS)
  if not 0.0 < float(clip_percentile) <= 100.0:
    raise ValueError(
        f"clip_percentile={clip_percentile!r} must lie in (0, 100]; the "
        f"paper uses 99.")
  a = _common.as_float_array(a, "a")
  b = _common.as_float_array(b, "b")
  _common.check_same_shape(a, b, "a", "b")
  _common.check_finite(a, "a")
  _common.check_finite(b, "b")
  _common.reduce_channels(jnp.zeros((1, 1, 1)), reduce_channels)  # validates
  return _spearman(a, b, scaling=scaling, clip_percentile=float(clip_percentile),
                   reduce_channels=reduce_channels)


_STATIC = ("scaling", "clip_percentile", "reduce_channels")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _spearman(a, b, *, scaling, clip_percentile, reduce_channels):
  a = _common.reduce_channels(a, reduce_channels).reshape(-1)
  b = _common.reduce_channels(b, reduce_channels).reshape(-1)
  if scaling == "abs":
    a, b = abs_scale(a, clip_percentile), abs_scale(b, clip_percentile)
  elif scaling == "no_abs":
    a, b = no_abs_scale(a, clip_percentile), no_abs_scale(b, clip_percentile)
  # A scaling divides by |p99|: an all-zero map becomes NaN (as in the
  # paper's numpy code); such a map has no ranking either.
  undefined = jnp.any(jnp.isnan(a)) | jnp.any(jnp.isnan(b))
  r = _pearson(average_ranks(a), average_ranks(b))
  return jnp.where(undefined, jnp.nan, r)


def paired_rank_correlations(
    maps_a: ArrayLike,
    maps_b: ArrayLike,
    *,
    scaling: str | None,
    clip_percentile: float,
    reduce_channels: str | None,
    names: tuple[str, str] = ("maps_a", "maps_b"),
) -> jax.Array:
  """Per-example rank correlations of two batches of maps (leading axis)."""
  a = _common.as_float_array(maps_a, names[0])
  b = _common.as_float_array(maps_b, names[1])
  _common.check_same_shape(a, b, *names)
  _common.check_finite(a, names[0])
  _common.check_finite(b, names[1])
  if a.ndim < 2:
    raise ValueError(
        f"{names[0]} has shape {a.shape}; pass a batch of maps with the "
        f"examples on the leading axis (add one with maps[None]).")
  _common.check_choice(scaling, "scaling", SCALINGS)
  if not 0.0 < float(clip_percentile) <= 100.0:
    raise ValueError(
        f"clip_percentile={clip_percentile!r} must lie in (0, 100]; the "
        f"paper uses 99.")
  _common.reduce_channels(jnp.zeros((1, 1, 1)), reduce_channels)  # validates
  return _paired(a, b, scaling=scaling, clip_percentile=float(clip_percentile),
                 reduce_channels=reduce_channels)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _paired(a, b, **static):
  return jax.vmap(lambda x, y: _spearman(x, y, **static))(a, b)
