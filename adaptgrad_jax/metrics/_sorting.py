"""A sort of the last axis as a bitonic network of minima and maxima (private).

XLA's CPU sort is a generic comparison sort, one element at a time: sorting
the 784 magnitudes of 16 MNIST maps takes about 2 ms, 8x NumPy's SIMD sort,
and 50176-element ImageNet maps are 10x slower still. A bitonic network does
O(n log^2 n) comparisons but every stage is one vectorised ``minimum`` /
``maximum`` over the whole array, which XLA fuses: 3x to 10x faster than
``jnp.sort`` on CPU for these sizes, and as fast on accelerators (bitonic
sorting is what GPUs use). It is exact: the output is a permutation of the
input in ascending order (for finite values; NaN propagates through the
minima and maxima instead of sorting last).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def bitonic_sort(x: jax.Array) -> jax.Array:
  """Ascending sort of the last axis of a floating array (pure JAX, jit/vmap-able).

  The axis is padded with +inf to a power of two; ``log2(N) (log2(N) + 1) / 2``
  compare-exchange stages follow, each on the whole array.
  """
  n = x.shape[-1]
  if n <= 1:
    return x
  size = 1 << (n - 1).bit_length()
  lead = x.shape[:-1]
  y = jnp.concatenate([x, jnp.full(lead + (size - n,), jnp.inf, x.dtype)], -1)
  index = np.arange(size)
  k = 2
  while k <= size:
    j = k // 2
    while j >= 1:
      pairs = y.reshape(lead + (size // (2 * j), 2, j))
      a, b = pairs[..., 0, :], pairs[..., 1, :]
      lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
      ascending = (index.reshape(size // (2 * j), 2, j)[:, 0, :] & k) == 0
      first = jnp.where(ascending, lo, hi)
      second = jnp.where(ascending, hi, lo)
      y = jnp.stack([first, second], axis=-2).reshape(lead + (size,))
      j //= 2
    k *= 2
  return y[..., :n]
