"""Shared validation and reduction helpers for the metrics (private)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_CHANNEL_REDUCTIONS = ("sum", "mean", "abs_sum", "max_abs", "l2")


def is_concrete(x: Any) -> bool:
  """True when ``x`` holds concrete values (not a tracer inside jit/vmap)."""
  return not isinstance(x, jax.core.Tracer)


def check_finite(x: Any, name: str) -> None:
  """Raises ValueError if a concrete array holds NaN or inf (no-op when traced)."""
  if not is_concrete(x):
    return
  arr = np.asarray(x)
  if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    raise ValueError(
        f"{name} holds {bad} non-finite value(s) (NaN or inf) out of {arr.size}; "
        f"explanation maps must be finite: check the explanation method for a "
        f"division by zero, or replace them with jnp.nan_to_num({name}) if that "
        f"is what you mean.")


def check_same_shape(a: Any, b: Any, name_a: str, name_b: str) -> None:
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(
        f"{name_a} has shape {jnp.shape(a)} but {name_b} has shape "
        f"{jnp.shape(b)}; the two maps must have the same shape (reduce "
        f"channels of both, or of neither, before comparing).")


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> None:
  if value not in choices:
    raise ValueError(
        f"{name}={value!r} is not supported; choose one of {choices!r}.")


def reduce_channels(x: jax.Array, how: str | None) -> jax.Array:
  """Reduces the trailing channel axis of an (H, W, C) map to (H, W).

  Maps with ndim != 3 are returned unchanged: 1-D vectors and (H, W) maps have
  no channel axis.
  """
  if how is not None:
    check_choice(how, "reduce_channels", _CHANNEL_REDUCTIONS + (None,))
  if how is None or x.ndim != 3:
    return x
  if how == "sum":
    return jnp.sum(x, axis=-1)
  if how == "mean":
    return jnp.mean(x, axis=-1)
  if how == "abs_sum":
    return jnp.sum(jnp.abs(x), axis=-1)
  if how == "max_abs":
    return jnp.max(jnp.abs(x), axis=-1)
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1))  # "l2"


def as_float_array(x: Any, name: str) -> jax.Array:
  """Converts to a floating jax array, raising a clear error for bad input."""
  try:
    arr = jnp.asarray(x)
  except TypeError as e:
    raise TypeError(f"{name} must be an array, got {type(x).__name__}") from e
  if arr.size == 0:
    raise ValueError(f"{name} is empty (shape {arr.shape}); pass a non-empty map.")
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    arr = arr.astype(jnp.float32)
  return arr


def path_str(path: tuple[Any, ...]) -> str:
  """'l1/kernel' for a pytree key path (``jax.tree_util.keystr``, without the ``.value`` of nnx Variables)."""
  return "/".join(jax.tree_util.keystr((k,), simple=True) for k in path
                  if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value"))


def path_matches(path: str, prefix: str) -> bool:
  prefix = prefix.strip("/")
  return path == prefix or path.startswith(prefix + "/")


def check_explain_fn(explain_fn: Any, x: Any, args: tuple[Any, ...],
                     name: str = "explain_fn", *, with_key: bool = True,
                     key: Any = None) -> Any:
  """Checks that ``explain_fn(key, x, *args)`` can be called; returns its output shape.

  The check is by arity (``inspect.signature(...).bind``), never by parameter
  names, and then by ``jax.eval_shape`` (no computation). A deterministic
  explainer ``g(x, *args)`` passed where a key comes first fails the binding
  and gets an error that says how to wrap it.
  """
  import inspect  # pylint: disable=import-outside-toplevel
  if not callable(explain_fn):
    raise TypeError(
        f"{name} must be a function explain_fn(key, x, ...) returning a map; "
        f"got {type(explain_fn).__name__}.")
  key = jax.random.key(0) if key is None else key
  call_args = ((key,) if with_key else ()) + (x,) + tuple(args)
  try:
    sig = inspect.signature(explain_fn)
  except (TypeError, ValueError):
    sig = None
  if sig is not None:
    try:
      sig.bind(*call_args)
    except TypeError as e:
      shown = "key, x" + "".join(f", arg{i}" for i in range(len(args)))
      raise TypeError(
          f"{name}{sig} cannot be called as {name}({shown}): {e}. The metric "
          f"calls {name} with a PRNG key first (a stochastic explainer such as "
          f"ag.adapt_smooth(jax.grad(f), 0.95, 8, bounds=(0.0, 1.0)) takes "
          f"one); wrap a deterministic explainer g(x, ...) as "
          f"`lambda key, x, *a: g(x, *a)`.") from None
  return jax.eval_shape(explain_fn, *call_args)


def check_map_shape(out: Any, x_shape: tuple[int, ...], name: str) -> bool:
  """Checks a map's shape against its input's; True if it is per pixel.

  A map is per element (the input's shape) or per pixel (the input's shape
  without its trailing channel axis, for an input of ndim >= 2).
  """
  shape = tuple(getattr(out, "shape", ()))
  if shape == tuple(x_shape):
    return False
  if len(x_shape) >= 2 and shape == tuple(x_shape[:-1]):
    return True
  raise ValueError(
      f"{name} returned a map of shape {shape} for an input of shape "
      f"{tuple(x_shape)}; an explanation must have the input's shape (or its "
      f"shape without the trailing channel axis). Check which argument "
      f"{name} differentiates, and that it explains one example (vmap over "
      f"a batch).")


def check_target(target: Any, num_classes: int, name: str = "target") -> None:
  """Raises for a concrete class index outside [0, num_classes) (no clamping)."""
  if target is None or not is_concrete(target):
    return
  t = np.asarray(target)
  if t.dtype.kind not in "iu" or t.ndim != 0:
    raise TypeError(
        f"{name}={target!r} must be one integer class index in "
        f"[0, {num_classes}) (vmap over a batch of targets).")
  if not 0 <= int(t) < num_classes:
    raise ValueError(
        f"{name}={int(t)} is out of range: the model has {num_classes} "
        f"classes, so {name} must lie in [0, {num_classes}) (negative indices "
        f"are not accepted, and nothing is clamped).")


def num_outputs(predict_fn: Any, x: Any, name: str = "predict_fn") -> int:
  """The number of classes K of ``predict_fn`` on a batch of one ``x``."""
  if not callable(predict_fn):
    raise TypeError(f"{name} must be a function batch -> scores (B, K); got "
                    f"{type(predict_fn).__name__}.")
  x = jnp.asarray(x)
  out = jax.eval_shape(predict_fn, jax.ShapeDtypeStruct((1,) + x.shape, x.dtype))
  if len(out.shape) != 2 or out.shape[0] != 1:
    raise ValueError(
        f"{name} returned shape {out.shape} for a batch of 1 input; it must "
        f"return scores of shape (B, num_classes).")
  return int(out.shape[1])


def take_target(scores: jax.Array, target: jax.Array) -> jax.Array:
  """``scores[:, target]`` with NaN, not a clamped class, for a bad traced target."""
  k = scores.shape[1]
  valid = (target >= 0) & (target < k)
  picked = jnp.take(scores, jnp.clip(target, 0, k - 1), axis=1)
  return jnp.where(valid, picked, jnp.nan)


def check_result_finite(finite: Any, name: str) -> None:
  """Raises if a concrete flag says an explainer produced NaN or inf."""
  if is_concrete(finite) and not bool(np.all(np.asarray(finite))):
    raise ValueError(
        f"{name} returned a map holding NaN or inf; explanation maps must be "
        f"finite: check the explanation method for a division by zero or an "
        f"input outside its bounds.")
