"""Completeness: do the attributions sum to the change of the model's output?"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common


def completeness(
    key: jax.Array,
    explain_fn: Callable[..., jax.Array],
    predict_fn: Callable[[jax.Array], jax.Array],
    x: ArrayLike,
    *args: Any,
    baseline: ArrayLike = 0.0,
    target: int | None = None,
    relative: bool = False,
) -> jax.Array:
  r"""Completeness gap of any attribution with a baseline, at one input.

  .. math:: \Delta = \sum_i \Phi_i(x) - \big(f_t(x) - f_t(\bar x)\big),

  where :math:`\bar x` is ``baseline`` and :math:`f_t` the score of class
  ``target``. Integrated Gradients, DeepLIFT-Rescale and Gradient x Input on
  a homogeneous model satisfy completeness (0 up to the integration error);
  SmoothGrad or AdaptGrad of Integrated Gradients satisfy it in expectation.
  Closer to 0 is better. ``relative=True`` divides by
  :math:`|f_t(x) - f_t(\bar x)|` (a zero output change is divided by 1).

  Quantus' ``Completeness`` returns the boolean ``sum(a) == f(x) - f(x')``
  (exact float equality) after normalising the map by its maximum (its
  default ``normalise=True``), which is almost never True; the gap is the
  informative quantity, so that is what is returned here (test it with
  ``jnp.abs(gap) <= tol``).

  Args:
    key: PRNG key passed to ``explain_fn``.
    explain_fn: ``explain_fn(key, x, *args) -> map`` (give it the same
      baseline, e.g. ``ag.integrated_gradients(g, 64, baseline=0.0)``).
    predict_fn: batch of inputs -> scores (B, K).
    x: one input.
    *args: further arguments of ``explain_fn``.
    baseline: the reference input (scalar or of ``x``'s shape).
    target: the class; default the predicted class.
    relative: divide by the magnitude of the output change.

  Returns:
    The signed gap (a scalar).

  Raises:
    TypeError, ValueError: an explainer that cannot take a key first, a map
      of the wrong shape or non-finite (outside jit), a ``target`` outside
      [0, K) (never clamped; inside jit or vmap it gives NaN).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import completeness
    >>> w = jnp.array([1.0, -2.0, 3.0])
    >>> predict = lambda b: (b @ w)[:, None]
    >>> gxi = lambda key, x: x * w  # Gradient x Input of a linear model
    >>> float(completeness(jax.random.key(0), gxi, predict, jnp.ones(3), target=0))
    0.0

  References:
    Sundararajan, Taly and Yan, "Axiomatic attribution for deep networks",
    ICML 2017, Sec. 3 (Completeness). Quantus ``Completeness``.
  """
  key = key if isinstance(key, jax.Array) else jnp.asarray(key)
  x = _common.as_float_array(x, "x")
  _common.check_finite(x, "x")
  out = _common.check_explain_fn(explain_fn, x, args)
  per_pixel = _common.check_map_shape(out, x.shape, "explain_fn")
  del per_pixel  # a per-pixel map sums the same
  k = _common.num_outputs(predict_fn, x)
  _common.check_target(target, k)
  base = jnp.asarray(baseline, x.dtype)
  try:
    base = jnp.broadcast_to(base, x.shape)
  except ValueError:
    raise ValueError(
        f"baseline has shape {base.shape}; it must be a scalar or broadcast "
        f"to x's shape {x.shape}.") from None
  use_pred = target is None
  t = jnp.asarray(0 if use_pred else target, jnp.int32)
  gap, finite = _gap(key, x, base, t, args, explain_fn=explain_fn,
                     predict_fn=predict_fn, use_pred=use_pred,
                     relative=bool(relative))
  _common.check_result_finite(finite, "explain_fn")
  return gap


@functools.partial(jax.jit, static_argnames=(
    "explain_fn", "predict_fn", "use_pred", "relative"))
def _gap(key, x, base, target, args, *, explain_fn, predict_fn, use_pred,
         relative):
  a = explain_fn(key, x, *args)
  scores = predict_fn(jnp.stack([x, base]))
  if use_pred:
    target = jnp.argmax(scores[0])
  f = _common.take_target(scores, target)
  change = f[0] - f[1]
  gap = jnp.sum(a) - change
  if relative:
    mag = jnp.abs(change)
    gap = gap / jnp.where(mag > 0, mag, jnp.ones_like(mag))
  return gap, jnp.all(jnp.isfinite(a))
