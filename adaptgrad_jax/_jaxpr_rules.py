"""The program transform behind :func:`smooth_diff` and :func:`moment_smooth`: expected local Jacobians.

Both estimators trace the scalar function once (``jax.make_jaxpr``), inline
its calls (``jit``, ``closed_call``, ``checkpoint`` and the primal body of
``custom_jvp``: ``jax.nn.relu``, ``relu6``, ...), and walk the flat jaxpr the
way ``jax.core.eval_jaxpr`` does, binding every equation inside
``source_info_util.user_context`` with its traceback and name stack. What to
do with an equation is looked up in :data:`RULES`, keyed by primitive, as
``jax/_src/interpreters/ad.py`` keys ``primitive_jvps``; a primitive that is
not in the table and sees the input is refused at trace time.

**The units that are smoothed.** The backward pass at the clean input uses,
for each nonlinear *unit* of the program, its expected local Jacobian
``E[J]`` under the input noise instead of the Jacobian at the clean input.
The units are:

* *activation chains*: a maximal run of elementwise equations that depend on
  the input through one value ``r`` of the same shape (the pre-activation):
  ``max(r, 0)`` (ReLU), ``min(max(r, 0), 6)`` (ReLU6), ``select_n(r >= 0,
  0.01 r, r)`` (leaky ReLU), ``r * relu6(r + 3) / 6`` (hardswish), GELU in its
  tanh or erf form, ``r * logistic(r)``... Each value ``y`` of the chain used
  outside it is a function ``y = g(r)`` applied elementwise; its unit is the
  diagonal Jacobian ``E[g'(r)]``, the expected derivative of the whole
  activation function (for ReLU the frequency ``P(r > 0)`` of the unit being
  on; for ReLU6 ``P(0 < r < 6)``). Taking the chain as one unit, rather than
  each equation, is what makes ``r * tanh(...)`` (GELU) or ``r * relu6(r +
  3)`` (hardswish) exact: the product's two factors are the same random
  variable.
* *elementwise equations between different values* (``a * b`` of two
  activations, ``a / b`` in softmax and normalisation, ``max(a, b)``,
  ``select_n`` on a predicate computed elsewhere): the expected partial
  derivatives ``E[d y / d a]``, ``E[d y / d b]`` (for ``a * b``: ``E[b]`` and
  ``E[a]``).
* ``dot_general`` / ``conv_general_dilated`` of two values that both depend
  on the input (attention's ``Q K^T`` and ``P V``): bilinear, so ``E[J]`` is
  the Jacobian at the operands' means.
* ``reduce_max`` / ``reduce_min`` and ``reduce_window_max`` /
  ``reduce_window_min`` (max-pooling): the Jacobian selects the maximum, so
  ``E[J]`` holds each element's probability of being selected in each
  window (ties split as ``jax.grad`` splits them: equally for ``reduce_max``, to the first for
  max-pooling).

Everything else that sees the input must be linear in it (add, reshape,
convolution or matmul with a constant operand, sums, average pooling, pads,
gathers at fixed indices...): its Jacobian is the same at every noisy input,
and JAX's own transpose is used. ``stop_gradient`` and equations with only
integer or boolean results pass no derivative.

The chain rule over units is exact for each unit, but the product of
expectations is not the expectation of the product: that is the bias of
these estimators (zero for one hidden layer, the closed form of the tests).
"""

import itertools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core
from jax.extend import source_info_util
from jax.extend.core import primitives as P

# ----------------------------------------------------------------------------
# The table.


class Rule(NamedTuple):
  """What the transforms do with a primitive whose operands depend on the input.

  Attributes:
    kind: ``"elementwise"`` (may join an activation chain), ``"linear"``
      (linear in its varying operands; JAX's transpose is exact),
      ``"bilinear"`` (linear in each operand), ``"select"`` (a reduction
      that picks an element), ``"window_select"`` (max-pooling) or
      ``"no_derivative"`` (passes no derivative).
    linear_when: for ``"elementwise"`` and ``"bilinear"``, given which
      operands vary, whether the equation is linear in them (then it needs no
      statistics).
    fixed: operand positions that must not depend on the input (indices of
      gathers and dynamic slices).
  """

  kind: str
  linear_when: Optional[Callable[[tuple], bool]] = None
  fixed: tuple = ()


def _always(varying):
  return True


def _never(varying):
  return False


def _at_most_one(varying):
  return sum(varying) <= 1


def _first_only(varying):
  return not any(varying[1:])


def _not_first(varying):
  return not varying[0]


_ELEMENTWISE_LINEAR = {
    P.add_p: _always, P.sub_p: _always, P.neg_p: _always, P.convert_element_type_p: _always,
    P.copy_p: _always, P.reduce_precision_p: _always, P.real_p: _always,
    P.mul_p: _at_most_one, P.div_p: _first_only, P.select_n_p: _not_first,
}
_ELEMENTWISE_NONLINEAR = (
    P.max_p, P.min_p, P.clamp_p, P.abs_p, P.sign_p, P.floor_p, P.ceil_p, P.round_p, P.is_finite_p,
    P.exp_p, P.exp2_p, P.expm1_p, P.log_p, P.log1p_p, P.tanh_p, P.logistic_p, P.sin_p, P.cos_p, P.tan_p,
    P.asin_p, P.acos_p, P.atan_p, P.sinh_p, P.cosh_p, P.asinh_p, P.acosh_p, P.atanh_p, P.atan2_p,
    P.erf_p, P.erfc_p, P.erf_inv_p, P.lgamma_p, P.digamma_p, P.sqrt_p, P.rsqrt_p, P.cbrt_p,
    P.integer_pow_p, P.pow_p, P.square_p, P.rem_p, P.nextafter_p,
)
_COMPARISONS = (P.eq_p, P.ne_p, P.gt_p, P.ge_p, P.lt_p, P.le_p, P.and_p, P.or_p, P.not_p, P.xor_p)
def _primitive_of(fn, *args):
  """The primitive of ``fn``'s single equation (for primitives ``jax.extend`` does not export)."""
  return jax.make_jaxpr(fn)(*args).jaxpr.eqns[0].primitive


# An abstract argument: importing the package must not start the XLA backend (jax.distributed.initialize
# must come before it in multi-host programs; tests/test_attribute.py::test_two_processes_on_localhost).
_SPLIT = _primitive_of(lambda v: lax.split(v, (1, 1)), jax.ShapeDtypeStruct((2,), jnp.float32))

_STRUCTURAL = (_SPLIT,
    P.reshape_p, P.broadcast_in_dim_p, P.transpose_p, P.squeeze_p, P.slice_p, P.concatenate_p, P.pad_p,
    P.rev_p, P.reduce_sum_p, P.cumsum_p, P.reduce_window_sum_p, P.sharding_constraint_p,
)

RULES: dict = {}
"""Primitive -> :class:`Rule`: the extension point (add a primitive here, with its moment rule)."""
RULES.update({p: Rule("elementwise", linear_when=w) for p, w in _ELEMENTWISE_LINEAR.items()})
RULES.update({p: Rule("elementwise", linear_when=_never) for p in _ELEMENTWISE_NONLINEAR})
RULES.update({p: Rule("elementwise", linear_when=_always) for p in _COMPARISONS})
RULES.update({p: Rule("linear") for p in _STRUCTURAL})
RULES.update({
    P.dynamic_slice_p: Rule("linear", fixed=(1, 2, 3, 4, 5, 6, 7, 8)),
    P.dynamic_update_slice_p: Rule("linear", fixed=(2, 3, 4, 5, 6, 7, 8)),
    P.gather_p: Rule("linear", fixed=(1,)),
    P.scatter_add_p: Rule("linear", fixed=(1,)),
    P.dot_general_p: Rule("bilinear", linear_when=_at_most_one),
    P.conv_general_dilated_p: Rule("bilinear", linear_when=_at_most_one),
    P.reduce_max_p: Rule("select"),
    P.reduce_min_p: Rule("select"),
    P.reduce_window_max_p: Rule("window_select"),
    P.reduce_window_min_p: Rule("window_select"),
    P.stop_gradient_p: Rule("no_derivative"),
    P.argmax_p: Rule("no_derivative"),
    P.argmin_p: Rule("no_derivative"),
    P.iota_p: Rule("no_derivative"),
})

_INLINE = {
    P.jit_p: lambda p: (p["jaxpr"].jaxpr, p["jaxpr"].consts),
    P.closed_call_p: lambda p: (p["call_jaxpr"].jaxpr, p["call_jaxpr"].consts),
    P.custom_jvp_call_p: lambda p: (p["call_jaxpr"].jaxpr, p["call_jaxpr"].consts),
    P.remat_p: lambda p: (p["jaxpr"], ()),
}
"""Calls whose body is evaluated in place (a custom_jvp by its primal body: its derivative is the body's a.e.)."""


class Unsupported(TypeError):
  """A primitive the transforms cannot smooth (raised at trace time)."""


def _refusal(eqn, name: str, why: str = "") -> Unsupported:
  where = source_info_util.summarize(eqn.source_info)
  reason = why or (
      "it is not in the table of rules (adaptgrad_jax._jaxpr_rules.RULES), and"
      " treating an unknown nonlinear primitive as linear would give a wrong map"
  )
  return Unsupported(
      f"{name} cannot smooth the primitive '{eqn.primitive.name}'{f' (at {where})' if where.strip() else ''}:"
      f" {reason}. Use adapt_smooth / smooth_grad (Monte Carlo over"
      " jax.grad(f)), which work for any differentiable function."
  )


# ----------------------------------------------------------------------------
# Tracing and inlining.


def _read(env, v):
  return v.val if isinstance(v, jex_core.Literal) else env[v]


def _context(eqn):
  name_stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
  return source_info_util.user_context(eqn.source_info.traceback, name_stack=name_stack)


def bind(eqn, invals):
  """``eqn``'s primitive bound to ``invals``; always a list of outputs."""
  out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
  return list(out) if eqn.primitive.multiple_results else [out]


def _inline(jaxpr, consts, args):
  env = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [_read(env, v) for v in eqn.invars]
    with _context(eqn), eqn.ctx.manager:
      if eqn.primitive in _INLINE:
        inner, inner_consts = _INLINE[eqn.primitive](eqn.params)
        name = eqn.params.get("name")
        if isinstance(name, str) and name:
          with jax.named_scope(name):
            outvals = _inline(inner, inner_consts, invals)
        else:
          outvals = _inline(inner, inner_consts, invals)
      else:
        outvals = bind(eqn, invals)
    env.update(zip(eqn.outvars, outvals))
  return [_read(env, v) for v in jaxpr.outvars]


def trace_flat(fn: Callable[[Any], Any], x: Any, name: str):
  """The jaxpr of scalar ``fn`` at ``x`` (a pytree), its calls inlined; invars are ``x``'s leaves."""
  leaves, tree = jax.tree.flatten(x)
  specs = [jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)) for v in leaves]
  closed, out_shape = jax.make_jaxpr(lambda *ls: fn(jax.tree.unflatten(tree, ls)), return_shape=True)(*specs)
  outs = jax.tree.leaves(out_shape)
  if len(outs) != 1 or outs[0].shape != () or not jnp.issubdtype(outs[0].dtype, jnp.floating):
    raise TypeError(
        f"{name} needs a scalar-output function f (as jax.grad does), but f"
        f" returned {out_shape}; reduce it to a scalar, e.g. lambda x:"
        " model(x)[label] for a class score."
    )
  return jax.make_jaxpr(lambda *ls: _inline(closed.jaxpr, closed.consts, ls))(*specs)


# ----------------------------------------------------------------------------
# The plan: which equations form chains and units.


def _is_float(v) -> bool:
  return jnp.issubdtype(v.aval.dtype, jnp.inexact)


class Unit(NamedTuple):
  """A smoothed unit: ``kind`` in ``"chain"``, ``"elementwise"``, ``"bilinear"``, ``"select"``, ``"window_select"``."""

  kind: str
  eqn: Any = None
  var: Any = None
  """For a chain: the exported value y (the unit's output)."""
  root: Any = None
  """For a chain: its pre-activation r."""
  operands: tuple = ()
  """Positions of the equation's varying float operands."""


class Plan(NamedTuple):
  jaxpr: Any
  consts: list
  modes: list
  """Per equation: ``"const"``, ``"plain"``, ``("chain", root)`` or ``("unit", uid)``."""
  units: list
  exports: dict
  """Chain value -> uid of its chain unit."""
  smoothed_roots: frozenset
  varying: frozenset


def build_plan(flat, name: str) -> Plan:
  """Classifies every equation of ``flat`` (from :func:`trace_flat`), refusing what cannot be smoothed."""
  jaxpr = flat.jaxpr
  varying = set(jaxpr.invars)
  root = {v: v for v in jaxpr.invars}
  modes, units = [], []
  chain_eqns = {}
  for eqn in jaxpr.eqns:
    vary = tuple(isinstance(v, jex_core.Var) and v in varying for v in eqn.invars)
    if not any(vary):
      modes.append("const")
      continue
    rule = RULES.get(eqn.primitive)
    if rule is None:
      raise _refusal(eqn, name)
    for i in rule.fixed:
      if i < len(vary) and vary[i]:
        raise _refusal(eqn, name, "its indices depend on the input (a data-dependent selection)")
    varying.update(eqn.outvars)
    float_ops = tuple(i for i, v in enumerate(eqn.invars) if vary[i] and _is_float(v))
    if rule.kind == "elementwise":
      out_shape = eqn.outvars[0].aval.shape
      roots = {root[eqn.invars[i]] for i in range(len(vary)) if vary[i]}
      same_shape = all(eqn.invars[i].aval.shape == out_shape for i in range(len(vary)) if vary[i])
      if len(roots) == 1 and same_shape:
        (r,) = roots
        modes.append(("chain", r))
        chain_eqns.setdefault(r, []).append((eqn, rule.linear_when(vary)))
        root.update((v, r) for v in eqn.outvars)
        continue
      if rule.linear_when(vary) or not any(_is_float(v) for v in eqn.outvars):
        modes.append("plain")
      else:
        units.append(Unit("elementwise", eqn, operands=float_ops))
        modes.append(("unit", len(units) - 1))
    elif rule.kind == "bilinear" and not rule.linear_when(vary):
      units.append(Unit("bilinear", eqn, operands=float_ops))
      modes.append(("unit", len(units) - 1))
    elif rule.kind in ("select", "window_select"):
      if rule.kind == "window_select" and any(d != 1 for d in eqn.params["base_dilation"]):
        raise _refusal(eqn, name, "max-pooling with base dilation is not supported")
      units.append(Unit(rule.kind, eqn, operands=float_ops))
      modes.append(("unit", len(units) - 1))
    else:
      modes.append("plain")
    root.update((v, v) for v in eqn.outvars)

  smoothed = frozenset(r for r, eqns in chain_eqns.items() if not all(lin for _, lin in eqns))
  # A chain value is exported if anything outside its chain reads it.
  used_outside = set(v for v in jaxpr.outvars if isinstance(v, jex_core.Var))
  for eqn, mode in zip(jaxpr.eqns, modes):
    own = mode[1] if isinstance(mode, tuple) and mode[0] == "chain" else None
    for v in eqn.invars:
      if isinstance(v, jex_core.Var) and v in varying and root.get(v) is not v and root.get(v) is not own:
        used_outside.add(v)
  exports = {}
  for v in sorted(used_outside, key=lambda v: str(v)):
    r = root.get(v)
    if r is not None and r is not v and r in smoothed and _is_float(v) and _is_float(r):
      units.append(Unit("chain", var=v, root=r))
      exports[v] = len(units) - 1
  return Plan(jaxpr, list(flat.consts), modes, units, exports, smoothed, frozenset(varying))


# ----------------------------------------------------------------------------
# Rules: per-sample statistics and the backward pass that uses their means.


def _ones_like(v):
  return jnp.ones(jnp.shape(v), jnp.result_type(v))


def _partials(eqn, invals, operands):
  """``[d y / d invals[i] for i in operands]`` of an elementwise equation, each shaped like y."""
  primals = [invals[i] for i in operands]

  def fn(*vals):
    full = list(invals)
    for i, v in zip(operands, vals):
      full[i] = v
    return bind(eqn, full)[0]

  out = []
  for k in range(len(operands)):
    tangents = [_ones_like(p) if j == k else jnp.zeros_like(p) for j, p in enumerate(primals)]
    out.append(jax.jvp(fn, primals, tangents)[1])
  return out


def _reduced_axes(eqn):
  return tuple(eqn.params["axes"])


def _first_extreme(values, axis: int, minimum: bool):
  """One-hot (along ``axis``) of the first maximum (minimum) of ``values``: one reduction reads each value once."""
  axis %= values.ndim
  pick = jnp.argmin(values, axis=axis) if minimum else jnp.argmax(values, axis=axis)
  positions = lax.broadcasted_iota(jnp.int32, values.shape, axis)
  return (positions == jnp.expand_dims(pick, axis)).astype(values.dtype)


def _select_weights(eqn, x, y):
  """Each element's share of ``reduce_max``'s (``reduce_min``'s) derivative: 1 / ties where selected.

  Ties are found by comparing ``x`` with the output ``y``. XLA may compute the two from copies of ``x``'s
  producer fused into different kernels and round them differently (XLA:CPU without its optimisation
  passes lost a quarter of the selections so), so where no element equals ``y`` the first extreme gets it all.
  """
  axes = _reduced_axes(eqn)
  hit = (x == jnp.expand_dims(y, axes)).astype(x.dtype)
  count = jnp.sum(hit, axis=axes, keepdims=True)
  moved = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
  flat = moved.reshape(*moved.shape[:x.ndim - len(axes)], -1)
  first = _first_extreme(flat, -1, eqn.primitive is P.reduce_min_p).reshape(moved.shape)
  first = jnp.moveaxis(first, tuple(range(x.ndim - len(axes), x.ndim)), axes)
  return jnp.where(count > 0, hit / jnp.maximum(count, 1), first)


def window_patches(x, params, pad_value):
  """``(K, *out)``: the K elements of every window of a ``reduce_window`` equation (base dilation 1)."""
  dims, strides = params["window_dimensions"], params["window_strides"]
  dil = params["window_dilation"]
  xp = lax.pad(x, jnp.asarray(pad_value, x.dtype), [(lo, hi, 0) for lo, hi in params["padding"]])
  out = [(n - (w - 1) * d - 1) // s + 1 for n, w, d, s in zip(xp.shape, dims, dil, strides)]
  patches = []
  for offset in itertools.product(*(range(w) for w in dims)):
    start = [o * d for o, d in zip(offset, dil)]
    limit = [st + (m - 1) * s + 1 for st, m, s in zip(start, out, strides)]
    patches.append(lax.slice(xp, start, limit, strides))
  return jnp.stack(patches)


def disjoint_windows(params) -> bool:
  """Whether every element lies in at most one window (stride = window, no padding or dilation): 2 x 2 pools."""
  return (tuple(params["window_strides"]) == tuple(params["window_dimensions"])
          and all(lo == 0 and hi == 0 for lo, hi in params["padding"])
          and all(d == 1 for d in params["window_dilation"]))


def _zero_pad_to(y, shape):
  """``y`` padded with zeros at the end of each axis to ``shape``: the elements no disjoint window covers."""
  return jnp.pad(y, [(0, n - m) for n, m in zip(shape, y.shape)])


def _upsample(y, params, shape):
  """``y`` (one value per window) repeated over each disjoint window, zero past the last whole window."""
  for axis, w in enumerate(params["window_dimensions"]):
    if w > 1:
      y = jnp.repeat(y, w, axis=axis)
  return _zero_pad_to(y, shape)


def _disjoint_patches(x, params):
  """``(*out, K)``: the K elements of every disjoint window, by reshaping (no copies per window offset).

  The K elements come in :func:`window_patches`' order (row-major over the window's offsets); elements past
  the last whole window are dropped.
  """
  dims = params["window_dimensions"]
  out = [n // w for n, w in zip(x.shape, dims)]
  x = x[tuple(slice(0, o * w) for o, w in zip(out, dims))]
  x = x.reshape([v for o, w in zip(out, dims) for v in (o, w)])
  x = jnp.transpose(x, [2 * i for i in range(len(dims))] + [2 * i + 1 for i in range(len(dims))])
  return x.reshape(*out, -1)


def disjoint_to_input(weights, params, shape):
  """Per-window values ``(K, *out)`` (:func:`window_patches`' layout) at the input's elements.

  Zero past the last whole window. For disjoint windows (:func:`disjoint_windows`) every element lies
  in at most one window, so this is a reshape: the layout of a max-pool's selection statistic, shaped
  like the pooled input.
  """
  dims = params["window_dimensions"]
  out = weights.shape[1:]
  w = jnp.moveaxis(weights, 0, -1).reshape(*out, *dims)
  w = jnp.transpose(w, [i for pair in zip(range(len(dims)), range(len(dims), 2 * len(dims))) for i in pair])
  return _zero_pad_to(w.reshape([o * d for o, d in zip(out, dims)]), shape)


def _window_weights(eqn, x):
  """Each element's share of its window's maximum (minimum): shaped like ``x`` for disjoint windows, else ``(K, *y)``.

  As ``jax.grad`` of max-pooling, a tie goes to the window's first extreme. The selection is read from one
  ``argmax`` over the window's elements, never by comparing ``x`` with the pooled output: XLA may compute
  those from copies of ``x``'s producer fused into different kernels and round them differently (XLA:CPU
  without its optimisation passes lost a quarter of the selections so).
  """
  minimum = eqn.primitive is P.reduce_window_min_p
  if disjoint_windows(eqn.params):
    weights = _first_extreme(_disjoint_patches(x, eqn.params), -1, minimum)
    return disjoint_to_input(jnp.moveaxis(weights, -1, 0), eqn.params, x.shape)
  patches = window_patches(x, eqn.params, jnp.inf if minimum else -jnp.inf)
  return _first_extreme(patches, 0, minimum)


def unit_statistic(unit: Unit, invals, outvals, tangent=None):
  """One noisy sample's statistic of ``unit``; its mean over samples is the unit's ``E[J]``."""
  if unit.kind == "chain":
    return tangent
  if unit.kind == "elementwise":
    return tuple(_partials(unit.eqn, invals, unit.operands))
  if unit.kind == "bilinear":
    return tuple(invals[i] for i in unit.operands)
  if unit.kind == "select":
    return _select_weights(unit.eqn, invals[0], outvals[0])
  return _window_weights(unit.eqn, invals[0])


def _sum_to(ct, shape):
  """An elementwise operand's cotangent: ``ct`` summed over the axes lax broadcast it along (rank 0 or size 1)."""
  shape = tuple(shape)
  if ct.shape == shape:
    return ct
  if shape == ():
    return jnp.sum(ct)
  return jnp.sum(ct, axis=tuple(i for i, (a, b) in enumerate(zip(shape, ct.shape)) if a != b), keepdims=True)


def unit_backward(unit: Unit, stat, ct):
  """The cotangents of the unit's varying float operands under ``E[J]`` (``stat``: the mean statistic).

  Uses only static information about the equation (shapes, dtypes, parameters) and ``stat``, so that it
  can run as a ``custom_vjp`` backward rule.
  """
  if unit.kind == "chain":
    return (ct * stat.astype(ct.dtype),)
  avals = [unit.eqn.invars[i].aval for i in unit.operands]
  if unit.kind == "elementwise":
    return tuple(_sum_to(ct * d.astype(ct.dtype), a.shape).astype(a.dtype) for d, a in zip(stat, avals))
  if unit.kind == "bilinear":  # both operands vary: E[J] is the Jacobian at their means
    means = [m.astype(a.dtype) for m, a in zip(stat, avals)]
    return tuple(jax.vjp(lambda *vals: bind(unit.eqn, list(vals))[0], *means)[1](ct))
  x = avals[0]
  if unit.kind == "select":
    return ((jnp.expand_dims(ct, _reduced_axes(unit.eqn)) * stat.astype(ct.dtype)).astype(x.dtype),)
  if disjoint_windows(unit.eqn.params):
    return ((_upsample(ct, unit.eqn.params, x.shape) * stat.astype(ct.dtype)).astype(x.dtype),)
  patches = lambda v: window_patches(v, unit.eqn.params, 0.0)
  (back,) = jax.linear_transpose(patches, jax.ShapeDtypeStruct(x.shape, x.dtype))(ct[None] * stat.astype(ct.dtype))
  return (back,)


def _attach(value, inputs: tuple, stat, backward):
  """``value``, whose VJP to ``inputs`` is ``backward(stat, ct)`` (and nothing through ``value`` itself)."""

  @jax.custom_vjp
  def attached(value, inputs, stat):
    return value

  def fwd(value, inputs, stat):
    return value, stat

  def bwd(stat, ct):
    return jnp.zeros_like(ct), backward(stat, ct), jax.tree.map(jnp.zeros_like, stat)

  attached.defvjp(fwd, bwd)
  return attached(value, inputs, stat)


# ----------------------------------------------------------------------------
# The two walks over the plan.


def statistics(plan: Plan, args) -> dict:
  """One forward pass at ``args`` (the input's leaves); returns ``{uid: statistic}`` for every unit."""
  env = dict(zip(plan.jaxpr.constvars, plan.consts))
  env.update(zip(plan.jaxpr.invars, args))
  tangent = {}
  stats = {}
  unit_of = {uid: u for uid, u in enumerate(plan.units)}
  for eqn, mode in zip(plan.jaxpr.eqns, plan.modes):
    invals = [_read(env, v) for v in eqn.invars]
    with _context(eqn), eqn.ctx.manager:
      if isinstance(mode, tuple) and mode[0] == "chain" and mode[1] in plan.smoothed_roots:
        r = mode[1]
        idx = [i for i, v in enumerate(eqn.invars)
               if isinstance(v, jex_core.Var) and v in plan.varying and _is_float(v)]
        for i in idx:
          v = eqn.invars[i]
          if v is r and v not in tangent:
            tangent[v] = _ones_like(invals[i])

        def fn(*vals, idx=idx, invals=invals, eqn=eqn):
          full = list(invals)
          for i, v in zip(idx, vals):
            full[i] = v
          return bind(eqn, full)[0]

        if idx:
          out, out_t = jax.jvp(fn, [invals[i] for i in idx], [tangent[eqn.invars[i]] for i in idx])
        else:
          out = fn()
          out_t = jnp.zeros(jnp.shape(out), jnp.result_type(out))
        outvals = [out]
        if _is_float(eqn.outvars[0]):
          tangent[eqn.outvars[0]] = out_t
      else:
        outvals = bind(eqn, invals)
        if isinstance(mode, tuple) and mode[0] == "unit":
          stats[mode[1]] = unit_statistic(unit_of[mode[1]], invals, outvals)
    env.update(zip(eqn.outvars, outvals))
    for v in eqn.outvars:
      if v in plan.exports:
        stats[plan.exports[v]] = tangent[v]
  return stats


def surrogate(plan: Plan, args, stats: dict):
  """The function's value at ``args``, whose derivative uses ``stats`` (the units' ``E[J]``) for every unit.

  ``jax.vjp`` of it is the estimators' one backward pass.
  """
  env = dict(zip(plan.jaxpr.constvars, plan.consts))
  env.update(zip(plan.jaxpr.invars, args))
  detached = {}  # values inside smoothed chains, computed from the stopped root

  for eqn, mode in zip(plan.jaxpr.eqns, plan.modes):
    with _context(eqn), eqn.ctx.manager:
      if isinstance(mode, tuple) and mode[0] == "chain" and mode[1] in plan.smoothed_roots:
        r = mode[1]
        if r not in detached:
          detached[r] = lax.stop_gradient(env[r])
        invals = [detached[v] if isinstance(v, jex_core.Var) and v in detached else _read(env, v)
                  for v in eqn.invars]
        outvals = bind(eqn, invals)
        detached.update(zip(eqn.outvars, outvals))
      elif isinstance(mode, tuple) and mode[0] == "unit":
        uid = mode[1]
        unit = plan.units[uid]
        invals = [_read(env, v) for v in eqn.invars]
        stopped = [lax.stop_gradient(v) if i in unit.operands else v for i, v in enumerate(invals)]
        value = bind(eqn, stopped)[0]
        backward = lambda stat, ct, unit=unit: unit_backward(unit, stat, ct)
        outvals = [_attach(value, tuple(invals[i] for i in unit.operands), stats[uid], backward)]
      else:
        outvals = bind(eqn, [_read(env, v) for v in eqn.invars])
    env.update(zip(eqn.outvars, outvals))
    for v in eqn.outvars:
      if v in plan.exports:
        uid = plan.exports[v]
        r = plan.units[uid].root
        backward = lambda stat, ct: unit_backward(Unit("chain"), stat, ct)
        env[v] = _attach(detached[v], (env[r],), stats[uid], backward)
  return [_read(env, v) for v in plan.jaxpr.outvars]
