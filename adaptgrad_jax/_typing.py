"""Type aliases shared by the public API."""

from typing import Any, Callable, Union

import jax

PyTree = Any
"""A JAX pytree of arrays (an array, a dict of arrays, a tuple, ...)."""

GradFn = Callable[..., Any]
"""A function returning gradients, e.g. ``jax.grad(f)``."""

Bounds = Any
"""``(lower, upper)``: each a scalar, an array broadcastable to the input, or a
pytree with the input's structure."""

KeyArray = Union[jax.Array, Any]
"""A PRNG key, typed (``jax.random.key``) or raw (``jax.random.PRNGKey``)."""
