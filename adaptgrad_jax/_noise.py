"""Gaussian noise: sample keys and ``eps ~ N(0, diag(sigma^2))`` shaped like an input.

Sample ``j`` of ``n`` always gets the noise of ``jax.random.split(key, n)[j]``,
whatever the chunking, so results do not depend on ``batch_size``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax._pytree import broadcast_like, compute_dtype
from adaptgrad_jax._typing import KeyArray, PyTree


def check_key(key: KeyArray, name: str = "key") -> None:
  """Raises unless ``key`` is one PRNG key: typed (``jax.random.key``) or raw (``jax.random.PRNGKey``)."""
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape == ():
      return
    raise TypeError(
        f"{name} has shape {key.shape}; pass one PRNG key (split it for a batch"
        " and jax.vmap over the keys)."
    )
  shape = np.shape(key)
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jnp.dtype(dtype) == jnp.uint32 and shape == (2,):
    return
  raise TypeError(
      f"{name}={key!r} is not a PRNG key; pass jax.random.key(0) (or a key"
      " from jax.random.split), not an int."
  )


def sample_noise(key: KeyArray, x: PyTree, sigma: PyTree) -> PyTree:
  """Draws ``eps ~ N(0, diag(sigma^2))`` with ``x``'s structure and shapes, in at least float32.

  A single-array ``x`` uses ``key`` directly; a pytree splits it over leaves.
  """
  leaves, structure = jax.tree.flatten(x)
  sigmas = jax.tree.leaves(broadcast_like(sigma, x, "sigma"))
  keys = [key] if len(leaves) == 1 else list(jax.random.split(key, len(leaves)))
  eps = []
  for k, leaf, s in zip(keys, leaves, sigmas):
    dtype = compute_dtype(jnp.result_type(leaf))
    eps.append(jnp.asarray(s, dtype) * jax.random.normal(k, jnp.shape(leaf), dtype))
  return jax.tree.unflatten(structure, eps)


def add_noise(x: PyTree, eps: PyTree) -> PyTree:
  """``x + eps`` in the noise's precision, rounded back to ``x``'s dtypes."""
  return jax.tree.map(
      lambda leaf, e: (jnp.asarray(leaf).astype(e.dtype) + e).astype(jnp.result_type(leaf)), x, eps
  )
