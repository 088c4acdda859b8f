"""Pytree helpers shared by the transforms: broadcasting, compute dtypes, argument replacement."""

from typing import Any

import jax
import jax.numpy as jnp

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
