"""Noise scales: SmoothGrad's fixed sigma and AdaptGrad's per-element sigma (Eqs. 6, 12-14).

Notation of the paper (Zhou et al., Sections 3.2 and 4): an element ``x_i`` of
an input in the data domain ``[x_min, x_max]`` is perturbed by
``eps_i ~ N(0, sigma_i^2)``. The *inherent noise* ``A^i`` (Eq. 9) is the
probability that ``x_i + eps_i`` leaves the domain. AdaptGrad chooses
``sigma_i`` from ``d_i = min(|x_i - x_min|, |x_i - x_max|)`` and a confidence
level ``c`` so that this probability stays small.
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax.scipy import special

from adaptgrad_jax._bounds import broadcast_bounds, distance_to_bounds, require_bounds, validate_bounds
from adaptgrad_jax._pytree import compute_dtype
from adaptgrad_jax._typing import Bounds, PyTree
from adaptgrad_jax._wrapping import validate_choice, validate_number

SigmaRule = Literal["two_sided", "eq13", "exact"]
SIGMA_RULES = ("two_sided", "eq13", "exact")


def validate_confidence(c, name: str = "c") -> float:
  """Checks a confidence level at build time (a number in (0, 1), not a string)."""
  if isinstance(c, jax.core.Tracer):
    return c
  value = validate_number(c, name, "a confidence level in (0, 1); the paper uses 0.95.")
  if not 0.0 < value < 1.0:
    raise ValueError(
        f"{name}={c!r} is a confidence level and must lie in (0, 1); the paper"
        " uses 0.95 (0.99, 0.995 and 0.999 give less noise per sample)."
    )
  return value


def check_confidence_in_dtype(c, rule: str, dtype, lower=None, upper=None, name: str = "c") -> None:
  """Raises if a concrete ``c`` rounds to 0 or 1, or makes sigma overflow, in the compute dtype ``dtype``.

  ``c`` is validated in float64 when the transform is built, but sigma is
  computed in the input's compute dtype (float32 for float32 inputs), which
  the trace reveals: there ``c = 1 - 1e-9`` is 1 (erfinv(1) = inf, so sigma =
  0 everywhere: the plain gradient, silently), and ``c = 1e-39`` is 0 or
  subnormal (sigma = d / 0: NaN maps). With concrete bounds, the largest
  sigma, about ``(x_max - x_min) / (sqrt(2) erfinv(c))``, must also stay
  below ``finfo.max / 64`` so that the noise is finite. Traced values pass.
  """
  if isinstance(c, jax.core.Tracer):
    return
  dtype = np.dtype(compute_dtype(dtype))
  info = np.finfo(dtype)
  c_dt = np.asarray(c, dtype)
  level = c_dt if rule != "eq13" else (dtype.type(1) + c_dt) / dtype.type(2)
  largest = float(np.nextafter(dtype.type(1), dtype.type(0))) if rule != "eq13" else 1.0 - float(info.eps)
  fix = (f"pass c in [{2 * float(info.tiny):.3g}, {largest:.9g}] for a {dtype} computation, or a"
         " float64 input (jax_enable_x64); the paper uses 0.95")
  if not level < 1:
    raise ValueError(
        f"{name}={c!r} is 1 in {dtype}, the dtype sigma is computed in for this"
        f" input{' (as (1 + c) / 2, sigma_rule=' + repr(rule) + ')' if rule == 'eq13' else ''}:"
        f" sigma would be 0 everywhere, the plain gradient; {fix}."
    )
  if not c_dt >= 2 * info.tiny:
    raise ValueError(
        f"{name}={c!r} vanishes in {dtype}, the dtype sigma is computed in for"
        f" this input (below twice its smallest normal number): sigma = d /"
        f" erfinv(c) would divide by 0; {fix}."
    )
  if lower is None or upper is None or isinstance(lower, jax.core.Tracer) or isinstance(upper, jax.core.Tracer):
    return
  try:
    span = float(np.max(np.asarray(upper, np.float64) - np.asarray(lower, np.float64)))
  except (TypeError, ValueError):
    return
  k = float(np.sqrt(2.0) * scipy.special.erfinv(np.float64(level)))  # NumPy, not traced
  limit = float(info.max) / 64
  if k > 0 and span / k > limit:
    raise ValueError(
        f"{name}={c!r} makes sigma overflow {dtype}, the dtype sigma is computed"
        f" in for this input: sigma reaches (x_max - x_min) / (sqrt(2) erfinv(c))"
        f" = {span / k:.3g}, above {limit:.3g} (finfo.max / 64), and the noise"
        f" would be infinite; use a larger c (the paper uses 0.95) or a float64"
        " input."
    )


def validate_rule(rule) -> str:
  return validate_choice(rule, "sigma_rule", SIGMA_RULES, "See adaptgrad_jax.adaptive_sigma.")


_normal_tail = jax.scipy.stats.norm.sf  # P(N(0, 1) > z), accurate in the far tail


def _prob_inside(a: jax.Array, b: jax.Array, sigma: jax.Array) -> jax.Array:
  """``P(-a <= eps <= b)`` for ``eps ~ N(0, sigma^2)``, a, b >= 0, sigma > 0."""
  return 1.0 - _normal_tail(a / sigma) - _normal_tail(b / sigma)


@jax.custom_jvp
def _exact_sigma(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
  """Solves ``P(-a <= eps <= b) = c`` for sigma, elementwise (Eq. 14).

  ``a`` and ``b`` are the distances to the lower and upper bound. The
  probability falls monotonically in sigma, and the root lies between the
  two symmetric solutions ``min(a, b) / k`` and ``max(a, b) / k`` with
  ``k = sqrt(2) erfinv(c)`` (the symmetric intervals of half-width min(a, b)
  and max(a, b) lie inside and around ``[-a, b]``), so a fixed number of
  bisection steps in log-sigma finds it to full precision, with no
  data-dependent control flow. An element on a bound (``min(a, b) = 0``) gets
  ``sigma = 0``.
  """
  k = np.sqrt(2.0) * special.erfinv(c)
  near, far = jnp.minimum(a, b), jnp.maximum(a, b)
  on_bound = near <= 0
  safe_near = jnp.where(on_bound, 1.0, near)
  safe_far = jnp.where(on_bound, 1.0, far)
  log_lo = jnp.log(safe_near / k)
  log_hi = jnp.log(safe_far / k)
  steps = 64 if a.dtype == jnp.float64 else 40

  def bisect(_, interval):
    lo, hi = interval
    mid = 0.5 * (lo + hi)
    too_small = _prob_inside(safe_near, safe_far, jnp.exp(mid)) > c
    return jnp.where(too_small, mid, lo), jnp.where(too_small, hi, mid)

  log_lo, log_hi = jax.lax.fori_loop(0, steps, bisect, (log_lo, log_hi))
  return jnp.where(on_bound, 0.0, jnp.exp(0.5 * (log_lo + log_hi))).astype(a.dtype)


@_exact_sigma.defjvp
def _exact_sigma_jvp(primals, tangents):
  # Implicit function theorem on F(sigma, a, b) = P(-a <= eps <= b) - c = 0.
  a, b, c = primals
  da, db, _ = tangents
  sigma = _exact_sigma(a, b, c)
  safe = jnp.where(sigma > 0, sigma, 1.0)
  pa = jnp.exp(-0.5 * (a / safe) ** 2)
  pb = jnp.exp(-0.5 * (b / safe) ** 2)
  denom = pa * a + pb * b
  ratio = safe / jnp.where(denom > 0, denom, 1.0)
  dsigma = jnp.where(sigma > 0, ratio * (pa * da + pb * db), 0.0)
  return sigma, dsigma.astype(sigma.dtype)


def _leaf_adaptive_sigma(x, lower, upper, c, rule):
  x = jnp.asarray(x)
  dtype = compute_dtype(x.dtype)
  xc = x.astype(dtype)
  check_confidence_in_dtype(c, rule, dtype, lower, upper)
  lower = jnp.broadcast_to(jnp.asarray(lower, dtype), xc.shape)
  upper = jnp.broadcast_to(jnp.asarray(upper, dtype), xc.shape)
  c = jnp.asarray(c, dtype)
  if rule == "exact":
    inside = (xc >= lower) & (xc <= upper)
    a = jnp.where(inside, xc - lower, 0.0)
    b = jnp.where(inside, upper - xc, 0.0)
    sigma = _exact_sigma(a, b, c)
  else:
    level = c if rule == "two_sided" else (1.0 + c) / 2.0
    sigma = distance_to_bounds(xc, lower, upper) / (
        np.sqrt(2.0) * special.erfinv(level)
    )
  return sigma.astype(x.dtype)


def adaptive_sigma(
    x: PyTree,
    c: float = 0.95,
    *,
    bounds: Bounds,
    rule: SigmaRule = "two_sided",
) -> PyTree:
  r"""AdaptGrad's per-element noise scale ``sigma_i`` (Eqs. 12-14).

  With ``d_i = min(|x_i - x_min|, |x_i - x_max|)``, the distance from ``x_i``
  to the nearer bound:

  * ``"two_sided"`` (default): ``sigma_i = d_i / (sqrt(2) erfinv(c))``. The
    noisy value stays in the symmetric interval ``x_i +/- d_i``, and so inside
    the data domain, with probability exactly ``c``: the statement of Section
    4 ("within the confidence interval at a confidence level of c"), and what
    the authors' released code computes.
  * ``"eq13"``: ``sigma_i = d_i / (sqrt(2) erfinv((1 + c) / 2))``, Eq. 13 as
    printed. ``(1 + c) / 2`` is the quantile level of the normal CDF
    (``Phi^-1((1 + c) / 2) = sqrt(2) erfinv(c)``); inside ``erfinv`` it makes
    ``P(|eps_i| <= d_i) = (1 + c) / 2``, so the probability of leaving
    ``x_i +/- d_i`` is ``(1 - c) / 2``, half of what Section 4 asks for: a
    smaller sigma than intended (0.874x at c = 0.95).
  * ``"exact"``: the sigma solving Eq. 14 with both edges,
    ``P(x_min <= x_i + eps_i <= x_max) = c`` exactly; Eq. 14 has no closed
    form, so a vectorised bisection in log-sigma solves it (differentiable
    through the implicit function theorem).

  For the same ``c``: eq13 < two_sided <= exact. Elements on a bound get
  ``sigma = 0`` (no noise; finite everywhere), and so do elements *outside*
  the bounds: their distance to the wrong edge is never used. Use
  :func:`check_bounds` to make such inputs an error.

  Args:
    x: the input, an array or a pytree of arrays.
    c: the confidence level in (0, 1); the paper uses 0.95.
    bounds: ``(x_min, x_max)``; each a scalar, an array broadcastable to ``x``
      (e.g. per channel, shape ``(C,)`` for NHWC) or a pytree like ``x``.
    rule: ``"two_sided"``, ``"eq13"`` or ``"exact"``.

  Returns:
    sigma with the structure, shapes and dtypes of ``x`` (computed in at
    least float32).

  Raises:
    ValueError: if c is not in (0, 1), the rule is unknown or lower >= upper;
      if c rounds to 0 or 1 in the compute dtype (float32 holds no c closer
      to 1 than 1 - 6e-8), or makes sigma overflow it; if a bound does not
      broadcast to ``x`` (e.g. per-channel bounds for a channels-first input).

  Example:
    >>> import adaptgrad_jax as ag
    >>> sigma = ag.adaptive_sigma(jnp.array([0.0, 0.25, 0.5]), 0.95, bounds=(0.0, 1.0))
    >>> [round(float(s), 4) for s in sigma]
    [0.0, 0.1276, 0.2551]

  References:
    Zhou et al., "Rethinking the Principle of Gradient Smooth Methods in Model
    Explanation" (AdaptGrad), NeurIPS 2025, Eqs. 12-14.
  """
  c = validate_confidence(c)
  rule = validate_rule(rule)
  lower, upper = broadcast_bounds(x, require_bounds(bounds, "adaptive_sigma"))
  return jax.tree.map(
      lambda leaf, lo, hi: _leaf_adaptive_sigma(leaf, lo, hi, c, rule),
      x, lower, upper,
  )


def smoothgrad_sigma(alpha: float = 0.2, *, bounds: Bounds) -> PyTree:
  """SmoothGrad's noise scale ``sigma = alpha * (x_max - x_min)`` (Eq. 6).

  Args:
    alpha: the noise level; Smilkov et al. recommend 0.2 (10% to 20%).
    bounds: ``(x_min, x_max)``; scalars, arrays (e.g. per channel) or pytrees.

  Returns:
    ``alpha * (upper - lower)``, with the structure of the bounds.

  Example:
    >>> import adaptgrad_jax as ag
    >>> round(float(ag.smoothgrad_sigma(0.2, bounds=(-2.12, 2.64))), 6)
    0.952

  References:
    Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017;
    Zhou et al. (AdaptGrad), NeurIPS 2025, Eq. 6.
  """
  alpha = validate_alpha(alpha)
  lower, upper = validate_bounds(bounds)
  return jax.tree.map(
      lambda lo, hi: alpha * (jnp.asarray(hi) - jnp.asarray(lo)), lower, upper
  )


def validate_sigma(sigma: PyTree) -> PyTree:
  """Checks an absolute noise scale at build time: finite and >= 0 in every leaf (traced leaves pass)."""
  leaves = jax.tree.leaves(sigma)
  if not leaves:
    raise ValueError(f"sigma={sigma!r} holds no numbers; pass e.g. sigma=0.15.")
  for leaf in leaves:
    if isinstance(leaf, jax.core.Tracer):
      continue
    if isinstance(leaf, (str, bytes, bool, np.bool_)):
      raise TypeError(f"sigma={sigma!r} must be numbers (a standard deviation), not {type(leaf).__name__}.")
    value = np.asarray(leaf)
    if not np.issubdtype(value.dtype, np.number) or not np.all(np.isfinite(value)) or np.any(value < 0):
      raise ValueError(
          f"sigma={sigma!r} is a standard deviation and must be finite and >= 0"
          " everywhere; SmoothGrad's is 0.2 * (x_max - x_min)."
      )
  return sigma


def validate_alpha(alpha) -> float:
  value = validate_number(alpha, "alpha", "SmoothGrad uses 0.2.")
  if not (np.isfinite(value) and value >= 0):
    raise ValueError(
        f"alpha={alpha!r} is the noise level sigma / (x_max - x_min) and must be"
        " >= 0; SmoothGrad recommends 0.2."
    )
  return value
