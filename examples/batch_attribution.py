"""Batch attribution: one map per example with jax.vmap, and the sharded, resumable attribute API.

Every transform explains ONE example; a batch is a ``jax.vmap`` over
``(keys, xs, targets)``. For datasets too large for one call,
``adaptgrad_jax.attribute`` shards batches over the local devices and streams
the maps to ``.npy`` shards with a manifest (resumable), giving example ``i``
the key ``jax.random.fold_in(key, i)``, so its maps equal a vmap with those keys.

    python examples/batch_attribution.py

Set ADAPTGRAD_EXAMPLES_SMALL=1 for a smaller run (the smoke test does).
"""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import adaptgrad_jax as ag
from adaptgrad_jax import datasets, flax_adapters, models, training
from adaptgrad_jax.attribute import attribute

SMALL = os.environ.get("ADAPTGRAD_EXAMPLES_SMALL") == "1"
COUNT, N = (24, 8) if SMALL else (512, 50)

data = datasets.mnist_embedded()
model = models.mlp(rngs=nnx.Rngs(0))
training.train_classifier(model, data.x_train[:2000], data.y_train[:2000], epochs=1, learning_rate=0.05,
                          key=jax.random.key(0), progress=False)
xs = jnp.asarray(data.x_test[:COUNT])

# 1. vmap: f(x, t) takes the target, so one call explains a batch with per-example targets.
f = flax_adapters.nnx_target_fn(model)                          # f(x, t) = logit t of one image
targets = flax_adapters.resolve_targets(model, xs, "predicted")  # argmax of the CLEAN logits, once
explain = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, N, bounds=(0.0, 1.0)))        # explain(key, x, t)
key = jax.random.key(42)
keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(COUNT))
maps = jax.vmap(explain)(keys, xs, targets)
print(f"vmap: {maps.shape[0]} AdaptGrad maps of shape {maps.shape[1:]}")


# 2. attribute: explain_fn(key, x) for one example; the target is chosen inside, on the clean input.
def explain_fn(k, x):
  logits = model(x[None])[0]
  return explain(k, x, jnp.argmax(logits))


with tempfile.TemporaryDirectory() as out:
  result = attribute(explain_fn, key, np.asarray(xs), out=out, batch_size=8, progress=False,
                     explain_id=f"adapt_smooth(c=0.95,n={N})/mnist-mlp")
  print(f"attribute: {result.shape[0]} maps in {len(result.shards)} shards under {out}")
  np.testing.assert_allclose(np.asarray(result), np.asarray(maps), rtol=1e-5, atol=1e-6)
  print("attribute and vmap agree: example i uses jax.random.fold_in(key, i) in both")
  again = attribute(explain_fn, key, np.asarray(xs), out=out, batch_size=8, progress=False,
                    explain_id=f"adapt_smooth(c=0.95,n={N})/mnist-mlp")  # resumes: nothing recomputed
  assert np.array_equal(np.asarray(again), np.asarray(result))
  print(f"devices used: {jax.local_device_count()} ({jax.devices()[0].platform}); on CPU,"
        " XLA_FLAGS=--xla_force_host_platform_device_count=8 simulates 8")
