"""Cost of smooth_diff and moment_smooth against jitted forwards and one gradient (issue 28's budget).

A small CNN (two 3 x 3 convolutions with ReLU, a 2 x 2 max-pool, global average
pooling, a dense layer) on a 32 x 32 x 3 input, random weights, CPU. All
functions are jitted and warmed up, then timed in turns (``--rounds`` rounds,
median per function), so machine load affects them alike:

* ``forward_n``: ``jax.vmap(f)`` over n noisy inputs (n jitted forward passes);
* ``grad``: ``jax.grad(f)`` at one input;
* ``smooth_diff``: ``ag.smooth_diff(f, n, c=0.95, bounds=(0, 1))``;
* ``moment_smooth``: ``ag.moment_smooth(f, c=0.95, bounds=(0, 1))``;
* ``adapt_smooth``: ``ag.adapt_smooth(jax.grad(f), 0.95, n, bounds=(0, 1))`` (n gradients).

The budget: smooth_diff <= 1.2 x forward_n + grad, moment_smooth <= 4 x grad.
Run: ``python benchmarks/cost_smooth_diff.py --n 64 --rounds 15``.

``--lite0 224`` times EfficientNet-Lite0 with its ImageNet weights on the
bundled ``chelsea`` photo instead (forwards and gradient through the
library's CPU rewrite, as the transforms run them), and smooth_diff once more
with the rewrite's sum-as-dot rule off, to show what that rule saves.

``--bias`` instead prints the relative L2 errors of docs/estimators.md on the
two-layer net of ``tests/test_smooth_diff.py`` (ReLU then tanh, sigma = 0.3)
against a 40,000-sample SmoothGrad, for an independent second layer ``V`` and
a coherent one ``W1^T``.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import adaptgrad_jax as ag


def small_cnn(key):
  k = jax.random.split(key, 3)
  w1 = jax.random.normal(k[0], (3, 3, 3, 16)) * 0.3
  w2 = jax.random.normal(k[1], (3, 3, 16, 32)) * 0.1
  w3 = jax.random.normal(k[2], (32, 10)) * 0.3
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def f(x):
    h = jax.nn.relu(conv(x[None], w1) - 0.1)
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = jax.nn.relu(conv(h, w2))
    return (jnp.mean(h, axis=(1, 2)) @ w3)[0, 3]

  return f


def bias():
  w1 = jax.random.normal(jax.random.key(1), (12, 6))
  b1 = 0.3 * jax.random.normal(jax.random.key(2), (12,))
  v = jax.random.normal(jax.random.key(4), (6, 12)) / np.sqrt(12)
  x = jnp.array([0.3, 0.5, 0.2, 0.7, 0.6, 0.45])
  for name, second in (("independent V", v), ("coherent W1^T", w1.T)):
    f = lambda x, second=second: jnp.sum(jnp.tanh(second @ jax.nn.relu(w1 @ x + b1) - 0.5))
    ref = jax.jit(ag.smooth_grad(jax.grad(f), n=40000, sigma=0.3, batch_size=10000, return_stderr=True))(
        jax.random.key(9), x)
    rel = lambda m, ref=ref: float(jnp.linalg.norm(m - ref.value) / jnp.linalg.norm(ref.value))
    print(f"{name}: reference rel. stderr {float(ag.relative_error(ref)):.3f};"
          f" plain gradient {rel(jax.grad(f)(x)):.2f};"
          f" SmoothGrad n=64 {rel(jax.jit(ag.smooth_grad(jax.grad(f), n=64, sigma=0.3))(jax.random.key(1), x)):.2f};"
          f" smooth_diff n=4096 {rel(jax.jit(ag.smooth_diff(f, 4096, sigma=0.3))(jax.random.key(1), x)):.2f};"
          f" moment_smooth {rel(jax.jit(ag.moment_smooth(f, sigma=0.3))(x)):.2f}")


def lite0_functions(n: int, size: int) -> dict:
  """EfficientNet-Lite0 (ImageNet weights) on the ``chelsea`` photo: the library's CPU rewrite on every side."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax import cpu, models  # pylint: disable=import-outside-toplevel

  model = models.pretrained_efficientnet_lite0()
  model.eval()
  graph, state = nnx.split(model)
  x = jnp.asarray(models.preprocess_efficientnet_lite(models.load_photo("chelsea"), size=size))
  target = int(jnp.argmax(model(x[None])[0]))
  f = lambda x, state: nnx.merge(graph, state)(x[None])[0, target]
  bounds = models.EFFICIENTNET_LITE_BOUNDS
  key = jax.random.key(2)
  xs = x[None] + 0.05 * jax.random.normal(jax.random.key(1), (n, *x.shape))
  smooth_diff = lambda: jax.jit(ag.smooth_diff(f, n, c=0.95, bounds=bounds))
  return {
      "forward_n": (jax.jit(cpu.rewrite(jax.vmap(f, in_axes=(0, None)))), (xs, state)),
      "grad": (jax.jit(cpu.rewrite(jax.grad(f))), (x, state)),
      "smooth_diff": (smooth_diff(), (key, x, state)),
      "smooth_diff, leading sums not rewritten": (_without_leading_sum_rule(smooth_diff()), (key, x, state)),
      "moment_smooth": (jax.jit(ag.moment_smooth(f, c=0.95, bounds=bounds)), (x, state)),
      "adapt_smooth": (jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, n, bounds=bounds)), (key, x, state)),
  }


def _without_leading_sum_rule(fn):
  """``fn`` compiled (at its first call) with the CPU rewrite's sum-as-dot rule off: the cost before it."""
  from adaptgrad_jax.cpu import _interpreter  # pylint: disable=import-outside-toplevel

  def first_call(*args):
    saved, _interpreter._LEADING_SUM_MIN_SIZE = _interpreter._LEADING_SUM_MIN_SIZE, float("inf")
    try:
      return fn(*args)
    finally:
      _interpreter._LEADING_SUM_MIN_SIZE = saved

  calls = iter([first_call])
  return lambda *args: next(calls, fn)(*args)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--calls", type=int, default=2,
                      help="calls per function and turn; the last is timed (a warm call, as in a loop over inputs)")
  parser.add_argument("--bias", action="store_true")
  parser.add_argument("--lite0", type=int, default=0, metavar="SIZE",
                      help="time EfficientNet-Lite0 (real weights, chelsea) at SIZE px instead of the small CNN")
  args = parser.parse_args()
  if args.bias:
    bias()
    return
  if args.lite0:
    fns = lite0_functions(args.n, args.lite0)
  else:
    f = small_cnn(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(32, 32, 3)), jnp.float32)
    xs = x[None] + 0.05 * jax.random.normal(jax.random.key(1), (args.n, 32, 32, 3))
    key = jax.random.key(2)
    fns = {
        "forward_n": (jax.jit(jax.vmap(f)), (xs,)),
        "grad": (jax.jit(jax.grad(f)), (x,)),
        "smooth_diff": (jax.jit(ag.smooth_diff(f, args.n, c=0.95, bounds=(0.0, 1.0))), (key, x)),
        "moment_smooth": (jax.jit(ag.moment_smooth(f, c=0.95, bounds=(0.0, 1.0))), (x,)),
        "adapt_smooth": (jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, args.n, bounds=(0.0, 1.0))), (key, x)),
    }
  times = {name: [] for name in fns}
  for fn, call in fns.values():
    jax.block_until_ready(fn(*call))
  for _ in range(args.rounds):
    for name, (fn, call) in fns.items():
      for _ in range(args.calls):  # the last call of a turn: a warm allocator, as in a loop over many inputs
        start = time.perf_counter()
        jax.block_until_ready(fn(*call))
      times[name].append(time.perf_counter() - start)
  med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
  for name, t in med.items():
    print(f"{name:40s} {t:9.2f} ms")
  budget = 1.2 * med["forward_n"] + med["grad"]
  print(f"smooth_diff / (forward_n + grad) = {med['smooth_diff'] / (med['forward_n'] + med['grad']):.2f}"
        f"  (budget: <= {budget:.2f} ms, i.e. ratio to 1.2 forward_n + grad = {med['smooth_diff'] / budget:.2f})")
  print(f"moment_smooth / grad = {med['moment_smooth'] / med['grad']:.2f}  (budget 4)")
  print(f"adapt_smooth / smooth_diff = {med['adapt_smooth'] / med['smooth_diff']:.2f}")


if __name__ == "__main__":
  main()
