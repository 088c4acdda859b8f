"""Gradient x Input and Integrated Gradients as transforms of a gradient function.

Both take a gradient function and return a function, so they compose with the
smoothing transforms: ``integrated_gradients(adapt_smooth(jax.grad(f), bounds=b))``
is A-IG and ``gradient_x_input(smooth_grad(jax.grad(f), bounds=b))`` is S-GI
(Zhou et al., Section 5.1.3). A deterministic transform of a stochastic
function is stochastic; the rule is in ``adaptgrad_jax._wrapping``.
"""

from typing import Any, Callable, Literal, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax import _memory
from adaptgrad_jax import _monte_carlo
from adaptgrad_jax import cpu
from adaptgrad_jax._bounds import broadcast_bounds, check_broadcasts, require_bounds, validate_bounds
from adaptgrad_jax._pytree import broadcast_like, check_has_arrays, check_same_shapes, compute_dtype, replace_arg
from adaptgrad_jax._typing import Bounds, GradFn, KeyArray, PyTree
from adaptgrad_jax._wrapping import is_stochastic, resolve_stochastic, split_key_args
from adaptgrad_jax._wrapping import validate_argnums, validate_count, validate_stderr_option, wrap

IGMethod = Literal[
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gauss_legendre",
]
IG_METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gauss_legendre",
)
Baseline = Union[float, jax.typing.ArrayLike, PyTree, str, Callable[[PyTree], PyTree]]
BASELINE_NAMES = ("black", "white")


def _structure_error(what: str, grad, x, argnums: int) -> ValueError:
  return ValueError(
      f"{what}: the gradient has tree structure {jax.tree.structure(grad)} but"
      f" argument argnums={argnums} has {jax.tree.structure(x)}; grad_fn must"
      " return the gradient with respect to that argument (e.g."
      " jax.grad(f, argnums=argnums))."
  )


def _multiply(grad: PyTree, x: PyTree, argnums: int, what: str) -> PyTree:
  if jax.tree.structure(grad) != jax.tree.structure(x):
    raise _structure_error(what, grad, x, argnums)
  check_same_shapes(grad, x, f"{what}: the gradient")

  def times(g, leaf):
    g = jnp.asarray(g)
    dtype = compute_dtype(g.dtype)
    return (g.astype(dtype) * jnp.asarray(leaf).astype(dtype)).astype(g.dtype)

  return jax.tree.map(times, grad, x)


# ----------------------------------------------------------------------------
# Gradient x Input.


def gradient_x_input(
    grad_fn: GradFn,
    *,
    argnums: int = 0,
    stochastic: Optional[bool] = None,
    return_stderr: Optional[bool] = None,
) -> Callable[..., Any]:
  """Gradient x Input: the gradient times the input, elementwise.

  ``GI(x) = grad_fn(x) * x`` (Shrikumar et al.), for every leaf of a pytree
  input. With a stochastic ``grad_fn`` (one taking a key first, as returned
  by :func:`smooth_grad` or :func:`adapt_smooth`) it is the paper's S-GI or
  A-GI: the *smoothed gradient* times the clean input, ``SG(x) * x``. (The
  other order, ``smooth_grad(gradient_x_input(g))``, averages
  ``(x + eps) * g(x + eps)`` over noisy inputs, as Captum's
  ``NoiseTunnel(InputXGradient)``; it works too.)

  Args:
    grad_fn: ``jax.grad(f)`` or a stochastic gradient function
      ``grad_fn(key, *args)``.
    argnums: the positional argument (after the key, if any) that is the
      input; ``grad_fn`` must return the gradient with respect to it, with the
      same tree structure.
    stochastic: whether ``grad_fn`` takes a leading key; None uses its mark
      (see :func:`is_stochastic`: the library's transforms set it).
    return_stderr: None (default) returns an :class:`Estimate` if and only
      if ``grad_fn`` returns one (e.g. ``smooth_grad(...,
      return_stderr=True)``): its map times x, with ``stderr * |x|`` and the
      same ``num_samples``. True requires such a ``grad_fn``; False returns
      the map alone.

  Returns:
    A function with ``grad_fn``'s signature (key included if it has one)
    returning the attribution in the gradient's dtype.

  Raises:
    TypeError, ValueError: a non-callable ``grad_fn`` or a bad ``argnums``
      (at build time); a gradient whose tree structure differs from the
      input's (at call time).

  Example:
    >>> import adaptgrad_jax as ag
    >>> w = jnp.array([1.0, -2.0, 3.0])
    >>> gi = ag.gradient_x_input(jax.grad(lambda x: jnp.dot(w, x)))
    >>> gi(jnp.array([2.0, 1.0, 0.5]))
    Array([ 2. , -2. ,  1.5], dtype=float32)
    >>> sgi = ag.gradient_x_input(ag.smooth_grad(jax.grad(lambda x: jnp.sum(jnp.sin(x))), n=16,
    ...                                          sigma=0.5, return_stderr=True))
    >>> est = sgi(jax.random.key(0), jnp.array([2.0, 0.0]))
    >>> est.stderr[1], int(est.num_samples)  # S-GI with its standard error; x = 0 has none
    (Array(0., dtype=float32), 16)

  References:
    Shrikumar et al., "Not Just a Black Box: Learning Important Features
    Through Propagating Activation Differences", 2016; Zhou et al.
    (AdaptGrad), NeurIPS 2025, Section 5.1.3 (GI, S-GI, A-GI).
  """
  stochastic = resolve_stochastic(grad_fn, stochastic)
  argnums = validate_argnums(grad_fn, argnums, stochastic)
  return_stderr = validate_stderr_option(return_stderr)
  if return_stderr and not stochastic:
    raise ValueError(
        "return_stderr=True needs a stochastic grad_fn that returns an Estimate"
        " (e.g. smooth_grad(jax.grad(f), ..., return_stderr=True)): Gradient x"
        " Input of a deterministic gradient has no Monte Carlo error."
    )
  name = "gradient_x_input"

  def gi(*call_args, **kwargs):
    _, args = split_key_args(call_args, stochastic, argnums, name)
    check_has_arrays(args[argnums], name, argnums)
    grad, err, used = _monte_carlo.split_estimate(grad_fn(*call_args, **kwargs))
    x = args[argnums]
    value = _multiply(grad, x, argnums, name)
    if not _monte_carlo.stderr_wanted(return_stderr, err is not None, name, own_samples=False):
      return value
    scale = jax.tree.map(lambda leaf: jnp.abs(jnp.asarray(leaf)), x)
    err = jax.tree.map(lambda e, a: jnp.where(a == 0, 0, e).astype(e.dtype), _multiply(err, scale, argnums, name), scale)
    return _monte_carlo.Estimate(value, err, used)

  return wrap(gi, grad_fn, name, is_stochastic_result=stochastic, adds_key=False)


# ----------------------------------------------------------------------------
# Integrated Gradients.


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Nodes ``alpha_k`` in [0, 1] and weights ``w_k`` (summing to 1), float64.

  ``riemann_left`` / ``right`` / ``middle`` use ``n_steps`` equal cells of
  width ``1/n_steps`` and their left ends, right ends or midpoints;
  ``riemann_trapezoid`` puts ``n_steps`` nodes on ``linspace(0, 1)``
  (both ends included, so ``n_steps >= 2``) with weights ``1/(n_steps-1)``,
  halved at the ends (Captum's trapezoid halves the end weights of ``1/n``
  instead, so its weights sum to ``(n-1)/n``); ``gauss_legendre`` maps the
  Gauss-Legendre nodes on [-1, 1] to [0, 1], exact for polynomial
  integrands of degree ``2 n_steps - 1``.
  """
  n = n_steps
  if method == "riemann_left":
    return np.arange(n) / n, np.full(n, 1.0 / n)
  if method == "riemann_right":
    return (np.arange(n) + 1.0) / n, np.full(n, 1.0 / n)
  if method == "riemann_middle":
    return (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n)
  if method == "riemann_trapezoid":
    weights = np.full(n, 1.0 / (n - 1))
    weights[[0, -1]] /= 2
    return np.linspace(0.0, 1.0, n), weights
  if method == "gauss_legendre":
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1.0) / 2.0, weights / 2.0
  raise ValueError(_method_message(method))


def _method_message(method) -> str:
  return (
      f"method={method!r} is not an integration rule; use one of {IG_METHODS}"
      " ('riemann_trapezoid' is the default, 'gauss_legendre' converges"
      " fastest on smooth models)."
  )


def _validate_method(method, n_steps: int) -> str:
  if not isinstance(method, str) or method not in IG_METHODS:
    raise ValueError(_method_message(method))
  if method == "riemann_trapezoid" and n_steps < 2:
    raise ValueError(
        f"n_steps={n_steps} is too small for method='riemann_trapezoid', whose"
        " nodes include both ends of the path; use n_steps >= 2, or"
        " method='riemann_middle' for a single step."
    )
  return method


def validate_baseline(baseline, bounds) -> tuple[Any, Any]:
  """Checks ``baseline`` at build time; returns ``(baseline, bounds)``."""
  if isinstance(baseline, str):
    if baseline not in BASELINE_NAMES:
      raise ValueError(
          f"baseline={baseline!r} is not a named baseline; use 'black' (the"
          " lower bound of `bounds`) or 'white' (the upper bound), a number,"
          " an array, or a callable of x."
      )
    return baseline, require_bounds(
        bounds, f"baseline={baseline!r}", why=f"{baseline!r} is the {'lower' if baseline == 'black' else 'upper'} bound")
  if bounds is not None:
    bounds = validate_bounds(bounds)
  if callable(baseline):
    return baseline, bounds
  for leaf in jax.tree.leaves(baseline):
    if isinstance(leaf, jax.core.Tracer):
      continue
    try:
      value = np.asarray(leaf)
    except (TypeError, ValueError):
      value = None
    if value is None or not (
        np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_
    ):
      raise TypeError(
          f"baseline={baseline!r} must be a number, an array (or a pytree like"
          " the input), 'black', 'white' or a callable of x."
      )
  if not jax.tree.leaves(baseline):
    raise ValueError(
        f"baseline={baseline!r} has no arrays; pass e.g. 0.0 (a black image"
        " in [0, 1]) or an array shaped like the input."
    )
  return baseline, bounds


def resolve_baseline(baseline, x: PyTree, bounds) -> PyTree:
  """The baseline as a pytree with ``x``'s structure, shapes and dtypes."""
  if isinstance(baseline, str):
    lower, upper = broadcast_bounds(x, bounds)
    value = lower if baseline == "black" else upper
    what = f"baseline={baseline!r} (from bounds)"
  elif callable(baseline):
    value = baseline(x)
    what = "baseline(x)"
  else:
    value = baseline
    what = "baseline"
  value = broadcast_like(value, x, what)

  def fit(b, leaf):
    leaf = jnp.asarray(leaf)
    if not isinstance(b, jax.core.Tracer):  # before any cast: a float64 1e39 must not become inf unseen
      raw = np.asarray(b)
      if np.issubdtype(raw.dtype, np.inexact):
        with np.errstate(over="ignore", invalid="ignore"):
          lost = np.isfinite(raw) & ~np.isfinite(raw.astype(np.dtype(leaf.dtype)))
        if np.any(lost):
          raise ValueError(
              f"{what} holds values that overflow the input's {leaf.dtype} (e.g."
              f" {raw[lost].ravel()[0]:.3g}), so the path from it would be"
              " infinite and the map NaN; pass a baseline in the range of the"
              " data (e.g. 0.0, or 'black' with bounds)."
          )
    b = jnp.asarray(b)
    check_broadcasts(b.shape, leaf.shape, what)
    return jnp.broadcast_to(b, leaf.shape).astype(leaf.dtype)

  return jax.tree.map(fit, value, x)


def integrated_gradients(
    grad_fn: GradFn,
    n_steps: int = 50,
    *,
    baseline: Baseline = 0.0,
    method: IGMethod = "riemann_trapezoid",
    bounds: Optional[Bounds] = None,
    batch_size: Any = None,
    argnums: int = 0,
    stochastic: Optional[bool] = None,
    return_stderr: Optional[bool] = None,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  r"""Integrated Gradients: the gradient integrated along a straight path.

  ``IG_i(x) = (x_i - b_i) \int_0^1 grad_fn(b + a (x - b))_i da``
  (Sundararajan et al., Eq. 1) for a baseline ``b``, by the quadrature rule
  ``method``: ``(x - b) * sum_k w_k grad_fn(b + a_k (x - b))``. For
  ``grad_fn = jax.grad(f)`` the attributions add up to ``f(x) - f(b)``
  up to the quadrature error (*completeness*; see :func:`completeness_gap`).

  With a stochastic ``grad_fn`` (``grad_fn(key, *args)``, e.g.
  ``adapt_smooth(jax.grad(f))``) it is the paper's A-IG or S-IG: the
  returned function takes a key, and step ``k`` calls ``grad_fn`` with
  ``jax.random.fold_in(key, k)``, so every point of the path gets its own
  noise (never the same noise at every step).

  Standard errors. If that stochastic ``grad_fn`` returns an
  :class:`Estimate` (``adapt_smooth(..., return_stderr=True)``), so does
  IG, from the same gradients: the quadrature is deterministic and the
  points' estimates are independent, so the map's variance is
  ``(x - b)^2 sum_k w_k^2 stderr_k^2``; ``num_samples`` counts the gradient
  evaluations of all points. This holds for every noise scheme, aggregate,
  ``rtol`` and ``batch_size`` of the inner transform, whose own standard
  error accounts for them.

  Baselines. The paper's IG(B) and IG(W) integrate from a black and a white
  image. A black image is all zeros *in pixel space*, which after
  normalisation (``(0 - mean) / std``) is the lower bound of the data domain;
  a white image is the upper bound. ``baseline="black"`` and ``"white"``
  therefore take the lower and upper bound of ``bounds``, the same
  ``(x_min, x_max)`` (after normalisation, per channel if need be) that
  :func:`adapt_smooth` uses; for images in [0, 1] they are 0 and 1.

  Args:
    grad_fn: ``jax.grad(f)`` for a scalar ``f`` of one example, or a
      stochastic gradient function ``grad_fn(key, *args)``.
    n_steps: the number of points on the path (gradient evaluations); Captum
      uses 50.
    baseline: the start of the path: a number (0.0, a black image in
      [0, 1]), an array broadcastable to the input, a pytree like the input,
      ``"black"`` (lower bound of ``bounds``), ``"white"`` (upper bound), or
      a callable ``baseline(x)`` (e.g. a blurred copy of x).
    method: ``"riemann_trapezoid"`` (default), ``"riemann_left"``,
      ``"riemann_right"``, ``"riemann_middle"`` or ``"gauss_legendre"``
      (Gauss-Legendre nodes on [0, 1], computed once at build time; the most
      accurate for smooth models). See :func:`quadrature`.
    bounds: ``(x_min, x_max)``, required by the named baselines (no default:
      ``(0.0, 1.0)`` for images in [0, 1], ``models.IMAGENET_BOUNDS`` after
      ImageNet normalisation); each a scalar, a per-channel array or a pytree
      like the input. Unused by other baselines.
    batch_size: evaluate this many path points at a time (bounded memory);
      None evaluates all ``n_steps`` in one ``jax.vmap``; ``"auto"`` picks
      the largest chunk that fits the memory budget, as in
      :func:`adapt_smooth`. The result does not depend on it.
    cpu_rewrite: the CPU switch (:mod:`adaptgrad_jax.cpu`).
    argnums: the positional argument (after the key, if any) holding the
      input; ``grad_fn`` must return the gradient with respect to it.
    stochastic: whether ``grad_fn`` takes a leading key; None uses its mark
      (see :func:`is_stochastic`).
    return_stderr: None (default) returns an :class:`Estimate` if and only
      if ``grad_fn`` returns one; True requires that (a deterministic
      ``grad_fn`` has no Monte Carlo error); False returns the map alone.

  Returns:
    ``ig(*args)`` with ``grad_fn``'s signature (``ig(key, *args)`` if
    ``grad_fn`` is stochastic), returning the attributions in the gradient's
    dtype. Sums over steps are accumulated in at least float32.

  Raises:
    ValueError, TypeError: at build time, for n_steps < 1 (or < 2 with the
      trapezoid rule), an unknown method or baseline name, bad bounds, a bad
      argnums or batch_size; at trace time, for a baseline whose shape does
      not broadcast to the input's.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(x ** 3)
    >>> ig = jax.jit(ag.integrated_gradients(jax.grad(f), 8, method="gauss_legendre"))
    >>> x = jnp.array([1.0, 2.0])
    >>> ig(x).round(4)  # x_i^3: exact for a polynomial, up to rounding
    Array([1., 8.], dtype=float32)
    >>> a_ig = jax.jit(ag.integrated_gradients(
    ...     ag.adapt_smooth(jax.grad(f), 0.95, 4, bounds=(0.0, 1.0)), 8,
    ...     baseline="black", bounds=(0.0, 1.0)))
    >>> a_ig(jax.random.key(0), jnp.array([0.5, 0.25])).shape
    (2,)
    >>> a_ig_err = jax.jit(ag.integrated_gradients(
    ...     ag.adapt_smooth(jax.grad(f), 0.95, 4, bounds=(0.0, 1.0), return_stderr=True), 8,
    ...     baseline="black", bounds=(0.0, 1.0)))
    >>> est = a_ig_err(jax.random.key(0), jnp.array([0.5, 0.25]))
    >>> est.stderr.shape, int(est.num_samples)  # 8 points x 4 samples
    ((2,), 32)

  References:
    Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML
    2017; Zhou et al. (AdaptGrad), NeurIPS 2025, Section 5.1.3 (IG(B),
    IG(W) and their S- and A- combinations).
  """
  stochastic = resolve_stochastic(grad_fn, stochastic)
  argnums = validate_argnums(grad_fn, argnums, stochastic)
  n_steps = validate_count(
      n_steps, "n_steps",
      "it is the number of points on the path from the baseline to x (Captum"
      " uses 50).", maximum=_monte_carlo.MAX_SAMPLES,
  )
  method = _validate_method(method, n_steps)
  baseline, bounds = validate_baseline(baseline, bounds)
  batch_size = _memory.validate_batch_size(batch_size)
  cpu_rewrite = cpu.validate_switch(cpu_rewrite)
  return_stderr = validate_stderr_option(return_stderr)
  if return_stderr and not stochastic:
    raise ValueError(
        "return_stderr=True needs a stochastic grad_fn that returns an Estimate"
        " (e.g. adapt_smooth(jax.grad(f), ..., return_stderr=True)): IG of a"
        " deterministic gradient has no Monte Carlo error."
    )
  alphas, weights = quadrature(method, n_steps)
  name = "integrated_gradients"

  def ig(*call_args, **kwargs):
    key, args = split_key_args(call_args, stochastic, argnums, name)
    x = args[argnums]
    check_has_arrays(x, name, argnums)
    base = resolve_baseline(baseline, x, bounds)
    compute = jax.tree.map(lambda leaf: compute_dtype(jnp.asarray(leaf).dtype), x)
    base_c = jax.tree.map(lambda b, d: b.astype(d), base, compute)
    diff = jax.tree.map(lambda leaf, b, d: jnp.asarray(leaf).astype(d) - b, x, base_c, compute)
    alpha_table = jnp.asarray(alphas, jnp.float32)
    weight_table = jnp.asarray(weights, jnp.float32)

    def gradient_at(step):
      alpha = alpha_table[step]
      point = jax.tree.map(
          lambda b, dx, leaf: (b + alpha.astype(dx.dtype) * dx).astype(jnp.asarray(leaf).dtype),
          base_c, diff, x,
      )
      new_args = replace_arg(args, argnums, point)
      if stochastic:
        return grad_fn(jax.random.fold_in(key, step), *new_args, **kwargs)
      return grad_fn(*new_args, **kwargs)

    grad_like = []  # the gradient's shapes and dtypes, recorded while tracing
    with_err = []  # whether grad_fn returned an Estimate, recorded while tracing

    def weighted(step):
      grad, err, used = _monte_carlo.split_estimate(gradient_at(step))
      if jax.tree.structure(grad) != jax.tree.structure(x):
        raise _structure_error(name, grad, x, argnums)
      check_same_shapes(grad, x, f"{name}: the gradient")
      grad_like.append(jax.tree.map(lambda g: jax.ShapeDtypeStruct(jnp.shape(g), jnp.result_type(g)), grad))
      keep = _monte_carlo.stderr_wanted(return_stderr, err is not None, name, own_samples=False)
      with_err.append(keep)
      w = weight_table[step]
      times_w = lambda g: w.astype(compute_dtype(g.dtype)) * g.astype(compute_dtype(g.dtype))
      var = jax.tree.map(lambda e: jnp.square(times_w(e)), err) if keep else None
      return jax.tree.map(times_w, grad), var, used if keep else None

    total, err, used = _monte_carlo.sum_of_terms(weighted, n_steps, batch_size=batch_size, cpu_rewrite=cpu_rewrite)
    value = jax.tree.map(lambda s, dx, g: (s * dx.astype(s.dtype)).astype(g.dtype), total, diff, grad_like[0])
    if not with_err[0]:
      return value
    err = jax.tree.map(lambda e, dx, g: jnp.where(dx == 0, 0, e * jnp.abs(dx).astype(e.dtype)).astype(g.dtype),
                       err, diff, grad_like[0])
    return _monte_carlo.Estimate(value, err, used)

  return wrap(ig, grad_fn, name, is_stochastic_result=stochastic, adds_key=False)


def completeness_gap(
    f: Callable[[PyTree], jax.Array],
    attributions: Union[PyTree, Callable[..., PyTree]],
    x: PyTree,
    baseline: Baseline = 0.0,
    *,
    bounds: Optional[Bounds] = None,
    key: Optional[KeyArray] = None,
) -> jax.Array:
  """``sum(IG) - (f(x) - f(baseline))``: how far IG is from completeness.

  Integrated Gradients of ``jax.grad(f)`` satisfy completeness, the
  attributions summing to ``f(x) - f(baseline)``, up to the error of the
  quadrature rule; this gap measures that error (Captum's ``delta`` from
  ``return_convergence_delta``). Divide by ``|f(x) - f(baseline)|`` for a
  relative gap. For S-IG / A-IG the gap is not expected to vanish: a smoothed
  gradient is not the gradient of ``f``.

  Args:
    f: the scalar function of one input (no batch dimension) whose gradient
      was integrated.
    attributions: the attributions (a pytree like ``x``), or the IG function
      itself, called as ``ig(x)`` or, if stochastic, ``ig(key, x)``.
    x: the input.
    baseline: the baseline the attributions used, in any form
      :func:`integrated_gradients` accepts.
    bounds: ``(x_min, x_max)``, required for ``baseline="black"`` / ``"white"``.
    key: the key for a stochastic IG function.

  Returns:
    The gap, a scalar float array.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(jnp.sin(x))
    >>> ig = ag.integrated_gradients(jax.grad(f), 32)
    >>> gap = jax.jit(lambda x: ag.completeness_gap(f, ig, x))(jnp.array([0.3, 0.9]))
    >>> bool(abs(gap) < 1e-3)
    True
  """
  baseline, bounds = validate_baseline(baseline, bounds)
  if callable(attributions):
    if is_stochastic(attributions):
      if key is None:
        raise TypeError(
            "attributions is a stochastic function fn(key, x); pass key=..."
            " (or pass the attributions it returned)."
        )
      attributions = attributions(key, x)
    else:
      attributions = attributions(x)
  base = resolve_baseline(baseline, x, bounds)
  total = sum(
      jnp.sum(jnp.asarray(a).astype(compute_dtype(jnp.asarray(a).dtype)))
      for a in jax.tree.leaves(attributions)
  )
  return total - (f(x) - f(base))
