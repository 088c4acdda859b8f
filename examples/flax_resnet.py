"""AdaptGrad on a Flax NNX ResNet-18 with the Flax adapter.

``flax_adapters.nnx_target_fn(model, target)`` turns an NNX module into the
scalar function of ONE image to differentiate (eval mode: batch-norm running
averages, no dropout), so ``adapt_smooth(jax.grad(f))`` explains it. The
ResNet here has random weights (pass ``weights=adaptgrad_jax.weights.pretrained("resnet18")``
for torchvision's ImageNet weights, downloaded once); the input is the bundled
``chelsea`` photo in torchvision's ImageNet normalisation, whose bounds are per
channel.

    python examples/flax_resnet.py

Set ADAPTGRAD_EXAMPLES_SMALL=1 for a tiny ResNet-10 at 32 x 32 (the smoke test does): 8 channels in
every stage, so its random initialisation compiles for 4 weight shapes rather than 13.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import adaptgrad_jax as ag
from adaptgrad_jax import flax_adapters, metrics, models

SMALL = os.environ.get("ADAPTGRAD_EXAMPLES_SMALL") == "1"
SIZE, N, WIDTHS = (32, 4, (8, 8, 8, 8)) if SMALL else (128, 20, (64, 128, 256, 512))

# A ResNet-18 (random weights), in eval mode; the smoke test uses a tiny ResNet-10 (one block per stage).
if SMALL:
  model = models.ResNet(models.BasicBlock, (1, 1, 1, 1), widths=WIDTHS, rngs=nnx.Rngs(0))
else:
  model = models.resnet18(rngs=nnx.Rngs(0), widths=WIDTHS)
model.eval()

# The photo, preprocessed as torchvision does (resize, center crop, ImageNet mean / std).
x = jnp.asarray(models.preprocess_imagenet(models.load_photo("chelsea"), resize=SIZE, crop=SIZE))
bounds = tuple(jnp.asarray(b) for b in models.IMAGENET_BOUNDS)   # per channel, shape (3,)
ag.check_bounds(x, bounds)

logits = nnx.jit(lambda m, xs: m(xs))(model, x[None])[0]
target = int(jnp.argmax(logits))                          # the predicted class, on the clean image
f = flax_adapters.nnx_target_fn(model, target)           # f(x): logit of `target` for one HWC image
grad_fn = jax.grad(f)

explainers = {
  "Grad": jax.jit(lambda key, x: grad_fn(x)),
  "SG": jax.jit(ag.smooth_grad(grad_fn, 0.2, N, bounds=bounds, batch_size=N // 2)),
  "AG": jax.jit(ag.adapt_smooth(grad_fn, 0.95, N, bounds=bounds, batch_size=N // 2)),
}
key = jax.random.key(0)
print(f"ResNet-{10 if SMALL else 18} widths {WIDTHS} at {SIZE}x{SIZE}, class {target}, N={N}")
for name, explain in explainers.items():
  attribution = explain(key, x)                          # (SIZE, SIZE, 3), like x
  assert attribution.shape == x.shape and bool(jnp.all(jnp.isfinite(attribution)))
  print(f"{name:4} sparseness {float(metrics.sparseness(attribution)):.3f}")

rates = {name: float(ag.out_of_range_rate(key, x, sigma, N, bounds=bounds).per_element)
         for name, sigma in (("SG", ag.smoothgrad_sigma(0.2, bounds=bounds)),
                             ("AG", ag.adaptive_sigma(x, 0.95, bounds=bounds)))}
print(f"noisy pixels outside the data range: SG {rates['SG']:.1%}, AG {rates['AG']:.1%}")
print("one image per call; a batch is jax.vmap(explain)(keys, xs), e.g.",
      np.asarray(jax.vmap(explainers["AG"])(jax.random.split(key, 2), jnp.stack([x, x]))).shape)
