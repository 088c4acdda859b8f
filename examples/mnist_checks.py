"""MNIST checks: train the paper's MLP on the embedded digits, compare Grad, SmoothGrad and AdaptGrad.

Prints, per method, the Sparseness (Gini index) of the maps and how many noisy
inputs leave the data range [0, 1] (Section 3.2 of the paper: SmoothGrad's fixed
sigma pushes many samples out of range; AdaptGrad's adaptive sigma does not,
and MNIST, whose pixels mostly sit on the bounds 0 and 1, shows it starkly).

Runs offline in about half a minute on 2 CPU cores:

    python examples/mnist_checks.py

Set ADAPTGRAD_EXAMPLES_SMALL=1 for a smaller run (the smoke test does).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import adaptgrad_jax as ag
from adaptgrad_jax import datasets, flax_adapters, metrics, models, training

SMALL = os.environ.get("ADAPTGRAD_EXAMPLES_SMALL") == "1"
TRAIN, EPOCHS, TEST, N = (2000, 1, 16, 10) if SMALL else (10000, 5, 200, 50)
BOUNDS = (0.0, 1.0)

# 1. Train the 784-200-10 MLP (SGD, learning rate 0.01, batch 32 as in the paper; fewer epochs).
data = datasets.mnist_embedded()
model = models.mlp(rngs=nnx.Rngs(0))
training.train_classifier(model, data.x_train[:TRAIN], data.y_train[:TRAIN], epochs=EPOCHS,
                          learning_rate=0.05 if SMALL else 0.01, key=jax.random.key(0), progress=False)
accuracy = training.evaluate(model, data.x_test, data.y_test)
print(f"MLP trained on {TRAIN} digits for {EPOCHS} epoch(s): test accuracy {accuracy:.1%}")

# 2. Explain test digits for their predicted class: f(x, t) is the logit of class t.
xs = jnp.asarray(data.x_test[:TEST])
targets = flax_adapters.resolve_targets(model, xs, "predicted")
grad_fn = jax.grad(flax_adapters.nnx_target_fn(model))
methods = {
  "Grad": lambda key, x, t: grad_fn(x, t),
  "SG": ag.smooth_grad(grad_fn, 0.2, N, bounds=BOUNDS),
  "AG": ag.adapt_smooth(grad_fn, 0.95, N, bounds=BOUNDS),
}
sigmas = {
  "Grad": lambda x: jnp.zeros_like(x),
  "SG": lambda x: ag.smoothgrad_sigma(0.2, bounds=BOUNDS),
  "AG": lambda x: ag.adaptive_sigma(x, 0.95, bounds=BOUNDS),
}
keys = jax.random.split(jax.random.key(1), TEST)

print(f"\n{'method':6} {'Sparseness':>12} {'out of range (pixels)':>22} {'(images)':>9}   N={N}, {TEST} digits")
for name, explain in methods.items():
  maps = jax.jit(jax.vmap(explain))(keys, xs, targets)               # (TEST, 28, 28, 1)
  gini = jax.vmap(metrics.sparseness)(maps)
  rates = jax.vmap(lambda k, x, s=sigmas[name]: ag.out_of_range_rate(k, x, s(x), N, bounds=BOUNDS))(keys, xs)
  print(f"{name:6} {float(gini.mean()):12.3f} {float(rates.per_element.mean()):22.1%}"
        f" {float(rates.per_input.mean()):9.0%}")
  assert np.all(np.isfinite(np.asarray(maps)))

# 3. The invariant behind the numbers: AdaptGrad never perturbs a pixel that sits on a bound.
sigma = ag.adaptive_sigma(xs[0], 0.95, bounds=BOUNDS)
on_bound = (xs[0] == 0.0) | (xs[0] == 1.0)
print(f"\n{int(on_bound.sum())} of 784 pixels of the first digit sit on a bound; AdaptGrad's sigma there:"
      f" max {float(jnp.max(jnp.where(on_bound, sigma, 0.0))):.1f}")
