"""Small layers shared by the ports, matching torch's numerics."""

import jax
from flax import nnx

LN_EPSILON = 1e-6


def layer_norm(features: int, rngs: nnx.Rngs, epsilon: float = LN_EPSILON) -> nnx.LayerNorm:
  """``torch.nn.LayerNorm(features, eps=1e-6)``: two-pass variance as torch's.

  Flax's fast ``E[x^2] - E[x]^2`` loses digits in float32.
  """
  return nnx.LayerNorm(features, epsilon=epsilon, use_fast_variance=False, rngs=rngs)


def identity(x: jax.Array) -> jax.Array:
  return x


def gelu(x: jax.Array) -> jax.Array:
  """``torch.nn.GELU()``: the exact, erf form."""
  return jax.nn.gelu(x, approximate=False)
