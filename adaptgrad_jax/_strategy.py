"""How the n noise samples are evaluated (one vmap or a scan over chunks) and ``batch_size="auto"``.

The smoothing transforms evaluate ``grad_fn`` on n noisy copies. Two
execution strategies give the same result (sample j always gets the noise of
``jax.random.split(key, n)[j]``):

* ``"vmap"``: all n samples in one :func:`jax.vmap` (``batch_size=None``, or a
  ``batch_size >= n``). Memory grows with n.
* ``"scan"``: a :func:`jax.lax.scan` over chunks of ``batch_size`` samples
  that carries the running sums: memory grows with ``batch_size``, and the
  compile time does not grow with n.

A third, chunks written out one after the other in the traced program (a
"host loop" over vmapped chunks inside one jit), was measured and dropped:
XLA:CPU schedules the independent chunks so that several are alive at once
(memory of 2 chunks of 32 = 75% of one vmap over 64, even with an
optimization barrier between them), and compile time grows with the number of
chunks. See benchmarks/README.md.

On the CPU backend both strategies evaluate the samples through
`rewrite_convolutions`, which replaces each convolution of the gradient
by the equivalent computation XLA:CPU runs fastest: depthwise convolutions
as sums of shifted slices (EfficientNet-Lite0 13x faster), 1 x 1
convolutions as dots, convolutions whose output is smaller than the kernel
as patches and a dot (ResNet-50 at 64 x 64: 3x), and every other kernel in
the (spatial..., in, out) layout, without which a scan body's input
gradients fall back to a naive loop nest. `cpu_compiler_options` adds the
XLA options that give 3 x 3 convolutions to Eigen rather than YNNPACK.
The noise is drawn there with the Threefry rounds unrolled (`_prng`; the
same bits as JAX, whose CPU lowering loops over the rounds): the MLP at
n = 10 went from 0.53 to 0.44 ms a call.
See benchmarks/README.md for the measurements.

``batch_size="auto"`` (or `auto_batch_size` with an explicit budget) picks
the largest chunk whose memory fits a budget, from XLA's memory analysis of
the compiled chunk function for 2 and 4 samples, extrapolated linearly. It
does not cap the chunk further on CPU: measured per-sample costs fall with
the chunk for weight-heavy models (VGG16 at 64 x 64: 537 ms per sample alone,
105 ms in a batch of 32, its 400 MB classifier read once per batch) and are
flat for small convnets, so the largest chunk that fits is also the fastest.
"""

from __future__ import annotations

import functools
import math
import os
import re
from typing import Any, Callable, Literal, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from adaptgrad_jax import _prng

Strategy = Literal["vmap", "scan"]
STRATEGIES = ("vmap", "scan")

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
    >>> from adaptgrad_jax._strategy import auto_batch_size
    >>> f = lambda x: jnp.sum(jnp.sin(x))
    >>> smoothed = ag.adapt_smooth(jax.grad(f), 0.95, 50, batch_size=auto_batch_size("64MiB"))
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
    return _eval_jaxpr(jaxpr, consts, keys, canonical=False)

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
    backend: Optional[str] = None,
    max_batch_size: Optional[int] = None,
) -> int:
  """The chunk size ``"auto"`` uses: the largest that fits ``budget``.

  Args:
    n: the number of samples.
    estimate: from `estimate_memory`.
    budget: bytes.
    backend: unused (reserved for per-backend caps; none measured helps).
    max_batch_size: an optional explicit cap.

  Returns:
    An int in ``[1, n]`` (1 when even one sample exceeds the budget).
  """
  del backend
  fits = (budget - estimate.fixed) // estimate.per_sample
  size = int(max(1, min(n, fits)))
  if max_batch_size is not None:
    size = min(size, max_batch_size)
  return size


def resolve_batch_size(fn: Callable[[Any], Any], keys: Any, batch_size: Any) -> Optional[int]:
  """Turns ``"auto"`` / `AutoBatchSize` into an int; passes None and ints through."""
  if batch_size is None or isinstance(batch_size, int):
    return batch_size
  if isinstance(batch_size, str):  # "auto", validated earlier
    batch_size = AutoBatchSize()
  n = keys.shape[0]
  backend = jax.default_backend()
  budget = batch_size.budget if batch_size.budget is not None else default_memory_budget(backend)
  estimate = estimate_memory(fn, keys)
  return choose_batch_size(n, estimate, budget, backend=backend, max_batch_size=batch_size.max_batch_size)


# ----------------------------------------------------------------------------
# Strategy.


class Plan(NamedTuple):
  """How `map_samples` evaluates n samples."""

  strategy: Strategy
  batch_size: int
  rewrite_for_cpu: bool


def plan(n: int, batch_size: Optional[int], backend: Optional[str] = None) -> Plan:
  """Chooses the execution strategy for n samples in chunks of ``batch_size``.

  ``None`` or ``batch_size >= n``: one vmap. Otherwise a scan over chunks.
  On the CPU backend either way goes through `rewrite_for_cpu`.

  Args:
    n: the number of samples.
    batch_size: the chunk size (None for all at once).
    backend: defaults to ``jax.default_backend()``.

  Returns:
    A `Plan`.
  """
  backend = backend or jax.default_backend()
  if batch_size is None or batch_size >= n:
    return Plan("vmap", n, backend == "cpu")
  return Plan("scan", batch_size, backend == "cpu")


# ----------------------------------------------------------------------------
# Convolutions in the forms XLA:CPU runs fast.
#
# Each rewrite below computes the same values as the `conv_general_dilated`
# it replaces; the timings in the docstrings are from jax 0.10.2 on this
# project's 2-core Xeon (benchmarks/results/cpu_experiments.md).


def _channels_last(lhs, lhs_spec):
  """The input transposed to (batch, spatial..., features)."""
  return jnp.transpose(lhs, (lhs_spec[0],) + tuple(lhs_spec[2:]) + (lhs_spec[1],))


def _to_out_spec(y, out_spec):
  """A (batch, spatial..., features) result transposed to the layout ``out_spec`` names."""
  spatial = y.ndim - 2
  perm = [0] * y.ndim
  perm[out_spec[0]] = 0
  perm[out_spec[1]] = spatial + 1
  for i in range(spatial):
    perm[out_spec[2 + i]] = 1 + i
  return jnp.transpose(y, perm)


def _pad_spatial(x, padding, lhs_dilation):
  """Zero padding and input dilation of a channels-last array, as one ``lax.pad``."""
  config = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(padding, lhs_dilation)] + [(0, 0, 0)]
  return jax.lax.pad(x, jnp.zeros((), x.dtype), config)


def _taps(x, kernel, rhs_dilation, window_strides):
  """For each kernel tap (row-major), the strided slice of a padded channels-last input it reads."""
  spatial = len(kernel)
  extent = [(k - 1) * d + 1 for k, d in zip(kernel, rhs_dilation)]
  out = [(x.shape[1 + i] - extent[i]) // window_strides[i] + 1 for i in range(spatial)]
  for tap in np.ndindex(*kernel):
    start = (0,) + tuple(t * d for t, d in zip(tap, rhs_dilation)) + (0,)
    limit = ((x.shape[0],) + tuple(b + (m - 1) * s + 1 for b, m, s in zip(start[1:], out, window_strides))
             + (x.shape[-1],))
    yield tap, jax.lax.slice(x, start, limit, (1,) + tuple(window_strides) + (1,))


def _canonical_kernel(rhs, dimension_numbers):
  """The kernel transposed to (spatial..., in, out), and the dimension numbers to match.

  JAX emits a convolution's input gradient with the kernel's feature axes
  swapped (``01oi``). XLA:CPU rewrites such kernels into the form its fast
  convolutions take only in the entry computation; inside a scan body the
  convolution falls back to a naive loop nest (50x slower for one such
  convolution, 3-9x for a small convnet's gradient).
  """
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  ndim = len(rhs_spec)
  canonical = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
  if tuple(rhs_spec) != canonical:
    out_dim, in_dim, *spatial = rhs_spec
    rhs = jnp.transpose(rhs, tuple(spatial) + (in_dim, out_dim))
    dimension_numbers = jax.lax.ConvDimensionNumbers(lhs_spec, canonical, out_spec)
  return rhs, dimension_numbers


def _is_depthwise(lhs, rhs, params) -> bool:
  """Whether every input feature is its own group (a depthwise convolution)."""
  lhs_spec, rhs_spec, _ = params["dimension_numbers"]
  groups = params["feature_group_count"]
  return (params["batch_group_count"] == 1 and groups > 1
          and groups == lhs.shape[lhs_spec[1]] and rhs.shape[rhs_spec[1]] == 1)


def _depthwise_as_taps(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
                       dimension_numbers, feature_group_count, preferred_element_type, **_):
  """A depthwise convolution as a sum over kernel taps of strided slices times weights.

  XLA fuses the sum into one elementwise loop. XLA:CPU's grouped
  convolution is slow: the input gradients of EfficientNet-Lite0's depthwise
  layers (batch 20) take 25-300 ms, 2-15 ms this way, and the whole
  Lite0 gradient at 64 x 64 runs 13x faster.
  """
  lhs_spec, _, out_spec = dimension_numbers
  rhs, _ = _canonical_kernel(rhs, dimension_numbers)  # (spatial..., 1, features * multiplier)
  x = _channels_last(lhs, lhs_spec)
  multiplier = rhs.shape[-1] // feature_group_count
  if multiplier > 1:  # output feature g * multiplier + j reads input feature g
    x = jnp.repeat(x, multiplier, axis=-1)
  dtype = preferred_element_type or jnp.result_type(x, rhs)
  x = _pad_spatial(x, padding, lhs_dilation)
  y = None
  for tap, patch in _taps(x, rhs.shape[:-2], rhs_dilation, window_strides):
    term = patch.astype(dtype) * rhs[tap + (0,)].astype(dtype)
    y = term if y is None else y + term
  return _to_out_spec(y, out_spec)


def _is_plain(params) -> bool:
  """No feature or batch groups."""
  return params["feature_group_count"] == 1 and params["batch_group_count"] == 1


def _is_pointwise(rhs, params) -> bool:
  """Whether the kernel is 1 x ... x 1 and the convolution has no groups."""
  rhs_spec = params["dimension_numbers"][1]
  return _is_plain(params) and all(rhs.shape[d] == 1 for d in rhs_spec[2:])


def _pointwise_as_dot(lhs, rhs, *, window_strides, padding, lhs_dilation, dimension_numbers,
                      precision, preferred_element_type, **_):
  """A 1 x 1 convolution as one dot over the features, the kernel read as it is.

  The dot needs no transposed copy of the kernel (the gradient of a 1 x 1
  convolution otherwise transposes it on every call: ResNet-50 at 64 x 64,
  n = 20, 345-358 against 424-455 ms). A pointwise map commutes with padding,
  dilation and strides, which are applied to the smaller side: the input
  when they only shrink it, the product when the input is dilated.
  """
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  spatial = len(window_strides)
  x = _channels_last(lhs, lhs_spec)
  in_axis = 0 if rhs_spec[1] < rhs_spec[0] else 1
  w = rhs.reshape([rhs.shape[d] for d in sorted(rhs_spec[:2])])

  def spatial_part(a):
    a = _pad_spatial(a, padding, lhs_dilation)
    return a[(slice(None),) + tuple(slice(None, None, s) for s in window_strides)]

  def dot(a):
    return jax.lax.dot_general(a, w, (((spatial + 1,), (in_axis,)), ((), ())),
                               precision=precision, preferred_element_type=preferred_element_type)

  y = spatial_part(dot(x)) if any(d != 1 for d in lhs_dilation) else dot(spatial_part(x))
  return _to_out_spec(y, out_spec)


def _output_smaller_than_kernel(lhs, rhs, params) -> bool:
  """Whether an output spatial extent is smaller than the kernel's (a plain convolution).

  XLA:CPU runs such convolutions 4-80x slower than the same product as
  patches and one dot: 3 x 3 with padding 1 on a 2 x 2 x 512 map (batch
  20) takes 363 ms against 5 ms, as in ResNet-50's last stage at 64 x 64.
  With outputs at least the kernel's size the two are within 1.5x.
  """
  if not _is_plain(params) or any(d != 1 for d in params["lhs_dilation"] + params["rhs_dilation"]):
    return False
  lhs_spec, rhs_spec, _ = params["dimension_numbers"]
  for i, (lo, hi) in enumerate(params["padding"]):
    kernel = rhs.shape[rhs_spec[2 + i]]
    out = (lhs.shape[lhs_spec[2 + i]] + lo + hi - kernel) // params["window_strides"][i] + 1
    if 0 < out < kernel:
      return True
  return False


def _patches_dot(lhs, rhs, *, window_strides, padding, dimension_numbers,
                 precision, preferred_element_type, **_):
  """A plain convolution as patches (strided slices of the padded input) and one dot."""
  lhs_spec, _, out_spec = dimension_numbers
  rhs, _ = _canonical_kernel(rhs, dimension_numbers)  # (spatial..., in, out)
  spatial = len(window_strides)
  ones = (1,) * spatial
  x = _pad_spatial(_channels_last(lhs, lhs_spec), padding, ones)
  patches = jnp.concatenate([p for _, p in _taps(x, rhs.shape[:spatial], ones, window_strides)], axis=-1)
  y = jax.lax.dot_general(patches, rhs.reshape((-1, rhs.shape[-1])), (((spatial + 1,), (0,)), ((), ())),
                          precision=precision, preferred_element_type=preferred_element_type)
  return _to_out_spec(y, out_spec)


def _dilated_input_smaller_than_kernel(lhs, rhs, params) -> bool:
  """Whether this is the input gradient of a strided convolution whose cotangent is smaller than the kernel.

  JAX emits that gradient with ``lhs_dilation`` = the stride. When the
  cotangent is smaller than the kernel (a stride-2 3 x 3 convolution from
  4 x 4 to 2 x 2), XLA:CPU's default (YNNPACK) path takes 233 ms against
  18 ms with the zeros written out (4 x 4 x 512, batch 20); with larger
  cotangents writing the zeros out is 1.3-5x slower, so only this case is
  rewritten.
  """
  if all(d == 1 for d in params["lhs_dilation"]):
    return False
  lhs_spec, rhs_spec, _ = params["dimension_numbers"]
  return any(lhs.shape[lhs_spec[2 + i]] < rhs.shape[rhs_spec[2 + i]] for i in range(len(params["lhs_dilation"])))


def _write_out_dilation(lhs, params):
  """``lhs_dilation`` written out as interior zero padding; returns the input and the new params."""
  lhs_spec = params["dimension_numbers"][0]
  config = [(0, 0, 0)] * lhs.ndim
  for i, d in enumerate(params["lhs_dilation"]):
    config[lhs_spec[2 + i]] = (0, 0, d - 1)
  lhs = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype), config)
  return lhs, dict(params, lhs_dilation=(1,) * len(params["lhs_dilation"]))


def _fast_conv(lhs, rhs, *, canonical_kernels: bool = True, **params):
  """``conv_general_dilated`` in the form XLA:CPU runs fastest, with the same values.

  ``canonical_kernels=False`` leaves the other convolutions as they are: in
  the entry computation XLA:CPU lays their kernels out itself, 10-15%
  faster than our explicit transpose (VGG16's 3x3 layers, batch 20).
  """
  if _is_depthwise(lhs, rhs, params):
    return _depthwise_as_taps(lhs, rhs, **params)
  if _is_pointwise(rhs, params):
    return _pointwise_as_dot(lhs, rhs, **params)
  if _dilated_input_smaller_than_kernel(lhs, rhs, params):
    lhs, params = _write_out_dilation(lhs, params)
  if _output_smaller_than_kernel(lhs, rhs, params):
    return _patches_dot(lhs, rhs, **params)
  if canonical_kernels:
    rhs, params["dimension_numbers"] = _canonical_kernel(rhs, params["dimension_numbers"])
  return jex_core.primitives.conv_general_dilated_p.bind(lhs, rhs, **params)


_INLINED_CALLS = ("pjit", "jit", "closed_call", "core_call")


def _bind_params(eqn):
  """``(subfuns, params)`` for ``eqn.primitive.bind`` across JAX versions."""
  params = eqn.primitive.get_bind_params(eqn.params)
  if isinstance(params, tuple) and len(params) == 2 and isinstance(params[1], dict):
    return params  # JAX <= 0.6: (subfuns, params)
  return (), params


def _unrolled_prng(name, invals, params):
  """The outputs of a ``random_bits`` / ``random_split`` equation from `_prng`, or None to keep JAX's."""
  if name == "random_bits" and _prng.applies(invals[0], params["shape"]) and _prng.unroll_bits(params["shape"]):
    return [_prng.random_bits(invals[0], params["bit_width"], params["shape"])]
  if name == "random_split" and _prng.applies(invals[0], params["shape"]):
    return [_prng.split(invals[0], params["shape"])]
  return None


def _eval_jaxpr(jaxpr, consts, *args, canonical: bool = True, canonical_kernels: bool = True,
                unroll_prng: bool = False):
  """`jax.core.eval_jaxpr`; with ``canonical``, rewrites convolutions, inlines jit calls and (optionally) unrolls Threefry."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  def write(v, value):
    env[v] = value

  for v, value in zip(jaxpr.constvars, consts):
    write(v, value)
  for v, value in zip(jaxpr.invars, args):
    write(v, value)
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if canonical and unroll_prng and (unrolled := _unrolled_prng(name, invals, eqn.params)) is not None:
      outvals = unrolled
    elif canonical and eqn.primitive is jex_core.primitives.conv_general_dilated_p:
      outvals = [_fast_conv(*invals, canonical_kernels=canonical_kernels, **eqn.params)]
    elif canonical and name in _INLINED_CALLS and "jaxpr" in eqn.params:
      inner = eqn.params["jaxpr"]
      closed = inner if isinstance(inner, jex_core.ClosedJaxpr) else jex_core.ClosedJaxpr(inner, ())
      outvals = _eval_jaxpr(closed.jaxpr, closed.consts, *invals, canonical_kernels=canonical_kernels,
                            unroll_prng=unroll_prng)
    else:
      subfuns, bind_params = _bind_params(eqn)
      with eqn.ctx.manager:
        outvals = eqn.primitive.bind(*subfuns, *invals, **bind_params)
      if not eqn.primitive.multiple_results:
        outvals = [outvals]
    for v, value in zip(eqn.outvars, outvals):
      write(v, value)
  return [read(v) for v in jaxpr.outvars]


def _rewritten(fn, **options):
  """``fn`` traced to a jaxpr and evaluated by `_eval_jaxpr` with ``options``."""

  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _eval_jaxpr(closed.jaxpr, closed.consts, *jax.tree.leaves(args), **options)
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return wrapped


def rewrite_convolutions(fn: Callable[..., Any], *, canonical_kernels: bool = True) -> Callable[..., Any]:
  """Returns ``fn`` with its convolutions rewritten into the forms XLA:CPU runs fastest.

  Traces ``fn`` and re-evaluates its jaxpr, inlining jit calls, with each
  ``conv_general_dilated`` (those of its gradients included) replaced by an
  equivalent computation:

  * depthwise convolutions: a sum over kernel taps of slices times weights;
  * 1 x 1 convolutions: one dot with the kernel as it is;
  * convolutions whose output is smaller than the kernel (and strided
    gradients whose cotangent is): patches and one dot;
  * any other: the kernel transposed to (spatial..., in, out), the form
    XLA:CPU's convolutions take; inside loop bodies XLA does not do this
    itself and falls back to a naive loop nest. In the entry computation
    XLA does it faster itself: pass ``canonical_kernels=False`` there.

  The values are those of ``fn`` up to float rounding; only the program XLA
  sees differs. The smoothing transforms apply this on the CPU backend;
  call it yourself for other CPU code (e.g. ``jax.jit(rewrite_convolutions(
  jax.grad(f)))``). It is meant for XLA:CPU: GPU and TPU compilers have
  their own convolution kernels, and the rewrites are not measured there.
  Convolutions inside control flow (scan, cond, while) and custom
  derivative rules are left as they are.

  Args:
    fn: a function of arrays returning a pytree of arrays.
    canonical_kernels: transpose the kernels of the convolutions not
      otherwise rewritten (needed when ``fn`` runs inside a loop body).

  Returns:
    A function with the same signature and results.
  """

  return _rewritten(fn, canonical_kernels=canonical_kernels)


def rewrite_for_cpu(fn: Callable[..., Any], *, canonical_kernels: bool = True) -> Callable[..., Any]:
  """`rewrite_convolutions`, and Threefry random bits and splits unrolled (`_prng`): what `map_samples` runs on CPU.

  The random values are bit for bit those of JAX; only the program differs.
  """
  return _rewritten(fn, canonical_kernels=canonical_kernels, unroll_prng=True)


def split_keys(key: jax.Array, num: int, backend: Optional[str] = None) -> jax.Array:
  """``jax.random.split(key, num)``, through `rewrite_for_cpu` wherever `plan` rewrites (the same keys)."""
  split = functools.partial(jax.random.split, num=num)
  return (rewrite_for_cpu(split) if plan(num, None, backend).rewrite_for_cpu else split)(key)


CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}
"""XLA:CPU options of `cpu_compiler_options`: jaxlib 0.10.2's default YNNPACK fusions (dots, reductions, convolutions) less convolutions."""


@functools.lru_cache(maxsize=None)
def _options_accepted(items: tuple[tuple[str, str], ...]) -> bool:
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32)).compile(compiler_options=dict(items))
  except Exception:  # pylint: disable=broad-except  (an XLA without these options)
    return False
  return True


def cpu_compiler_options(backend: Optional[str] = None) -> dict[str, str]:
  """XLA compiler options that make convolutional networks faster on CPU; ``{}`` elsewhere.

  jaxlib 0.10's XLA:CPU sends convolutions to YNNPACK by default, which on
  this project's 2-core AVX-512 Xeon is up to 2.4x slower than XLA's Eigen
  convolutions for the 3 x 3 layers of VGG and ResNet (forward and input
  gradient). These options keep YNNPACK for dots and reductions and give
  convolutions back to Eigen: in one benchmark run, VGG16's limit program at
  64 x 64 went from 4210 to 2949 ms (n = 50) and from 836 to 658 ms
  (n = 10). Pass them when compiling::

    smoothed = jax.jit(ag.adapt_smooth(jax.grad(f)), compiler_options=ag.cpu_compiler_options())

  or set ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``
  for the whole process. Results are unchanged up to float rounding.

  Args:
    backend: defaults to ``jax.default_backend()``.

  Returns:
    The options on the CPU backend when this XLA accepts them, else ``{}``.
  """
  if (backend or jax.default_backend()) != "cpu":
    return {}
  return dict(CPU_COMPILER_OPTIONS) if _options_accepted(tuple(CPU_COMPILER_OPTIONS.items())) else {}
