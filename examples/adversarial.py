"""Adversarial attacks whose gradient is smoothed: FGSM and PGD with adapt_smooth(jax.grad(loss)).

The NeurIPS version of the AdaptGrad paper uses smoothed gradients as a
downstream task: an attack that follows a less noisy gradient. Here the
attacker's gradient of the cross-entropy loss is the plain gradient,
SmoothGrad's or AdaptGrad's, and we report how often each attack flips the
prediction of the paper's MNIST MLP (trained on the embedded digits, offline)
within an L-infinity budget eps, keeping the images in [0, 1].

    python examples/adversarial.py

Set ADAPTGRAD_EXAMPLES_SMALL=1 for a smaller run (the smoke test does).
"""

import os

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import adaptgrad_jax as ag
from adaptgrad_jax import datasets, models, training

SMALL = os.environ.get("ADAPTGRAD_EXAMPLES_SMALL") == "1"
TRAIN, EPOCHS, COUNT, N, STEPS = (2000, 1, 16, 8, 3) if SMALL else (10000, 5, 200, 20, 10)
EPS = 0.1

data = datasets.mnist_embedded()
model = models.mlp(rngs=nnx.Rngs(0))
training.train_classifier(model, data.x_train[:TRAIN], data.y_train[:TRAIN], epochs=EPOCHS,
                          learning_rate=0.05 if SMALL else 0.01, key=jax.random.key(0), progress=False)
model.eval()
graphdef, state = nnx.split(model)


def loss(x, label):
  """Cross-entropy of one image (no batch axis): the attacker ascends it."""
  logits = nnx.merge(graphdef, state)(x[None])[0]
  return optax.softmax_cross_entropy_with_integer_labels(logits, label)


grad_loss = jax.grad(loss)
gradients = {  # every one is gradient(key, x, label)
  "Grad": lambda key, x, y: grad_loss(x, y),
  "SG": ag.smooth_grad(grad_loss, 0.2, N, bounds=(0.0, 1.0)),  # MNIST in [0, 1]
  "AG": ag.adapt_smooth(grad_loss, 0.95, N, bounds=(0.0, 1.0)),
}


def pgd(gradient, key, x, y, steps):
  """L-inf PGD from x (FGSM when steps == 1), projected to the eps-ball and to [0, 1]."""
  step = jnp.where(steps == 1, EPS, 2.5 * EPS / steps)

  def body(i, adv):
    g = gradient(jax.random.fold_in(key, i), adv, y)
    adv = adv + step * jnp.sign(g)
    return jnp.clip(jnp.clip(adv, x - EPS, x + EPS), 0.0, 1.0)

  return jax.lax.fori_loop(0, steps, body, x)  # `steps` may be traced: one program for FGSM and PGD


xs, ys = jnp.asarray(data.x_test[:COUNT]), jnp.asarray(data.y_test[:COUNT])
predict = jax.jit(lambda batch: jnp.argmax(nnx.merge(graphdef, state)(batch), -1))
correct = predict(xs) == ys
keys = jax.random.split(jax.random.key(1), COUNT)
print(f"MLP test accuracy {training.evaluate(model, data.x_test, data.y_test):.1%}; attacking"
      f" {int(correct.sum())} correctly classified digits, eps = {EPS}, N = {N} noise samples per step")
print(f"{'gradient':8} {'FGSM success':>13} {'PGD-' + str(STEPS) + ' success':>14}")
for name, gradient in gradients.items():
  rates = []
  attack = jax.jit(jax.vmap(lambda k, x, y, s, g=gradient: pgd(g, k, x, y, s), in_axes=(0, 0, 0, None)))
  for steps in (1, STEPS):
    adv = attack(keys, xs, ys, steps)
    assert float(jnp.max(jnp.abs(adv - xs))) <= EPS + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    flipped = (predict(adv) != ys) & correct
    rates.append(float(flipped.sum() / correct.sum()))
  print(f"{name:8} {rates[0]:13.1%} {rates[1]:14.1%}")
