"""The explanation methods of the CLI, each built from the library's transforms.

Every method becomes ``explain(key, x, target) -> map`` for ONE input ``x``
(no batch axis): the paper's Grad, SG, AG, their GI / IG / NG combinations
(prefixes S- and A-, Section 5.1.3), composed as in the README's table, e.g.
A-IG is ``integrated_gradients(adapt_smooth(jax.grad(f)))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax

import adaptgrad_jax as ag
from adaptgrad_jax.cli._errors import UsageError

# name -> (label as in the paper, what it costs in gradient evaluations)
METHODS: dict[str, tuple[str, str]] = {
  "grad": ("Grad", "1"),
  "smoothgrad": ("SG", "n"),
  "adaptgrad": ("AG", "n"),
  "gi": ("GI", "1"),
  "s-gi": ("S-GI", "n"),
  "a-gi": ("A-GI", "n"),
  "ig": ("IG", "ig_steps"),
  "s-ig": ("S-IG", "ig_steps * n"),
  "a-ig": ("A-IG", "ig_steps * n"),
  "ng": ("NG", "ng_samples"),
  "s-ng": ("S-NG", "ng_samples * n"),
  "a-ng": ("A-NG", "ng_samples * n"),
}
ALIASES = {"sg": "smoothgrad", "ag": "adaptgrad", "gradient": "grad", "gxi": "gi"}


def _transforms():
  """integrated_gradients, gradient_x_input, noise_grad (top level once re-exported)."""
  try:
    from adaptgrad_jax import gradient_x_input, integrated_gradients, noise_grad  # pylint: disable=import-outside-toplevel
  except ImportError:
    from adaptgrad_jax import gradient_x_input, integrated_gradients, noise_grad  # pylint: disable=import-outside-toplevel
  return integrated_gradients, gradient_x_input, noise_grad


def canonical(method: str) -> str:
  name = ALIASES.get(method.lower(), method.lower())
  if name not in METHODS:
    raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)} (or sg, ag)")
  return name


def label(method: str) -> str:
  return METHODS[canonical(method)][0]


@dataclasses.dataclass(frozen=True)
class Options:
  """The method options of the command line (paper defaults)."""

  c: float = 0.95
  n: int = 50
  alpha: float = 0.2
  sigma_rule: str = "two_sided"
  batch_size: Optional[int] = None
  baseline: str = "black"
  ig_steps: int = 50
  ng_samples: int = 10
  ng_sigma: float = 0.2


def build(
  method: str,
  f: Callable[..., Any],
  bounds: Any,
  options: Options,
  *,
  param_fn: Optional[tuple[Callable[..., Any], Any]] = None,
) -> Callable[[Any, Any, Any], Any]:
  """``explain(key, x, target)`` for a method name.

  Args:
    method: a name of :data:`METHODS` (or an alias).
    f: ``f(x, target)``, the scalar to explain for one input.
    bounds: the input's ``(x_min, x_max)``.
    options: the hyperparameters.
    param_fn: ``(f_params, params)`` with ``f_params(x, params, target)``,
      needed by the NoiseGrad methods.
  """
  method = canonical(method)
  integrated_gradients, gradient_x_input, noise_grad = _transforms()
  o = options
  bs = o.batch_size

  def sg(g):
    return ag.smooth_grad(g, o.alpha, o.n, bounds=bounds, batch_size=bs)

  def adapt(g):
    return ag.adapt_smooth(g, o.c, o.n, bounds=bounds, sigma_rule=o.sigma_rule, batch_size=bs)

  def ig(g):
    return integrated_gradients(g, o.ig_steps, baseline=o.baseline, bounds=bounds, batch_size=bs)

  g = jax.grad(f)
  if method == "grad":
    return lambda key, x, t: g(x, t)
  if method == "smoothgrad":
    return sg(g)
  if method == "adaptgrad":
    return adapt(g)
  if method == "gi":
    gi = gradient_x_input(g)
    return lambda key, x, t: gi(x, t)
  if method == "s-gi":
    return gradient_x_input(sg(g))
  if method == "a-gi":
    return gradient_x_input(adapt(g))
  if method == "ig":
    plain = ig(g)
    return lambda key, x, t: plain(x, t)
  if method == "s-ig":
    return ig(sg(g))
  if method == "a-ig":
    return ig(adapt(g))

  # NoiseGrad family: the parameters are an argument.
  if param_fn is None:
    raise UsageError(f"--method {method} perturbs the model's parameters and needs a Flax model")
  f_params, params = param_fn
  gp = jax.grad(f_params)  # gradient with respect to x, f_params(x, params, t)

  def ng(inner):
    return noise_grad(inner, o.ng_samples, sigma=o.ng_sigma, argnums=1)

  if method == "ng":
    explain = ng(gp)
  elif method == "s-ng":
    explain = ng(sg(gp))
  else:
    explain = ng(adapt(gp))
  return lambda key, x, t: explain(key, x, params, t)


def cost(method: str, options: Options) -> int:
  """Gradient evaluations per input."""
  o = options
  return {
    "1": 1, "n": o.n, "ig_steps": o.ig_steps, "ig_steps * n": o.ig_steps * o.n,
    "ng_samples": o.ng_samples, "ng_samples * n": o.ng_samples * o.n,
  }[METHODS[canonical(method)][1]]
