"""Robustness of explanations to input perturbations, and infidelity.

Every metric here scores ONE example and takes the explainer itself,
``explain_fn(key, x, *args) -> map``, so that SmoothGrad, AdaptGrad and their
combinations are evaluated as the stochastic transforms they are (each call
gets a fresh key). Wrap a deterministic explainer ``g(x, *args)`` as
``lambda key, x, *a: g(x, *a)``. Batch with ``jax.vmap`` over keys, inputs
and (through ``*args``) targets; the functions are jit- and vmap-able.

Keys are used in a fixed, documented way so that results can be reproduced
(and compared with Captum or Quantus fed the same noise): ``key`` is split
into ``k_noise, k_explain = jax.random.split(key)``; perturbation ``s``
(``s = 0 .. num_samples - 1``) is drawn with
``jax.random.split(k_noise, num_samples)[s]``, and the explanations use
``jax.random.split(k_explain, num_samples + 1)``: entry 0 for ``x``, entry
``s + 1`` for perturbation ``s``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common

ExplainFn = Callable[..., jax.Array]
PerturbFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class UniformNoise:
  """``perturb_fn(key, x) = x + u``, u uniform in [-low, low], or in [low, high].

  This is Quantus' ``batch_uniform_noise``: with ``high=None`` the noise is
  symmetric, U(-low, low); with ``high`` it is U(low, high) (positive only,
  Quantus' default for the relative stabilities). Captum's
  ``default_perturb_func`` is ``UniformNoise(perturb_radius)``.
  """
  low: float
  high: float | None = None

  def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
    lo, hi = (-self.low, self.low) if self.high is None else (self.low, self.high)
    return x + jax.random.uniform(key, jnp.shape(x), jnp.result_type(x), lo, hi)


@dataclasses.dataclass(frozen=True)
class GaussianNoise:
  """``perturb_fn(key, x) = x + mean + std * N(0, 1)`` (Quantus' ``batch_gaussian_noise``)."""
  std: float
  mean: float = 0.0

  def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
    noise = jax.random.normal(key, jnp.shape(x), jnp.result_type(x))
    return x + self.mean + self.std * noise


def uniform_noise(low: float, high: float | None = None) -> UniformNoise:
  """A ``perturb_fn`` adding U(-low, low) noise, or U(low, high) with ``high``."""
  if high is None and not float(low) > 0:
    raise ValueError(f"low={low!r} is the noise radius and must be > 0.")
  if high is not None and not float(high) > float(low):
    raise ValueError(f"high={high!r} must be greater than low={low!r}.")
  return UniformNoise(float(low), None if high is None else float(high))


def gaussian_noise(std: float, mean: float = 0.0) -> GaussianNoise:
  """A ``perturb_fn`` adding N(mean, std^2) noise."""
  if not float(std) > 0:
    raise ValueError(f"std={std!r} must be > 0 (the noise scale).")
  return GaussianNoise(float(std), float(mean))


def _check_common(key, explain_fn, x, args, num_samples, perturb_fn, name="num_samples"):
  if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
    raise ValueError(f"{name}={num_samples!r} must be a positive integer.")
  if perturb_fn is not None and not callable(perturb_fn):
    raise TypeError(f"perturb_fn must be a function perturb_fn(key, x) -> x'; got "
                    f"{type(perturb_fn).__name__}.")
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or
          (key.dtype == jnp.uint32 and key.shape == (2,))):
    raise TypeError(
        f"key must be a PRNG key (jax.random.key(0)); got an array of dtype "
        f"{key.dtype} and shape {key.shape}.")
  x = _common.as_float_array(x, "x")
  _common.check_finite(x, "x")
  out = _common.check_explain_fn(explain_fn, x, args, key=key)
  per_pixel = _common.check_map_shape(out, x.shape, "explain_fn")
  return key, x, per_pixel


def _explain_perturbed(explain_fn, perturb_fn, key, x, args, num_samples,
                       batch_size):
  """(a, xs, as_): the map at x, the perturbed inputs and their maps."""
  k_noise, k_explain = jax.random.split(key)
  ekeys = jax.random.split(k_explain, num_samples + 1)
  nkeys = jax.random.split(k_noise, num_samples)
  a = explain_fn(ekeys[0], x, *args)

  def one(k_n, k_e):
    xp = perturb_fn(k_n, x)
    return xp, explain_fn(k_e, xp, *args)

  if batch_size is None:
    xs, maps = jax.vmap(one)(nkeys, ekeys[1:])
  else:
    xs, maps = jax.lax.map(lambda t: one(*t), (nkeys, ekeys[1:]),
                           batch_size=batch_size)
  return a, xs, maps


def _flat_norm(v: jax.Array) -> jax.Array:
  """Frobenius (L2) norm of each sample, over every axis but the first."""
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def _all_finite(*arrays) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


# ---------------------------------------------------------------- sensitivity
@functools.partial(jax.jit, static_argnames=(
    "explain_fn", "perturb_fn", "num_samples", "reduce", "batch_size"))
def _sensitivity(key, x, args, *, explain_fn, perturb_fn, num_samples, reduce,
                 batch_size):
  a, _, maps = _explain_perturbed(explain_fn, perturb_fn, key, x, args,
                                  num_samples, batch_size)
  num = _flat_norm(maps - a[None])
  den = jnp.sqrt(jnp.sum(jnp.square(a)))
  den = jnp.where(den == 0, jnp.ones_like(den), den)  # Captum: an all-zero map
  s = num / den
  score = jnp.max(s) if reduce == "max" else jnp.mean(s)
  return score, _all_finite(a, maps)


def sensitivity(
    key: jax.Array,
    explain_fn: ExplainFn,
    x: ArrayLike,
    *args: Any,
    num_samples: int = 10,
    radius: float = 0.02,
    reduce: str = "max",
    perturb_fn: PerturbFn | None = None,
    batch_size: int | None = None,
) -> jax.Array:
  r"""Max- or Avg-Sensitivity of an explainer at one input (Yeh et al. 2019).

  .. math:: \mathrm{SENS}(x) = \operatorname{max\ or\ mean}_{s}
     \frac{\lVert \Phi(x + \delta_s) - \Phi(x) \rVert_F}{\lVert \Phi(x) \rVert_F},
     \quad \delta_s \sim U(-r, r)^d,

  over ``num_samples`` perturbations, where :math:`\Phi` is ``explain_fn``.
  LOWER is more robust. This is Captum's ``sensitivity_max`` (relative to
  the map's norm, Frobenius norm, uniform noise of radius 0.02, 10 samples:
  its defaults) and, with ``reduce="mean"``, Quantus' ``AvgSensitivity``
  (Quantus' defaults are 200 samples of U(-0.2, 0.2):
  ``num_samples=200, radius=0.2``). An all-zero map is divided by 1, as in
  Captum (Quantus divides by 0 and returns inf or NaN); the result is never
  NaN for finite maps.

  Args:
    key: PRNG key, split as described in the module docstring.
    explain_fn: ``explain_fn(key, x, *args) -> map`` of ``x``'s shape (or
      without its channel axis).
    x: one input, without batch axis.
    *args: further arguments of ``explain_fn`` (parameters, target...).
    num_samples: perturbations drawn.
    radius: half-width of the uniform noise (ignored with ``perturb_fn``).
    reduce: ``"max"`` (Max-Sensitivity) or ``"mean"`` (Avg-Sensitivity).
    perturb_fn: ``perturb_fn(key, x) -> x'`` replacing the uniform noise,
      e.g. :func:`gaussian_noise`.
    batch_size: explain the perturbations in chunks of this size
      (``jax.lax.map``); None explains all at once.

  Returns:
    A non-negative scalar.

  Raises:
    TypeError: ``explain_fn`` cannot be called with a key first.
    ValueError: a map of the wrong shape, a non-finite input or map (outside
      jit), bad options.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import adaptgrad_jax as ag
    >>> from adaptgrad_jax.metrics import max_sensitivity
    >>> f = lambda x, w: jnp.tanh(x @ w)
    >>> w = jnp.array([1.0, -2.0, 0.5])
    >>> sg = ag.adapt_smooth(jax.grad(f), 0.95, 8, bounds=(0.0, 1.0))
    >>> s = max_sensitivity(jax.random.key(0), sg, jnp.full(3, 0.5), w)
    >>> bool(s >= 0)
    True

  References:
    Yeh et al., "On the (in)fidelity and sensitivity of explanations",
    NeurIPS 2019, Eq. 4 (SENS_MAX). Captum ``captum.metrics.sensitivity_max``;
    Quantus ``MaxSensitivity`` / ``AvgSensitivity`` (Hedström et al., JMLR
    2023).
  """
  _common.check_choice(reduce, "reduce", ("max", "mean"))
  if perturb_fn is None:
    perturb_fn = uniform_noise(radius)
  key, x, _ = _check_common(key, explain_fn, x, args, num_samples, perturb_fn)
  score, finite = _sensitivity(
      key, x, args, explain_fn=explain_fn, perturb_fn=perturb_fn,
      num_samples=int(num_samples), reduce=reduce, batch_size=batch_size)
  _common.check_result_finite(finite, "explain_fn")
  return score


def max_sensitivity(key, explain_fn, x, *args, **kwargs) -> jax.Array:
  """Max-Sensitivity: :func:`sensitivity` with ``reduce="max"`` (Captum's ``sensitivity_max``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import max_sensitivity
    >>> g = lambda key, x: 2.0 * x  # linear explainer: |dPhi| / |Phi| = |d| / |x|
    >>> s = max_sensitivity(jax.random.key(0), g, jnp.ones(4), radius=0.1)
    >>> bool(0.0 < s <= 0.1)
    True

  References:
    Yeh et al., NeurIPS 2019, Eq. 4. Captum ``sensitivity_max``.
  """
  return sensitivity(key, explain_fn, x, *args, reduce="max", **kwargs)


def avg_sensitivity(key, explain_fn, x, *args, **kwargs) -> jax.Array:
  """Avg-Sensitivity: :func:`sensitivity` with ``reduce="mean"`` (Quantus' ``AvgSensitivity``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import avg_sensitivity
    >>> g = lambda key, x: jnp.zeros_like(x)  # a constant explainer
    >>> float(avg_sensitivity(jax.random.key(0), g, jnp.ones(4)))
    0.0

  References:
    Yeh et al., NeurIPS 2019, Sec. 4 (average sensitivity). Quantus
    ``AvgSensitivity``.
  """
  return sensitivity(key, explain_fn, x, *args, reduce="mean", **kwargs)


# -------------------------------------------------------- local Lipschitz
def _normalise_by_max(a):
  m = jnp.max(jnp.abs(a))
  return a / jnp.where(m == 0, jnp.ones_like(m), m)


@functools.partial(jax.jit, static_argnames=(
    "explain_fn", "perturb_fn", "num_samples", "normalise", "batch_size"))
def _lipschitz(key, x, args, *, explain_fn, perturb_fn, num_samples, normalise,
               batch_size):
  a, xs, maps = _explain_perturbed(explain_fn, perturb_fn, key, x, args,
                                   num_samples, batch_size)
  finite = _all_finite(a, maps)
  if normalise:
    a = _normalise_by_max(a)
    maps = jax.vmap(_normalise_by_max)(maps)
  num = _flat_norm(maps - a[None])
  den = _flat_norm(xs - x[None]) + 1e-10
  return jnp.max(num / den), finite


def local_lipschitz_estimate(
    key: jax.Array,
    explain_fn: ExplainFn,
    x: ArrayLike,
    *args: Any,
    num_samples: int = 200,
    std: float = 0.1,
    normalise: bool = True,
    perturb_fn: PerturbFn | None = None,
    batch_size: int | None = None,
) -> jax.Array:
  r"""Local Lipschitz Estimate of an explainer at one input.

  .. math:: \hat L(x) = \max_s \frac{\lVert \Phi(x_s) - \Phi(x) \rVert_2}
     {\lVert x_s - x \rVert_2 + 10^{-10}}, \quad x_s = x + \mathcal N(0, \sigma^2),

  over ``num_samples`` Gaussian perturbations. LOWER is more robust.
  Defaults are Quantus' ``LocalLipschitzEstimate``: 200 samples,
  sigma = 0.1, maps normalised by their maximum magnitude. Quantus
  normalises a whole batch by one maximum (its ``normalise_by_max`` over all
  axes); here each map is divided by its own maximum, which equals Quantus
  on a batch of one. An all-zero map is left as it is (as in Quantus).
  Alvarez-Melis and Jaakkola maximise over a ball by optimisation; like
  Quantus we maximise over random samples.

  Args:
    key: PRNG key (see the module docstring).
    explain_fn: ``explain_fn(key, x, *args) -> map``.
    x: one input.
    *args: further arguments of ``explain_fn``.
    num_samples: perturbations drawn.
    std: standard deviation of the Gaussian noise (ignored with ``perturb_fn``).
    normalise: divide every map by its maximum magnitude first.
    perturb_fn: ``perturb_fn(key, x) -> x'`` replacing the Gaussian noise.
    batch_size: explain the perturbations in chunks (``jax.lax.map``).

  Returns:
    A non-negative scalar.

  Raises:
    TypeError, ValueError: as :func:`sensitivity`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import local_lipschitz_estimate
    >>> g = lambda key, x: 3.0 * x  # Lipschitz constant 3
    >>> L = local_lipschitz_estimate(jax.random.key(0), g, jnp.ones(5),
    ...                              normalise=False)
    >>> round(float(L), 4)
    3.0

  References:
    Alvarez-Melis and Jaakkola, "On the robustness of interpretability
    methods", ICML WHI 2018, Eq. 1; "Towards robust interpretability with
    self-explaining neural networks", NeurIPS 2018. Quantus
    ``LocalLipschitzEstimate``.
  """
  if perturb_fn is None:
    perturb_fn = gaussian_noise(std)
  key, x, _ = _check_common(key, explain_fn, x, args, num_samples, perturb_fn)
  score, finite = _lipschitz(
      key, x, args, explain_fn=explain_fn, perturb_fn=perturb_fn,
      num_samples=int(num_samples), normalise=bool(normalise),
      batch_size=batch_size)
  _common.check_result_finite(finite, "explain_fn")
  return score


# ------------------------------------------------------- relative stability
def _relative_change(a, b, eps):
  """``(a - b) / (a + (a == 0) eps)`` per element (Agarwal et al., Quantus)."""
  return (a - b) / (a + (a == 0) * eps)


@functools.partial(jax.jit, static_argnames=(
    "explain_fn", "predict_fn", "perturb_fn", "num_samples", "output",
    "exclude_changed", "batch_size"))
def _relative_stability(key, x, eps, args, *, explain_fn, predict_fn,
                        perturb_fn, num_samples, output, exclude_changed,
                        batch_size):
  a, xs, maps = _explain_perturbed(explain_fn, perturb_fn, key, x, args,
                                   num_samples, batch_size)
  num = _flat_norm(jax.vmap(lambda m: _relative_change(a, m, eps))(maps))
  h = predict_fn(jnp.concatenate([x[None], xs]))
  if output:
    den = _flat_norm(h[:1] - h[1:])
  else:
    den = _flat_norm(jax.vmap(lambda v: _relative_change(x, v, eps))(xs))
  den = den + (den == 0) * eps
  ratio = num / den
  if exclude_changed:
    labels = jnp.argmax(h, axis=1)
    kept = labels[1:] == labels[0]
    ratio = jnp.where(kept, ratio, -jnp.inf)
    score = jnp.max(ratio)
    score = jnp.where(jnp.any(kept), score, jnp.nan)
  else:
    score = jnp.max(ratio)
  return score, _all_finite(a, maps)


def _relative_stability_api(key, explain_fn, predict_fn, x, args, *, output,
                            num_samples, low, high, eps, perturb_fn,
                            exclude_changed_predictions, batch_size):
  if perturb_fn is None:
    perturb_fn = uniform_noise(low, high)
  key, x, _ = _check_common(key, explain_fn, x, args, num_samples, perturb_fn)
  _common.num_outputs(predict_fn, x)
  if not float(eps) > 0:
    raise ValueError(f"eps={eps!r} must be > 0 (Quantus' eps_min is 1e-6).")
  score, finite = _relative_stability(
      key, x, jnp.asarray(eps, x.dtype), args, explain_fn=explain_fn,
      predict_fn=predict_fn, perturb_fn=perturb_fn,
      num_samples=int(num_samples), output=output,
      exclude_changed=bool(exclude_changed_predictions), batch_size=batch_size)
  _common.check_result_finite(finite, "explain_fn")
  return score


_RELATIVE_ARGS = """
  Args:
    key: PRNG key (see the module docstring).
    explain_fn: ``explain_fn(key, x, *args) -> map``.
    predict_fn: batch of inputs -> scores (B, K): logits for ROS (Agarwal
      et al.'s h(x)); its argmax decides which perturbations keep the
      prediction.
    x: one input.
    *args: further arguments of ``explain_fn``.
    num_samples: perturbations drawn (Quantus: 200).
    low, high: the uniform noise U(low, high) (Quantus' defaults 0.02, 0.2:
      a positive shift); ``high=None`` gives U(-low, low).
    eps: the guard against division by zero (Quantus' ``eps_min``).
    perturb_fn: ``perturb_fn(key, x) -> x'`` replacing the uniform noise.
    exclude_changed_predictions: take the maximum only over perturbations
      that keep the predicted class (the paper's definition).
    batch_size: explain the perturbations in chunks (``jax.lax.map``).

  Returns:
    A non-negative scalar; NaN only if every perturbation changes the
    predicted class (the maximum then runs over an empty set). Quantus
    returns NaN as soon as ONE perturbation changes it (``np.max`` over
    NaN-marked samples); here those samples are skipped.

  Raises:
    TypeError, ValueError: as :func:`sensitivity`, and for a ``predict_fn``
      that does not return (B, K) scores.
"""


def relative_input_stability(
    key: jax.Array,
    explain_fn: ExplainFn,
    predict_fn: Callable[[jax.Array], jax.Array],
    x: ArrayLike,
    *args: Any,
    num_samples: int = 200,
    low: float = 0.02,
    high: float | None = 0.2,
    eps: float = 1e-6,
    perturb_fn: PerturbFn | None = None,
    exclude_changed_predictions: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
  return _relative_stability_api(
      key, explain_fn, predict_fn, x, args, output=False,
      num_samples=num_samples, low=low, high=high, eps=eps,
      perturb_fn=perturb_fn,
      exclude_changed_predictions=exclude_changed_predictions,
      batch_size=batch_size)


def relative_output_stability(
    key: jax.Array,
    explain_fn: ExplainFn,
    predict_fn: Callable[[jax.Array], jax.Array],
    x: ArrayLike,
    *args: Any,
    num_samples: int = 200,
    low: float = 0.02,
    high: float | None = 0.2,
    eps: float = 1e-6,
    perturb_fn: PerturbFn | None = None,
    exclude_changed_predictions: bool = True,
    batch_size: int | None = None,
) -> jax.Array:
  return _relative_stability_api(
      key, explain_fn, predict_fn, x, args, output=True,
      num_samples=num_samples, low=low, high=high, eps=eps,
      perturb_fn=perturb_fn,
      exclude_changed_predictions=exclude_changed_predictions,
      batch_size=batch_size)


relative_input_stability.__doc__ = r"""Relative Input Stability (RIS) of an explainer at one input.

  .. math:: \mathrm{RIS}(x) = \max_{x'} \frac{\lVert (e_x - e_{x'}) / e_x \rVert_2}
     {\max(\lVert (x - x') / x \rVert_2, \epsilon)},

  with element-wise relative changes (a zero denominator element replaced by
  ``eps``, as Quantus does), over perturbations x' that keep the predicted
  class. LOWER is more stable. Defaults are Quantus'
  ``RelativeInputStability``.
""" + _RELATIVE_ARGS + """
  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import relative_input_stability
    >>> predict = lambda b: jnp.stack([b.sum(1), -b.sum(1)], axis=1)
    >>> g = lambda key, x: x  # the map moves exactly as the input
    >>> r = relative_input_stability(jax.random.key(0), g, predict, jnp.ones(4))
    >>> round(float(r), 4)
    1.0

  References:
    Agarwal et al., "Rethinking stability for attribution-based
    explanations", ICLR PAIR2Struct workshop 2022, Eq. 2. Quantus
    ``RelativeInputStability``.
"""

relative_output_stability.__doc__ = r"""Relative Output Stability (ROS) of an explainer at one input.

  .. math:: \mathrm{ROS}(x) = \max_{x'} \frac{\lVert (e_x - e_{x'}) / e_x \rVert_2}
     {\max(\lVert h(x) - h(x') \rVert_2, \epsilon)},

  where h is ``predict_fn`` (logits in the paper), over perturbations x'
  that keep the predicted class. LOWER is more stable. Defaults are Quantus'
  ``RelativeOutputStability``.
""" + _RELATIVE_ARGS + """
  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import relative_output_stability
    >>> predict = lambda b: jnp.stack([b.sum(1), -b.sum(1)], axis=1)
    >>> g = lambda key, x: jnp.ones_like(x)  # a constant map never moves
    >>> float(relative_output_stability(jax.random.key(0), g, predict, jnp.ones(4)))
    0.0

  References:
    Agarwal et al., ICLR PAIR2Struct workshop 2022, Eq. 5. Quantus
    ``RelativeOutputStability``.
"""


# ---------------------------------------------------------------- infidelity
@functools.partial(jax.jit, static_argnames=(
    "explain_fn", "predict_fn", "perturb_fn", "num_samples", "use_pred",
    "normalise", "per_pixel", "batch_size"))
def _infidelity(key, x, target, args, *, explain_fn, predict_fn, perturb_fn,
                num_samples, use_pred, normalise, per_pixel, batch_size):
  k_noise, k_explain = jax.random.split(key)
  a = explain_fn(jax.random.split(k_explain, num_samples + 1)[0], x, *args)
  xs = jax.vmap(lambda k: perturb_fn(k, x))(jax.random.split(k_noise, num_samples))
  perturbation = x[None] - xs  # Captum's I, with x' = x - I
  a_full = a[..., None] if per_pixel else a
  dots = jnp.sum((perturbation * a_full[None]).reshape(num_samples, -1), axis=1)
  if batch_size is None:
    scores = predict_fn(jnp.concatenate([x[None], xs]))
  else:
    scores = jnp.concatenate([predict_fn(x[None]), jax.lax.map(
        lambda v: predict_fn(v[None])[0], xs, batch_size=batch_size)])
  if use_pred:
    target = jnp.argmax(scores[0])
  f = _common.take_target(scores, target)
  diffs = f[0] - f[1:]
  if normalise:
    s_aa = jnp.sum(dots * dots)
    s_ad = jnp.sum(dots * diffs)
    s_dd = jnp.sum(diffs * diffs)
    beta = s_ad / jnp.where(s_aa != 0, s_aa, jnp.ones_like(s_aa))
    value = (beta * beta * s_aa - 2 * beta * s_ad + s_dd) / num_samples
  else:
    value = jnp.sum(jnp.square(dots - diffs)) / num_samples
  return value, _all_finite(a)


def infidelity(
    key: jax.Array,
    explain_fn: ExplainFn,
    predict_fn: Callable[[jax.Array], jax.Array],
    x: ArrayLike,
    *args: Any,
    target: int | None = None,
    num_samples: int = 10,
    std: float = 0.003,
    normalise: bool = False,
    perturb_fn: PerturbFn | None = None,
    batch_size: int | None = None,
) -> jax.Array:
  r"""Infidelity of an explanation at one input (Yeh et al. 2019).

  .. math:: \mathrm{INFD}(\Phi, f, x) = \mathbb E_I\big[(I^\top \Phi(x)
     - (f(x) - f(x - I)))^2\big],

  estimated with ``num_samples`` perturbations: ``perturb_fn`` gives the
  perturbed input x' and I = x - x'. LOWER is more faithful. This is
  Captum's ``infidelity`` (10 samples; ``normalise=True`` is its
  ``normalize=True``, the optimal scaling beta of the attributions). Captum
  has no default perturbation; the default here is Gaussian noise
  N(0, 0.003^2), the one in Captum's documentation example. Quantus'
  ``Infidelity`` perturbs square patches by baseline replacement and is a
  different estimator of the same quantity.

  Args:
    key: PRNG key (see the module docstring; the map uses the first
      explanation key, the perturbations the noise keys).
    explain_fn: ``explain_fn(key, x, *args) -> map``, explained ONCE at x.
    predict_fn: batch of inputs -> scores (B, K).
    x: one input.
    *args: further arguments of ``explain_fn`` (pass the same target).
    target: the class whose score f is; default the predicted class.
    num_samples: perturbations drawn.
    std: standard deviation of the Gaussian perturbation.
    normalise: scale the attributions optimally first (Captum's
      ``normalize``).
    perturb_fn: ``perturb_fn(key, x) -> x'`` replacing the Gaussian noise.
    batch_size: evaluate ``predict_fn`` in chunks (``jax.lax.map``).

  Returns:
    A non-negative scalar.

  Raises:
    TypeError, ValueError: as :func:`sensitivity`; a ``target`` outside
      [0, K) (never clamped; inside jit or vmap such a target gives NaN).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import infidelity
    >>> w = jnp.array([1.0, -2.0, 3.0])
    >>> predict = lambda b: (b @ w)[:, None]  # linear: the gradient is exact
    >>> g = lambda key, x: w
    >>> round(float(infidelity(jax.random.key(0), g, predict, jnp.ones(3),
    ...                        target=0)), 10)
    0.0

  References:
    Yeh et al., "On the (in)fidelity and sensitivity of explanations",
    NeurIPS 2019, Def. 2.1. Captum ``captum.metrics.infidelity``.
  """
  if perturb_fn is None:
    perturb_fn = gaussian_noise(std)
  key, x, per_pixel = _check_common(key, explain_fn, x, args, num_samples,
                                    perturb_fn)
  k = _common.num_outputs(predict_fn, x)
  _common.check_target(target, k)
  use_pred = target is None
  target = jnp.asarray(0 if use_pred else target, jnp.int32)
  value, finite = _infidelity(
      key, x, target, args, explain_fn=explain_fn, predict_fn=predict_fn,
      perturb_fn=perturb_fn, num_samples=int(num_samples), use_pred=use_pred,
      normalise=bool(normalise), per_pixel=per_pixel, batch_size=batch_size)
  _common.check_result_finite(finite, "explain_fn")
  return value
