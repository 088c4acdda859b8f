"""Explainers whose noise scale is an input, so one compiled program serves many rows.

``adapt_smooth`` and ``smooth_grad`` fix sigma's rule when they are built, so
each c, alpha or method is a new XLA program; on a CPU, compiling an ImageNet
model's gradient takes seconds each time. The sweeps and the demo instead
build the same Monte Carlo estimator (Eq. 11) with :func:`adaptgrad_jax.gaussian_smooth`
on the pair ``(x, s)``, where ``s`` carries the noise scale (or the weights of
AdaptGrad's and SmoothGrad's scales) as a traced input: Grad, SG and AG, or
AG at every c, then share one compiled program.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

import adaptgrad_jax as ag


def sigma_input_smoother(
  grad_fn: Callable[..., Any], n: int, *, batch_size: Optional[int] = None, per_sample: bool = False
) -> Callable[..., Any]:
  """``smoothed(key, x, sigma, t)``: ``mean_j grad_fn(x + sigma * z_j, t)`` with sigma an input.

  ``sigma`` broadcasts to ``x`` (per element for AdaptGrad, a scalar or per
  channel for SmoothGrad, 0 for the plain gradient). With ``per_sample`` it
  returns ``(mean, samples)`` with the n per-sample gradients stacked in front,
  so running means over the first N samples give maps for every N <= n.
  """

  def grad_pair(xs, t):
    g = grad_fn(xs[0], t)
    out = (g, jnp.zeros_like(xs[1]))
    return (out, g) if per_sample else out

  smoothed = ag.gaussian_smooth(
    grad_pair, lambda xs: (xs[1], jnp.zeros_like(xs[1])), n, batch_size=batch_size, has_aux=per_sample,
    name="sigma_input_smoother")

  def run(key, x, sigma, t):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape)
    result = smoothed(key, (x, sigma), t)
    if per_sample:
      (mean, _), samples = result
      return mean, samples
    return result[0]

  return run


def mixed_integrated_gradients(
  grad_fn: Callable[..., Any], n_steps: int, n: int, *, bounds, c: float = 0.95, alpha: float = 0.2,
  sigma_rule: str = "two_sided", baseline: str = "black", batch_size: Optional[int] = None,
) -> Callable[..., Any]:
  """``ig(key, x, w, t)``: IG, S-IG or A-IG chosen by the weights ``w = (w_ag, w_sg)``.

  At every path point ``p`` the inner smoother draws noise with scale
  ``w_ag * adaptive_sigma(p) + w_sg * alpha * (x_max - x_min)``: ``(0, 0)`` is
  plain IG, ``(0, 1)`` S-IG, ``(1, 0)`` A-IG, equal to
  ``integrated_gradients(adapt_smooth(grad_fn, c, n), n_steps)`` up to the noise
  drawn. The baseline is the lower (black) or upper (white) bound.
  """
  try:
    from adaptgrad_jax import integrated_gradients  # pylint: disable=import-outside-toplevel
  except ImportError:
    from adaptgrad_jax import integrated_gradients  # pylint: disable=import-outside-toplevel

  sg_sigma = ag.smoothgrad_sigma(alpha, bounds=bounds)

  def sigma_fn(xw):
    x, w = xw
    ag_sigma = ag.adaptive_sigma(x, c, bounds=bounds, rule=sigma_rule)
    return (w[0] * ag_sigma + w[1] * jnp.asarray(sg_sigma, x.dtype), jnp.zeros_like(w))

  def grad_pair(xw, t):
    return grad_fn(xw[0], t), jnp.zeros_like(xw[1])

  inner = ag.gaussian_smooth(grad_pair, sigma_fn, n, batch_size=None, name="mixed_smoother")
  lower, upper = bounds
  edge = lower if baseline == "black" else upper

  def start(xw):
    return (jnp.broadcast_to(jnp.asarray(edge, xw[0].dtype), xw[0].shape), xw[1])

  ig = integrated_gradients(inner, n_steps, baseline=start, batch_size=batch_size, stochastic=True)

  def run(key, x, w, t):
    return ig(key, (x, jnp.asarray(w, x.dtype)), t)[0]

  return run


def cumulative_means(samples: jax.Array, ns: list[int]) -> list[jax.Array]:
  """Means of the first N samples for each N in ``ns``."""
  sums = jnp.cumsum(samples, axis=0)
  return [sums[k - 1] / k for k in ns]
