"""A cheap unbiased correction of smoothed differentiation? The linear control variate, measured.

``smooth_diff``'s map is ``B(E[D])``: the backward pass ``B`` of the program
with every unit's local Jacobian ``D`` replaced by its mean over the noise.
One noisy sample's exact gradient is ``B(D_k)`` (the same backward pass with
that sample's Jacobians), and ``B`` is multilinear in the units' Jacobians.
Its linearisation around the means,

    h_k = B(E[D]) + dB(E[D])[D_k - E[D]],

has expectation ``B(E[D])`` exactly, so ``mean_k (B(D_k) - dB(E[D])[D_k -
E[D]])`` is an unbiased estimate of the smoothed gradient ``E[B(D)]`` whose
spread is that of the terms of ``B(D_k)`` beyond first order in the
Jacobians' deviations. (With ``E[D]`` estimated from separate forward passes
and only one directional derivative for all samples together, since ``dB`` is
linear, it costs m gradients, n forwards and one forward-over-reverse pass.)
It is exact for one hidden layer, where ``B`` is linear.

This script measures what matters before building it: the per-sample variance
of ``B(D_k)`` against that of ``B(D_k) - dB(E[D])[D_k - E[D]]`` (their ratio
is the most the correction can save in samples), with ``E[D]`` from
``--n-mean`` forward passes, on m = ``--m`` samples. The directional
derivative needs a backward pass that is differentiable in the Jacobians: the
library's attaches them with a ``custom_vjp`` (no forward mode), so this
benchmark-local version writes each unit as ``stop_gradient(y) +
F_D(inputs - stop_gradient(inputs))`` with ``F_D`` the transpose of the
unit's backward rule (same gradient, differentiable in ``D``).

Run: ``python -m benchmarks.control_variate --workloads mlp,lite0-chelsea-224,lite0-astronaut-224,resnet50-112``
(about 2 minutes a workload on 2 cores). Writes ``results/control_variate.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from adaptgrad_jax import _jaxpr_rules
from adaptgrad_jax import _smooth_diff
from adaptgrad_jax._noise import add_noise, unit_noise
from benchmarks import bench_estimators as be
from benchmarks._harness import environment

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _attach_differentiable(value, inputs, stat, backward):
  """``value`` whose VJP to ``inputs`` is ``backward(stat, .)``, written with ordinary (jvp-able) operations."""
  forward = jax.linear_transpose(lambda ct: backward(stat, ct), jax.ShapeDtypeStruct(jnp.shape(value),
                                                                                     jnp.result_type(value)))
  (tangent,) = forward(tuple(i - lax.stop_gradient(i) for i in inputs))
  return lax.stop_gradient(value) + tangent


@contextlib.contextmanager
def differentiable_units():
  saved = _jaxpr_rules._attach
  _jaxpr_rules._attach = _attach_differentiable
  try:
    yield
  finally:
    _jaxpr_rules._attach = saved


def measure(name: str, m: int, n_mean: int, seed: int = 7) -> dict[str, Any]:
  work = be.build(name)
  x = work.x
  f = lambda xx: work.f(xx, work.state)  # noqa: E731
  scale = be.noise_sigma("adapt", x, work.bounds)
  plan = _smooth_diff._program(f, (x,), {}, 0, x, "control_variate")

  def noisy(k):
    return add_noise(x, jax.tree.map(lambda e: e[0], unit_noise(k, x, scale, "iid")))

  def stats_at(k):
    return _jaxpr_rules.statistics(plan, jax.tree.leaves(noisy(k)))

  def backward(st):
    return jax.grad(lambda xx: _jaxpr_rules.surrogate(plan, [xx], st)[0])(x)

  @jax.jit
  def mean_stats(keys):
    zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(stats_at, keys[0]))
    total, _ = lax.scan(lambda acc, k: (jax.tree.map(jnp.add, acc, stats_at(k)), None), zero, keys)
    return jax.tree.map(lambda a: a / keys.shape[0], total)

  @jax.jit
  def one_sample(k, mean):
    st = stats_at(k)
    exact = jax.grad(f)(noisy(k))
    _, first_order = jax.jvp(backward, (mean,), (jax.tree.map(jnp.subtract, st, mean),))
    return exact, backward(st), first_order

  k_mean, k_samples = jax.random.split(jax.random.key(seed))
  start = time.perf_counter()
  with differentiable_units():
    mean = mean_stats(jax.random.split(k_mean, n_mean))
    rows = [one_sample(k, mean) for k in jax.random.split(k_samples, m)]
  seconds = time.perf_counter() - start
  grads = np.stack([np.asarray(r[0], np.float64) for r in rows])
  rebuilt = np.stack([np.asarray(r[1], np.float64) for r in rows])
  first = np.stack([np.asarray(r[2], np.float64) for r in rows])
  spread = lambda a: float(((a - a.mean(0)) ** 2).sum() / (len(a) - 1))  # noqa: E731
  var_g, var_res = spread(grads), spread(grads - first)
  beta = float(((grads - grads.mean(0)) * (first - first.mean(0))).sum() / ((first - first.mean(0)) ** 2).sum())
  return {
      "workload": name, "description": work.description, "m": m, "n_mean": n_mean, "seconds": seconds,
      "units": len(plan.units),
      "rebuilt_gradient_rel_diff": float(np.linalg.norm(rebuilt - grads) / np.linalg.norm(grads)),
      "variance_ratio": var_g / var_res, "best_scalar_coefficient": beta,
      "variance_ratio_at_best_coefficient": var_g / spread(grads - beta * first),
      "per_sample_rel_std": float(np.sqrt(var_g) / np.linalg.norm(grads.mean(0))),
  }


def markdown(results: dict[str, Any]) -> str:
  env = results["environment"]
  lines = ["# The linear control variate of smoothed differentiation", "",
           f"`python -m benchmarks.control_variate`, {env.get('date_utc', '')}, jax {env.get('jax', '')}; AdaptGrad"
           " c = 0.95. \"variance ratio\": per-sample variance of the exact noisy gradients over that of the"
           " gradients minus their first-order part in the units' Jacobians (the most the correction can save"
           " in samples, before its own cost).", "",
           "| workload | units | m | forwards for E[D] | B(D_k) vs grad | variance ratio | at best coefficient |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in results["runs"]:
    lines.append(f"| {r['workload']} | {r['units']} | {r['m']} | {r['n_mean']} | {r['rebuilt_gradient_rel_diff']:.1e}"
                 f" | {r['variance_ratio']:.3g} | {r['variance_ratio_at_best_coefficient']:.3g}"
                 f" ({r['best_scalar_coefficient']:.2f}) |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workloads", default="mlp,lite0-chelsea-224,lite0-astronaut-224,resnet50-112")
  parser.add_argument("--m", type=int, default=32, help="noisy samples whose spread is measured")
  parser.add_argument("--n-mean", type=int, default=256, help="forward passes for the units' mean Jacobians")
  parser.add_argument("--out", default=str(RESULTS))
  args = parser.parse_args(argv)
  runs = []
  for name in [w for w in args.workloads.split(",") if w]:
    runs.append(measure(name, args.m, args.n_mean))
    r = runs[-1]
    print(f"{name}: variance ratio {r['variance_ratio']:.3g} ({r['variance_ratio_at_best_coefficient']:.3g} at"
          f" coefficient {r['best_scalar_coefficient']:.2f}); B(D_k) vs grad {r['rebuilt_gradient_rel_diff']:.1e};"
          f" {r['seconds']:.0f} s", flush=True)
  results = {"environment": environment(), "runs": runs}
  out = pathlib.Path(args.out)
  (out / "control_variate.json").write_text(json.dumps(results, indent=1) + "\n")
  (out / "control_variate.md").write_text(markdown(results))
  return results


if __name__ == "__main__":
  main()
