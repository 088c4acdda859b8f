"""The Integrated Gradients family as transforms of a gradient function.

Expected Gradients / GradientSHAP, Blur IG, Guided IG and IDGI each take a
gradient function and return a function, like :func:`integrated_gradients`, so
they compose with the smoothing transforms: the A- and S- variants are
one-liners, e.g. ``expected_gradients(adapt_smooth(jax.grad(f), 0.95, n,
bounds=b), m, baselines=data)`` is A-EG. With a stochastic ``grad_fn`` the
gradient at path point ``k`` gets the key ``jax.random.fold_in(key, k)`` (its
own noise at every point), as in :func:`integrated_gradients`.

Inputs are one array per example (no batch axis; images HWC). Every method but
Guided IG evaluates its path points in one ``jax.vmap`` or in chunks of
``batch_size`` (``adaptgrad_jax._monte_carlo.sample_sums``), and its result
does not depend on ``batch_size``; Guided IG's path is chosen step by step from
the previous gradient, so its gradients are evaluated one after the other.
"""

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax import _memory
from adaptgrad_jax import _monte_carlo
from adaptgrad_jax import cpu
from adaptgrad_jax._attribution import resolve_baseline, validate_baseline
from adaptgrad_jax._noise import check_key
from adaptgrad_jax._pytree import check_scale_in_dtype, compute_dtype, replace_arg
from adaptgrad_jax._typing import Bounds, GradFn
from adaptgrad_jax._wrapping import resolve_stochastic, split_key_args
from adaptgrad_jax._wrapping import validate_argnums, validate_callable, validate_count, validate_number
from adaptgrad_jax._wrapping import validate_stderr_option, wrap

Baselines = Union[jax.typing.ArrayLike, Callable[[Any], jax.Array]]


def _single_array(x, name: str) -> jax.Array:
  leaves = jax.tree.leaves(x)
  if len(leaves) != 1 or jax.tree.structure(x).num_leaves != 1 or not hasattr(x, "shape"):
    raise TypeError(
        f"{name} explains one array input (one example, e.g. an HWC image);"
        f" got a pytree with structure {jax.tree.structure(x)}. Pass the input"
        " as a single array (argnums selects it)."
    )
  x = jnp.asarray(x)
  compute_dtype(x.dtype)  # raises for integer inputs
  return x


def _gradient(grad_fn, stochastic, key, args, argnums, kwargs, point, step, name):
  """``grad_fn`` at ``point`` (in place of the input), with ``fold_in(key, step)`` if stochastic."""
  new_args = replace_arg(args, argnums, point)
  grad = grad_fn(jax.random.fold_in(key, step), *new_args, **kwargs) if stochastic else grad_fn(*new_args, **kwargs)
  return _check_gradient(grad, point, argnums, name)


def _check_gradient(grad, point, argnums, name):
  if isinstance(grad, _monte_carlo.Estimate):
    raise TypeError(
        f"{name}: grad_fn returned an Estimate (it was built with"
        " return_stderr=True or rtol), but this method is not linear in the"
        " gradient, so the gradient's standard error does not carry over;"
        " build grad_fn without return_stderr and rtol. (integrated_gradients,"
        " blur_integrated_gradients, expected_gradients and gradient_x_input"
        " propagate it.)"
    )
  if not hasattr(grad, "shape") or jnp.shape(grad) != jnp.shape(point):
    raise ValueError(
        f"{name}: grad_fn returned {jax.tree.structure(grad)} with shape"
        f" {jnp.shape(grad) if hasattr(grad, 'shape') else None} for an input of shape"
        f" {jnp.shape(point)}; it must return the gradient with respect to argument"
        f" argnums={argnums} (e.g. jax.grad(f, argnums={argnums}))."
    )
  return grad


def _sum_over(unit_fn, count: int, batch_size, cpu_rewrite) -> jax.Array:
  """``sum_k unit_fn(k)`` for ``k < count``, in one vmap or chunks of ``batch_size``."""
  def values(k):
    return unit_fn(k)[None], None

  sums = _monte_carlo.sample_sums(values, jnp.arange(count, dtype=jnp.int32), batch_size=batch_size,
                                  names=("m1",), cpu_rewrite=cpu_rewrite)
  return sums.sums["m1"] * count


def _stderr_option(return_stderr, stochastic: bool):
  return_stderr = validate_stderr_option(return_stderr)
  if return_stderr and not stochastic:
    raise ValueError(
        "return_stderr=True needs a stochastic grad_fn that returns an Estimate"
        " (e.g. adapt_smooth(jax.grad(f), ..., return_stderr=True)): a path"
        " integral of a deterministic gradient has no Monte Carlo error."
    )
  return return_stderr


def _common(grad_fn, argnums, stochastic, batch_size, cpu_rewrite):
  stochastic = resolve_stochastic(grad_fn, stochastic)
  argnums = validate_argnums(grad_fn, argnums, stochastic)
  return stochastic, argnums, _memory.validate_batch_size(batch_size), cpu.validate_switch(cpu_rewrite)


# ----------------------------------------------------------------------------
# Expected Gradients / GradientSHAP.


def _validate_baselines(baselines):
  if callable(baselines):
    return baselines
  try:
    value = np.asarray(baselines) if not isinstance(baselines, jax.Array) else baselines
  except (TypeError, ValueError):
    value = None
  if value is None or not (np.issubdtype(value.dtype, np.number)) or np.ndim(value) < 1 or np.shape(value)[0] < 1:
    raise TypeError(
        f"baselines={baselines!r:.80} must be a dataset of baselines (an array of"
        " shape (m, *x.shape) with m >= 1, sampled uniformly) or a callable"
        " sample(key) returning one baseline shaped like x."
    )
  return jnp.asarray(value)


def _draw_baseline(baselines, key, x):
  if callable(baselines):
    shape = jax.eval_shape(baselines, key)
    if not hasattr(shape, "shape") or shape.shape != x.shape:
      raise ValueError(
          f"baselines is a distribution whose samples baselines(key) have"
          f" {getattr(shape, 'shape', jax.tree.structure(shape))} but the input has shape"
          f" {x.shape}; sample(key) must return one baseline shaped like x."
      )
    return jnp.asarray(baselines(key))
  if baselines.shape[1:] != x.shape:
    raise ValueError(
        f"baselines is a dataset of shape {baselines.shape}: its baselines have"
        f" shape {baselines.shape[1:]} but the input has shape {x.shape}; pass an"
        f" array of shape (m, {', '.join(map(str, x.shape))}) (one baseline per row)."
    )
  index = jax.random.randint(key, (), 0, baselines.shape[0])
  return baselines[index]


def expected_gradients(
    grad_fn: GradFn,
    n_samples: int = 50,
    *,
    baselines: Baselines,
    stdevs: float = 0.0,
    batch_size: Any = None,
    argnums: int = 0,
    stochastic: Optional[bool] = None,
    return_stderr: Optional[bool] = None,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  r"""Expected Gradients / GradientSHAP: IG averaged over random baselines and path points.

  ``EG(x) = E_{b, a, eps}[(x~ - b) * grad_fn(b + a (x~ - b))]`` with
  ``x~ = x + eps``, ``eps ~ N(0, stdevs^2)``, ``a ~ U(0, 1)`` and ``b`` drawn
  from ``baselines`` (Erion et al.; Lundberg and Lee's GradientSHAP), estimated
  with ``n_samples`` draws. It is Captum's ``GradientShap`` (``stdevs`` is its
  input noise, ``n_samples`` its ``n_samples``).

  Keys. The result is always stochastic (``eg(key, *args)``). Sample ``j``
  uses ``k_base, k_alpha, k_noise, k_grad = jax.random.split(
  jax.random.fold_in(key, j), 4)``: the baseline is ``baselines(k_base)`` or
  row ``jax.random.randint(k_base, (), 0, m)`` of the dataset, the path point
  ``jax.random.uniform(k_alpha)``, the noise ``stdevs *
  jax.random.normal(k_noise, x.shape)``, and a stochastic ``grad_fn`` gets
  ``k_grad``. Same key, same result, whatever ``batch_size``.

  Args:
    grad_fn: ``jax.grad(f)`` or a stochastic gradient function (e.g.
      ``adapt_smooth(jax.grad(f), 0.95, n, bounds=b)`` for A-EG).
    n_samples: the number of (baseline, point) draws.
    baselines: a dataset, an array of shape ``(m, *x.shape)`` whose rows are
      drawn uniformly with replacement, or a distribution, a callable
      ``sample(key)`` returning one baseline shaped like ``x``.
    stdevs: the standard deviation of Gaussian noise added to ``x`` per
      sample (Captum's ``stdevs``; 0 for none).
    batch_size: evaluate this many samples at a time (bounded memory); None
      evaluates all in one ``jax.vmap``; ``"auto"`` fits the memory budget.
    argnums: the positional argument (after the key) holding the input.
    stochastic: whether ``grad_fn`` takes a leading key; None uses its mark.
    return_stderr: True returns an :class:`Estimate`: EG is itself a Monte
      Carlo mean of ``n_samples`` independent draws, and its standard error
      comes from their spread, in the same pass; with a stochastic
      ``grad_fn`` (A-EG) each draw holds its own inner noise, so the error
      covers both sources, and ``num_samples`` counts the inner gradient
      evaluations if ``grad_fn`` returns an Estimate (only its value is
      used). None (default): an Estimate if and only if ``grad_fn`` returns
      one. False: the map alone.
    cpu_rewrite: the CPU switch (:mod:`adaptgrad_jax.cpu`).

  Returns:
    ``eg(key, *args)``: ``grad_fn``'s arguments after a key, returning the
    attributions in the gradient's dtype.

  Raises:
    TypeError, ValueError: at build time for a bad count, ``stdevs`` or
      ``baselines`` that is neither an array nor a callable; at the first
      trace for baselines whose shape does not match the input.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> data = jnp.zeros((3, 2))
    >>> eg = jax.jit(ag.expected_gradients(jax.grad(f), 16, baselines=data))
    >>> eg(jax.random.key(0), jnp.array([1.0, 2.0])).shape
    (2,)
    >>> eg_err = ag.expected_gradients(jax.grad(f), 16, baselines=data, return_stderr=True)
    >>> est = eg_err(jax.random.key(0), jnp.array([1.0, 2.0]))
    >>> est.stderr.shape, int(est.num_samples)
    ((2,), 16)

  References:
    Erion et al., "Improving performance of deep learning models with
    axiomatic attribution priors and expected gradients", Nature Machine
    Intelligence 2021; Lundberg and Lee, "A Unified Approach to Interpreting
    Model Predictions", NeurIPS 2017 (GradientSHAP as in Captum).
  """
  stochastic, argnums, batch_size, cpu_rewrite = _common(grad_fn, argnums, stochastic, batch_size, cpu_rewrite)
  n_samples = validate_count(n_samples, "n_samples", "it is the number of (baseline, path point) draws (Captum's"
                             " GradientShap uses 5).", maximum=_monte_carlo.MAX_SAMPLES)
  stdevs = validate_number(stdevs, "stdevs", "it is the standard deviation of the input noise (0 for none).")
  if not np.isfinite(stdevs) or stdevs < 0:
    raise ValueError(f"stdevs={stdevs!r} must be a finite number >= 0 (0 for no input noise).")
  baselines = _validate_baselines(baselines)
  return_stderr = validate_stderr_option(return_stderr)
  name = "expected_gradients"

  def eg(key, *call_args, **kwargs):
    check_key(key)
    _, args = split_key_args(call_args, False, argnums, name)
    x = _single_array(args[argnums], name)
    dtype = compute_dtype(x.dtype)
    check_scale_in_dtype(stdevs, "stdevs", dtype, hint="Captum's default is 0 (no input noise).")
    _draw_baseline(baselines, key, x)  # checks the shapes at trace time, outside the vmap
    like, inner_used = [], []

    def sample(j):
      k_base, k_alpha, k_noise, k_grad = jax.random.split(jax.random.fold_in(key, j), 4)
      base = _draw_baseline(baselines, k_base, x).astype(dtype)
      alpha = jax.random.uniform(k_alpha, (), dtype)
      noisy = x.astype(dtype) + stdevs * jax.random.normal(k_noise, x.shape, dtype) if stdevs else x.astype(dtype)
      point = (base + alpha * (noisy - base)).astype(x.dtype)
      new_args = replace_arg(args, argnums, point)
      out = grad_fn(k_grad, *new_args, **kwargs) if stochastic else grad_fn(*new_args, **kwargs)
      grad, _, used = _monte_carlo.split_estimate(out)
      grad = _check_gradient(grad, point, argnums, name)
      like.append(jnp.result_type(grad))
      inner_used.append(used)
      return grad.astype(dtype) * (noisy - base), used

    def wanted():  # known once sample has been traced: does grad_fn return an Estimate?
      return _monte_carlo.stderr_wanted(return_stderr, inner_used[0] is not None, name, own_samples=True)

    def unit(j):
      term, used = sample(j)
      values = (term, jnp.float32(1) if used is None else used.astype(jnp.float32))
      return jax.tree.map(lambda v: v[None], values), None

    sums = _monte_carlo.sample_sums(unit, jnp.arange(n_samples, dtype=jnp.int32), batch_size=batch_size,
                                    names=lambda: ("m1", "q11") if wanted() else ("m1",), cpu_rewrite=cpu_rewrite)
    if not wanted():
      return sums.sums["m1"][0].astype(like[0])
    est = _monte_carlo.finish(sums, "mean", stderr=True)
    used = jnp.round(est.value[1] * n_samples).astype(jnp.int32)
    return _monte_carlo.Estimate(est.value[0].astype(like[0]), est.stderr[0].astype(like[0]), used)

  return wrap(eg, grad_fn, name, is_stochastic_result=True, adds_key=not stochastic)


# ----------------------------------------------------------------------------
# Blur IG.


MAX_BLUR_SIGMA = 10_000.0
"""The largest blur accepted, in pixels: the kernel has ``8 sigma + 1`` taps, and a blur this wide is flat
over any image (a larger one would only cost memory, or abort the process)."""


def _check_blur_sigma(value: float, name: str) -> None:
  if value > MAX_BLUR_SIGMA:
    raise ValueError(
        f"{name}={value!r} is more blur than this library evaluates"
        f" ({MAX_BLUR_SIGMA:,.0f} pixels, MAX_BLUR_SIGMA): the kernel has 8 {name} + 1"
        " taps, and an image is flat long before; PAIR's Blur IG uses 50."
    )


def _check_grad_step(grad_step: float, max_sigma: float, dtype) -> None:
  """Raises if ``sigma + grad_step - sigma`` loses the step to rounding in ``dtype`` along the path.

  The finite difference divides by ``grad_step``; at the end of the path the
  blur sigma is about ``max_sigma``, whose spacing in float32 is
  ``max_sigma * 1.2e-7``. A step under 64 such spacings is represented to
  worse than 1% (and a step under one spacing is lost: a zero map).
  """
  dtype = np.dtype(compute_dtype(dtype))
  spacing = float(np.spacing(dtype.type(max_sigma + grad_step)))
  if grad_step < 64 * spacing:
    raise ValueError(
        f"grad_step={grad_step!r} is too small for {dtype} at max_sigma={max_sigma!r}:"
        f" the spacing of {dtype} near {max_sigma:g} is {spacing:.2g}, so rounding"
        " changes sigma + grad_step - sigma by more than 1% of the step (or"
        " loses it), and dx/dsigma would be wrong or 0; pass"
        f" grad_step >= {64 * spacing:.2g} (PAIR: 0.01), or a float64 input."
    )


def _blur_matrix(size: int, sigma, max_radius: int, dtype) -> jax.Array:
  """The ``(size, size)`` matrix of SciPy's ``gaussian_filter1d(mode="constant")`` (truncate 4)."""
  radius = jnp.floor(4.0 * sigma + 0.5)
  d = jnp.arange(size)[:, None] - jnp.arange(size)[None, :]
  safe = jnp.where(sigma > 0, sigma, 1.0)
  taps = jnp.arange(-max_radius, max_radius + 1)
  norm = jnp.sum(jnp.where(jnp.abs(taps) <= radius, jnp.exp(-0.5 * (taps / safe) ** 2), 0.0))
  kernel = jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * (d / safe) ** 2), 0.0) / norm
  return jnp.where(sigma > 0, kernel, jnp.eye(size)).astype(dtype)


def gaussian_blur(x: jax.Array, sigma, axes: tuple[int, int] = (0, 1), *,
                  max_sigma: Optional[float] = None) -> jax.Array:
  """Blurs ``x`` along ``axes`` as SciPy's ``gaussian_filter`` with ``mode="constant"`` (zeros outside).

  ``sigma = 0`` returns ``x``. The kernel is truncated at
  ``floor(4 sigma + 0.5)`` pixels and normalised over all its taps (also
  those outside the image), as SciPy's. ``sigma`` may be traced if
  ``max_sigma``, a Python bound on it, is given.

  Example:
    >>> import adaptgrad_jax as ag
    >>> blurred = ag.gaussian_blur(jnp.array([[0.0, 1.0, 0.0]]), 1.0)
    >>> [f"{v:.3f}" for v in blurred[0]]  # scipy's values
    ['0.097', '0.159', '0.097']
  """
  x = jnp.asarray(x)
  dtype = compute_dtype(x.dtype)
  out = x.astype(dtype)
  bound = float(sigma) if max_sigma is None else float(max_sigma)
  _check_blur_sigma(bound, "sigma" if max_sigma is None else "max_sigma")
  for axis in axes:
    radius = max(x.shape[axis], int(4.0 * bound + 0.5))
    m = _blur_matrix(x.shape[axis], jnp.asarray(sigma, dtype), radius, dtype)
    out = jnp.moveaxis(jnp.tensordot(m, jnp.moveaxis(out, axis, 0), axes=1), 0, axis)
  return out


def blur_integrated_gradients(
    grad_fn: GradFn,
    n_steps: int = 100,
    *,
    max_sigma: float = 50.0,
    grad_step: float = 0.01,
    sqrt: bool = False,
    axes: tuple[int, int] = (0, 1),
    batch_size: Any = None,
    argnums: int = 0,
    stochastic: Optional[bool] = None,
    return_stderr: Optional[bool] = None,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  r"""Blur IG: gradients integrated along a path of increasingly blurred images.

  The path goes from ``x`` (``sigma = 0``) to a blurred copy
  (``sigma = max_sigma``) through ``x_s = G(sigma_s) * x`` (Xu et al., Eq. 4),
  integrated by a left Riemann sum over ``n_steps`` equal steps of sigma (or
  of sigma^2 with ``sqrt=True``), with ``dx/dsigma`` by a forward difference
  of ``grad_step``:
  ``-sum_i (sigma_{i+1} - sigma_i) (x_{sigma_i + h} - x_{sigma_i}) / h * grad_fn(x_{sigma_i})``.
  It matches PAIR saliency's ``BlurIG.GetMask`` (whose blur is SciPy's
  ``gaussian_filter`` with zeros outside the image; :func:`gaussian_blur`).

  Args:
    grad_fn: ``jax.grad(f)`` or a stochastic gradient function.
    n_steps: the number of path points (PAIR's ``steps``, default 100).
    max_sigma: the blur at the end of the path, in pixels.
    grad_step: the sigma increment of the finite difference for ``dx/dsigma``.
    sqrt: space the sigmas as ``sqrt(i max_sigma / n_steps)`` (PAIR's ``sqrt``).
    axes: the two spatial axes of the input (``(0, 1)`` for HWC).
    batch_size: evaluate this many path points at a time (bounded memory).
    argnums: the positional argument (after the key, if any) holding the input.
    stochastic: whether ``grad_fn`` takes a leading key; None uses its mark.
    return_stderr: as in :func:`integrated_gradients`: with a ``grad_fn``
      that returns an :class:`Estimate` (S-/A-Blur IG built with
      ``return_stderr=True``), the map's standard error from the points'
      independent errors (the quadrature is linear in the gradients). None
      follows ``grad_fn``, True requires it, False drops it.
    cpu_rewrite: the CPU switch (:mod:`adaptgrad_jax.cpu`).

  Returns:
    ``blur_ig(*args)`` with ``grad_fn``'s signature.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(x[2:4, 2:4] ** 2)
    >>> big = jax.jit(ag.blur_integrated_gradients(jax.grad(f), 20, max_sigma=4.0))
    >>> big(jnp.ones((6, 6, 1))).shape
    (6, 6, 1)

  References:
    Xu et al., "Attribution in Scale and Space", CVPR 2020.
  """
  stochastic, argnums, batch_size, cpu_rewrite = _common(grad_fn, argnums, stochastic, batch_size, cpu_rewrite)
  n_steps = validate_count(n_steps, "n_steps", "it is the number of points on the blur path (PAIR uses 100).",
                           maximum=_monte_carlo.MAX_SAMPLES)
  max_sigma = validate_number(max_sigma, "max_sigma", "it is the blur, in pixels, at the end of the path (PAIR: 50).")
  grad_step = validate_number(grad_step, "grad_step", "it is the finite-difference step in sigma (PAIR: 0.01).")
  if not (np.isfinite(max_sigma) and max_sigma > 0):
    raise ValueError(f"max_sigma={max_sigma!r} must be a finite number > 0 (PAIR's default is 50).")
  _check_blur_sigma(max_sigma, "max_sigma")
  if not (np.isfinite(grad_step) and grad_step > 0):
    raise ValueError(f"grad_step={grad_step!r} must be a finite number > 0 (PAIR's default is 0.01).")
  if (not isinstance(axes, tuple) or len(axes) != 2 or not all(isinstance(a, int) for a in axes)
      or axes[0] == axes[1]):
    raise ValueError(f"axes={axes!r} must be two distinct ints: the spatial axes of the input ((0, 1) for HWC).")
  steps = np.arange(n_steps + 1, dtype=np.float64) * max_sigma / n_steps
  sigmas = np.sqrt(steps) if sqrt else steps
  return_stderr = _stderr_option(return_stderr, stochastic)
  name = "blur_integrated_gradients"

  def blur_ig(*call_args, **kwargs):
    key, args = split_key_args(call_args, stochastic, argnums, name)
    x = _single_array(args[argnums], name)
    if x.ndim < 2 or not all(-x.ndim <= a < x.ndim for a in axes):
      raise ValueError(f"{name}: axes={axes} are not two axes of the input of shape {x.shape}.")
    dtype = compute_dtype(x.dtype)
    _check_grad_step(grad_step, max_sigma, dtype)
    sigma_table = jnp.asarray(sigmas, dtype)

    with_err = []

    def term(i):
      s = sigma_table[i]
      x_s = gaussian_blur(x, s, axes, max_sigma=max_sigma + grad_step)
      dx = (gaussian_blur(x, s + grad_step, axes, max_sigma=max_sigma + grad_step) - x_s) / grad_step
      new_args = replace_arg(args, argnums, x_s.astype(x.dtype))
      out = grad_fn(jax.random.fold_in(key, i), *new_args, **kwargs) if stochastic else grad_fn(*new_args, **kwargs)
      grad, err, used = _monte_carlo.split_estimate(out)
      grad = _check_gradient(grad, x_s, argnums, name)
      keep = _monte_carlo.stderr_wanted(return_stderr, err is not None, name, own_samples=False)
      with_err.append(keep)
      coef = (sigma_table[i + 1] - s) * dx
      var = jnp.square(coef * err.astype(dtype)) if keep else None
      return coef * grad.astype(dtype), var, used if keep else None

    total, err, used = _monte_carlo.sum_of_terms(term, n_steps, batch_size=batch_size, cpu_rewrite=cpu_rewrite)
    value = (-total).astype(x.dtype)
    return _monte_carlo.Estimate(value, err.astype(x.dtype), used) if with_err[0] else value

  return wrap(blur_ig, grad_fn, name, is_stochastic_result=stochastic, adds_key=False)


# ----------------------------------------------------------------------------
# Guided IG.


def guided_integrated_gradients(
    grad_fn: GradFn,
    n_steps: int = 200,
    *,
    baseline: Any = 0.0,
    bounds: Optional[Bounds] = None,
    fraction: float = 0.25,
    max_dist: float = 0.02,
    max_inner: int = 1000,
    argnums: int = 0,
    stochastic: Optional[bool] = None,
) -> Callable[..., Any]:
  r"""Guided IG: an adaptive path that first moves the features with the smallest gradients.

  At each of ``n_steps`` steps, the features whose gradient magnitude is in
  the lowest ``fraction`` are moved towards ``x`` until the path's L1
  distance to ``x`` has shrunk by ``1/n_steps`` of the total, never leaving a
  band of relative width ``max_dist`` around the straight line
  (Kapishnikov et al., Algorithm 1); the attribution accumulates
  ``(x_new - x_old) * grad``. It follows PAIR saliency's ``guided_ig_impl``
  (``max_dist=0`` is IG on the straight line, ``1`` is unbounded Guided IG).

  The path depends on each gradient, so the ``n_steps`` gradients are
  evaluated one after the other (a ``lax.scan``; no ``batch_size``). The inner
  loop that moves features runs at most ``max_inner`` times per step.

  Args:
    grad_fn: ``jax.grad(f)`` or a stochastic gradient function (A-/S-Guided
      IG: step ``k`` gets ``fold_in(key, k)``).
    n_steps: the number of steps (PAIR's ``x_steps``, default 200).
    baseline: the start of the path, as for :func:`integrated_gradients`
      (``"black"`` / ``"white"`` need ``bounds``).
    bounds: ``(x_min, x_max)`` for the named baselines.
    fraction: the fraction of features moved at each inner iteration.
    max_dist: the relative L1 band around the straight line, in [0, 1].
    max_inner: a cap on inner iterations per step (PAIR has none; with the
      defaults a step needs a handful).
    argnums: the positional argument (after the key, if any) holding the input.
    stochastic: whether ``grad_fn`` takes a leading key; None uses its mark.

  Returns:
    ``guided_ig(*args)`` with ``grad_fn``'s signature.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(jnp.sin(x))
    >>> gig = jax.jit(ag.guided_integrated_gradients(jax.grad(f), 32))
    >>> gig(jnp.array([0.5, 1.0, 1.5, 2.0])).shape
    (4,)

  References:
    Kapishnikov et al., "Guided Integrated Gradients: an Adaptive Path Method
    for Removing Noise", CVPR 2021.
  """
  stochastic = resolve_stochastic(grad_fn, stochastic)
  argnums = validate_argnums(grad_fn, argnums, stochastic)
  n_steps = validate_count(n_steps, "n_steps", "it is the number of steps of the path (PAIR uses 200).")
  max_inner = validate_count(max_inner, "max_inner", "it caps the inner iterations per step.")
  fraction = validate_number(fraction, "fraction", "it is the fraction of features moved per iteration (0.25).")
  max_dist = validate_number(max_dist, "max_dist", "it is the relative width of the band around the line (0.02).")
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction={fraction!r} must lie in (0, 1]; PAIR uses 0.25.")
  if not 0 <= max_dist <= 1:
    raise ValueError(f"max_dist={max_dist!r} must lie in [0, 1]; PAIR uses 0.02 (0 is IG on the straight line).")
  baseline, bounds = validate_baseline(baseline, bounds)
  name = "guided_integrated_gradients"
  eps = 1e-9

  def guided_ig(*call_args, **kwargs):
    key, args = split_key_args(call_args, stochastic, argnums, name)
    x_in = _single_array(args[argnums], name)
    dtype = compute_dtype(x_in.dtype)
    xi = x_in.astype(dtype)
    xb = resolve_baseline(baseline, x_in, bounds).astype(dtype)
    diff = xi - xb
    l1_total = jnp.sum(jnp.abs(diff))
    safe_diff = jnp.where(diff != 0, diff, 1.0)

    def step(carry, k):
      x, attr = carry
      grad_actual = _gradient(grad_fn, stochastic, key, args, argnums, kwargs, x.astype(x_in.dtype), k,
                              name).astype(dtype)
      alpha = (k + 1.0) / n_steps
      alpha_min = jnp.maximum(alpha - max_dist, 0.0)
      alpha_max = jnp.minimum(alpha + max_dist, 1.0)
      x_min = xb + diff * alpha_min
      x_max = xb + diff * alpha_max
      l1_target = l1_total * (1 - (k + 1.0) / n_steps)

      def body(state):
        x, attr, _, _, count = state
        x_old = x
        x_alpha = jnp.where(diff != 0, (x - xb) / safe_diff, alpha_max)
        x = jnp.where(x_alpha < alpha_min, x_min, x)
        l1_current = jnp.sum(jnp.abs(x - xi))
        close = jnp.abs(l1_target - l1_current) <= jnp.maximum(eps * jnp.maximum(jnp.abs(l1_target),
                                                                                jnp.abs(l1_current)), eps)
        grad = jnp.where(x == x_max, jnp.inf, grad_actual)
        threshold = jnp.quantile(jnp.abs(grad), fraction, method="lower")
        s = (jnp.abs(grad) <= threshold) & (grad != jnp.inf)
        l1_s = jnp.sum(jnp.abs(x - x_max) * s)
        gamma = jnp.where(l1_s > 0, (l1_current - l1_target) / jnp.where(l1_s > 0, l1_s, 1.0), jnp.inf)
        moved = jnp.where(gamma > 1.0, x_max, x + (x_max - x) * gamma)
        x = jnp.where(close | ~s, x, moved)
        attr = attr + (x - x_old) * grad_actual
        done = close | (gamma <= 1.0)
        return x, attr, done, gamma, count + 1

      def cond(state):
        return ~state[2] & (state[4] < max_inner)

      x, attr, _, _, _ = jax.lax.while_loop(cond, body, (x, attr, jnp.bool_(False), jnp.asarray(jnp.inf, dtype),
                                                         jnp.int32(0)))
      return (x, attr), None

    (_, attr), _ = jax.lax.scan(step, (xb, jnp.zeros_like(xi)), jnp.arange(n_steps))
    attr = jnp.where(l1_total == 0, 0.0, attr)
    return attr.astype(x_in.dtype)

  return wrap(guided_ig, grad_fn, name, is_stochastic_result=stochastic, adds_key=False)


# ----------------------------------------------------------------------------
# IDGI.


def idgi(
    grad_fn: GradFn,
    f: Callable[..., jax.Array],
    n_steps: int = 50,
    *,
    baseline: Any = 0.0,
    bounds: Optional[Bounds] = None,
    batch_size: Any = None,
    argnums: int = 0,
    stochastic: Optional[bool] = None,
    cpu_rewrite: Optional[bool] = None,
) -> Callable[..., Any]:
  r"""IDGI: Integrated Gradients with each step's change of ``f`` split by importance.

  On the straight path ``x_k = b + (k / n_steps)(x - b)``, ``k = 0..n_steps``,
  step ``k`` gives feature ``i`` the share ``g_i^2 / ||g||^2`` of the change
  ``f(x_{k+1}) - f(x_k)``, with ``g = grad_fn(x_k)`` (Yang et al., Eq. 9 and
  Algorithm 1): only the gradient's direction is used, which removes IG's
  noise from the steps where ``f`` barely changes. The attributions add up to
  ``f(x) - f(b)`` exactly (the changes telescope), whatever ``grad_fn``: also
  for A-/S-IDGI, where ``grad_fn`` is smoothed but ``f`` is not. A step whose
  gradient is zero gives nothing.

  Args:
    grad_fn: ``jax.grad(f)`` or a stochastic gradient function (step ``k``
      gets ``fold_in(key, k)``).
    f: the scalar function itself, with ``grad_fn``'s arguments (without the
      key): ``f(*args)``.
    n_steps: the number of steps (``n_steps`` gradients, ``n_steps + 1``
      values of ``f``).
    baseline: the start of the path, as for :func:`integrated_gradients`.
    bounds: ``(x_min, x_max)`` for the named baselines "black" / "white".
    batch_size: evaluate this many steps at a time (bounded memory).
    argnums: the positional argument (after the key, if any) holding the input.
    stochastic: whether ``grad_fn`` takes a leading key; None uses its mark.
    cpu_rewrite: the CPU switch (:mod:`adaptgrad_jax.cpu`).

  Returns:
    ``idgi_fn(*args)`` with ``grad_fn``'s signature.

  Example:
    >>> import adaptgrad_jax as ag
    >>> f = lambda x: jnp.sum(jnp.tanh(x) * jnp.array([1.0, 3.0]))
    >>> attr = jax.jit(ag.idgi(jax.grad(f), f, 16))(jnp.array([0.5, 1.0]))
    >>> bool(jnp.allclose(attr.sum(), f(jnp.array([0.5, 1.0])), atol=1e-5))
    True

  References:
    Yang et al., "IDGI: A Framework to Eliminate Explanation Noise from
    Integrated Gradients", CVPR 2023.
  """
  stochastic, argnums, batch_size, cpu_rewrite = _common(grad_fn, argnums, stochastic, batch_size, cpu_rewrite)
  validate_callable(f, "f")
  n_steps = validate_count(n_steps, "n_steps", "it is the number of steps of the path (the IDGI paper uses 50+).",
                           maximum=_monte_carlo.MAX_SAMPLES)
  baseline, bounds = validate_baseline(baseline, bounds)
  name = "idgi"

  def idgi_fn(*call_args, **kwargs):
    key, args = split_key_args(call_args, stochastic, argnums, name)
    x = _single_array(args[argnums], name)
    dtype = compute_dtype(x.dtype)
    base = resolve_baseline(baseline, x, bounds).astype(dtype)
    diff = x.astype(dtype) - base

    def point(k):
      return (base + (k.astype(dtype) / n_steps) * diff).astype(x.dtype)

    def value(k):
      out = f(*replace_arg(args, argnums, point(k)), **kwargs)
      if jnp.shape(out) != ():
        raise ValueError(f"{name}: f must return a scalar for one input; it returned shape {jnp.shape(out)}.")
      return jnp.asarray(out).astype(dtype)

    def term(k):
      g = _gradient(grad_fn, stochastic, key, args, argnums, kwargs, point(k), k, name).astype(dtype)
      sq = g * g
      total = jnp.sum(sq)
      share = jnp.where(total > 0, sq / jnp.where(total > 0, total, 1.0), 0.0)
      return share * (value(k + 1) - value(k))

    return _sum_over(term, n_steps, batch_size, cpu_rewrite).astype(x.dtype)

  return wrap(idgi_fn, grad_fn, name, is_stochastic_result=stochastic, adds_key=False)
