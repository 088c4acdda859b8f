"""Memory budgets: ``batch_size="auto"`` picks the largest chunk of samples that fits.

The chunk's memory is read from XLA's memory analysis of the compiled chunk
function for 2 and 4 samples, extrapolated linearly (``fixed + k *
per_sample``). It does not cap the chunk further on CPU: measured per-sample
costs fall with the chunk for weight-heavy models (VGG16 at 64 x 64: 537 ms
per sample alone, 105 ms in a batch of 32, its 400 MB classifier read once per
batch) and are flat for small convnets, so the largest chunk that fits is also
the fastest.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import numpy as np

MEMORY_BUDGET_ENV = "ADAPTGRAD_JAX_MEMORY_BUDGET"
"""Environment variable with the memory budget of ``batch_size="auto"``, e.g. ``"2GiB"`` or ``"500MB"``."""

DEFAULT_BUDGET_FRACTION = {"cpu": 0.25, "gpu": 0.5, "tpu": 0.5}
"""Share of the device's memory (physical RAM on CPU) ``"auto"`` may use when no budget is set."""

_FALLBACK_BUDGET = 2 * 2**30
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}


# ----------------------------------------------------------------------------
# Memory budgets.


def parse_bytes(value: Union[int, float, str], name: str = "budget") -> int:
  """Parses a byte count: an int, or a string such as ``"2GiB"``, ``"500MB"``, ``"1.5g"``.

  Args:
    value: a positive number of bytes, or a number with a unit (B, kB, MB,
      GB, TB in powers of 1000; KiB, MiB, GiB, TiB or K, M, G, T in powers of
      1024), case-insensitive.
    name: the argument's name for error messages.

  Returns:
    The number of bytes, an int >= 1.

  Raises:
    ValueError: for an unparsable or non-positive value.

  Example:
    >>> parse_bytes("2GiB")
    2147483648
    >>> parse_bytes("500MB")
    500000000
  """
  if isinstance(value, bool):
    raise TypeError(f"{name}={value!r} must be a number of bytes or a string such as '2GiB'.")
  if isinstance(value, (int, float, np.integer, np.floating)):
    number = float(value)
  elif isinstance(value, str):
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
      raise ValueError(
          f"{name}={value!r} is not a byte count; write e.g. '2GiB', '500MB' or"
          " an int number of bytes."
      )
    number = float(match.group(1)) * _UNITS[unit]
  else:
    raise TypeError(f"{name}={value!r} must be a number of bytes or a string such as '2GiB'.")
  if not number >= 1:
    raise ValueError(f"{name}={value!r} must be at least one byte.")
  return int(number)


def default_memory_budget(backend: Optional[str] = None) -> int:
  """The memory budget of ``batch_size="auto"`` when none is given.

  The environment variable ``ADAPTGRAD_JAX_MEMORY_BUDGET`` wins (e.g.
  ``"4GiB"``). Otherwise: half of the first device's memory limit on GPU and
  TPU (from ``device.memory_stats()``), a quarter of physical RAM on CPU, and
  2 GiB when neither can be read.

  Args:
    backend: ``"cpu"``, ``"gpu"``, ``"tpu"``; defaults to ``jax.default_backend()``.

  Returns:
    The budget in bytes.
  """
  env = os.environ.get(MEMORY_BUDGET_ENV)
  if env:
    return parse_bytes(env, MEMORY_BUDGET_ENV)
  backend = backend or jax.default_backend()
  fraction = DEFAULT_BUDGET_FRACTION.get(backend, 0.5)
  total = None
  if backend == "cpu":
    try:
      total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
      total = None
  else:
    try:
      stats = jax.devices(backend)[0].memory_stats() or {}
      total = stats.get("bytes_limit")
    except Exception:  # pylint: disable=broad-except
      total = None
  if not total:
    return _FALLBACK_BUDGET
  return int(total * fraction)


class AutoBatchSize(NamedTuple):
  """``batch_size`` that picks the chunk from a memory budget (see `auto_batch_size`)."""

  budget: Optional[int] = None
  max_batch_size: Optional[int] = None


def auto_batch_size(
    budget: Union[None, int, str] = None, *, max_batch_size: Optional[int] = None
) -> AutoBatchSize:
  """A ``batch_size`` for the smoothing transforms that fits a memory budget.

  ``batch_size=auto_batch_size("2GiB")`` evaluates the noise samples in the
  largest chunks whose compiled memory (arguments, outputs and temporaries of
  XLA's memory analysis, extrapolated from chunks of 2 and 4 samples) fits
  the budget. ``batch_size="auto"`` is ``auto_batch_size()``: the budget of
  `default_memory_budget`. The analysis compiles the chunk function twice
  when the smoothed function is traced, so it adds to the compile time, not
  to the run time.

  Args:
    budget: bytes (an int or a string such as ``"2GiB"``); None uses
      `default_memory_budget` (the ``ADAPTGRAD_JAX_MEMORY_BUDGET`` environment
      variable, else a share of the device's memory).
    max_batch_size: an upper bound on the chunk, e.g. to bound latency.

  Returns:
    An `AutoBatchSize` to pass as ``batch_size``.

  Raises:
    ValueError, TypeError: for a budget that is not a positive byte count or
      a ``max_batch_size`` that is not an int >= 1.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(jnp.sin(x))
    >>> smoothed = ag.adapt_smooth(jax.grad(f), 0.95, 50, bounds=(0.0, 1.0),
    ...                            batch_size=ag.auto_batch_size("64MiB"))
    >>> smoothed(jax.random.key(0), jnp.full((3,), 0.5)).shape
    (3,)
  """
  if budget is not None:
    budget = parse_bytes(budget, "budget")
  if max_batch_size is not None:
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, (int, np.integer)):
      raise TypeError(f"max_batch_size={max_batch_size!r} must be an int >= 1 or None.")
    if max_batch_size < 1:
      raise ValueError(f"max_batch_size={max_batch_size!r} must be >= 1 (or None for no cap).")
    max_batch_size = int(max_batch_size)
  return AutoBatchSize(budget, max_batch_size)


# ----------------------------------------------------------------------------
# Memory estimates.


class MemoryEstimate(NamedTuple):
  """Bytes of a chunk of ``k`` samples: ``fixed + k * per_sample``."""

  fixed: int
  per_sample: int
  source: str
  """``"xla"`` (compiled memory analysis) or ``"jaxpr"`` (sum of intermediate sizes)."""


def _aval_bytes(aval) -> int:
  shape = getattr(aval, "shape", ())
  dtype = getattr(aval, "dtype", None)
  if dtype is None:
    return 0
  try:
    itemsize = np.dtype(dtype).itemsize
  except TypeError:  # PRNG key dtypes
    itemsize = 8
  return int(math.prod(shape)) * itemsize


def _spec(aval):
  return jax.ShapeDtypeStruct(aval.shape, aval.dtype)


def _compiled_bytes(chunk_fn: Callable[[Any], Any], keys_spec) -> Optional[int]:
  """Arguments + outputs + temporaries of the compiled ``chunk_fn``, or None."""
  closed = jax.make_jaxpr(chunk_fn)(keys_spec)
  jaxpr = closed.jaxpr
  const_specs = [_spec(v.aval) for v in jaxpr.constvars]

  def run(consts, keys):
    return jax.core.eval_jaxpr(jaxpr, consts, keys)

  try:
    compiled = jax.jit(run).lower(const_specs, keys_spec).compile()
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  total = (
      getattr(stats, "argument_size_in_bytes", 0)
      + getattr(stats, "output_size_in_bytes", 0)
      + getattr(stats, "temp_size_in_bytes", 0)
      - getattr(stats, "alias_size_in_bytes", 0)
  )
  return int(total) if total > 0 else None


def _jaxpr_bytes(chunk_fn: Callable[[Any], Any], keys_spec) -> int:
  """Sum of the sizes of all values a chunk's jaxpr creates (an upper bound on live memory)."""
  closed = jax.make_jaxpr(chunk_fn)(keys_spec)
  total = sum(_aval_bytes(v.aval) for v in closed.jaxpr.constvars)
  total += sum(_aval_bytes(v.aval) for v in closed.jaxpr.invars)
  for eqn in closed.jaxpr.eqns:
    total += sum(_aval_bytes(v.aval) for v in eqn.outvars)
  return total


_PROBE_CHUNKS = (2, 4)  # XLA compiles a chunk of 1 without its batch axis: too optimistic to extrapolate from


def estimate_memory(fn: Callable[[Any], Any], keys: Any) -> MemoryEstimate:
  """Estimates the memory of evaluating ``jax.vmap(fn)`` on k keys as ``fixed + k * per_sample``.

  Compiles the vmapped ``fn`` for chunks of 2 and 4 keys (``fn`` may close
  over traced values: they become arguments of the compiled function) and
  reads XLA's memory analysis; where the backend gives none, sums the sizes
  of the values in the chunk's jaxpr instead. (A chunk of 1 is a poor probe:
  XLA drops its unit batch axis and reuses buffers it cannot reuse in a
  batch, so the 1 -> 2 difference underestimates the per-sample cost by
  about 2x.)

  Args:
    fn: maps one key to a pytree of arrays.
    keys: the keys (their shape and dtype are used, not their values).

  Returns:
    A `MemoryEstimate`.
  """
  key_shape, key_dtype = tuple(keys.shape[1:]), keys.dtype
  chunk = jax.vmap(fn)
  specs = [jax.ShapeDtypeStruct((k,) + key_shape, key_dtype) for k in _PROBE_CHUNKS]
  sizes = [_compiled_bytes(chunk, s) for s in specs]
  source = "xla"
  if any(s is None for s in sizes):
    sizes = [_jaxpr_bytes(chunk, s) for s in specs]
    source = "jaxpr"
  (k1, k2), (m1, m2) = _PROBE_CHUNKS, sizes
  per_sample = max(-(-(m2 - m1) // (k2 - k1)), 1)
  fixed = max(m1 - k1 * per_sample, 0)
  return MemoryEstimate(fixed, per_sample, source)


def choose_batch_size(
    n: int,
    estimate: MemoryEstimate,
    budget: int,
    *,
    max_batch_size: Optional[int] = None,
) -> int:
  """The chunk size ``"auto"`` uses: the largest that fits ``budget``.

  Args:
    n: the number of samples.
    estimate: from `estimate_memory`.
    budget: bytes.
    max_batch_size: an optional explicit cap.

  Returns:
    An int in ``[1, n]`` (1 when even one sample exceeds the budget).
  """
  fits = (budget - estimate.fixed) // estimate.per_sample
  size = int(max(1, min(n, fits)))
  if max_batch_size is not None:
    size = min(size, max_batch_size)
  return size


def resolve_batch_size(fn: Callable[[Any], Any], keys: Any, batch_size: Any, *, group: int = 1) -> Optional[int]:
  """Turns ``"auto"`` / `AutoBatchSize` into a number of samples; passes None and ints through.

  ``fn`` maps one unit's input (a row of ``keys``) to ``group`` samples.
  """
  if batch_size is None or isinstance(batch_size, int):
    return batch_size
  if isinstance(batch_size, str):  # "auto", validated earlier
    batch_size = AutoBatchSize()
  units = keys.shape[0]
  budget = batch_size.budget if batch_size.budget is not None else default_memory_budget()
  estimate = estimate_memory(fn, keys)
  cap = None if batch_size.max_batch_size is None else max(1, batch_size.max_batch_size // group)
  return group * choose_batch_size(units, estimate, budget, max_batch_size=cap)


def validate_batch_size(batch_size: Any) -> Union[None, int, str, AutoBatchSize]:
  """Checks ``batch_size`` at build time: None, an int >= 1, ``"auto"`` or an `AutoBatchSize`."""
  if batch_size is None or isinstance(batch_size, AutoBatchSize):
    return batch_size
  if isinstance(batch_size, str):
    if batch_size == "auto":
      return batch_size
    raise ValueError(
        f"batch_size={batch_size!r} is not supported; pass an int >= 1, None"
        " (all samples in one vmap) or 'auto' (the largest chunk that fits the"
        f" memory budget, ${MEMORY_BUDGET_ENV} or a share of the device's memory)."
    )
  if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
    raise TypeError(f"batch_size={batch_size!r} must be None, an int >= 1 or 'auto'.")
  if batch_size < 1:
    raise ValueError(
        f"batch_size={batch_size!r} must be >= 1: it is the number of samples"
        " evaluated at once (None for all of them in one vmap)."
    )
  return int(batch_size)
