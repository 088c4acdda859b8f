"""The Monte Carlo engine shared by smoothing, Integrated Gradients and NoiseGrad.

``sample_sums(fn, inputs, ...)`` evaluates ``fn`` on every element of
``inputs`` and accumulates what the estimate and its standard error need.
``fn(u)`` returns the values of one *unit*: ``group`` samples stacked on a
leading axis (1 for i.i.d. samples; 2 for an antithetic pair ``+z, -z``; a
block of orthogonal directions). Units are independent, samples within a unit
need not be, so standard errors are computed from the units' means.

1. ``fn`` is traced **once**, to a jaxpr, for one abstract input. Everything
   after evaluates that jaxpr (``jax.core.eval_jaxpr``, which keeps each
   equation's source information and name stack), never the Python function
   again: the vmap, the scan or while-loop body and the memory probes of
   ``"auto"``.
2. ``batch_size=None`` (or at least n samples) evaluates every unit in one
   ``jax.vmap``. Otherwise the units are cut into the fewest equal chunks of
   at most ``batch_size`` samples (the last padded with repeats of the first
   inputs, masked out of the sums) and a ``jax.lax.scan`` carries the running
   sums: memory grows with ``batch_size``, not with n, and unit u always sees
   input u, so the result does not depend on ``batch_size`` (up to float
   rounding of the sums).
3. With ``rtol``, a ``jax.lax.while_loop`` evaluates chunks until the
   estimate's relative standard error ``||stderr|| / ||estimate||`` is at most
   ``rtol`` (after at least two chunks) or every unit is used. Under
   ``jax.vmap`` each example stops on its own (the batched loop keeps a
   finished example's carry), so results equal the unbatched ones.
4. On the CPU backend, with the switch of :mod:`adaptgrad_jax.cpu` on, the
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


class Estimate(NamedTuple):
  """A Monte Carlo estimate with its precision, returned with ``return_stderr=True`` or ``rtol``.

  Attributes:
    value: the map (the smoothed gradient), as without ``return_stderr``.
    stderr: the per-element standard error of ``value`` as an estimate of its
      expectation (Eq. 5's Gaussian convolution for ``aggregate="mean"``),
      from the spread of the independent units (samples, antithetic pairs or
      orthogonal blocks). Same structure and dtypes as ``value``.
    num_samples: the number of gradient evaluations used (an int32 array; less
      than n when ``rtol`` stopped early), the clean sample included.
  """

  value: PyTree
  stderr: PyTree
  num_samples: jax.Array


def relative_error(estimate: Estimate) -> jax.Array:
  """``||stderr||_2 / ||value||_2`` over all elements: the one-number precision of a map.

  It is the relative L2 error of the map one would expect from repeating the
  estimate with another key (the root-mean-square over keys of
  ``||value - E[value]|| / ||value||``), so "rel. error 2%" means the map's
  Monte Carlo noise is 2% of its size. An all-zero map gives 0 if its stderr
  is 0, else inf.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(jnp.sin(3 * x))
    >>> est = ag.adapt_smooth(jax.grad(f), 0.95, 256, bounds=(0.0, 1.0), return_stderr=True)(
    ...     jax.random.key(0), jnp.linspace(0.1, 0.9, 8))
    >>> bool(ag.relative_error(est) < 0.1)  # about 3.5%
    True
  """
  if not isinstance(estimate, Estimate):
    raise TypeError(
        f"relative_error(estimate) takes an Estimate (value, stderr,"
        f" num_samples), not {type(estimate).__name__}"
        f"{' of shape ' + str(jnp.shape(estimate)) if hasattr(estimate, 'shape') else ''}:"
        " build the transform with return_stderr=True (or rtol=...), e.g."
        " ag.adapt_smooth(g, 0.95, 50, bounds=b, return_stderr=True), and pass"
        " what it returns."
    )
  norm = lambda tree: jnp.sqrt(sum(jnp.sum(jnp.square(jnp.asarray(v, jnp.float32))) for v in jax.tree.leaves(tree)))
  err, size = norm(estimate.stderr), norm(estimate.value)
  return jnp.where(size > 0, err / jnp.where(size > 0, size, 1.0), jnp.where(err > 0, jnp.inf, 0.0))


def split_estimate(out: Any) -> tuple[Any, Any, Any]:
  """``(value, stderr, num_samples)`` of a gradient function's output: an :class:`Estimate`'s fields.

  A plain output gives ``(out, None, None)``.
  """
  if isinstance(out, Estimate):
    return out.value, out.stderr, out.num_samples
  return out, None, None


def stderr_wanted(return_stderr: Optional[bool], inner_estimate: bool, name: str, *, own_samples: bool) -> bool:
  """Whether a transform returns an :class:`Estimate` (``return_stderr`` resolved at trace time).

  None follows the gradient function: an Estimate in, an Estimate out. True
  needs a source of Monte Carlo error: the transform's own samples
  (``own_samples``) or an inner function that returns an Estimate.
  """
  if return_stderr is None:
    return inner_estimate
  if return_stderr and not (inner_estimate or own_samples):
    raise TypeError(
        f"{name}: return_stderr=True, but grad_fn returned a plain gradient, so"
        " there is no Monte Carlo error to propagate; build the stochastic"
        " inner transform with return_stderr=True (e.g. adapt_smooth(...,"
        " return_stderr=True)), or drop return_stderr."
    )
  return bool(return_stderr)


def sum_of_terms(term_fn: Callable[[jax.Array], tuple[PyTree, Any, Any]], count: int, *, batch_size: Any,
                 cpu_rewrite: Optional[bool]) -> tuple[PyTree, Any, Any]:
  """``sum_k term_k`` for ``k < count``, and the standard error of the sum when the terms are random.

  For the deterministic quadratures over a path (Integrated Gradients, Blur
  IG) of a stochastic gradient function: each point's gradient is an
  independent Monte Carlo estimate (its own key), so the variance of the sum
  is the sum of the terms' variances. ``term_fn(k)`` returns ``(term,
  variance, used)``: a pytree of float arrays; None, or the variance of each
  element of ``term``; None, or the gradient evaluations behind it. Returns
  ``(total, stderr, used)`` (the last two None without variances). An
  infinite variance (an inner estimate of fewer than two units) gives an
  infinite standard error, never a NaN.
  """
  def values(k):
    term, var, used = term_fn(k)
    out = {"term": term}
    if var is not None:
      out["var"] = jax.tree.map(lambda v: jnp.where(jnp.isinf(v), 0, v), var)
      out["inf"] = jax.tree.map(lambda v: jnp.isinf(v).astype(jnp.float32), var)
    if used is not None:
      out["used"] = jnp.asarray(used, jnp.float32)
    return jax.tree.map(lambda v: v[None], out), None

  sums = sample_sums(values, jnp.arange(count, dtype=jnp.int32), batch_size=batch_size, names=("m1",),
                     cpu_rewrite=cpu_rewrite)
  total = jax.tree.map(lambda m: m * count, sums.sums["m1"])
  stderr = None
  if "var" in total:
    stderr = jax.tree.map(lambda v, i: jnp.where(i > 0, jnp.inf, jnp.sqrt(jnp.maximum(v, 0))),
                          total["var"], total["inf"])
  used = jnp.round(total["used"]).astype(jnp.int32) if "used" in total else None
  return total["term"], stderr, used


class Sums(NamedTuple):
  """Sums over the units of a Monte Carlo estimate (see :func:`sample_sums`)."""

  sums: dict
  """``"m1"``, ``"m2"``: means over the units of each unit's mean of v and v^2; ``"q11"``, ``"q22"``,
  ``"q12"``: sums of products of their deviations (centred co-moments)."""
  units: jax.Array
  """The number of units summed (an int32 array: it may be traced under ``rtol``)."""
  group: int
  """Samples per unit."""
  like: PyTree
  """``jax.ShapeDtypeStruct`` of one sample's value: the dtypes to return."""
  extras: Any
  """The per-sample extras, stacked along a leading axis (None under ``rtol``)."""
  clean: Optional[PyTree] = None
  """A deterministic extra sample (the clean gradient), counted with weight 1."""


def sample_keys(key: KeyArray, n: int, cpu_rewrite: Optional[bool]) -> jax.Array:
  """``jax.random.split(key, n)``: unit j's key (through the CPU rewrite where it applies; the same keys)."""
  split = lambda k: jax.random.split(k, n)
  return (cpu.rewrite(split) if cpu.applies(cpu_rewrite, key) else split)(key)


def validate_rtol(rtol: Any, batch_size: Any, group: int, has_aux: bool) -> Optional[float]:
  """Checks ``rtol`` at build time (None, or a number in (0, 1) with an int ``batch_size``)."""
  if rtol is None:
    return None
  if isinstance(rtol, (bool, str)) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
    raise ValueError(
        f"rtol={rtol!r} is a relative standard error and must lie in (0, 1),"
        " e.g. 0.05 for 5%; None samples all n."
    )
  if not isinstance(batch_size, int) or isinstance(batch_size, bool):
    raise ValueError(
        f"rtol={rtol} samples in chunks of batch_size and needs an int"
        f" batch_size (got {batch_size!r}); e.g. batch_size={max(8, group)}."
    )
  if batch_size % group:
    raise ValueError(
        f"batch_size={batch_size} must be a multiple of {group} with rtol: the"
        f" noise scheme draws units of {group} samples."
    )
  if has_aux:
    raise ValueError("rtol stops at a data-dependent sample count, so it cannot stack aux; pass has_aux=False.")
  return float(rtol)


def needed_sums(aggregate: str, stderr: bool) -> tuple[str, ...]:
  """The unit sums ``aggregate`` (and its standard error) needs.

  ``"var"`` is computed from the units' centred sums (``"w"``, the mean
  within-unit variance, and ``"q11"``), never as ``E[g^2] - E[g]^2``, which
  cancels in float32 when the gradient's mean is large against its spread.
  """
  first = {"mean": ("m1",), "mean_sq": ("m2",), "var": ("m1", "q11", "w")}[aggregate]
  if not stderr:
    return first
  second = {"mean": ("q11",), "mean_sq": ("q22",), "var": ("m2", "q22", "q12")}[aggregate]
  return tuple(dict.fromkeys(first + second))


def _chunk_moments(values, acc_dtypes, valid, names):
  """The units' means and centred co-moments over a chunk; ``values`` leaves are (units, group, ...).

  Returns ``{"k": units counted, "m1"/"m2": means of the units' mean of v and
  v^2, "q11"/"q22"/"q12": sums of products of their deviations from those
  means}``, the form Chan et al.'s pairwise update merges without the
  cancellation of raw sums of squares.

  One pass: the sums of ``d = u - u_0`` and of its products, where ``u_0``,
  the chunk's first unit, is a shift that costs nothing (no pass over the
  chunk to find the mean first). The deviations from the shift are of the
  order of the spread, so ``q = sum(d d') - sum(d) sum(d') / k`` does not
  cancel as raw sums of squares would; every sum reads the same array, so
  XLA fuses them into one reduction.
  """
  k = jnp.float32(values_count(values)) if valid is None else jnp.sum(valid).astype(jnp.float32)
  moments = {m for m in ("m1", "m2") if m in names}
  for q, pair in _PRODUCTS.items():
    if q in names:
      moments.update(pair)

  def stats(v, dtype):
    v = v.astype(dtype)
    unit = {}
    if "m1" in moments:
      unit["m1"] = v[:, 0] if v.shape[1] == 1 else jnp.mean(v, axis=1)
    if "m2" in moments:
      unit["m2"] = jnp.square(v[:, 0]) if v.shape[1] == 1 else jnp.mean(v * v, axis=1)
    mask = None if valid is None else valid.reshape((-1,) + (1,) * (v.ndim - 2)).astype(dtype)
    masked = (lambda t: t) if mask is None else (lambda t: t * mask)
    kk = jnp.maximum(k, 1).astype(dtype)
    within = {}
    if "w" in names:  # each unit's variance about its own mean (0 for units of one sample)
      w = jnp.zeros_like(v[:, 0]) if v.shape[1] == 1 else jnp.mean(jnp.square(v - jnp.mean(v, 1, keepdims=True)), 1)
      within["w"] = jnp.sum(masked(w), axis=0) / kk
    if not any(q in names for q in _PRODUCTS):  # the map alone: plain sums (XLA fuses them into the producer)
      return {**{m: jnp.sum(masked(unit[m]), axis=0) / kk for m in unit}, **within}
    shift = {m: unit[m][0] for m in unit}
    dev = {m: masked(unit[m] - shift[m]) for m in unit}
    sums = {m: jnp.sum(dev[m], axis=0) for m in unit}
    out = {m: shift[m] + sums[m] / kk for m in ("m1", "m2") if m in names}
    for q, (a, b) in _PRODUCTS.items():
      if q in names:
        out[q] = jnp.sum(dev[a] * dev[b], axis=0) - sums[a] * sums[b] / kk
    return {**out, **within}

  leaves, structure = jax.tree.flatten(values)
  per_leaf = [stats(v, d) for v, d in zip(leaves, jax.tree.leaves(acc_dtypes))]
  return {"k": k, **{name: jax.tree.unflatten(structure, [m[name] for m in per_leaf]) for name in names}}


_PRODUCTS = {"q11": ("m1", "m1"), "q22": ("m2", "m2"), "q12": ("m1", "m2")}


def check_values(values: Any) -> None:
  """Raises unless one sample's values (what the gradient function returned) hold at least one array."""
  if not jax.tree.leaves(values):
    raise ValueError(
        f"the gradient function returned {jax.tree.structure(values)}, which"
        " holds no arrays, so there is nothing to average; it must return the"
        " gradient, e.g. jax.grad(f) (a function that ends without `return`"
        " returns None)."
    )


def values_count(values) -> int:
  return jax.tree.leaves(values)[0].shape[0]


def _merge(a, b):
  """Chan et al.'s pairwise update of two sets of units' means and co-moments."""
  k = a["k"] + b["k"]
  safe = jnp.maximum(k, 1.0)
  wb = b["k"] / safe
  out = {"k": k}
  delta = {m: jax.tree.map(lambda x, y: y - x, a[m], b[m]) for m in ("m1", "m2", "w") if m in a}
  for m in delta:
    out[m] = jax.tree.map(lambda x, d: x + d * wb.astype(x.dtype), a[m], delta[m])
  for q, (x, y) in (("q11", ("m1", "m1")), ("q22", ("m2", "m2")), ("q12", ("m1", "m2"))):
    if q in a:
      both = a["k"] * b["k"] / safe
      out[q] = jax.tree.map(lambda qa, qb, dx, dy: qa + qb + dx * dy * both.astype(qa.dtype),
                            a[q], b[q], delta[x], delta[y])
  return out


def sample_sums(
    fn: Callable[[Any], tuple[PyTree, Any]],
    inputs: jax.Array,
    *,
    group: int = 1,
    batch_size: Any,
    names: tuple[str, ...],
    cpu_rewrite: Optional[bool],
    rtol: Optional[float] = None,
    aggregate: str = "mean",
) -> Sums:
  """Sums the units' statistics ``names`` over ``inputs`` (see the module docstring).

  Args:
    fn: maps one unit's input to ``(values, extras)``, each with a leading
      axis of ``group`` samples; ``values`` a pytree of float arrays.
    inputs: an array whose leading axis enumerates the units.
    group: samples per unit.
    batch_size: None, an int >= 1 (samples), ``"auto"`` or an ``AutoBatchSize``.
    names: the sums to accumulate (:func:`needed_sums`), or a callable
      returning them, called once ``fn`` has been traced (for transforms
      whose statistics depend on what ``fn`` returns, without a second trace).
    cpu_rewrite: the switch of :mod:`adaptgrad_jax.cpu`.
    rtol: stop early at this relative standard error (needs an int
      ``batch_size``); extras are then not returned.
    aggregate: the statistic ``rtol`` watches.

  Returns:
    :class:`Sums`.
  """
  units = inputs.shape[0]
  spec = jax.ShapeDtypeStruct(inputs.shape[1:], inputs.dtype)
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(spec)
  check_values(out_shape[0])
  names = tuple(names()) if callable(names) else names
  out_tree = jax.tree.structure(out_shape)
  like = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), out_shape[0])
  acc = jax.tree.map(lambda v: compute_dtype(v.dtype), like)

  def one(u):
    return jax.tree.unflatten(out_tree, jax.core.eval_jaxpr(closed.jaxpr, closed.consts, u))

  def chunk(us, valid):
    values, extras = jax.vmap(one)(us)
    return _chunk_moments(values, acc, valid, names), extras

  entry = in_loop = chunk
  if cpu.applies(cpu_rewrite, inputs, closed.consts):
    entry = cpu.rewrite(chunk, canonical_kernels=False)
    in_loop = cpu.rewrite(chunk)
  zeros = {"k": jnp.float32(0), **{name: jax.tree.map(lambda v, d: jnp.zeros(v.shape, d), like, acc)
                                    for name in names}}
  to_samples = lambda e: e.reshape((-1,) + e.shape[2:])  # (units, group, ...) -> (samples, ...)

  if rtol is None:
    batch_size = _memory.resolve_batch_size(one, inputs, batch_size, group=group)
  per_chunk = units if batch_size is None else max(1, min(units, batch_size // group))
  if rtol is None and per_chunk >= units:
    sums, extras = entry(inputs, None)
    return Sums(sums, jnp.int32(units), group, like, jax.tree.map(to_samples, extras))

  chunks = math.ceil(units / per_chunk)
  size = math.ceil(units / chunks) if rtol is None else per_chunk
  pad = chunks * size - units
  padded = jnp.concatenate([inputs, inputs[:pad]]) if pad else inputs
  padded = padded.reshape((chunks, size) + inputs.shape[1:])
  valid = (jnp.arange(chunks * size) < units).reshape(chunks, size)

  if rtol is None:
    def body(carry, chunk_in):
      sums, extras = in_loop(*chunk_in)
      return _merge(carry, sums), extras

    sums, extras = jax.lax.scan(body, zeros, (padded, valid))
    extras = jax.tree.map(lambda e: to_samples(to_samples(e))[: units * group], extras)
    return Sums(sums, jnp.int32(units), group, like, extras)

  def counted(c):
    return jnp.minimum((c * size), units).astype(jnp.int32)

  def precise_enough(sums, c):
    used = counted(c)
    est = finish(Sums(sums, used, group, like, None), aggregate, stderr=True)
    return (c >= 2) & (relative_error(est) <= rtol)

  def cond(state):
    c, sums = state
    return (c < chunks) & ~precise_enough(sums, c)

  def loop_body(state):
    c, sums = state
    sums_c, _ = in_loop(padded[c], valid[c])
    return c + 1, _merge(sums, sums_c)

  c, sums = jax.lax.while_loop(cond, loop_body, (jnp.int32(0), zeros))
  return Sums(sums, counted(c), group, like, None)


def finish(sums: Sums, aggregate: str, *, stderr: bool) -> Any:
  """The statistic ``aggregate`` of the samples (and an :class:`Estimate` with ``stderr``), in the values' dtypes.

  With a clean sample (``sums.clean``) the estimate counts it once among the
  ``units * group + 1`` samples; it is not random, so it scales the standard
  error by ``n / (n + 1)``.
  """
  s, k, g = sums.sums, sums.units, sums.group
  kf = k.astype(jnp.float32) if hasattr(k, "astype") else float(k)
  n = kf * g
  total = n + (0 if sums.clean is None else 1)
  clean = sums.clean
  cast = lambda tree: jax.tree.map(lambda o, v: o.astype(v.dtype), tree, sums.like)

  def mean_of(name, power):
    mc = s[name]
    if clean is None:
      return mc
    return jax.tree.map(lambda m, c: (m * n + c.astype(m.dtype) ** power) / total, mc, clean)

  m1 = mean_of("m1", 1) if "m1" in s else None
  m2 = mean_of("m2", 2) if "m2" in s else None
  if aggregate == "mean":
    value = m1
  elif aggregate == "mean_sq":
    value = m2
  else:  # var: within units plus between units, from centred sums (no E[g^2] - E[g]^2 cancellation)
    value = jax.tree.map(lambda w, q: w + jnp.maximum(q, 0) / kf, s["w"], s["q11"])
    if clean is not None:  # one more sample c: Chan's update of the sum of squares, divided by n + 1
      value = jax.tree.map(lambda v, m, c: (v * n + jnp.square(c.astype(m.dtype) - m) * n / total) / total,
                           value, s["m1"], clean)
  if not stderr:
    return cast(value)

  weight = n / total  # the clean sample is not random
  denom = jnp.maximum(kf - 1.0, 1.0) * kf
  cov = lambda q: jax.tree.map(lambda qq: qq / denom, s[q])  # variance of the mean of k units
  if aggregate == "mean":
    var = cov("q11")
  elif aggregate == "mean_sq":
    var = cov("q22")
  else:  # delta method on d_u = m2_u - 2 E[g] m1_u
    var = jax.tree.map(lambda a, b, c, mu: b + 4 * mu * mu * a - 4 * mu * c, cov("q11"), cov("q22"), cov("q12"), m1)
  err = jax.tree.map(lambda v: weight * jnp.sqrt(jnp.maximum(v, 0)), var)
  err = jax.tree.map(lambda e: jnp.where(kf >= 2, e, jnp.inf), err)
  return Estimate(cast(value), cast(err), jnp.asarray(total).astype(jnp.int32))
