"""Equinox adapters: an ``eqx.Module`` and a target class become the scalar function to differentiate.

The transforms of :mod:`adaptgrad_jax` differentiate a scalar function of ONE
example. Equinox models are usually written for one example already (a batch
is a :func:`jax.vmap`), in the model's own layout (``eqx.nn.Conv2d`` reads
``(C, H, W)``), so the function built here calls the model on ``x`` as it is:

>>> import equinox as eqx
>>> import jax
>>> import jax.numpy as jnp
>>> import adaptgrad_jax as ag
>>> from adaptgrad_jax import equinox_adapters
>>> class Net(eqx.Module):
...   conv: eqx.nn.Conv2d
...   norm: eqx.nn.BatchNorm
...   head: eqx.nn.Linear
...
...   def __init__(self, key):
...     k1, k2 = jax.random.split(key)
...     self.conv = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k1)
...     self.norm = eqx.nn.BatchNorm(4, axis_name="batch", mode="batch")
...     self.head = eqx.nn.Linear(4, 10, key=k2)
...
...   def __call__(self, x, state):  # one (3, H, W) image -> (10,) logits
...     h, state = self.norm(jax.nn.relu(self.conv(x)), state)
...     return self.head(h.mean(axis=(1, 2))), state
>>> model, state = eqx.nn.make_with_state(Net)(jax.random.key(0))
>>> f = equinox_adapters.eqx_target_fn(model, target=3, state=state)
>>> explain = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 8, bounds=(0.0, 1.0)))
>>> explain(jax.random.key(1), jnp.full((3, 8, 8), 0.5)).shape
(3, 8, 8)

Evaluation mode. The model is switched to inference with
``eqx.nn.inference_mode(model)`` (dropout off, ``BatchNorm`` on its running
statistics from ``state``); the model passed in is not changed. A model
with ``eqx.nn.State`` (batch norm, spectral norm) is called as
``model(x, state)`` and its new state is discarded: explaining never updates
statistics. In inference mode ``eqx.nn.BatchNorm`` needs no batch axis name,
so the unbatched call above is exact.

Targets. ``target`` is an int, or None: then the function takes the target as
an argument, ``f(x, target)``, and a batch with one target per example is a
:func:`jax.vmap` over ``(keys, xs, targets)``. ``"predicted"`` is resolved
once per example on the clean batch by :func:`resolve_targets`, never
re-chosen for each noisy sample.

Bounds. ``bounds=`` of the smoothing transforms broadcast against ``x`` in
the model's layout: per-channel bounds of a ``(C, H, W)`` image have shape
``(C, 1, 1)``.

Parameters as an argument. :func:`eqx_param_fn` returns ``(f, params)`` with
``f(x, params)``, what :func:`adaptgrad_jax.noise_grad` perturbs
(``argnums=1``); ``params`` are the model's floating-point arrays
(``eqx.filter(model, eqx.is_inexact_array)``).

Equinox is optional (the ``equinox`` extra); it is
imported when a function of this module is called, so ``adaptgrad_jax``
imports without it.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax._extras import install_hint
from adaptgrad_jax._typing import PyTree

Output = Literal["logit", "log_softmax", "softmax"]
OUTPUTS = ("logit", "log_softmax", "softmax")
Target = Union[None, int, jax.typing.ArrayLike]
Call = Callable[..., jax.Array]

__all__ = ["eqx_param_fn", "eqx_target_fn", "inference_model", "resolve_targets"]


def _equinox():
  try:
    import equinox  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise ImportError(
      "the Equinox adapters need equinox, which is not installed; install it with "
      + install_hint("equinox")
    ) from err
  return equinox


# ----------------------------------------------------------------------------
# Validation (at build time).


def _validate_output(output: Any) -> str:
  if output not in OUTPUTS:
    raise ValueError(
      f"output={output!r} is not supported; use 'logit' (the default, the pre-softmax score), "
      "'log_softmax' or 'softmax'"
    )
  return output


def _validate_target(target: Any) -> Target:
  """None (the target becomes an argument) or one integer class."""
  if target is None:
    return None
  if isinstance(target, str):
    if target == "predicted":
      raise ValueError(
        "target='predicted' must be resolved once, on the clean inputs, not inside the function that sees "
        "noisy inputs: targets = equinox_adapters.resolve_targets(model, xs, 'predicted'), then "
        "f = eqx_target_fn(model) (target=None, so f(x, target)) and jax.vmap over (keys, xs, targets)"
      )
    raise ValueError(
      f"target={target!r} is not a target; pass an int class index, None (the function then takes the "
      "target as an argument) or resolve 'predicted' with resolve_targets"
    )
  if isinstance(target, bool):
    raise TypeError(f"target={target!r} must be an int class index, not a bool")
  if isinstance(target, (int, np.integer)):
    if target < 0:
      raise ValueError(f"target={target!r} must be a class index >= 0")
    return int(target)
  if isinstance(target, (np.ndarray, jax.Array)):
    if jnp.ndim(target) != 0 or not jnp.issubdtype(jnp.asarray(target).dtype, jnp.integer):
      raise ValueError(
        f"target has shape {jnp.shape(target)} and dtype {jnp.asarray(target).dtype}; a function of ONE "
        "example needs one integer class. For one target per example build f = eqx_target_fn(model) "
        "(target=None, so f(x, target)) and jax.vmap over (keys, xs, targets)"
      )
    return target
  raise TypeError(f"target={target!r} must be an int class index or None (then the function takes the target)")


def inference_model(model: Any) -> Any:
  """``model`` in inference mode: ``eqx.nn.inference_mode(model, True)``; ``model`` itself is unchanged.

  Dropout is off and ``eqx.nn.BatchNorm`` uses the running statistics of the
  state it is called with.

  Raises:
    TypeError: if ``model`` is not an ``eqx.Module``.
  """
  eqx = _equinox()
  if not isinstance(model, eqx.Module):
    raise TypeError(
      f"model={type(model).__name__} is not an eqx.Module; for Flax NNX models use "
      "adaptgrad_jax.flax_adapters.nnx_target_fn, for a plain function write f(x) directly"
    )
  return eqx.nn.inference_mode(model, True)


def _logits_call(
  state: Optional[PyTree], call: Optional[Call], batch_axis: bool
) -> Callable[[Any, jax.Array], jax.Array]:
  """``logits(model, x)`` for one example: ``call``, else ``model(x)`` or ``model(x, state)[0]``."""
  if call is not None and not callable(call):
    raise TypeError(f"call={call!r} must be a callable call(model, x) -> logits")

  def logits(model, x):
    xs = jnp.asarray(x)[None] if batch_axis else x
    if call is not None:
      out = call(model, xs)
    elif state is None:
      out = model(xs)
    else:
      out = model(xs, state)
      if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(
          "with state=..., the model must return (logits, state) as Equinox's stateful layers do; pass "
          "call=lambda model, x: ... to pick the logits of another output"
        )
      out = out[0]
    out = jnp.asarray(out)
    if batch_axis:
      if out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(
          f"with batch_axis=True the model must return (1, num_classes) for a batch of one, got {out.shape}"
          f" for an input of shape {jnp.shape(x)}. The function takes ONE example without a batch axis; for a"
          " batch xs use jax.vmap(explainer)(jax.random.split(key, len(xs)), xs)"
        )
      out = out[0]
    elif out.ndim != 1:
      raise ValueError(
        f"the model returned logits of shape {out.shape} for an input of shape {jnp.shape(x)}; the adapter"
        " expects (num_classes,) for ONE example. If x is a batch, jax.vmap the explainer instead:"
        " jax.vmap(explainer)(jax.random.split(key, len(xs)), xs). A model written for batches needs"
        " batch_axis=True; other outputs need call=lambda model, x: logits"
      )
    return out

  return logits


def _pick(row: jax.Array, target: Any, output: str) -> jax.Array:
  if output == "log_softmax":
    row = jax.nn.log_softmax(row)
  elif output == "softmax":
    row = jax.nn.softmax(row)
  if isinstance(target, int) and not 0 <= target < row.shape[0]:
    raise ValueError(f"target={target} is out of range for {row.shape[0]} classes; pass a class in [0, {row.shape[0]})")
  return row[target]


def eqx_target_fn(
  model: Any,
  target: Target = None,
  *,
  output: Output = "logit",
  state: Optional[PyTree] = None,
  batch_axis: bool = False,
  call: Optional[Call] = None,
) -> Callable[..., jax.Array]:
  """The scalar function of one example to explain, from an Equinox model.

  ``f(x) = output(logits(x))[target]`` with ``logits(x)`` the inference-mode
  model (:func:`inference_model`) applied to ``x``: ``model(x)``, or
  ``model(x, state)[0]`` when ``state`` is given. The model is captured when
  ``f`` is built; ``f`` is a pure function of ``x`` that jits, vmaps and
  differentiates.

  Args:
    model: an ``eqx.Module`` mapping one example to logits ``(num_classes,)``.
    target: an int class; or None, and ``f`` takes the target as its second
      argument, ``f(x, target)`` (see :func:`resolve_targets`).
    output: ``"logit"`` (default), ``"log_softmax"`` or ``"softmax"``.
    state: the ``eqx.nn.State`` of a stateful model (e.g. with
      ``eqx.nn.BatchNorm``), from ``eqx.nn.make_with_state``; None for a
      stateless model.
    batch_axis: the model expects a batch: call it on ``x[None]`` and take
      the first row of its ``(1, num_classes)`` output.
    call: ``call(model, x) -> logits`` for models with other signatures or
      outputs (it receives the inference-mode model; ``state`` is then
      ignored).

  Returns:
    ``f(x)`` (``f(x, target)`` when ``target`` is None), a scalar.

  Raises:
    ImportError: without equinox.
    TypeError, ValueError: a non-Equinox model, a bad ``output`` or
      ``target`` (``"predicted"`` goes through :func:`resolve_targets`); when
      ``f`` is traced, logits of the wrong shape.

  Example:
    >>> import equinox as eqx
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax import equinox_adapters
    >>> model = eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(0))
    >>> f = equinox_adapters.eqx_target_fn(model, 1, output="log_softmax")
    >>> jax.grad(f)(jnp.ones(4)).shape
    (4,)
  """
  output = _validate_output(output)
  target = _validate_target(target)
  module = inference_model(model)
  logits = _logits_call(state, call, batch_axis)
  if target is None:

    def f(x, target):
      return _pick(logits(module, x), target, output)

  else:

    def f(x):
      return _pick(logits(module, x), target, output)

  return f


def eqx_param_fn(
  model: Any,
  target: Target = None,
  *,
  output: Output = "logit",
  state: Optional[PyTree] = None,
  batch_axis: bool = False,
  call: Optional[Call] = None,
) -> tuple[Callable[..., jax.Array], PyTree]:
  """Like :func:`eqx_target_fn`, with the parameters as an argument (for NoiseGrad).

  Returns ``(f, params)``: ``params = eqx.filter(model, eqx.is_inexact_array)``
  (the floating-point arrays, the rest None) and ``f(x, params)`` (or ``f(x,
  params, target)`` when ``target`` is None) evaluates the inference-mode
  model rebuilt with those parameters (``eqx.combine``); ``state`` stays
  fixed. ``noise_grad(jax.grad(f), argnums=1)`` then perturbs the parameters.

  Example:
    >>> import equinox as eqx
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import adaptgrad_jax as ag
    >>> from adaptgrad_jax import equinox_adapters
    >>> model = eqx.nn.MLP(4, 3, 8, 2, key=jax.random.key(0))
    >>> f, params = equinox_adapters.eqx_param_fn(model, 0)
    >>> ng = jax.jit(ag.noise_grad(jax.grad(f), 4, sigma=0.2, argnums=1))
    >>> ng(jax.random.key(0), jnp.ones(4), params).shape
    (4,)
  """
  eqx = _equinox()
  output = _validate_output(output)
  target = _validate_target(target)
  params, static = eqx.partition(inference_model(model), eqx.is_inexact_array)
  logits = _logits_call(state, call, batch_axis)
  if target is None:

    def f(x, params, target):
      return _pick(logits(eqx.combine(params, static), x), target, output)

  else:

    def f(x, params):
      return _pick(logits(eqx.combine(params, static), x), target, output)

  return f, params


def resolve_targets(
  model: Any,
  xs: jax.typing.ArrayLike,
  targets: Union[str, int, jax.typing.ArrayLike] = "predicted",
  *,
  state: Optional[PyTree] = None,
  batch_axis: bool = False,
  call: Optional[Call] = None,
) -> jax.Array:
  """One integer target per example of the clean batch ``xs``.

  ``"predicted"`` is the argmax of the clean logits of the inference-mode
  model, computed here once by a :func:`jax.vmap` over ``xs`` (with
  ``state``, ``batch_axis`` and ``call`` as in :func:`eqx_target_fn`). An int
  is repeated for every example; an integer array of shape ``(B,)`` is
  checked and passed through.

  Returns:
    An int32 array of shape ``(B,)``.

  Example:
    >>> import equinox as eqx
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax import equinox_adapters
    >>> model = eqx.nn.Linear(2, 2, key=jax.random.key(0))
    >>> equinox_adapters.resolve_targets(model, jnp.ones((3, 2)), 1)
    Array([1, 1, 1], dtype=int32)
  """
  if jnp.ndim(xs) < 1:
    raise ValueError(f"xs has shape {jnp.shape(xs)}; pass a batch with a leading axis")
  batch = jnp.shape(xs)[0]
  if isinstance(targets, str):
    if targets != "predicted":
      raise ValueError(
        f"targets={targets!r} is not supported; use 'predicted', an int or an integer array with one target "
        "per example"
      )
    module = inference_model(model)
    logits = _logits_call(state, call, batch_axis)
    return jax.vmap(lambda x: jnp.argmax(logits(module, x)))(jnp.asarray(xs)).astype(jnp.int32)
  if isinstance(targets, bool):
    raise TypeError(f"targets={targets!r} must be an int, an array or 'predicted'")
  if isinstance(targets, (int, np.integer)):
    return jnp.full((batch,), int(targets), jnp.int32)
  arr = jnp.asarray(targets)
  if arr.shape != (batch,) or not jnp.issubdtype(arr.dtype, jnp.integer):
    raise ValueError(
      f"targets has shape {arr.shape} and dtype {arr.dtype}; pass one integer class per example, shape ({batch},)"
    )
  return arr.astype(jnp.int32)
