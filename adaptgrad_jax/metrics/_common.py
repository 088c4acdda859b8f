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
  """'l1/kernel' for a pytree key path (drops the `.value` of nnx Variables)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":
        parts.append(k.name)
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def path_matches(path: str, prefix: str) -> bool:
  prefix = prefix.strip("/")
  return path == prefix or path.startswith(prefix + "/")
