"""Sparseness of an explanation: the Gini index of its magnitudes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common


def sparseness(
    attribution: ArrayLike,
    *,
    reduce_channels: str | None = "sum",
    abs: bool = True,  # pylint: disable=redefined-builtin
    normalise: bool = False,
    eps: float = 1e-7,
) -> jax.Array:
  r"""Gini index of one explanation map: 1 is maximally sparse, 0 uniform.

  With the map flattened to :math:`a`, made non-negative, shifted by ``eps``
  and sorted ascending (:math:`a_{(1)} \le \dots \le a_{(n)}`),

  .. math:: G(a) = \frac{\sum_{i=1}^n (2i - n - 1)\, a_{(i)}}{n \sum_i a_{(i)}}.

  This is the formula of Chalasani et al. (2020) as implemented in Quantus'
  ``Sparseness`` and in the AdaptGrad paper's code (``metrics/sparseness.py``):
  absolute values, then ``eps = 1e-7`` added to every element so that an
  all-zero map is defined. Hence a constant map gives exactly 0 and a one-hot
  vector of length n gives ``(n - 1) / (n (1 + n eps))``, i.e. ``1 - 1/n`` up
  to ``n * eps``.

  Conventions: the map is ONE example (vmap over a batch). A 3-D map is read
  as (H, W, C) and its channels are reduced first (``"sum"`` of the signed
  values, as the paper's code does before taking ``abs``); 1-D and 2-D maps
  are used as they are.

  Args:
    attribution: an explanation map of one example, shape (n,), (H, W) or
      (H, W, C).
    reduce_channels: how to reduce the channel axis of an (H, W, C) map:
      ``"sum"`` (default, the paper's code), ``"mean"``, ``"abs_sum"``,
      ``"max_abs"``, ``"l2"`` or None to keep every element.
    abs: take absolute values (the Gini index needs non-negative values;
      with ``abs=False`` negative entries are clipped to 0).
    normalise: divide by the maximum magnitude first (Quantus' default
      ``normalise_by_max``), which makes ``eps`` relative to the map's scale.
    eps: the constant added to every element (1e-7 in Quantus and the paper).

  Returns:
    A scalar in [0, 1).

  Raises:
    ValueError: for an empty map or, outside jit, a map holding NaN or inf.

  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import sparseness
    >>> round(float(sparseness(jnp.array([0.0, 0.0, 0.0, 5.0]))), 4)
    0.75
    >>> round(float(sparseness(jnp.ones(10))), 6)
    0.0

  References:
    Chalasani et al., "Concise explanations of neural networks using
    adversarial training", ICML 2020. Hedström et al., "Quantus", JMLR 2023.
    Zhou et al., "AdaptGrad", NeurIPS 2025, Sec. 5.1.1 and Table 2.
  """
  a = _common.as_float_array(attribution, "attribution")
  _common.check_finite(a, "attribution")
  _common.reduce_channels(jnp.zeros((1, 1, 1)), reduce_channels)  # validates
  return _gini(a, eps, reduce_channels=reduce_channels, abs=abs,
               normalise=normalise)


@functools.partial(jax.jit, static_argnames=("reduce_channels", "abs", "normalise"))
def _gini(a, eps, *, reduce_channels, abs, normalise):  # pylint: disable=redefined-builtin
  # float16 cannot hold eps = 1e-7 nor n * sum(a) for large maps (NaN or
  # inf): compute in float32 at least.
  a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
  a = _common.reduce_channels(a, reduce_channels).reshape(-1)
  a = jnp.abs(a) if abs else jnp.maximum(a, 0.0)
  if normalise:
    m = jnp.max(a)
    a = a / jnp.where(m > 0, m, 1.0)
  a = _sort_as_integers(a + eps)
  n = a.shape[0]
  index = jnp.arange(1, n + 1, dtype=a.dtype)
  gini = jnp.sum((2 * index - n - 1) * a) / (n * jnp.sum(a))
  return jnp.clip(gini, 0.0, 1.0)  # rounding can give -1e-9 for a constant map


def _sort_as_integers(a: jax.Array) -> jax.Array:
  """Ascending sort of a 1-D float array through its bit patterns (exact).

  The bits of a float, read as a signed integer, order non-negative floats
  like the floats themselves; XOR-ing the 31 (63) value bits of negative
  ones flips their order, so the keys order floats as ``jnp.sort`` does
  (NaN last; -0.0 comes before 0.0, which ``jnp.sort`` treats as equal).
  The map is its own inverse: the sorted keys map back to the floats bit for
  bit.

  Why: XLA:CPU sorts floats with a compiled total-order comparator called
  once per comparison, but integers with ``std::stable_sort`` and
  ``std::less`` (its fast path for one operand with a plain less-than). On
  the benchmark's 16 maps of 784 values this is 6-7x faster than
  ``jnp.sort`` and 2x faster than a bitonic network (which also took 2-14 s
  to compile); on accelerators it is an ordinary sort.
  """
  bits = jnp.dtype(f"int{8 * a.dtype.itemsize}")
  flip = jnp.array(jnp.iinfo(bits).max, bits)
  to_keys = lambda b: b ^ ((b >> (8 * a.dtype.itemsize - 1)) & flip)
  keys = to_keys(jax.lax.bitcast_convert_type(a, bits))
  return jax.lax.bitcast_convert_type(to_keys(jnp.sort(keys)), a.dtype)
