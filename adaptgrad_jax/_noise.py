"""Gaussian noise: sample keys and ``eps ~ N(0, diag(sigma^2))`` shaped like an input.

Sample ``j`` of ``n`` always gets the noise of ``jax.random.split(key, n)[j]``,
whatever the chunking, so results do not depend on ``batch_size``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax._pytree import broadcast_like, compute_dtype
from adaptgrad_jax._typing import KeyArray, PyTree


def is_typed_key(value) -> bool:
  """Whether ``value`` is an array of typed PRNG keys (``jax.random.key``), of any shape."""
  return isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)


def check_key(key: KeyArray, name: str = "key") -> None:
  """Raises unless ``key`` is one PRNG key: typed (``jax.random.key``) or raw (``jax.random.PRNGKey``)."""
  if is_typed_key(key):
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
  if dtype is not None and shape:  # an array: most likely the input, passed where the key goes
    raise TypeError(
        f"{name} is not a PRNG key but a {jnp.dtype(dtype).name} array of shape {shape}: a stochastic"
        " transform is called as fn(key, x, ...), the key first; pass jax.random.key(0) (or a key from"
        " jax.random.split) before the input."
    )
  raise TypeError(
      f"{name}={key!r} is not a PRNG key; pass jax.random.key(0) (or a key"
      f" from jax.random.split), not {'an int' if isinstance(key, int) else type(key).__name__}."
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


NOISE_SCHEMES = ("iid", "antithetic", "orthogonal", "lhs")
ORTHOGONAL_BLOCK = 8
"""Samples per block of ``noise="orthogonal"``: blocks of 8 exactly orthogonal directions."""
LHS_BLOCK = 8
"""Samples per replicate of ``noise="lhs"``: Latin hypercubes of 8 strata per element."""


def group_size(noise: str) -> int:
  """Samples per independent unit of a noise scheme."""
  return {"iid": 1, "antithetic": 2, "orthogonal": ORTHOGONAL_BLOCK, "lhs": LHS_BLOCK}[noise]


def _orthogonal_normals(key: KeyArray, count: int, size: int, dtype) -> jax.Array:
  """``count`` vectors of ``size`` elements, each marginally N(0, I), pairwise exactly orthogonal.

  Gaussian rows ``a_i``; Gram-Schmidt (QR with R's diagonal made positive)
  gives directions that depend only on the rows' directions, each uniform on
  the sphere; the rows' own norms (chi with ``size`` degrees of freedom,
  independent of the directions) scale them back.
  """
  if size < count:
    raise ValueError(
        f"noise='orthogonal' draws blocks of {count} exactly orthogonal"
        f" directions, but the input has only {size} element(s); use"
        " noise='antithetic' or 'iid' for inputs this small."
    )
  a = jax.random.normal(key, (count, size), dtype)
  q, r = jnp.linalg.qr(a.T)  # (size, count)
  q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(dtype)
  return q.T * jnp.linalg.norm(a, axis=1, keepdims=True)


def _latin_hypercube_normals(key: KeyArray, count: int, size: int, dtype) -> jax.Array:
  """``count`` vectors of ``size`` standard normals, a randomised Latin hypercube in every element.

  Element i of sample j is ``Phi^-1((pi_i(j) + u_ij) / count)``: a random
  permutation ``pi_i`` per element (the argsort of uniforms) puts the
  ``count`` samples one in each of ``count`` equiprobable strata of N(0, 1),
  and a uniform ``u_ij`` places each inside its stratum. ``u`` is uniform on
  the midpoints of ``jax.random.uniform``'s grid (``k * eps + eps / 2``), so
  it is never 0 or 1: ``p`` never reaches 0, where ``ndtri`` gives ``-inf``
  (an endpoint ``u = 0``, drawn once in ``2**23`` elements in float32, made
  one sample of a replicate ``-inf``), and the two tails are symmetric. Each
  element of each sample is therefore N(0, 1) up to that grid (the inverse
  CDF of a uniform on ``2**23`` points per stratum), elements are independent, and the
  samples of a replicate are negatively dependent within an element (McKay
  et al., 1979; Owen, 1997). The upper half is computed by symmetry,
  ``-Phi^-1(1 - p)``, so that no float rounding of ``p`` near 1 truncates
  the tail.
  """
  k_perm, k_u = jax.random.split(key)
  strata = jnp.argsort(jax.random.uniform(k_perm, (count, size)), axis=0).astype(dtype)
  eps = jnp.finfo(dtype).eps  # the grid step of jax.random.uniform in [0, 1)
  u = jax.random.uniform(k_u, (count, size), dtype) + jnp.asarray(eps / 2, dtype)  # in [eps / 2, 1 - eps / 2]
  lower = strata + u  # count * p, in (0, count)
  upper = (count - 1 - strata) + (1 - u)  # count * (1 - p), without the rounding of count - lower
  return jnp.where(lower < count / 2, jax.scipy.special.ndtri(lower / count),
                   -jax.scipy.special.ndtri(upper / count))


def _block_over_leaves(z: jax.Array, x: PyTree, sigma: PyTree) -> PyTree:
  """``(group, total)`` standard noise cut into ``x``'s leaves and scaled by ``sigma``."""
  leaves, structure = jax.tree.flatten(x)
  sizes = [int(np.prod(jnp.shape(leaf))) for leaf in leaves]
  sigmas = jax.tree.leaves(broadcast_like(sigma, x, "sigma"))
  out, start = [], 0
  for leaf, s, size in zip(leaves, sigmas, sizes):
    leaf_dtype = compute_dtype(jnp.result_type(leaf))
    piece = z[:, start:start + size].reshape((z.shape[0],) + jnp.shape(leaf)).astype(leaf_dtype)
    out.append(jnp.asarray(s, leaf_dtype) * piece)
    start += size
  return jax.tree.unflatten(structure, out)


def unit_noise(key: KeyArray, x: PyTree, sigma: PyTree, noise: str) -> PyTree:
  """The noise of one unit of ``noise``: leaves shaped ``(group,) + leaf.shape``.

  ``"iid"``: one draw (the noise :func:`sample_noise` gives ``key``).
  ``"antithetic"``: that draw and its negation. ``"orthogonal"``: a block of
  :data:`ORTHOGONAL_BLOCK` exactly orthogonal directions with chi norms, over
  all elements of all leaves. ``"lhs"``: a Latin hypercube replicate of
  :data:`LHS_BLOCK` samples, stratified in every element. Each sample is
  marginally ``N(0, diag(sigma^2))``.
  """
  if noise == "iid":
    return jax.tree.map(lambda e: e[None], sample_noise(key, x, sigma))
  if noise == "antithetic":
    return jax.tree.map(lambda e: jnp.stack([e, -e]), sample_noise(key, x, sigma))
  leaves = jax.tree.leaves(x)
  dtype = jnp.result_type(*[compute_dtype(jnp.result_type(leaf)) for leaf in leaves])
  total = sum(int(np.prod(jnp.shape(leaf))) for leaf in leaves)
  if noise == "lhs":
    return _block_over_leaves(_latin_hypercube_normals(key, LHS_BLOCK, total, dtype), x, sigma)
  return _block_over_leaves(_orthogonal_normals(key, ORTHOGONAL_BLOCK, total, dtype), x, sigma)
