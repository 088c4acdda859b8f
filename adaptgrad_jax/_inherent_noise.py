"""Inherent noise (Eqs. 9-10) and the measured out-of-range rates of noisy samples (Section 3.2).

The probability that a noisy element ``x_i + eps_i`` leaves the data domain
``[x_min, x_max]``, in closed form (:func:`inherent_noise`) and as measured on
the very noise the smoothing transforms draw (:func:`out_of_range_rate`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptgrad_jax._bounds import broadcast_bounds, require_bounds, validate_bounds
from adaptgrad_jax._noise import check_key, sample_noise
from adaptgrad_jax._pytree import broadcast_like, compute_dtype
from adaptgrad_jax._typing import Bounds, KeyArray, PyTree
from adaptgrad_jax._wrapping import validate_count

_normal_tail = jax.scipy.stats.norm.sf  # P(N(0, 1) > z), accurate in the far tail


def _leaf_inherent_noise(x, sigma, lower, upper):
  x = jnp.asarray(x)
  dtype = compute_dtype(x.dtype)
  x = x.astype(dtype)
  sigma = jnp.broadcast_to(jnp.asarray(sigma, dtype), x.shape)
  a, b = x - jnp.asarray(lower, dtype), jnp.asarray(upper, dtype) - x
  positive = sigma > 0
  safe = jnp.where(positive, sigma, 1.0)
  # P(out) = P(eps < -a) + P(eps > b); with sigma = 0 it is 0 inside, 1 outside.
  noisy = _normal_tail(a / safe) + _normal_tail(b / safe)
  still = jnp.where((a >= 0) & (b >= 0), 0.0, 1.0)
  return jnp.where(positive, noisy, still)


def inherent_noise(x: PyTree, sigma: PyTree, *, bounds: Bounds) -> PyTree:
  r"""Eq. 9: the probability that ``x_i + eps_i`` leaves ``[x_min, x_max]``.

  ``A^i = 1 - P(x_min - x_i <= eps_i <= x_max - x_i)`` for
  ``eps_i ~ N(0, sigma_i^2)``; Eq. 10 is the special case
  ``sigma = alpha (x_max - x_min)``. ``sigma = 0`` is legal: 0 inside the
  bounds, 1 outside.

  Args:
    x: the input (array or pytree).
    sigma: the noise scale, broadcastable to ``x`` (a scalar for SmoothGrad,
      :func:`adaptive_sigma` for AdaptGrad).
    bounds: ``(x_min, x_max)``.

  Returns:
    The probability per element, in at least float32.

  Example:
    >>> import adaptgrad_jax as ag
    >>> x = jnp.linspace(-2.12, 2.64, 100001)  # Figure 3 of the paper
    >>> sigma = ag.smoothgrad_sigma(0.2, bounds=(-2.12, 2.64))
    >>> round(float(ag.inherent_noise(x, sigma, bounds=(-2.12, 2.64)).mean()), 4)
    0.1596

  References:
    Zhou et al. (AdaptGrad), NeurIPS 2025, Eqs. 9-10 and Figure 3.
  """
  lower, upper = broadcast_bounds(x, validate_bounds(bounds))
  return jax.tree.map(_leaf_inherent_noise, x, broadcast_like(sigma, x, "sigma"), lower, upper)


class OutOfRange(NamedTuple):
  """Measured out-of-range rates of Gaussian noise samples (Section 3.2).

  Attributes:
    per_element: fraction of all (sample, element) pairs whose noisy value
      lies outside the bounds (the paper's "pixel level", 12.62% for
      SmoothGrad on ImageNet).
    per_input: fraction of noisy copies with at least one element outside
      the bounds (the paper's "image level", 100% for SmoothGrad).
  """

  per_element: jax.Array
  per_input: jax.Array


def out_of_range_rate(
    key: KeyArray, x: PyTree, sigma: PyTree, n: int = 50, *, bounds: Bounds
) -> OutOfRange:
  """Samples ``n`` noisy copies ``x + eps`` and measures how many leave the bounds.

  The noise of copy ``j`` is the noise :func:`gaussian_smooth` (and so
  :func:`adapt_smooth` and :func:`smooth_grad`) draws with the same key.

  Args:
    key: a PRNG key.
    x: one input (array or pytree; no batch dimension, vmap for a batch).
    sigma: the noise scale, broadcastable to ``x``.
    n: the number of noisy copies; the paper uses 50.
    bounds: ``(x_min, x_max)``.

  Returns:
    :class:`OutOfRange` with the per-element and per-input rates.

  Example:
    >>> import adaptgrad_jax as ag
    >>> x = jnp.full((8, 8), 0.5)
    >>> rates = ag.out_of_range_rate(jax.random.key(0), x, 0.0, 10, bounds=(0.0, 1.0))
    >>> float(rates.per_element), float(rates.per_input)
    (0.0, 0.0)
  """
  n = validate_count(n, "n", "it is the number of noisy copies; the paper uses 50.")
  check_key(key)
  lower, upper = broadcast_bounds(x, require_bounds(bounds, "out_of_range_rate"))
  keys = jax.random.split(key, n)

  def one(sample_key):
    noisy = jax.tree.map(
        lambda leaf, eps: leaf.astype(eps.dtype) + eps,
        x, sample_noise(sample_key, x, sigma),
    )
    outside = jax.tree.map(
        lambda v, lo, hi: (v < lo) | (v > hi), noisy, lower, upper
    )
    count = sum(jnp.sum(o) for o in jax.tree.leaves(outside))
    return count

  counts = jax.vmap(one)(keys)
  size = sum(jnp.size(leaf) for leaf in jax.tree.leaves(x))
  return OutOfRange(
      per_element=jnp.sum(counts) / (n * size),
      per_input=jnp.mean(counts > 0),
  )
