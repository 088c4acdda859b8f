"""Smoothed gradients from one backward pass: ``smooth_diff`` (sampled) and ``moment_smooth`` (deterministic).

Both return the gradient of the scalar ``f`` in which every nonlinear unit's
local Jacobian is replaced by its expectation under the input noise
``x + sigma * z`` (see :mod:`adaptgrad_jax._jaxpr_rules` for the units and
the table of rules). ``smooth_diff`` estimates the expectations from n
forward passes at noisy inputs (Hill et al., NeurIPS 2025); ``moment_smooth``
computes them from each unit's mean and variance propagated through the
program (:mod:`adaptgrad_jax._moments`).
"""

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from adaptgrad_jax import _jaxpr_rules
from adaptgrad_jax import _memory
from adaptgrad_jax import _moments
from adaptgrad_jax import _monte_carlo
from adaptgrad_jax import _sigma
from adaptgrad_jax import cpu
from adaptgrad_jax._bounds import require_bounds
from adaptgrad_jax._noise import add_noise, unit_noise
from adaptgrad_jax._pytree import broadcast_like, replace_arg
from adaptgrad_jax._smoothing import check_noise_scale
from adaptgrad_jax._typing import Bounds, PyTree
from adaptgrad_jax._wrapping import split_key_args, validate_argnums, validate_count, validate_flag, wrap

STDERR_GROUPS = 8
"""Groups of samples behind ``return_stderr``: the jackknife over them needs one backward pass each."""


def noise_scale(name: str, c, alpha, sigma, bounds, sigma_rule) -> Callable[[PyTree], PyTree]:
  """The sigma rule of exactly one of ``c`` (AdaptGrad), ``alpha`` (SmoothGrad) or ``sigma`` (absolute).

  Each is validated exactly as :func:`adapt_smooth` (``c``, ``bounds``,
  ``sigma_rule``) or :func:`smooth_grad` (``alpha`` with ``bounds``, or an
  absolute ``sigma`` without them) validates it.
  """
  given = [k for k, v in (("c", c), ("alpha", alpha), ("sigma", sigma)) if v is not None]
  if len(given) != 1:
    raise ValueError(
        f"{name} takes exactly one noise scale, got {', '.join(given) or 'none'}:"
        " c= (AdaptGrad's per-element sigma, e.g. c=0.95 with bounds=(0.0, 1.0)),"
        " alpha= (SmoothGrad's sigma = alpha * (x_max - x_min), e.g. alpha=0.2"
        " with bounds=) or sigma= (an absolute noise scale, without bounds)."
    )
  if c is not None:
    c = _sigma.validate_confidence(c)
    rule = _sigma.validate_rule(sigma_rule)
    return functools.partial(_sigma.adaptive_sigma, c=c, bounds=require_bounds(bounds, name), rule=rule)
  if alpha is not None:
    fixed = _sigma.smoothgrad_sigma(alpha, bounds=require_bounds(bounds, name, sigma_ok=True))
    return lambda x: fixed
  if bounds is not None:
    raise ValueError(
        f"{name} takes either bounds= with c= or alpha= (sigma from the data range)"
        " or an absolute sigma=, not both."
    )
  fixed = _sigma.validate_sigma(sigma)
  return lambda x: fixed


def _program(f, args, kwargs, argnums, x, name):
  fn = lambda xx: f(*replace_arg(args, argnums, xx), **kwargs)
  return _jaxpr_rules.build_plan(_jaxpr_rules.trace_flat(fn, x, name), name)


def _on_cpu(fn, cpu_rewrite, *args):
  """``fn(*args)``, through the CPU rewrite where it applies (XLA:CPU's depthwise and small convolutions)."""
  if cpu.applies(cpu_rewrite, *args):
    fn = cpu.rewrite(fn, canonical_kernels=False)
  return fn(*args)


def _backward(plan, x, stats, cpu_rewrite):
  """The one VJP at the clean input ``x`` with the units' Jacobians replaced by ``stats``."""
  def grad_fn(xx, st):
    value = lambda v: _jaxpr_rules.surrogate(plan, jax.tree.leaves(v), st)[0]
    return jax.grad(value)(xx)

  return _on_cpu(grad_fn, cpu_rewrite, x, stats)


def smooth_diff(
    f: Callable[..., Any],
    n: int = 50,
    *,
    c: Optional[float] = None,
    alpha: Optional[float] = None,
    sigma: Optional[PyTree] = None,
    bounds: Bounds = None,
    sigma_rule: _sigma.SigmaRule = "two_sided",
    argnums: int = 0,
    batch_size: Any = None,
    return_stderr: bool = False,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  r"""Smoothed differentiation: n noisy forward passes, then one backward pass with expected Jacobians.

  The gradient of ``f`` at the clean input ``x`` in which the local Jacobian
  ``J_u`` of every nonlinear unit ``u`` (an activation function such as
  ReLU, ReLU6, GELU, hardswish; a max-pooling; a product or quotient of two
  activations; a matmul between activations) is replaced by its mean over n
  forward passes at ``x + sigma * z_j``:

  ``SD(x) = (prod_u E[J_u])^T``, chained in the program's order, where
  ``E[J_u] ~ 1/n sum_j J_u(x + sigma z_j)``.

  For ReLU that mean is the frequency with which each unit is on; for a
  max-pooling, how often each element is the maximum of its window; for
  smooth functions the mean derivative. Linear layers are exact. The map is
  SmoothGrad's / AdaptGrad's Gaussian-smoothed gradient ``E[grad f(x +
  sigma z)]`` exactly when ``f`` has one nonlinear layer (the closed form
  ``W1^T (w2 * Phi(mu / tau))`` of the tests), and otherwise a biased
  estimate of it (the mean of a product of Jacobians is not the product of
  their means), at the cost of n forward passes and one backward pass
  instead of n of each. Only the per-unit expectations are sampled: with
  one nonlinear layer and the same noise the map *is* the Monte Carlo map;
  on deep networks its sampling error was far below Monte Carlo's at equal
  n in our measurements, with a bias that more samples do not remove
  (EfficientNet-Lite0, 224 px: see "Beyond Monte Carlo" in the precision
  docs).

  ``f`` is traced once and evaluated as a program of JAX primitives, so it
  works for any model built from standard primitives (calls, ``jax.nn``
  activations, convolutions, pooling, normalisation, attention); a primitive
  it cannot smooth is refused when ``explain`` is traced, naming the
  primitive (use :func:`adapt_smooth` there).

  Args:
    f: the *scalar* function (not ``jax.grad(f)``), e.g. ``lambda x:
      model(x[None])[0, label]``.
    n: the number of noisy forward passes.
    c: AdaptGrad's confidence level (needs ``bounds``): per-element sigma
      from :func:`adaptive_sigma`, as :func:`adapt_smooth` uses.
    alpha: SmoothGrad's noise level (needs ``bounds``): ``sigma = alpha *
      (x_max - x_min)``, as :func:`smooth_grad` uses.
    sigma: an absolute noise scale (scalar, per-channel, input-shaped or a
      pytree), without ``bounds``. Give exactly one of ``c``, ``alpha``,
      ``sigma``.
    bounds: ``(x_min, x_max)`` of the data as the model sees it (for ``c``
      and ``alpha``).
    sigma_rule: AdaptGrad's rule, as in :func:`adapt_smooth`.
    argnums: which positional argument of ``f`` is the input.
    batch_size: evaluate the forward passes this many at a time (memory is
      bounded by it for any n: the per-unit sums are carried over chunks);
      None evaluates all n in one vmap, ``"auto"`` fits a memory budget.
      Sample j's noise is that of ``jax.random.split(key, n)[j]`` for any
      ``batch_size`` (as in :func:`adapt_smooth`), so the map does not
      depend on it beyond float rounding.
    return_stderr: return an :class:`Estimate`: ``stderr`` is the jackknife
      standard error over :data:`STDERR_GROUPS` groups of the samples
      (sample j in group ``j % 8``), which costs 8 more backward passes and
      8 sets of per-unit sums in memory. It measures the Monte Carlo error
      of the frequencies, not the estimator's bias.
    cpu_rewrite: the CPU switch of :mod:`adaptgrad_jax.cpu`.

  Returns:
    ``explain(key, *args, **kwargs)``: ``f``'s arguments with a leading PRNG
    key, returning the map shaped like ``args[argnums]``. It is marked
    stochastic (:func:`is_stochastic`), so :func:`integrated_gradients` and
    :func:`gradient_x_input` take it as a gradient function.

  Raises:
    ValueError, TypeError: at build time, for not exactly one of c / alpha /
      sigma, missing or invalid bounds, c outside (0, 1), n < 1, a bad
      batch_size or argnums. At trace time, a non-scalar ``f`` or a
      primitive that cannot be smoothed (e.g. ``custom_vjp``, callbacks,
      ``while_loop``, gathers at input-dependent indices).

  Example:
    >>> import adaptgrad_jax as ag
    >>> w1, w2 = jnp.array([[1.0, -1.0], [0.5, 2.0]]), jnp.array([1.0, -1.0])
    >>> f = lambda x: jnp.dot(w2, jax.nn.relu(w1 @ x))
    >>> explain = jax.jit(ag.smooth_diff(f, 256, c=0.95, bounds=(0.0, 1.0)))
    >>> explain(jax.random.key(0), jnp.array([0.5, 0.4])).shape
    (2,)

  References:
    Hill et al., "Smoothed Differentiation Efficiently Mitigates Shattered
    Gradients in Explanations", NeurIPS 2025 (the estimator; its reference
    implementation is the Julia package SmoothDiff.jl); Zhou et al.
    (AdaptGrad), NeurIPS 2025, Eqs. 11-14 (the per-element sigma).
  """
  name = "smooth_diff"
  argnums = validate_argnums(f, argnums, False, name="f")
  n = validate_count(n, "n", "it is the number of noisy forward passes, e.g. 64.",
                     maximum=_monte_carlo.MAX_SAMPLES)
  sigma_fn = noise_scale(name, c, alpha, sigma, bounds, sigma_rule)
  batch_size = _memory.validate_batch_size(batch_size)
  return_stderr = validate_flag(return_stderr, "return_stderr")
  cpu_rewrite = cpu.validate_switch(cpu_rewrite)

  def explain(key, *args, **kwargs):
    _, args = split_key_args((key,) + args, True, argnums, name)
    x = args[argnums]
    scale = sigma_fn(x)
    check_noise_scale(scale, x)
    plan = _program(f, args, kwargs, argnums, x, name)
    if not plan.units:  # nothing to smooth: the plain gradient
      grad = _backward(plan, x, {}, cpu_rewrite)
      zero = jax.tree.map(jnp.zeros_like, grad)
      return _monte_carlo.Estimate(grad, zero, jnp.int32(0)) if return_stderr else grad

    def at_key(k):
      eps = jax.tree.map(lambda e: e[0], unit_noise(k, x, scale, "iid"))
      stats = _jaxpr_rules.statistics(plan, jax.tree.leaves(add_noise(x, eps)))
      return jax.tree.map(lambda s: s[None], stats), None

    def mean_of(keys):
      sums = _monte_carlo.sample_sums(at_key, keys, group=1, batch_size=batch_size, names=("m1",),
                                      cpu_rewrite=cpu_rewrite)
      return sums.sums["m1"]

    keys = _monte_carlo.sample_keys(key, n, cpu_rewrite)
    if not return_stderr:
      return _backward(plan, x, mean_of(keys), cpu_rewrite)
    groups = min(n, STDERR_GROUPS)
    sizes = [len(range(b, n, groups)) for b in range(groups)]
    means = [mean_of(keys[b::groups]) for b in range(groups)]
    total = jax.tree.map(lambda *m: sum(s * v for s, v in zip(sizes, m)) / n, *means)
    grad = _backward(plan, x, total, cpu_rewrite)
    if groups < 2:
      return _monte_carlo.Estimate(grad, jax.tree.map(lambda g: jnp.full_like(g, jnp.inf), grad), jnp.int32(n))
    left_out = jax.tree.map(lambda t, *m: jnp.stack([(n * t - s * v) / (n - s) for s, v in zip(sizes, m)]),
                            total, *means)
    grads = jax.lax.map(lambda st: _backward(plan, x, st, cpu_rewrite), left_out)
    scale_jk = (groups - 1) / groups
    stderr = jax.tree.map(
        lambda g: jnp.sqrt(scale_jk * jnp.sum(jnp.square(g - jnp.mean(g, 0)), 0)).astype(g.dtype), grads)
    return _monte_carlo.Estimate(grad, stderr, jnp.int32(n))

  return wrap(explain, f, name, is_stochastic_result=True, adds_key=True)


def moment_smooth(
    f: Callable[..., Any],
    *,
    c: Optional[float] = None,
    alpha: Optional[float] = None,
    sigma: Optional[PyTree] = None,
    bounds: Bounds = None,
    sigma_rule: _sigma.SigmaRule = "two_sided",
    argnums: int = 0,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  r"""Moment propagation: a deterministic smoothed gradient from one forward pass of means and variances.

  The same backward pass as :func:`smooth_diff`, with every nonlinear
  unit's expected Jacobian computed instead of sampled: each value's mean
  and variance under the input noise ``x + sigma * z`` are propagated
  through the program (linear layers exactly in the mean, variances under
  the assumption that the elements of a layer are independent Gaussians),
  and each unit's expectation is taken under that Gaussian: ``Phi(mu / s)``
  for a ReLU whose pre-activation has mean ``mu`` and standard deviation
  ``s``; ``P(0 < r < 6)`` for ReLU6; Gauss-Hermite quadrature for GELU,
  hardswish, tanh and other activations; Clark's approximation for maxima
  (max-pooling). The rules are in :mod:`adaptgrad_jax._moments`.

  No Monte Carlo error and no key; the cost is about two forward passes and
  one backward pass. The price is a bias from the Gaussian, independent
  closure (zero for one hidden layer, where it equals the Gaussian-smoothed
  gradient ``W1^T (w2 * Phi(mu / tau))`` exactly); measure it against
  :func:`adapt_smooth` with many samples before trusting it on a new model.

  Args:
    f: the scalar function (not ``jax.grad(f)``).
    c, alpha, sigma, bounds, sigma_rule: exactly one noise scale, as in
      :func:`smooth_diff`.
    argnums: which positional argument of ``f`` is the input.
    cpu_rewrite: the CPU switch of :mod:`adaptgrad_jax.cpu`.

  Returns:
    ``explain(*args, **kwargs)``: ``f``'s arguments (no key), returning the
    map shaped like ``args[argnums]``. It is deterministic, so
    :func:`integrated_gradients` and :func:`gradient_x_input` take it as a
    plain gradient function.

  Raises:
    ValueError, TypeError: at build time as :func:`smooth_diff`; at trace
      time for a primitive without a moment rule (it names it).

  Example:
    >>> import adaptgrad_jax as ag
    >>> w1, w2 = jnp.array([[1.0, -1.0], [0.5, 2.0]]), jnp.array([1.0, -1.0])
    >>> f = lambda x: jnp.dot(w2, jax.nn.relu(w1 @ x))
    >>> explain = jax.jit(ag.moment_smooth(f, c=0.95, bounds=(0.0, 1.0)))
    >>> explain(jnp.array([0.5, 0.4])).shape
    (2,)

  References:
    Hill et al., NeurIPS 2025 (the expected-Jacobian backward pass); Clark,
    "The greatest of a finite set of random variables", Operations Research,
    1961 (maxima); Gast and Roth, "Lightweight Probabilistic Deep Networks",
    CVPR 2018 (moment propagation through networks).
  """
  name = "moment_smooth"
  argnums = validate_argnums(f, argnums, False, name="f")
  sigma_fn = noise_scale(name, c, alpha, sigma, bounds, sigma_rule)
  cpu_rewrite = cpu.validate_switch(cpu_rewrite)

  def explain(*args, **kwargs):
    _, args = split_key_args(args, False, argnums, name)
    x = args[argnums]
    scale = sigma_fn(x)
    check_noise_scale(scale, x)
    plan = _program(f, args, kwargs, argnums, x, name)
    if not plan.units:
      return _backward(plan, x, {}, cpu_rewrite)
    variances = jax.tree.map(lambda leaf, s: jnp.broadcast_to(jnp.square(jnp.asarray(s, jnp.result_type(leaf))),
                                                              jnp.shape(leaf)), x, broadcast_like(scale, x, "sigma"))
    # Through the CPU rewrite: XLA:CPU's own depthwise convolutions made this most of the cost on Lite0.
    stats = _on_cpu(functools.partial(_moments.statistics, plan), cpu_rewrite,
                    jax.tree.leaves(x), jax.tree.leaves(variances))
    return _backward(plan, x, stats, cpu_rewrite)

  return wrap(explain, f, name, is_stochastic_result=False, adds_key=False)
