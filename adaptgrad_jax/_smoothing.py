"""The smoothing transforms: ``gaussian_smooth`` and its two sigma rules, AdaptGrad and SmoothGrad.

Each takes a gradient function (e.g. ``jax.grad(f)``) and returns a pure
function with a leading PRNG key, like optax's ``make_perturbed_fun``:
``smoothed(key, *args, **kwargs)`` perturbs positional argument ``argnums``
with Gaussian noise, evaluates the gradient function on the noisy copies and
aggregates (``adaptgrad_jax._monte_carlo``).
"""

import functools
from typing import Any, Callable, Literal, Optional

import jax
import jax.numpy as jnp

from adaptgrad_jax import _memory
from adaptgrad_jax import _monte_carlo
from adaptgrad_jax import _sigma
from adaptgrad_jax import cpu
from adaptgrad_jax._bounds import check_broadcasts, require_bounds
from adaptgrad_jax._noise import NOISE_SCHEMES, add_noise, group_size, unit_noise
from adaptgrad_jax._pytree import broadcast_like, check_has_arrays, check_scale_in_dtype, replace_arg
from adaptgrad_jax._typing import Bounds, GradFn, PyTree
from adaptgrad_jax._wrapping import split_key_args, validate_argnums, validate_choice
from adaptgrad_jax._wrapping import validate_count, validate_flag, wrap

Aggregate = Literal["mean", "mean_sq", "var"]


def check_noise_scale(sigma: PyTree, x: PyTree, *, label: Optional[str] = None, constant: bool = False) -> None:
  """Raises unless every leaf of ``sigma`` broadcasts to its leaf of ``x`` without growing it.

  A concrete leaf (known when the function is traced) must also not
  overflow the dtype the noise is drawn in (:func:`check_scale_in_dtype`);
  with ``constant`` (a scale that does not depend on ``x``, as
  ``smooth_grad``'s) a nonzero leaf must not vanish there either. A
  data-dependent scale may legitimately be tiny (AdaptGrad's next to a
  bound). ``label`` names the scale in the messages.
  """
  for s, leaf in zip(jax.tree.leaves(broadcast_like(sigma, x, "sigma")), jax.tree.leaves(x)):
    check_broadcasts(jnp.shape(s), jnp.shape(leaf), "sigma")
    check_scale_in_dtype(s, "sigma", jnp.result_type(leaf), label=label, vanish=constant)


def split_aux(out: Any, has_aux: bool, name: str) -> tuple[Any, Any]:
  """``(value, aux)`` of a ``grad_fn`` output; with ``has_aux`` it must be a 2-tuple."""
  if not has_aux:
    return out, None
  if not (isinstance(out, (tuple, list)) and len(out) == 2):
    raise TypeError(
        f"{name}: has_aux=True but grad_fn returned {type(out).__name__}, not a"
        " pair (gradient, aux); use jax.grad(f, has_aux=True), or pass"
        " has_aux=False."
    )
  return tuple(out)


def gaussian_smooth(
    grad_fn: GradFn,
    sigma_fn: Callable[[PyTree], PyTree],
    n: int = 50,
    *,
    batch_size: Any = None,
    argnums: int = 0,
    has_aux: bool = False,
    aggregate: Aggregate = "mean",
    include_clean: bool = False,
    noise: str = "iid",
    return_stderr: bool = False,
    rtol: Optional[float] = None,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  """Monte Carlo Gaussian convolution of a gradient function (Eqs. 2-5, 11), for any sigma rule.

  ``G(x) = 1/n sum_j grad_fn(x + sigma(x) z_j)``, ``z_j ~ N(0, I)``, where
  ``z_j`` comes from ``jax.random.split(key, n)[j]``.

  Args:
    grad_fn: the function to smooth, e.g. ``jax.grad(f)``.
    sigma_fn: maps the argument being perturbed to its noise scale: a scalar,
      a per-channel array or an array with the argument's shape (a pytree
      like it for pytree arguments).
    n: the number of noise samples N.
    batch_size: evaluate the samples this many at a time (memory bounded by
      it); None evaluates all n in one vmap; ``"auto"`` (or
      :func:`auto_batch_size`) fits a memory budget. The result does not
      depend on it.
    argnums: which positional argument of ``grad_fn`` to perturb.
    has_aux: ``grad_fn`` returns ``(gradient, aux)``; the smoothed function
      then returns ``(smoothed_gradient, aux)`` with aux stacked over the
      samples along a new leading axis (n, or n + 1 with the clean sample
      last when ``include_clean``).
    aggregate: ``"mean"`` (SmoothGrad), ``"mean_sq"`` (the mean of squared
      gradients, SmoothGrad-squared) or ``"var"`` (their variance, VarGrad).
    include_clean: also evaluate ``grad_fn`` on the unperturbed input and
      count it as one more sample (the released AdaptGrad code does this).
    noise: how the n noise vectors are drawn; each is marginally
      ``N(0, diag(sigma^2))``, so every scheme is unbiased for the Gaussian
      convolution (Eq. 5). ``"iid"`` (default): independent draws, sample j
      from ``jax.random.split(key, n)[j]``. ``"antithetic"``: pairs ``+z,
      -z`` (n even), which cancels the odd part of the gradient exactly (the
      first-order term of its Taylor expansion). ``"orthogonal"``: blocks of
      8 exactly orthogonal Gaussian directions with chi norms (n a multiple
      of 8). ``"lhs"``: Latin hypercube replicates of 8 samples (n a
      multiple of 8): in every element the 8 samples fall one in each of 8
      equiprobable strata of the normal, which removes the variance of the
      gradient's additive part (to first order, all of its linear term), in
      any dimension; never worse than i.i.d. by more than a factor 8/7.
      The standard error comes from the independent replicates.
    return_stderr: return an :class:`Estimate` ``(value, stderr,
      num_samples)`` instead of the map: ``stderr`` is the per-element
      standard error of the Monte Carlo estimate, computed in the same pass
      from the spread of the independent units (samples, antithetic pairs or
      orthogonal blocks). :func:`relative_error` summarises it in one number.
    rtol: sample in chunks of ``batch_size`` until the relative standard
      error ``||stderr|| / ||value||`` is at most ``rtol`` (checked after
      each chunk from the second on) or n samples are used; returns an
      :class:`Estimate` whose ``num_samples`` says how many were used. Needs
      an int ``batch_size`` (a multiple of the scheme's unit: 2 for
      antithetic, 8 for orthogonal) and ``has_aux=False``.
    cpu_rewrite: the CPU switch (:mod:`adaptgrad_jax.cpu`): None reads
      ``$ADAPTGRAD_JAX_CPU_REWRITE`` (unset: on), True or False.

  Returns:
    ``smoothed(key, *args, **kwargs)``: ``grad_fn``'s arguments with a
    leading PRNG key.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(jnp.sin(x))
    >>> smoothed = ag.gaussian_smooth(jax.grad(f), lambda x: 0.5, 256)
    >>> [round(float(v), 1) for v in smoothed(jax.random.key(0), jnp.zeros(2))]  # cos(0) exp(-0.5**2 / 2)
    [0.9, 0.9]
  """
  argnums = validate_argnums(grad_fn, argnums, False)
  n = validate_count(n, "n", "it is the number of noise samples; the paper uses 50.",
                     maximum=_monte_carlo.MAX_SAMPLES)
  batch_size = _memory.validate_batch_size(batch_size)
  aggregate = validate_choice(aggregate, "aggregate", _monte_carlo.AGGREGATES,
                              "'mean' is SmoothGrad, 'mean_sq' SmoothGrad-squared, 'var' VarGrad.")
  has_aux = validate_flag(has_aux, "has_aux")
  include_clean = validate_flag(include_clean, "include_clean")
  cpu_rewrite = cpu.validate_switch(cpu_rewrite)
  noise = validate_choice(noise, "noise", NOISE_SCHEMES,
                          "'iid' is the paper's; 'antithetic' needs an even n, 'orthogonal' and 'lhs' a multiple of 8.")
  group = group_size(noise)
  if n % group:
    raise ValueError(
        f"n={n} is not a multiple of {group}: noise={noise!r} draws its samples"
        f" in independent units of {group}; pass n={n + group - n % group}."
    )
  return_stderr = validate_flag(return_stderr, "return_stderr")
  rtol = _monte_carlo.validate_rtol(rtol, batch_size, group, has_aux)
  if not callable(sigma_fn):
    raise TypeError(f"sigma_fn={sigma_fn!r} must map the input to its noise scale.")
  name = getattr(sigma_fn, "transform_name", "gaussian_smooth")

  def smoothed(key, *args, **kwargs):
    _, args = split_key_args((key,) + args, True, argnums, name)
    x = args[argnums]
    check_has_arrays(x, name, argnums)
    sigma = sigma_fn(x)
    check_noise_scale(sigma, x, label=getattr(sigma_fn, "scale_label", None),
                      constant=getattr(sigma_fn, "constant_scale", False))

    def at_unit(unit_key):
      def at_noise(eps):
        noisy = add_noise(x, eps)
        return split_aux(grad_fn(*replace_arg(args, argnums, noisy), **kwargs), has_aux, name)

      eps = unit_noise(unit_key, x, sigma, noise)
      if group == 1:  # no inner vmap of size 1 in the program
        return jax.tree.map(lambda v: jnp.asarray(v)[None], at_noise(jax.tree.map(lambda e: e[0], eps)))
      return jax.vmap(at_noise)(eps)

    stats = return_stderr or rtol is not None
    keys = _monte_carlo.sample_keys(key, n // group, cpu_rewrite)
    sums = _monte_carlo.sample_sums(at_unit, keys, group=group, batch_size=batch_size,
                                    names=_monte_carlo.needed_sums(aggregate, stats),
                                    cpu_rewrite=cpu_rewrite, rtol=rtol, aggregate=aggregate)
    aux = sums.extras
    if include_clean:
      clean, clean_aux = split_aux(grad_fn(*args, **kwargs), has_aux, name)
      sums = sums._replace(clean=clean)
      if has_aux:
        aux = jax.tree.map(lambda a, b: jnp.concatenate([a, jnp.asarray(b)[None]]), aux, clean_aux)
    result = _monte_carlo.finish(sums, aggregate, stderr=stats)
    return (result, aux) if has_aux else result

  return wrap(smoothed, grad_fn, name, is_stochastic_result=True, adds_key=True)


def _named(sigma_fn, name):
  sigma_fn.transform_name = name
  return sigma_fn


def adapt_smooth(
    grad_fn: GradFn,
    c: float = 0.95,
    n: int = 50,
    *,
    bounds: Bounds = None,
    sigma_rule: _sigma.SigmaRule = "two_sided",
    batch_size: Any = None,
    argnums: int = 0,
    has_aux: bool = False,
    aggregate: Aggregate = "mean",
    include_clean: bool = False,
    noise: str = "iid",
    return_stderr: bool = False,
    rtol: Optional[float] = None,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  r"""AdaptGrad: smooths a gradient function with per-element adaptive noise (Eq. 11).

  ``G_ag(x) = 1/N sum_j grad_fn(x + eps_j)``, ``eps_j ~ N(0, diag(sigma^2))``,
  where ``sigma_i`` is :func:`adaptive_sigma` of ``x_i``: proportional to the
  distance from ``x_i`` to the nearer bound, so that a noisy sample stays in
  the data domain with probability ``c`` (SmoothGrad's fixed sigma sends
  12.6% of ImageNet pixel samples out of range, Section 3.2). Elements on a
  bound get no noise.

  It composes like any JAX function: ``jax.jit`` it, ``jax.vmap`` it over a
  batch of ``(keys, xs)``, take ``jax.grad`` through it (the noise is
  reparameterised, ``x + sigma(x) * z``, so second-order uses such as attacks
  on explanations see the dependence of sigma on x), pass pytree arguments,
  or nest it inside other transforms.

  Args:
    grad_fn: the gradient function to smooth, e.g. ``jax.grad(f)`` for a
      scalar ``f`` of one example (no batch dimension).
    c: the confidence level in (0, 1); the paper recommends 0.95.
    n: the number of noise samples N; the paper uses 50.
    bounds: required. ``(x_min, x_max)`` of the data *as the model sees it*,
      after normalisation: ``(0.0, 1.0)`` for images in [0, 1],
      ``models.IMAGENET_BOUNDS`` (per channel) for torchvision's ImageNet
      normalisation. Each a scalar, an array broadcastable to the argument or
      a pytree like it.
    sigma_rule: ``"two_sided"`` (default, the released code's rule),
      ``"eq13"`` (Eq. 13 as printed) or ``"exact"`` (solves Eq. 14); see
      :func:`adaptive_sigma`.
    batch_size, argnums, has_aux, aggregate, include_clean, noise,
      return_stderr, rtol, cpu_rewrite: as in :func:`gaussian_smooth`.

  Returns:
    ``smoothed(key, *args, **kwargs)``, the smoothed gradient in the dtype
    ``grad_fn`` returns (the input's dtype for ``jax.grad``).

  Raises:
    ValueError, TypeError: at build time, for missing bounds, c outside (0,
      1), n < 1, batch_size < 1, lower >= upper, argnums out of range, an
      unknown rule or aggregate, or a non-callable grad_fn.
    ValueError: when traced, for a c that rounds to 0 or 1 in the input's
      compute dtype (see :func:`adaptive_sigma`), bounds that do not broadcast
      to the input, an input without arrays, or a grad_fn that returns none.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(jnp.sin(x))
    >>> smoothed = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 50, bounds=(0.0, 1.0)))
    >>> smoothed(jax.random.key(0), jnp.full((3,), 0.5)).shape
    (3,)

  References:
    Zhou et al., "Rethinking the Principle of Gradient Smooth Methods in Model
    Explanation" (AdaptGrad), NeurIPS 2025, Eqs. 11-14.
  """
  c = _sigma.validate_confidence(c)
  sigma_rule = _sigma.validate_rule(sigma_rule)
  bounds = require_bounds(bounds, "adapt_smooth")
  sigma_fn = functools.partial(_sigma.adaptive_sigma, c=c, bounds=bounds, rule=sigma_rule)
  return gaussian_smooth(grad_fn, _named(sigma_fn, "adapt_smooth"),
      n, batch_size=batch_size, argnums=argnums, has_aux=has_aux,
      aggregate=aggregate, include_clean=include_clean, noise=noise, return_stderr=return_stderr,
      rtol=rtol, cpu_rewrite=cpu_rewrite)


def smooth_grad(
    grad_fn: GradFn,
    alpha: float = 0.2,
    n: int = 50,
    *,
    bounds: Bounds = None,
    sigma: Optional[PyTree] = None,
    batch_size: Any = None,
    argnums: int = 0,
    has_aux: bool = False,
    aggregate: Aggregate = "mean",
    include_clean: bool = False,
    noise: str = "iid",
    return_stderr: bool = False,
    rtol: Optional[float] = None,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  """SmoothGrad: smooths a gradient function with isotropic Gaussian noise (Eqs. 2, 6).

  ``G_sg(x) = 1/N sum_j grad_fn(x + eps_j)``, ``eps_j ~ N(0, sigma^2 I)``
  with ``sigma = alpha * (x_max - x_min)`` (Eq. 6), or an absolute ``sigma``
  (Captum's ``stdevs``). Noisy samples are not clipped to the bounds: that is
  SmoothGrad.

  Args:
    grad_fn: the gradient function to smooth, e.g. ``jax.grad(f)``.
    alpha: the noise level; 0.2 as recommended by Smilkov et al.
    n: the number of noise samples N.
    bounds: ``(x_min, x_max)`` of the data as the model sees it (after
      normalisation), for ``sigma = alpha (x_max - x_min)``. Give exactly one
      of ``bounds`` and ``sigma``.
    sigma: an absolute noise scale (a finite scalar >= 0, a broadcastable
      array or a pytree), instead of ``alpha`` and ``bounds``.
    batch_size, argnums, has_aux, aggregate, include_clean, noise,
      return_stderr, rtol, cpu_rewrite: as in :func:`gaussian_smooth`.

  Returns:
    ``smoothed(key, *args, **kwargs)``.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> sg = ag.smooth_grad(jax.grad(f), 0.2, 10, bounds=(0.0, 1.0))
    >>> sg(jax.random.key(0), jnp.ones(4)).shape
    (4,)

  References:
    Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017;
    Zhou et al. (AdaptGrad), NeurIPS 2025, Eqs. 2 and 6.
  """
  label = None
  if sigma is None:
    fixed = _sigma.smoothgrad_sigma(alpha, bounds=require_bounds(bounds, "smooth_grad", sigma_ok=True))
    label = f"alpha={alpha!r} (sigma = alpha * (x_max - x_min))"
  elif bounds is not None:
    raise ValueError(
        "smooth_grad takes either bounds= (sigma = alpha * (x_max - x_min)) or"
        " an absolute sigma=, not both."
    )
  else:
    fixed = _sigma.validate_sigma(sigma)
  sigma_fn = _named(lambda x: fixed, "smooth_grad")
  sigma_fn.scale_label = label
  sigma_fn.constant_scale = True
  return gaussian_smooth(grad_fn, sigma_fn,
      n, batch_size=batch_size, argnums=argnums, has_aux=has_aux,
      aggregate=aggregate, include_clean=include_clean, noise=noise, return_stderr=return_stderr,
      rtol=rtol, cpu_rewrite=cpu_rewrite)
