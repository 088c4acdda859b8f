"""Moment propagation: each unit's expected Jacobian from means and variances, without sampling.

The forward walk of :func:`moment_smooth` over the plan of
:mod:`adaptgrad_jax._jaxpr_rules`: every value that depends on the input is
summarised by its mean and variance under the input noise, treated as a
Gaussian whose elements are independent, and every unit's statistic is the
expectation :func:`smooth_diff` would estimate by sampling, computed under
that Gaussian:

* linear equations: the mean exactly (the equation applied to the means);
  the variance through the equation with squared coefficients: the same
  structural equation (reshape, slice, sum, average pool...) on the
  variances, ``conv(v, W**2)`` / ``dot(v, W**2)`` for a convolution or matmul
  with constant weights, ``c**2 v`` for a scale, ``v_a + v_b`` for a sum;
* activation chains ``y = g(r)``: if ``g`` is a clamp of an affine function
  (ReLU, ReLU6, hard tanh, ``clip``), the exact moments of a clamped
  Gaussian and ``E[g'(r)] = a (Phi(beta) - Phi(alpha))`` (``Phi(mu / s)`` for
  ReLU); any other activation (GELU, hardswish, leaky ReLU, tanh, SiLU,
  normalisation's ``rsqrt``...) by 32-node Gauss-Hermite quadrature of
  ``E[g]``, ``E[g^2]`` and, by Stein's lemma, ``E[g'] = E[Z g(mu + s Z)] /
  s`` (exact for continuous ``g``: the quadrature sees only ``g``, never a
  step in ``g'``);
* products of two values (normalisation's scale, squeeze-excitation,
  attention): independence, ``E[ab] = E[a] E[b]``, ``Var = m_a^2 v_b + m_b^2
  v_a + v_a v_b``; quotients by the delta method (``E[a / b] ~ m_a /
  m_b``); matmuls and convolutions between two such values likewise;
* maxima (``reduce_max``, max-pooling, ``max`` of two values): Clark's
  (1961) moment matching of the maximum of two Gaussians, applied over the
  window's elements in turn, with each element's probability of being the
  maximum from the same recursion;
* ``stop_gradient``: the mean, with variance 0 (softmax's max shift is a
  constant, as it is for the softmax itself).

The error of the approximation is the Gaussian closure: elements of a layer
are correlated (they share the input noise) and post-activation values are
not Gaussian. For one hidden layer it is exact.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jax.extend.core import primitives as P
from jax.scipy.special import ndtr

from adaptgrad_jax import _jaxpr_rules as R

QUADRATURE_NODES = 32
"""Gauss-Hermite nodes for activation chains that are not a clamp of an affine function."""

_SQRT_2PI = math.sqrt(2 * math.pi)


class Gauss:
  """A value's mean and variance (elementwise)."""

  __slots__ = ("mean", "var")

  def __init__(self, mean, var):
    self.mean, self.var = mean, var


def _phi(t):
  return jnp.exp(-0.5 * jnp.square(t)) / _SQRT_2PI


def _refusal(eqn, why):
  return R._refusal(eqn, "moment_smooth", why + "; smooth_diff samples it instead")


# ----------------------------------------------------------------------------
# Rules for equations outside chains: (eqn, ins) -> (list of Gauss, statistic or None).
# ``ins[i]`` is a Gauss for a varying float operand, else the operand's value.


def _mean_of(v):
  return v.mean if isinstance(v, Gauss) else v


def _var_or_zero(v):
  return v.var if isinstance(v, Gauss) else jnp.zeros(jnp.shape(v), jnp.result_type(v))


def _same_op(eqn, ins):
  """Structural and summing equations: the equation on the means and on the variances (0 for constants)."""
  means = R.bind(eqn, [_mean_of(v) for v in ins])
  var_ins = [_var_or_zero(v) if jnp.issubdtype(jnp.result_type(_mean_of(v)), jnp.inexact) else v for v in ins]
  variances = R.bind(eqn, var_ins)
  return [Gauss(m, s) for m, s in zip(means, variances)], None


def _add(eqn, ins):
  sign = -1.0 if eqn.primitive is P.sub_p else 1.0
  a, b = ins
  mean = R.bind(eqn, [_mean_of(a), _mean_of(b)])[0]
  var = _var_or_zero(a) + _var_or_zero(b)
  return [Gauss(mean, jnp.broadcast_to(var, jnp.shape(mean)) * (sign * sign))], None


def _neg(eqn, ins):
  (a,) = ins
  return [Gauss(-a.mean, a.var)], None


def _mul(eqn, ins):
  a, b = ins
  if not isinstance(a, Gauss) or not isinstance(b, Gauss):
    g, c = (a, b) if isinstance(a, Gauss) else (b, a)
    return [Gauss(g.mean * c, g.var * jnp.square(c))], None
  mean = a.mean * b.mean
  var = jnp.square(a.mean) * b.var + jnp.square(b.mean) * a.var + a.var * b.var
  return [Gauss(mean, var)], (b.mean, a.mean)


def _div(eqn, ins):
  a, b = ins
  if not isinstance(b, Gauss):
    return [Gauss(a.mean / b, a.var / jnp.square(b))], None
  ma, va = _mean_of(a), _var_or_zero(a)
  inv = 1.0 / b.mean
  mean = ma * inv
  var = va * jnp.square(inv) + jnp.square(ma) * b.var * jnp.square(jnp.square(inv))
  partials = ((inv,) if isinstance(a, Gauss) else ()) + (-ma * jnp.square(inv),)
  return [Gauss(mean, var)], partials


def _clark(m1, v1, m2, v2):
  """Clark's moments of max(X1, X2) for independent Gaussians, and P(X1 > X2).

  An operand with mean ``-inf`` (max-pooling's padding) never wins.
  """
  out1, out2 = jnp.isneginf(m2), jnp.isneginf(m1)
  safe1, safe2 = jnp.where(out2, 0.0, m1), jnp.where(out1, 0.0, m2)
  theta = jnp.sqrt(jnp.maximum(v1 + v2, 1e-30))
  alpha = (safe1 - safe2) / theta
  p = ndtr(alpha)
  pdf = _phi(alpha)
  mean = safe1 * p + safe2 * (1 - p) + theta * pdf
  second = (jnp.square(safe1) + v1) * p + (jnp.square(safe2) + v2) * (1 - p) + (safe1 + safe2) * theta * pdf
  var = jnp.maximum(second - jnp.square(mean), 0.0)
  mean = jnp.where(out1, m1, jnp.where(out2, m2, mean))
  var = jnp.where(out1, v1, jnp.where(out2, v2, var))
  p = jnp.where(out1, 1.0, jnp.where(out2, 0.0, p))
  return mean, var, p


def _pair_max(eqn, ins):
  a, b = (v if isinstance(v, Gauss) else Gauss(v, jnp.zeros_like(v)) for v in ins)
  sign = 1.0 if eqn.primitive is P.max_p else -1.0
  mean, var, p = _clark(sign * a.mean, a.var, sign * b.mean, b.var)
  mean, var = jnp.broadcast_arrays(sign * mean, var)
  partials = tuple(d for d, v in zip((p, 1 - p), ins) if isinstance(v, Gauss))
  return [Gauss(mean, var)], partials


def _max_over(means, variances, minimum):
  """Sequential Clark over the leading axis: moments of the max (min) and each element's selection probability."""
  sign = -1.0 if minimum else 1.0
  means = sign * means
  count = means.shape[0]
  m, v = means[0], variances[0]
  weights = [jnp.ones_like(m)]
  for k in range(1, count):
    m, v, p = _clark(m, v, means[k], variances[k])
    weights = [w * p for w in weights] + [1 - p]
  return sign * m, v, jnp.stack(weights)


def _reduce_select(eqn, ins):
  (x,) = ins
  axes = tuple(eqn.params["axes"])
  rest = tuple(i for i in range(x.mean.ndim) if i not in axes)
  order = axes + rest
  flat = lambda a: jnp.transpose(a, order).reshape((-1,) + tuple(a.shape[i] for i in rest))
  mean, var, w = _max_over(flat(x.mean), flat(x.var), eqn.primitive is P.reduce_min_p)
  w = w.reshape(tuple(x.mean.shape[i] for i in axes) + w.shape[1:])
  w = jnp.transpose(w, tuple(np.argsort(order)))
  return [Gauss(mean, var)], w


def _window_select(eqn, ins):
  (x,) = ins
  minimum = eqn.primitive is P.reduce_window_min_p
  means = R.window_patches(x.mean, eqn.params, jnp.inf if minimum else -jnp.inf)
  variances = R.window_patches(x.var, eqn.params, 0.0)
  mean, var, w = _max_over(means, variances, minimum)
  if R.disjoint_windows(eqn.params):  # the layout of smooth_diff's statistic: shaped like the input
    w = R.disjoint_to_input(w, eqn.params, x.mean.shape)
  return [Gauss(mean, var)], w


def _bilinear(eqn, ins):
  a, b = ins
  if not (isinstance(a, Gauss) and isinstance(b, Gauss)):
    g, c, first = (a, b, True) if isinstance(a, Gauss) else (b, a, False)
    op = lambda u, w: R.bind(eqn, [u, w] if first else [w, u])[0]
    return [Gauss(op(g.mean, c), op(g.var, jnp.square(c)))], None
  op = lambda u, w: R.bind(eqn, [u, w])[0]
  mean = op(a.mean, b.mean)
  var = op(a.var, jnp.square(b.mean)) + op(jnp.square(a.mean), b.var) + op(a.var, b.var)
  return [Gauss(mean, var)], (a.mean, b.mean)


def _stop_gradient(eqn, ins):
  (x,) = ins
  return [Gauss(x.mean, jnp.zeros_like(x.var))], None


def _same(eqn, ins):
  (x,) = ins
  out = R.bind(eqn, [x.mean])[0]
  return [Gauss(out, x.var.astype(out.dtype))], None


MOMENT_RULES: dict = {p: _same_op for p in R._STRUCTURAL}
"""Primitive -> moment rule for equations outside activation chains (keyed as :data:`_jaxpr_rules.RULES`)."""
MOMENT_RULES.update({
    P.dynamic_slice_p: _same_op, P.dynamic_update_slice_p: _same_op, P.gather_p: _same_op,
    P.scatter_add_p: _same_op, P.select_n_p: _same_op,
    P.add_p: _add, P.sub_p: _add, P.neg_p: _neg, P.mul_p: _mul, P.div_p: _div,
    P.convert_element_type_p: _same, P.copy_p: _same, P.reduce_precision_p: _same,
    P.max_p: _pair_max, P.min_p: _pair_max,
    P.dot_general_p: _bilinear, P.conv_general_dilated_p: _bilinear,
    P.reduce_max_p: _reduce_select, P.reduce_min_p: _reduce_select,
    P.reduce_window_max_p: _window_select, P.reduce_window_min_p: _window_select,
    P.stop_gradient_p: _stop_gradient,
})


# ----------------------------------------------------------------------------
# Activation chains: a clamp of an affine function exactly, anything else by quadrature.


class _Clamp:
  """``clamp(a r + b, lo, hi)`` of the chain's root r."""

  __slots__ = ("a", "b", "lo", "hi")

  def __init__(self, a, b, lo, hi):
    self.a, self.b, self.lo, self.hi = a, b, lo, hi


def _scale(c, v):
  return jnp.where(c == 0, 0.0, c * v)  # 0 * inf is 0 here


def _clamp_rule(eqn, ins):
  """The clamp form of an elementwise equation's output, or None if it has none."""
  prim = eqn.primitive
  forms = [v for v in ins if isinstance(v, _Clamp)]
  consts = [v for v in ins if not isinstance(v, _Clamp)]
  if prim in (P.convert_element_type_p, P.copy_p) and len(forms) == 1:
    return forms[0] if jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.inexact) else None
  if len(forms) != 1:
    return None
  (f,) = forms
  if prim is P.neg_p:
    return _Clamp(-f.a, -f.b, -f.hi, -f.lo)
  if prim in (P.add_p, P.sub_p) and len(consts) == 1:
    c = consts[0]
    if prim is P.sub_p and isinstance(ins[1], _Clamp):  # c - y
      return _clamp_rule_add(_Clamp(-f.a, -f.b, -f.hi, -f.lo), c)
    return _clamp_rule_add(f, -c if prim is P.sub_p else c)
  if prim is P.mul_p and len(consts) == 1:
    return _clamp_rule_mul(f, consts[0])
  if prim is P.div_p and isinstance(ins[0], _Clamp):
    return _clamp_rule_mul(f, 1.0 / consts[0])
  if prim is P.max_p and len(consts) == 1:
    c = consts[0]
    return _Clamp(f.a, f.b, jnp.maximum(f.lo, c), jnp.maximum(f.hi, c))
  if prim is P.min_p and len(consts) == 1:
    c = consts[0]
    return _Clamp(f.a, f.b, jnp.minimum(f.lo, c), jnp.minimum(f.hi, c))
  if prim is P.clamp_p and isinstance(ins[1], _Clamp) and len(consts) == 2:
    lo, hi = ins[0], ins[2]
    return _Clamp(f.a, f.b, jnp.minimum(jnp.maximum(f.lo, lo), hi), jnp.minimum(jnp.maximum(f.hi, lo), hi))
  return None


def _clamp_rule_add(f, c):
  return _Clamp(f.a, f.b + c, f.lo + c, f.hi + c)


def _clamp_rule_mul(f, c):
  lo, hi = _scale(c, f.lo), _scale(c, f.hi)
  return _Clamp(c * f.a, c * f.b, jnp.minimum(lo, hi), jnp.maximum(lo, hi))


def _clamp_moments(f, r: Gauss):
  """Mean, variance and ``E[d y / d r]`` of ``y = clamp(a r + b, lo, hi)``, r Gaussian: closed forms."""
  m = f.a * r.mean + f.b
  s = jnp.abs(f.a) * jnp.sqrt(r.var)
  safe = jnp.maximum(s, 1e-30)
  alpha, beta = (f.lo - m) / safe, (f.hi - m) / safe
  pa, pb = ndtr(alpha), ndtr(beta)
  da, db = _phi(alpha), _phi(beta)
  finite = lambda t, v: jnp.where(jnp.isfinite(t), v, 0.0)
  inside = pb - pa
  mean = finite(f.lo, f.lo * pa) + finite(f.hi, f.hi * (1 - pb)) + m * inside + s * (da - db)
  second = (finite(f.lo, jnp.square(f.lo) * pa) + finite(f.hi, jnp.square(f.hi) * (1 - pb))
            + (jnp.square(m) + jnp.square(s)) * inside + 2 * m * s * (da - db)
            + jnp.square(s) * (finite(alpha, alpha * da) - finite(beta, beta * db)))
  var = jnp.maximum(second - jnp.square(mean), 0.0)
  return mean, var, f.a * inside


def _hermite():
  t, w = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
  return t, w / w.sum()


def _quadrature_moments(chain_fn, r: Gauss):
  """Mean, variance and Stein's ``E[g'(r)]`` of ``g = chain_fn`` by Gauss-Hermite quadrature.

  Where ``g`` is not finite at every node (``rsqrt`` of a normalisation's
  variance whose Gaussian reaches below 0) or the spread is negligible, the
  delta method: ``g(mu)``, ``g'(mu)^2 v``, ``g'(mu)``.
  """
  t, w = _hermite()
  s = jnp.sqrt(r.var)
  m1 = m2 = mz = 0.0
  finite = True
  for tk, wk in zip(t, w):  # unrolled: 32 elementwise evaluations that XLA fuses
    y = chain_fn(r.mean + s * tk)
    ok = jnp.isfinite(y)
    finite = finite & ok
    y = jnp.where(ok, y, 0.0)
    m1, m2, mz = m1 + wk * y, m2 + wk * jnp.square(y), mz + (wk * tk) * y
  at_mean, slope_at_mean = jax.jvp(chain_fn, (r.mean,), (jnp.ones_like(r.mean),))
  delta = ~finite | (s <= 1e-6 * (1 + jnp.abs(r.mean)))
  mean = jnp.where(delta, at_mean, m1)
  var = jnp.where(delta, jnp.square(slope_at_mean) * r.var, jnp.maximum(m2 - jnp.square(m1), 0.0))
  slope = jnp.where(delta, slope_at_mean, mz / jnp.where(delta, 1.0, s))
  return mean, var, slope


# ----------------------------------------------------------------------------
# The walk.


def statistics(plan, mean_leaves, var_leaves) -> dict:
  """``{uid: statistic}`` for every unit of ``plan``, from moments propagated from the input's."""
  env = dict(zip(plan.jaxpr.constvars, plan.consts))
  gauss = {v: Gauss(m, s) for v, m, s in zip(plan.jaxpr.invars, mean_leaves, var_leaves)}
  chains = {}
  stats = {}

  def read(v):
    if isinstance(v, jex_core.Literal):
      return v.val
    if v in gauss:
      return gauss[v]
    return env.get(v, _MISSING)

  for eqn, mode in zip(plan.jaxpr.eqns, plan.modes):
    with R._context(eqn), eqn.ctx.manager:
      if mode == "const":
        env.update(zip(eqn.outvars, R.bind(eqn, [read(v) for v in eqn.invars])))
        continue
      if isinstance(mode, tuple) and mode[0] == "chain" and mode[1] in plan.smoothed_roots:
        chains.setdefault(mode[1], []).append(eqn)
      else:
        if not any(R._is_float(v) for v in eqn.outvars):  # comparisons, argmax: no moments needed
          continue
        ins = [read(v) for v in eqn.invars]
        if any(val is _MISSING for val in ins):
          raise _refusal(eqn, "an operand is a boolean or integer function of the input")
        rule = MOMENT_RULES.get(eqn.primitive)
        if rule is None:
          raise _refusal(eqn, "no moment rule for it")
        outs, stat = rule(eqn, ins)
        gauss.update(zip(eqn.outvars, outs))
        if isinstance(mode, tuple) and mode[0] == "unit":
          if stat is None:
            raise _refusal(eqn, "no expected Jacobian for it")
          stats[mode[1]] = stat
    for v in eqn.outvars:
      if v in plan.exports:
        uid = plan.exports[v]
        root = plan.units[uid].root
        mean, var, slope = _chain_moments(chains[root], root, v, gauss[root], read)
        gauss[v] = Gauss(mean, var)
        stats[uid] = slope
  return stats


def _chain_moments(eqns, root, out, r: Gauss, read):
  """Moments of the chain value ``out`` as a function of its root (closed form when it is a clamp)."""
  forms = {root: _Clamp(1.0, 0.0, -jnp.inf, jnp.inf)}
  for eqn in eqns:
    ins = [forms[v] if isinstance(v, jex_core.Var) and v in forms else _chain_const(v, read)
           for v in eqn.invars]
    if any(i is _MISSING for i in ins):
      break
    form = _clamp_rule(eqn, ins)
    if form is None:
      break
    forms[eqn.outvars[0]] = form
  if out in forms:
    return _clamp_moments(forms[out], r)

  def chain_fn(rv):
    local = {root: rv}
    for eqn in eqns:
      ins = [local[v] if isinstance(v, jex_core.Var) and v in local else _value(read(v)) for v in eqn.invars]
      local.update(zip(eqn.outvars, R.bind(eqn, ins)))
      if out in local:
        break
    return local[out]

  return _quadrature_moments(chain_fn, r)


_MISSING = object()


def _value(v):
  if isinstance(v, Gauss):
    raise TypeError("a chain read a varying value outside it")
  return v


def _chain_const(v, read):
  val = read(v)
  return _MISSING if isinstance(val, Gauss) else val  # a chain value the clamp form lost
