"""Pytree helpers shared by the transforms: broadcasting, compute dtypes, argument replacement."""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax._typing import PyTree


def broadcast_like(value: PyTree, x: PyTree, what: str) -> PyTree:
  """``value`` with ``x``'s tree structure: a single leaf is used for every leaf of ``x``.

  Raises:
    ValueError: if ``value`` is neither one leaf nor a tree shaped like ``x``.
  """
  structure = jax.tree.structure(x)
  value_structure = jax.tree.structure(value)
  if value_structure == structure:
    return value
  if value_structure.num_leaves == 1:
    return jax.tree.unflatten(structure, jax.tree.leaves(value) * structure.num_leaves)
  raise ValueError(
      f"{what} has tree structure {value_structure}, which matches neither a"
      f" single array nor the input's {structure}; pass one array (used for"
      " every leaf) or a pytree shaped like the input."
  )


def compute_dtype(dtype: Any) -> jnp.dtype:
  """The dtype noise and sums are computed in: float32 for half precision, else the input's float dtype."""
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"the argument has dtype {dtype}; noise and attributions need a"
        " floating point input (cast it with x.astype(jnp.float32))."
    )
  return jnp.promote_types(dtype, jnp.float32)


def check_scale_in_dtype(scale: Any, name: str, dtype: Any, *, hint: str = "",
                         label: Optional[str] = None, vanish: bool = True) -> None:
  """Raises if a concrete noise scale overflows, or vanishes, in the compute dtype of an input of ``dtype``.

  Checked at trace time, when the input's dtype is known (a Python-level
  check of static information, so it runs once per compile). A scale that
  is finite in float64 but over ``finfo.max / 64`` in the compute dtype
  would make the noise, ``scale * z`` with ``|z|`` up to about 6, infinite
  and the map NaN; a nonzero scale that rounds to 0 there would silently
  give the plain gradient (checked with ``vanish``: not for scales computed
  from the data, which may be tiny by design). Traced scales pass.
  """
  if isinstance(scale, jax.core.Tracer):
    return
  try:
    value = np.abs(np.asarray(scale, dtype=np.float64))
  except (TypeError, ValueError):
    return
  dtype = compute_dtype(dtype)
  info = jnp.finfo(dtype)
  limit = float(info.max) / 64
  if value.size == 0:
    return
  big = float(np.max(value))
  if big > limit:
    raise ValueError(
        f"{label or f'{name}={short_repr(scale)}'} overflows {dtype}, the dtype the"
        f" noise is drawn in for this input: noise scales must be at most"
        f" {limit:.3g} (finfo({dtype}).max / 64), or the noisy samples are"
        f" infinite and the map NaN.{(' ' + hint) if hint else ''}"
    )
  small = value[(value > 0)]
  if vanish and small.size and float(np.min(small)) < float(info.tiny):
    raise ValueError(
        f"{label or f'{name}={short_repr(scale)}'} vanishes in {dtype}, the dtype the"
        " noise is drawn in for this input:"
        f" a nonzero noise scale below {float(info.tiny):.3g} (finfo({dtype}).tiny, the"
        " smallest normal number) is flushed or rounded to 0 there and would"
        " silently give the plain gradient; pass 0"
        f" for no noise, or a larger scale.{(' ' + hint) if hint else ''}"
    )


def short_repr(value: Any) -> str:
  """``repr(value)`` for a scalar, its shape for an array, cut to 80 characters (for error messages)."""
  array = hasattr(value, "shape") and hasattr(value, "dtype") and np.ndim(value) > 0
  text = f"an array of shape {tuple(np.shape(value))}" if array else repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def check_has_arrays(x: PyTree, name: str, argnums: int) -> None:
  """Raises if the input to explain holds no arrays (``{}``, ``None``, an empty list)."""
  if not jax.tree.leaves(x):
    raise ValueError(
        f"{name}: the input (positional argument argnums={argnums}) is"
        f" {short_repr(x)}, which holds no arrays; pass the array (or a pytree"
        " of arrays) to explain."
    )


def check_same_shapes(value: PyTree, x: PyTree, what: str) -> None:
  """Raises unless every leaf of ``value`` has the shape of ``x``'s leaf (no silent broadcasting)."""
  for v, leaf in zip(jax.tree.leaves(value), jax.tree.leaves(x)):
    if jnp.shape(v) != jnp.shape(leaf):
      raise ValueError(
          f"{what} has shape {jnp.shape(v)} but the input has shape"
          f" {jnp.shape(leaf)}; they must be equal (a (4, 1) array for a (4,)"
          " input would broadcast to (4, 4))."
      )


def replace_arg(args: tuple, index: int, value: Any) -> tuple:
  """``args`` with ``args[index]`` replaced by ``value``."""
  return args[:index] + (value,) + args[index + 1 :]
