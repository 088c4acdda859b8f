"""Flax adapters: a model and a target class become the scalar function to differentiate.

The transforms of :mod:`adaptgrad_jax` differentiate a scalar function of ONE
example, ``f(x)`` for an input without a batch dimension. These helpers build
it from a Flax model, in evaluation mode (batch norm uses its running
averages, dropout is off), with the logit (or log-softmax or softmax) of a
target class as the output:

>>> import adaptgrad_jax as ag
>>> from adaptgrad_jax import flax_adapters
>>> from flax import nnx
>>> model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
>>> f = flax_adapters.nnx_target_fn(model, target=2)
>>> explain = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 8, bounds=(0.0, 1.0)))
>>> explain(jax.random.key(0), jnp.full((3,), 0.5)).shape
(3,)

Targets. ``target`` is an int, or None: then the function takes the target as
an argument, ``f(x, target)``, so that a batch with one target per example is
a :func:`jax.vmap` over ``(keys, xs, targets)``:

>>> f = flax_adapters.nnx_target_fn(model)            # f(x, target)
>>> xs = jnp.full((5, 3), 0.5)
>>> targets = flax_adapters.resolve_targets(model, xs, "predicted")
>>> explain = ag.adapt_smooth(jax.grad(f), 0.95, 8, bounds=(0.0, 1.0))  # explain(key, x, t)
>>> batched = jax.jit(lambda key, xs, ts: jax.vmap(explain)(jax.random.split(key, len(xs)), xs, ts))
>>> batched(jax.random.key(0), xs, targets).shape
(5, 3)

``"predicted"`` (the argmax of the clean logits) is resolved ONCE per example
by :func:`resolve_targets` on the clean batch; it is never re-chosen for each
noisy sample, which would explain a different class at every sample.

Parameters as an argument. :func:`nnx_param_fn` and :func:`linen_param_fn`
return ``(f, params)`` with ``f(x, params)`` (or ``f(x, params, target)``),
what :func:`noise_grad` perturbs (``argnums=1``).

This module is the only one of the package that imports Flax at its top.
"""

from typing import Any, Callable, Literal, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptgrad_jax._typing import PyTree

Output = Literal["logit", "log_softmax", "softmax"]
OUTPUTS = ("logit", "log_softmax", "softmax")
Target = Union[None, int, jax.typing.ArrayLike]

__all__ = [
    "eval_view",
    "linen_param_fn",
    "linen_target_fn",
    "nnx_param_fn",
    "nnx_target_fn",
    "resolve_targets",
]


# ----------------------------------------------------------------------------
# Validation.


def _validate_output(output) -> str:
  if output not in OUTPUTS:
    raise ValueError(
        f"output={output!r} is not supported; use 'logit' (the default, the"
        " pre-softmax score), 'log_softmax' or 'softmax'."
    )
  return output


def _validate_target(target) -> Target:
  """None (target becomes an argument) or one integer class."""
  if target is None:
    return None
  if isinstance(target, str):
    if target == "predicted":
      raise ValueError(
          "target='predicted' must be resolved once, on the clean input, not"
          " inside the function that sees noisy inputs: targets ="
          " flax_adapters.resolve_targets(model, xs, 'predicted'); f ="
          " nnx_target_fn(model) (target=None, so f(x, target)); then"
          " jax.vmap(explainer)(jax.random.split(key, len(xs)), xs, targets)."
      )
    raise ValueError(
        f"target={target!r} is not a target; pass an int class index, None"
        " (the function then takes the target as an argument) or resolve"
        " 'predicted' with resolve_targets."
    )
  if isinstance(target, bool):
    raise TypeError(f"target={target!r} must be an int class index, not a bool.")
  if isinstance(target, (int, np.integer)):
    if target < 0:
      raise ValueError(f"target={target!r} must be a class index >= 0.")
    return int(target)
  if isinstance(target, (np.ndarray, jax.Array)):
    if jnp.ndim(target) != 0 or not jnp.issubdtype(jnp.asarray(target).dtype, jnp.integer):
      raise ValueError(
          f"target has shape {jnp.shape(target)} and dtype"
          f" {jnp.asarray(target).dtype}; a function of ONE example needs one"
          " integer class. For a batch with one target per example, build"
          " f = nnx_target_fn(model) with target=None, so f(x, target), and"
          " jax.vmap(explainer)(jax.random.split(key, len(xs)), xs, targets)."
      )
    return target
  raise TypeError(
      f"target={target!r} must be an int class index or None (then the"
      " function takes the target as an argument)."
  )


def _pick(logits: jax.Array, target, output: str, x_shape: tuple = ()) -> jax.Array:
  """The scalar output for one example from its batch-of-one logits."""
  if logits.ndim != 2 or logits.shape[0] != 1:
    if (logits.ndim >= 2 and logits.shape[0] > 1) or (logits.ndim >= 3 and logits.shape[1] > 1):
      raise ValueError(
          f"the model returned logits of shape {logits.shape} for an input of"
          f" shape {tuple(x_shape)}, which the adapter passed as a batch of one"
          f" ({(1, *x_shape)}): the scalar function, and every explainer built"
          " on it, takes ONE example without a batch axis (e.g. an HWC image)."
          " For a batch xs, map over it: jax.vmap(explainer)(jax.random.split(key,"
          " len(xs)), xs) (with targets: jax.vmap(explainer)(keys, xs, targets)"
          " for a function built with target=None). If x is one example and"
          " the model returns other outputs, pass call=... to reduce them to"
          " (1, num_classes)."
      )
    raise ValueError(
        f"the model returned logits of shape {logits.shape} for a batch of"
        " one; the adapters expect (1, num_classes). Pass call=... to reduce"
        " other outputs to class scores."
    )
  row = logits[0]
  if output == "log_softmax":
    row = jax.nn.log_softmax(row)
  elif output == "softmax":
    row = jax.nn.softmax(row)
  if isinstance(target, int) and not 0 <= target < row.shape[0]:
    raise ValueError(
        f"target={target} is out of range for {row.shape[0]} classes; pass a"
        f" class index in [0, {row.shape[0]})."
    )
  return row[target]


def _add_batch(x) -> jax.Array:
  x = jnp.asarray(x)
  return x[None]


def _scalar_fn(logits_fn, target, output, with_params: bool):
  """Builds f(x[, params][, target]) from logits_fn(xs, params)."""
  if with_params:
    if target is None:
      def f(x, params, target):
        return _pick(logits_fn(_add_batch(x), params), target, output, jnp.shape(x))
    else:
      def f(x, params):
        return _pick(logits_fn(_add_batch(x), params), target, output, jnp.shape(x))
  else:
    if target is None:
      def f(x, target):
        return _pick(logits_fn(_add_batch(x), None), target, output, jnp.shape(x))
    else:
      def f(x):
        return _pick(logits_fn(_add_batch(x), None), target, output, jnp.shape(x))
  return f


# ----------------------------------------------------------------------------
# NNX.


def eval_view(model: nnx.Module) -> nnx.Module:
  """An evaluation-mode view of ``model``, leaving ``model`` itself unchanged.

  ``nnx.view(model, deterministic=True, use_running_average=True)``: dropout
  off, batch norm on its running averages. The view shares the model's
  arrays (no copy).
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(
        f"model={model!r} is not an nnx.Module; for linen, use"
        " linen_target_fn(apply_fn, variables, target)."
    )
  return nnx.view(
      model, deterministic=True, use_running_average=True, raise_if_not_found=False
  )


def _nnx_logits(model, call):
  if call is not None and not callable(call):
    raise TypeError(f"call={call!r} must be a callable call(model, xs) -> logits.")
  graphdef, params, rest = nnx.split(eval_view(model), nnx.Param, ...)

  def logits_fn(xs, p):
    module = nnx.merge(graphdef, params if p is None else p, rest)
    return module(xs) if call is None else call(module, xs)

  return logits_fn, params


def nnx_target_fn(
    model: nnx.Module,
    target: Target = None,
    *,
    output: Output = "logit",
    call: Optional[Callable[[nnx.Module, jax.Array], jax.Array]] = None,
) -> Callable[..., jax.Array]:
  """The scalar function of one example to explain, from a Flax NNX model.

  ``f(x) = output(model_eval(x[None]))[0, target]``: the model in evaluation
  mode (:func:`eval_view`: batch norm running averages, no dropout), applied
  to ``x`` with a batch axis added, as a pure function of ``x`` (via
  ``nnx.split`` / ``nnx.merge``, so it jits and vmaps cleanly). The model's
  state is captured when ``f`` is built: rebuild it after training.

  Args:
    model: an ``nnx.Module`` mapping a batch to logits ``(B, classes)``.
    target: an int class; or None, and ``f`` takes the target as its second
      argument, ``f(x, target)`` (for batches with one target per example;
      see :func:`resolve_targets`).
    output: ``"logit"`` (default), ``"log_softmax"`` or ``"softmax"``.
    call: ``call(module, xs) -> logits`` for models that need extra
      arguments or return more than logits; default ``module(xs)``.

  Returns:
    ``f(x)`` (``f(x, target)`` when ``target`` is None), a scalar.

  Raises:
    ValueError, TypeError: a bad ``output`` or ``target`` (``"predicted"``
      must go through :func:`resolve_targets`), a non-NNX model.

  Example:
    >>> from adaptgrad_jax import flax_adapters
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> f = flax_adapters.nnx_target_fn(model, 1, output="log_softmax")
    >>> jax.grad(f)(jnp.ones(3)).shape
    (3,)
  """
  output = _validate_output(output)
  target = _validate_target(target)
  logits_fn, _ = _nnx_logits(model, call)
  return _scalar_fn(logits_fn, target, output, with_params=False)


def nnx_param_fn(
    model: nnx.Module,
    target: Target = None,
    *,
    output: Output = "logit",
    call: Optional[Callable[[nnx.Module, jax.Array], jax.Array]] = None,
) -> tuple[Callable[..., jax.Array], PyTree]:
  """Like :func:`nnx_target_fn`, with the parameters as an argument (for NoiseGrad).

  Returns ``(f, params)`` where ``params`` is the model's ``nnx.Param``
  state (an ``nnx.State``) and ``f(x, params)`` (or ``f(x, params,
  target)`` when ``target`` is None) evaluates the eval-mode model with
  those parameters; batch-norm statistics and other state stay fixed.
  ``noise_grad(jax.grad(f), argnums=1)`` then perturbs the parameters.

  Example:
    >>> import adaptgrad_jax as ag
    >>> from adaptgrad_jax import flax_adapters
    >>> from flax import nnx
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> f, params = flax_adapters.nnx_param_fn(model, 0)
    >>> ng = jax.jit(ag.noise_grad(jax.grad(f), 4))
    >>> ng(jax.random.key(0), jnp.ones(3), params).shape
    (3,)
  """
  output = _validate_output(output)
  target = _validate_target(target)
  logits_fn, params = _nnx_logits(model, call)
  return _scalar_fn(logits_fn, target, output, with_params=True), params


# ----------------------------------------------------------------------------
# Linen.


def _linen_logits(apply_fn, variables, apply_kwargs, collection):
  if not callable(apply_fn):
    raise TypeError(
        f"apply_fn={apply_fn!r} must be callable as apply_fn(variables, xs),"
        " e.g. module.apply."
    )
  try:
    variables = dict(variables)
  except (TypeError, ValueError):
    raise TypeError(
        f"variables must be a mapping of collections, e.g. {{'params': ...,"
        f" 'batch_stats': ...}}; got {type(variables).__name__}."
    ) from None
  if collection is not None and collection not in variables:
    raise ValueError(
        f"collection={collection!r} is not in variables (it has"
        f" {sorted(variables)}); name the collection holding the parameters."
    )

  def logits_fn(xs, p):
    v = variables if p is None else {**variables, collection: p}
    return apply_fn(v, xs, **apply_kwargs)

  return logits_fn, (None if collection is None else variables[collection])


def linen_target_fn(
    apply_fn: Callable[..., jax.Array],
    variables: PyTree,
    target: Target = None,
    *,
    output: Output = "logit",
    **apply_kwargs: Any,
) -> Callable[..., jax.Array]:
  """The scalar function of one example to explain, from a linen model.

  ``f(x) = output(apply_fn(variables, x[None], **apply_kwargs))[0, target]``.
  Linen has no global evaluation switch: pass your module's own flag in
  ``apply_kwargs`` (e.g. ``train=False`` or ``deterministic=True``). The
  call is made without ``mutable``, so a module left in training mode fails
  loudly (batch norm cannot update its statistics, dropout finds no rng)
  instead of silently explaining the training-mode model.

  Args:
    apply_fn: ``module.apply`` or any ``apply_fn(variables, xs, **kw)``.
    variables: the variables, e.g. ``{'params': ..., 'batch_stats': ...}``.
    target: an int class, or None for ``f(x, target)``.
    output: ``"logit"``, ``"log_softmax"`` or ``"softmax"``.
    **apply_kwargs: passed to ``apply_fn`` (evaluation-mode flags).

  Returns:
    ``f(x)`` or ``f(x, target)``.

  Example:
    >>> import flax.linen as nn
    >>> from adaptgrad_jax import flax_adapters
    >>> module = nn.Dense(2)
    >>> variables = module.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> f = flax_adapters.linen_target_fn(module.apply, variables, 1)
    >>> jax.grad(f)(jnp.ones(3)).shape
    (3,)
  """
  output = _validate_output(output)
  target = _validate_target(target)
  logits_fn, _ = _linen_logits(apply_fn, variables, apply_kwargs, None)
  return _scalar_fn(logits_fn, target, output, with_params=False)


def linen_param_fn(
    apply_fn: Callable[..., jax.Array],
    variables: PyTree,
    target: Target = None,
    *,
    output: Output = "logit",
    collection: str = "params",
    **apply_kwargs: Any,
) -> tuple[Callable[..., jax.Array], PyTree]:
  """Like :func:`linen_target_fn`, with ``variables[collection]`` as an argument.

  Returns ``(f, params)``, ``f(x, params)`` (or ``f(x, params, target)``),
  for :func:`noise_grad`; the other collections (batch statistics) stay
  fixed.
  """
  output = _validate_output(output)
  target = _validate_target(target)
  logits_fn, params = _linen_logits(apply_fn, variables, apply_kwargs, collection)
  return _scalar_fn(logits_fn, target, output, with_params=True), params


# ----------------------------------------------------------------------------
# Targets for a batch.


def resolve_targets(
    model: Union[nnx.Module, Callable[[jax.Array], jax.Array]],
    xs: jax.Array,
    targets: Union[str, int, jax.typing.ArrayLike] = "predicted",
    *,
    call: Optional[Callable[[nnx.Module, jax.Array], jax.Array]] = None,
) -> jax.Array:
  """One integer target per example of the clean batch ``xs``.

  ``"predicted"`` is the argmax of the clean logits of the model in
  evaluation mode, computed here once, so every noisy sample of an example
  explains the same class. An int is repeated for every example; an array
  of shape ``(B,)`` is checked and passed through.

  Args:
    model: an ``nnx.Module`` (evaluated through :func:`eval_view`) or a
      function ``logits_fn(xs) -> (B, classes)``, e.g.
      ``functools.partial(module.apply, variables, train=False)`` for linen.
    xs: the clean batch.
    targets: ``"predicted"``, an int or an integer array of shape ``(B,)``.
    call: for an NNX model, ``call(module, xs) -> logits``.

  Returns:
    An int32 array of shape ``(B,)``.

  Example:
    >>> from adaptgrad_jax import flax_adapters
    >>> logits_fn = lambda xs: jnp.stack([xs[:, 0], -xs[:, 0]], axis=1)
    >>> flax_adapters.resolve_targets(logits_fn, jnp.array([[1.0], [-1.0]]))
    Array([0, 1], dtype=int32)
  """
  batch = jnp.shape(xs)[0] if jnp.ndim(xs) else None
  if batch is None:
    raise ValueError(f"xs has shape {jnp.shape(xs)}; pass a batch with a leading axis.")
  if isinstance(targets, str):
    if targets != "predicted":
      raise ValueError(
          f"targets={targets!r} is not supported; use 'predicted', an int or"
          " an integer array with one target per example."
      )
    if isinstance(model, nnx.Module):
      view = eval_view(model)
      logits = view(xs) if call is None else call(view, xs)
    elif callable(model):
      logits = model(xs)
    else:
      raise TypeError(f"model={model!r} must be an nnx.Module or a logits function.")
    logits = jnp.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != batch:
      raise ValueError(
          f"the model returned logits of shape {logits.shape} for {batch}"
          " examples; expected (batch, num_classes)."
      )
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if isinstance(targets, bool):
    raise TypeError(f"targets={targets!r} must be an int, an array or 'predicted'.")
  if isinstance(targets, (int, np.integer)):
    return jnp.full((batch,), int(targets), jnp.int32)
  arr = jnp.asarray(targets)
  if arr.shape != (batch,) or not jnp.issubdtype(arr.dtype, jnp.integer):
    raise ValueError(
        f"targets has shape {arr.shape} and dtype {arr.dtype}; pass one"
        f" integer class per example, shape ({batch},)."
    )
  return arr.astype(jnp.int32)
