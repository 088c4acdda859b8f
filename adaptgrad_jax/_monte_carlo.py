"""The Monte Carlo engine shared by smoothing, Integrated Gradients and NoiseGrad.

``sample_sums(fn, inputs, ...)`` evaluates ``fn`` on every element of
``inputs`` (the sample keys, or the IG step indices) and returns the sums of
its values (and of their squares), ``batch_size`` samples at a time:

1. ``fn`` is traced **once**, to a jaxpr, for one abstract input. Everything
   after evaluates that jaxpr (``jax.core.eval_jaxpr``, which keeps each
   equation's source information and name stack), never the Python function
   again: the vmap, the scan body and the memory probes of ``"auto"``.
2. ``batch_size=None`` (or ``>= n``) evaluates all samples in one
   ``jax.vmap``. Otherwise the n samples are cut into the fewest equal chunks
   of at most ``batch_size`` (the last one padded with repeats of the first
   inputs, which are masked out of the sums) and a ``jax.lax.scan`` carries the
   running sums: memory grows with ``batch_size``, not with n, and sample j
   always sees input j, so the result does not depend on ``batch_size`` (up to
   float rounding of the sums).
3. On the CPU backend, with the switch of :mod:`adaptgrad_jax.cpu` on, the
   chunk is evaluated through :func:`adaptgrad_jax.cpu.rewrite`. This is the
   only place the library enters it.
"""

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from adaptgrad_jax import _memory
from adaptgrad_jax import cpu
from adaptgrad_jax._pytree import compute_dtype
from adaptgrad_jax._typing import KeyArray, PyTree

MAX_SAMPLES = 2**24
"""The largest sample count accepted: the n sample keys are materialised (8 bytes each)."""

AGGREGATES = ("mean", "mean_sq", "var")


class Sums(NamedTuple):
  """Sums over the samples of a Monte Carlo estimate."""

  first: PyTree
  """Sum of the values, in at least float32."""
  second: Optional[PyTree]
  """Sum of their squares (None unless asked for)."""
  count: int
  """The number of samples summed."""
  like: PyTree
  """``jax.ShapeDtypeStruct`` of one value: the dtypes to return."""
  extras: Any
  """The per-sample extras, stacked along a leading axis of length ``count``."""


def sample_keys(key: KeyArray, n: int, cpu_rewrite: Optional[bool]) -> jax.Array:
  """``jax.random.split(key, n)``: sample j's key (through the CPU rewrite where it applies; the same keys)."""
  split = lambda k: jax.random.split(k, n)
  return (cpu.rewrite(split) if cpu.applies(cpu_rewrite, key) else split)(key)


def _masked_sum(values, acc_dtypes, valid, power):
  def total(v, dtype):
    v = v.astype(dtype)
    if power == 2:
      v = v * v
    if valid is not None:
      v = jnp.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0)
    return jnp.sum(v, axis=0)

  return jax.tree.map(total, values, acc_dtypes)


def sample_sums(
    fn: Callable[[Any], tuple[PyTree, Any]],
    inputs: jax.Array,
    *,
    batch_size: Any,
    squares: bool,
    cpu_rewrite: Optional[bool],
) -> Sums:
  """Sums ``fn``'s values over ``inputs`` (see the module docstring).

  Args:
    fn: maps one input to ``(value, extra)``; ``value`` is a pytree of float
      arrays to sum, ``extra`` a pytree to stack (or None).
    inputs: an array whose leading axis enumerates the samples.
    batch_size: None, an int >= 1, ``"auto"`` or an ``AutoBatchSize``.
    squares: also sum the squared values.
    cpu_rewrite: the switch of :mod:`adaptgrad_jax.cpu`.

  Returns:
    :class:`Sums`.
  """
  n = inputs.shape[0]
  spec = jax.ShapeDtypeStruct(inputs.shape[1:], inputs.dtype)
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(spec)
  out_tree = jax.tree.structure(out_shape)
  like = out_shape[0]
  acc = jax.tree.map(lambda v: compute_dtype(v.dtype), like)

  def one(x):
    return jax.tree.unflatten(out_tree, jax.core.eval_jaxpr(closed.jaxpr, closed.consts, x))

  def chunk(xs, valid):
    values, extras = jax.vmap(one)(xs)
    second = _masked_sum(values, acc, valid, 2) if squares else None
    return (_masked_sum(values, acc, valid, 1), second), extras

  entry = in_scan = chunk
  if cpu.applies(cpu_rewrite, inputs, closed.consts):
    entry = cpu.rewrite(chunk, canonical_kernels=False)
    in_scan = cpu.rewrite(chunk)
  batch_size = _memory.resolve_batch_size(one, inputs, batch_size)
  if batch_size is None or batch_size >= n:
    (first, second), extras = entry(inputs, None)
    return Sums(first, second, n, like, extras)

  chunks = math.ceil(n / batch_size)
  size = math.ceil(n / chunks)
  pad = chunks * size - n
  padded = jnp.concatenate([inputs, inputs[:pad]]) if pad else inputs
  valid = (jnp.arange(chunks * size) < n).reshape(chunks, size)
  zeros = jax.tree.map(lambda v, d: jnp.zeros(v.shape, d), like, acc)

  def body(carry, chunk_in):
    (first, second), extras = in_scan(*chunk_in)
    carry = (jax.tree.map(jnp.add, carry[0], first),
             None if second is None else jax.tree.map(jnp.add, carry[1], second))
    return carry, extras

  init = (zeros, zeros if squares else None)
  (first, second), extras = jax.lax.scan(
      body, init, (padded.reshape((chunks, size) + inputs.shape[1:]), valid))
  extras = jax.tree.map(lambda e: e.reshape((chunks * size,) + e.shape[2:])[:n], extras)
  return Sums(first, second, n, like, extras)


def add_sample(sums: Sums, value: PyTree) -> Sums:
  """``sums`` with one more sample ``value`` (e.g. the clean gradient)."""
  first = jax.tree.map(lambda s, v: s + v.astype(s.dtype), sums.first, value)
  second = None if sums.second is None else jax.tree.map(
      lambda s, v: s + jnp.square(v.astype(s.dtype)), sums.second, value)
  return sums._replace(first=first, second=second, count=sums.count + 1)


def aggregate_sums(sums: Sums, aggregate: str) -> PyTree:
  """The statistic ``aggregate`` (``"mean"``, ``"mean_sq"``, ``"var"``) of the samples, in the values' dtypes."""
  count = sums.count
  if aggregate == "mean":
    out = jax.tree.map(lambda s: s / count, sums.first)
  elif aggregate == "mean_sq":
    out = jax.tree.map(lambda s: s / count, sums.second)
  else:  # var: E[g^2] - E[g]^2, clamped at 0 against rounding
    out = jax.tree.map(lambda s2, s: jnp.maximum(s2 / count - jnp.square(s / count), 0),
                       sums.second, sums.first)
  return jax.tree.map(lambda o, v: o.astype(v.dtype), out, sums.like)
