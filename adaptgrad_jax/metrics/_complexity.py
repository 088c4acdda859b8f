"""Complexity of an explanation: the entropy of its normalised magnitudes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common


def complexity(
    attribution: ArrayLike,
    *,
    reduce_channels: str | None = None,
) -> jax.Array:
  r"""Complexity of one explanation map: the Shannon entropy of ``|a| / sum |a|``.

  .. math:: C(a) = -\sum_i p_i \log(p_i + 10^{-12}), \quad p_i = |a_i| / \sum_j |a_j|,

  in nats, as Quantus' ``Complexity`` (which takes absolute values and
  flattens every element). LOWER means a more concentrated (less complex)
  explanation; the maximum, ``log n``, is reached by a constant map.
  Degenerate maps: an all-zero map has no distribution of importance and
  is given the value of a uniform one, ``log n`` (Quantus returns NaN);
  the map is computed in float32 at least, so float16 maps work.

  Args:
    attribution: one map, (n,), (H, W) or (H, W, C).
    reduce_channels: optional channel reduction of an (H, W, C) map before
      taking magnitudes (see :func:`sparseness`; default None, every element,
      as Quantus).

  Returns:
    A scalar in [0, log n].

  Raises:
    ValueError: an empty map or, outside jit, a map holding NaN or inf.

  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import complexity
    >>> float(complexity(jnp.array([0.0, 0.0, 3.0, 0.0])))
    0.0
    >>> round(float(complexity(jnp.ones(4))), 6) == round(float(jnp.log(4.0)), 6)
    True

  References:
    Bhatt, Weller and Moura, "Evaluating and aggregating feature-based model
    explanations", IJCAI 2020, Sec. 4 (complexity). Quantus ``Complexity``.
  """
  a = _common.as_float_array(attribution, "attribution")
  _common.check_finite(a, "attribution")
  _common.reduce_channels(jnp.zeros((1, 1, 1)), reduce_channels)  # validates
  return _entropy(a, reduce_channels=reduce_channels)


@functools.partial(jax.jit, static_argnames=("reduce_channels",))
def _entropy(a, *, reduce_channels):
  a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
  a = jnp.abs(_common.reduce_channels(a, reduce_channels).reshape(-1))
  total = jnp.sum(a)
  n = a.shape[0]
  p = jnp.where(total > 0, a / jnp.where(total > 0, total, 1.0), 1.0 / n)
  # log(p + 1e-12) makes a one-hot map -1e-12: clip to 0 (not -0.0).
  return jnp.maximum(-jnp.sum(p * jnp.log(p + 1e-12)), 0.0) + 0.0
