"""Threefry random bits and key splits as straight-line code, for XLA:CPU.

JAX lowers the Threefry-2x32 hash on CPU as a rolled loop of its five
rounds (to keep compile times short). XLA:CPU runs each loop iteration as
separate kernels, so a call that draws little noise is dominated by the
loop: for the MNIST MLP at n = 10, the two loops (split into n keys, and
the noise) took about half of a 0.5 ms call. The functions here compute the
same bits, bit for bit, with the rounds unrolled, as JAX does on GPU and TPU.

They cover what the smoothing transforms draw: ``random_split`` and
``random_bits`` (behind `jax.random.normal` and friends) of Threefry keys,
with ``jax_threefry_partitionable`` on (JAX's default since 0.5). Anything
else, :func:`applies` says no and the caller keeps JAX's own primitive.
Random bits are unrolled only for the shapes where that measured faster
(:func:`unroll_bits`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


MIN_MINOR_DIM = 8
"""`unroll_bits` draws unrolled only when the draw's minor dimension is at least this long."""


def unroll_bits(shape: Sequence[int]) -> bool:
  """Whether unrolled `random_bits` of this per-key shape measured faster than JAX's loop on XLA:CPU.

  XLA fuses the hash with its consumers (e.g. the ``erf_inv`` of
  `jax.random.normal` and the noisy input), and XLA:CPU runs such fused
  loops slowly when the minor dimension is short. 50 normals of
  ``(56, 56, 3)`` plus an input: JAX's loop 10.5 ms, unrolled 17.3 ms; of
  ``(56, 56, 1)``: 2.2 and 0.5 ms; of ``(14, 14, 48)``: 5.3 and 2.3 ms;
  ``(9408,)``: 4.2 and 1.8 ms (`benchmarks/README.md`, item 9). So images
  with 3 channels keep JAX's loop; vectors and MNIST-like inputs unroll.
  """
  dims = [d for d in shape if d != 1]
  return not dims or dims[-1] >= MIN_MINOR_DIM


def applies(keys: Any, shape: Sequence[int] = ()) -> bool:
  """True when the unrolled functions reproduce JAX's bits for ``keys``.

  Args:
    keys: a typed key array (any shape).
    shape: the per-key shape to be drawn or split into.

  Returns:
    Whether ``keys`` are Threefry keys, ``jax_threefry_partitionable`` is on
    and ``shape`` has fewer than 2**32 elements (counters fit one word).
  """
  if not jnp.issubdtype(getattr(keys, "dtype", None), jax.dtypes.prng_key):
    return False  # raw uint32 keys: left to jax.random
  impl = str(jax.random.key_impl(keys))
  return impl == "threefry2x32" and bool(getattr(jax.config, "jax_threefry_partitionable", True)) and math.prod(shape) < 2**32


def _rotate_left(x, d):
  return jax.lax.shift_left(x, np.uint32(d)) | jax.lax.shift_right_logical(x, np.uint32(32 - d))


def threefry2x32(k1, k2, x1, x2):
  """The Threefry-2x32 hash (20 rounds) of counters ``(x1, x2)`` under key ``(k1, k2)``, unrolled.

  All arguments are uint32 arrays that broadcast together; returns the two
  output words, as JAX's ``threefry2x32`` primitive does.
  """
  ks = (k1, k2, k1 ^ k2 ^ _PARITY)
  x = [x1 + ks[0], x2 + ks[1]]
  for block in range(5):
    for rotation in _ROTATIONS[block % 2]:
      x[0] = x[0] + x[1]
      x[1] = x[0] ^ _rotate_left(x[1], rotation)
    x[0] = x[0] + ks[(block + 1) % 3]
    x[1] = x[1] + ks[(block + 2) % 3] + np.uint32(block + 1)
  return x[0], x[1]


def _hash_counters(keys, shape):
  """Both hash words for every key and every flat index of ``shape``: ``keys.shape + shape`` each."""
  data = jax.random.key_data(keys)
  extra = (1,) * len(shape)
  k1 = data[..., 0].reshape(keys.shape + extra)
  k2 = data[..., 1].reshape(keys.shape + extra)
  count = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  # JAX counts with a 64-bit flat index split into (high, low) words; high is 0 below 2**32 elements.
  return threefry2x32(k1, k2, jnp.zeros_like(count), count)


def random_bits(keys, bit_width: int, shape: Sequence[int]):
  """``random_bits`` of Threefry keys: the same values as JAX's primitive, unrolled.

  Args:
    keys: a typed Threefry key array (any shape); see :func:`applies`.
    bit_width: 8, 16, 32 or 64.
    shape: the per-key shape.

  Returns:
    Unsigned integers of ``bit_width`` bits, shaped ``keys.shape + shape``.
  """
  shape = tuple(shape)
  bits1, bits2 = _hash_counters(keys, shape)
  dtype = _UINT[bit_width]
  if bit_width == 64:
    return jax.lax.shift_left(bits1.astype(dtype), dtype(32)) | bits2.astype(dtype)
  return (bits1 ^ bits2).astype(dtype)


def split(keys, shape: Sequence[int]):
  """``random_split`` of Threefry keys: ``keys.shape + shape`` new keys, as `jax.random.split` makes them."""
  shape = tuple(shape)
  data = jnp.stack(_hash_counters(keys, shape), axis=-1)
  # Without the barrier XLA fuses the split into every consumer of the keys and hashes each key
  # again for every element drawn from it.
  data = jax.lax.optimization_barrier(data)
  return jax.random.wrap_key_data(data, impl=jax.random.key_impl(keys))
