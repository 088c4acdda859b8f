"""Ten lines: AdaptGrad on your own JAX function, composed with jax.grad, jit and vmap."""

import jax
import jax.numpy as jnp

import adaptgrad_jax as ag

w = jax.random.normal(jax.random.key(0), (784, 10))            # a toy linear "model"
f = lambda x: jnp.tanh(x.reshape(-1) @ w)[3]                   # scalar score of class 3
x = jax.random.uniform(jax.random.key(1), (28, 28))            # one input in [0, 1]

adaptgrad = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 50, bounds=(0.0, 1.0)))    # c = 0.95, N = 50
smoothgrad = jax.jit(ag.smooth_grad(jax.grad(f), 0.2, 50, bounds=(0.0, 1.0)))     # alpha = 0.2, N = 50
key = jax.random.key(2)
print("AdaptGrad map", adaptgrad(key, x).shape, "SmoothGrad map", smoothgrad(key, x).shape)
batch = jax.vmap(adaptgrad)(jax.random.split(key, 8), jnp.stack([x] * 8))   # a batch
print("batched", batch.shape, "| out-of-range rate, SmoothGrad vs AdaptGrad:",
      float(ag.out_of_range_rate(key, x, ag.smoothgrad_sigma(0.2, bounds=(0.0, 1.0)), 50, bounds=(0.0, 1.0)).per_element),
      float(ag.out_of_range_rate(key, x, ag.adaptive_sigma(x, 0.95, bounds=(0.0, 1.0)), 50, bounds=(0.0, 1.0)).per_element))
