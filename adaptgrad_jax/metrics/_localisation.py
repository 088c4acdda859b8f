"""Localisation: pointing game and energy-based pointing game."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common


def region_mask(
    shape: Sequence[int],
    *,
    mask: ArrayLike | None = None,
    box: Sequence[int] | None = None,
) -> jax.Array:
  """A boolean (H, W) region from a mask or a box ``(y0, x0, y1, x1)``.

  Boxes are half-open pixel ranges: rows ``y0 <= y < y1``, columns
  ``x0 <= x < x1``. Exactly one of ``mask`` and ``box`` must be given; an
  empty region is an error (the score would be undefined).
  """
  h, w = int(shape[0]), int(shape[1])
  if (mask is None) == (box is None):
    raise ValueError(
        "pass exactly one of mask= (a boolean (H, W) array) or box= "
        "((y0, x0, y1, x1), half-open), got "
        f"{'both' if mask is not None else 'neither'}.")
  if box is not None:
    if len(box) != 4:
      raise ValueError(f"box={tuple(box)!r} must be (y0, x0, y1, x1).")
    y0, x0, y1, x1 = (int(v) for v in box)
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
      raise ValueError(
          f"box={tuple(box)!r} is empty or outside the {h}x{w} map; it must "
          f"satisfy 0 <= y0 < y1 <= {h} and 0 <= x0 < x1 <= {w} (half-open).")
    ys = jnp.arange(h)[:, None]
    xs = jnp.arange(w)[None, :]
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
  m = jnp.asarray(mask)
  if m.shape != (h, w):
    raise ValueError(
        f"mask has shape {m.shape} but the map is {h}x{w}; pass an (H, W) "
        f"boolean mask of the map's height and width.")
  m = m.astype(bool)
  if _common.is_concrete(m) and not bool(np.any(np.asarray(m))):
    raise ValueError(
        "mask is empty (no True pixel); localisation needs a non-empty "
        "region: check the annotation or pass box=(y0, x0, y1, x1).")
  return m


_reduce = jax.jit(_common.reduce_channels, static_argnums=1)


def _prepare(attribution, reduce_channels):
  a = _common.as_float_array(attribution, "attribution")
  _common.check_finite(a, "attribution")
  _common.reduce_channels(jnp.zeros((1, 1, 1)), reduce_channels)  # validates
  a = _reduce(a, reduce_channels)
  if a.ndim != 2:
    raise ValueError(
        f"attribution has shape {a.shape}; pass one (H, W) or (H, W, C) map "
        f"(vmap over a batch).")
  return a


def pointing_game(
    attribution: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    box: Sequence[int] | None = None,
    reduce_channels: str | None = "sum",
    abs: bool = False,  # pylint: disable=redefined-builtin
    tolerance: int = 0,
) -> jax.Array:
  """Pointing game: does the map's maximum fall inside the object?

  A hit when a pixel of maximal attribution lies in the region (if several
  pixels tie for the maximum, any one inside counts, as in Quantus). With
  ``tolerance = t > 0`` a maximum within Euclidean distance ``t`` pixels of
  the region also counts (Zhang et al. use 15 px on ImageNet-sized images).

  Args:
    attribution: one map, (H, W) or (H, W, C) (channels reduced first).
    mask: boolean (H, W) object mask.
    box: or a half-open box ``(y0, x0, y1, x1)``.
    reduce_channels: reduction of an (H, W, C) map (default ``"sum"``).
    abs: point with the maximum of ``|a|`` instead of ``a``.
    tolerance: radius in pixels around the region that still counts.

  Returns:
    A boolean scalar: True for a hit (average over images for the accuracy).

  Raises:
    ValueError: an empty mask, a box outside the map, both or neither of
      ``mask`` and ``box``, shape mismatch, NaN in the map.

  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import pointing_game
    >>> a = jnp.zeros((8, 8)).at[2, 3].set(1.0)
    >>> bool(pointing_game(a, box=(0, 0, 4, 4)))
    True
    >>> bool(pointing_game(a, box=(4, 4, 8, 8)))
    False

  References:
    Zhang et al., "Top-down neural attention by excitation backprop", ECCV
    2016 / IJCV 2018. Hedström et al., "Quantus", JMLR 2023.
  """
  a = _prepare(attribution, reduce_channels)
  region = region_mask(a.shape, mask=mask, box=box)
  if tolerance < 0:
    raise ValueError(f"tolerance={tolerance!r} must be >= 0 pixels.")
  disk = None
  if tolerance > 0:
    t = int(np.ceil(tolerance))
    yy, xx = np.mgrid[-t:t + 1, -t:t + 1]
    disk = jnp.asarray((yy ** 2 + xx ** 2) <= tolerance ** 2, jnp.float32)
  return _pointing_jit(a, region, disk, abs=abs)


@functools.partial(jax.jit, static_argnames=("abs",))
def _pointing_jit(a, region, disk, *, abs):  # pylint: disable=redefined-builtin
  if abs:
    a = jnp.abs(a)
  if disk is not None:
    region = jax.scipy.signal.convolve2d(
        region.astype(jnp.float32), disk, mode="same") > 0.5
  return jnp.any((a == jnp.max(a)) & region)


def energy_localisation(
    attribution: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    box: Sequence[int] | None = None,
    reduce_channels: str | None = "sum",
    abs: bool = True,  # pylint: disable=redefined-builtin
) -> jax.Array:
  """Energy-based pointing game: the share of the map's energy in the region.

  ``sum(e[region]) / sum(e)`` with ``e = |a|`` (``abs=True``, default) or the
  positive part ``max(a, 0)`` (``abs=False``, Score-CAM's non-negative maps).
  Unlike the pointing game it uses the whole map, not just its maximum: 1
  means all energy lies on the object. An all-zero map has no energy and
  gives NaN.

  Args:
    attribution: one map, (H, W) or (H, W, C) (channels reduced first).
    mask: boolean (H, W) object mask.
    box: or a half-open box ``(y0, x0, y1, x1)``.
    reduce_channels: reduction of an (H, W, C) map (default ``"sum"``).
    abs: energy of ``|a|`` (True) or of the positive part (False).

  Returns:
    A scalar in [0, 1].

  Raises:
    ValueError: as :func:`pointing_game`.

  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import energy_localisation
    >>> a = jnp.array([[1.0, 1.0], [2.0, -4.0]])
    >>> float(energy_localisation(a, box=(0, 0, 1, 2)))
    0.25

  References:
    Wang et al., "Score-CAM: Score-weighted visual explanations for
    convolutional neural networks", CVPR Workshops 2020, Sec. 5.2.
  """
  a = _prepare(attribution, reduce_channels)
  region = region_mask(a.shape, mask=mask, box=box)
  return _energy_jit(a, region, abs=abs)


@functools.partial(jax.jit, static_argnames=("abs",))
def _energy_jit(a, region, *, abs):  # pylint: disable=redefined-builtin
  e = jnp.abs(a) if abs else jnp.maximum(a, 0.0)
  return jnp.sum(jnp.where(region, e, 0.0)) / jnp.sum(e)
