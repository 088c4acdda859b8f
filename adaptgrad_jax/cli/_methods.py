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
  rtol: Optional[float] = None
  noise: str = "iid"


# The methods whose map is ONE Monte Carlo mean of the library (smooth_grad /
# adapt_smooth), so sampling to a tolerance (--rtol) applies to them.
RTOL_METHODS = ("smoothgrad", "adaptgrad")
# The methods that draw input noise (where --noise applies).
NOISE_METHODS = ("smoothgrad", "adaptgrad", "s-gi", "a-gi", "s-ig", "a-ig", "s-ng", "a-ng")
NOISE_SCHEMES = ("iid", "antithetic", "orthogonal")


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

  Returns:
    ``explain(key, x, target) -> map``; with ``options.rtol`` (SmoothGrad and
    AdaptGrad only) it returns an ``ag.Estimate(value, stderr, num_samples)``.

  Raises:
    UsageError: ``rtol`` for a method that is not one Monte Carlo mean, or a
      setting the library refuses (rtol outside (0, 1), ``noise="antithetic"``
      with an odd n, ...), as one line naming the option.
  """
  method = canonical(method)
  check_options(method, options)
  try:
    return _build(method, f, bounds, options, param_fn=param_fn)
  except ValueError as err:  # the library validates when a transform is built
    raise UsageError(_as_options(str(err))) from None


_OPTION_NAMES = (("rtol=", "--rtol "), ("batch_size=", "--batch-size "), ("noise=", "--noise "), ("n=", "--n "),
                 ("c=", "--c "), ("alpha=", "--alpha "))


def _as_options(message: str) -> str:
  """The library's message on one line, with its argument names spelt as the CLI's options."""
  import re  # pylint: disable=import-outside-toplevel

  line = " ".join(message.split())
  for name, option in _OPTION_NAMES:
    line = re.sub(rf"(?<![\w.]){re.escape(name)}", option, line)
  return line


def check_options(method: str, options: Options) -> None:
  """The CLI-level checks of ``--rtol`` / ``--noise`` (the library checks the values)."""
  method = canonical(method)
  if options.noise not in NOISE_SCHEMES:
    raise UsageError(f"--noise {options.noise!r} is not a noise scheme; choose one of {', '.join(NOISE_SCHEMES)}")
  if options.noise != "iid" and method not in NOISE_METHODS:
    raise UsageError(f"--noise {options.noise} draws input noise, which --method {method} does not; use it with"
                     f" one of {', '.join(NOISE_METHODS)}, or leave --noise out")
  if options.rtol is not None and method not in RTOL_METHODS:
    raise UsageError(f"--rtol samples one Monte Carlo mean to a tolerance and applies to --method smoothgrad or"
                     f" adaptgrad, not {method}; leave --rtol out or choose one of those")
  if options.rtol is not None and not isinstance(options.batch_size, int):
    raise UsageError(f"--rtol {options.rtol:g} samples in chunks of --batch-size and needs it: pass e.g."
                     " --batch-size 10 (sampling stops after the first chunk that reaches the tolerance)")
  if method in NOISE_METHODS:  # a dry build: the library's refusals before any model or image is loaded
    rtol = {} if options.rtol is None else {"rtol": options.rtol}
    try:
      ag.smooth_grad(jax.grad(lambda x: x.sum()), options.alpha, options.n, bounds=(0.0, 1.0),
                     batch_size=options.batch_size, noise=options.noise, **rtol)
    except ValueError as err:
      raise UsageError(_as_options(str(err))) from None


def _build(method, f, bounds, options, *, param_fn):
  integrated_gradients, gradient_x_input, noise_grad = _transforms()
  o = options
  bs = o.batch_size
  rtol = {} if o.rtol is None else {"rtol": o.rtol}

  def sg(g):
    return ag.smooth_grad(g, o.alpha, o.n, bounds=bounds, batch_size=bs, noise=o.noise, **rtol)

  def adapt(g):
    return ag.adapt_smooth(g, o.c, o.n, bounds=bounds, sigma_rule=o.sigma_rule, batch_size=bs, noise=o.noise,
                           **rtol)

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
