"""What the CPU rewrite buys: ``adapt_smooth`` with ``cpu_rewrite=True`` against ``False``, called in turns.

For each model, both programs are compiled once, then called in alternating
rounds (each round at least ``--round-seconds`` of calls), and the per-round
time ratio off / on is reported as a median with its range: the comparison
least affected by a shared machine's load. Also: the un-jitted (eager) call of
the MLP, which the rewrite must not slow down (it does not apply there).

    python -m benchmarks.bench_cpu_rewrite            # writes results/cpu_rewrite.{json,md}
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

import adaptgrad_jax as ag
from benchmarks import _harness

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CONFIGS = (("mlp", None, 10), ("mlp", None, 50), ("convnet", None, 50),
           ("efficientnet_lite0", 64, 20), ("resnet50", 64, 20), ("vgg16", 64, 10))


def _round(fn, seconds: float) -> float:
  """Mean seconds per call over at least ``seconds`` of calls."""
  calls, start = 0, time.perf_counter()
  while True:
    jax.block_until_ready(fn())
    calls += 1
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
      return elapsed / calls


def compare(name: str, size, n: int, rounds: int, seconds: float) -> dict:
  w = _harness.build_workload(name, size)
  key, x = jax.random.key(0), jnp.asarray(w.x)
  grad = jax.grad(w.logit)
  programs, compile_s = {}, {}
  for switch in (True, False):
    fn = jax.jit(ag.adapt_smooth(grad, 0.95, n, bounds=_harness.BOUNDS, cpu_rewrite=switch),
                 compiler_options=ag.cpu.compiler_options())
    start = time.perf_counter()
    compiled = fn.lower(key, x, w.state).compile()
    compile_s[switch] = time.perf_counter() - start
    programs[switch] = (lambda c=compiled: c(key, x, w.state))
    jax.block_until_ready(programs[switch]())
  on, off = [], []
  for _ in range(rounds):
    on.append(_round(programs[True], seconds))
    off.append(_round(programs[False], seconds))
  ratios = [b / a for a, b in zip(on, off)]
  return {
      "model": name, "size": w.size, "n": n, "on_ms": 1e3 * statistics.median(on),
      "off_ms": 1e3 * statistics.median(off), "off_over_on": statistics.median(ratios),
      "ratio_range": [min(ratios), max(ratios)], "compile_on_s": compile_s[True], "compile_off_s": compile_s[False],
  }


def eager_mlp(rounds: int, seconds: float) -> dict:
  w = _harness.build_workload("mlp")
  key, x = jax.random.key(0), jnp.asarray(w.x)
  grad = jax.grad(w.logit)
  calls = {s: ag.adapt_smooth(grad, 0.95, 10, bounds=_harness.BOUNDS, cpu_rewrite=s) for s in (True, False)}
  for s in calls:
    jax.block_until_ready(calls[s](key, x, w.state))
  on = [_round(lambda: calls[True](key, x, w.state), seconds) for _ in range(rounds)]
  off = [_round(lambda: calls[False](key, x, w.state), seconds) for _ in range(rounds)]
  return {"model": "mlp (eager, un-jitted)", "n": 10, "on_ms": 1e3 * statistics.median(on),
          "off_ms": 1e3 * statistics.median(off),
          "off_over_on": statistics.median([b / a for a, b in zip(on, off)])}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--round-seconds", type=float, default=0.3)
  parser.add_argument("--models", nargs="*", default=None, help="subset of " + ", ".join(c[0] for c in CONFIGS))
  parser.add_argument("--out", default=str(RESULTS / "cpu_rewrite"))
  args = parser.parse_args(argv)
  rows = []
  for name, size, n in CONFIGS:
    if args.models and name not in args.models:
      continue
    rows.append(compare(name, size, n, args.rounds, args.round_seconds))
    print(json.dumps(rows[-1]), flush=True)
  rows.append(eager_mlp(args.rounds, args.round_seconds))
  print(json.dumps(rows[-1]), flush=True)
  env = _harness.environment()
  out = pathlib.Path(args.out)
  out.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
  lines = ["# The CPU rewrite: adapt_smooth with cpu_rewrite=True vs False", "",
           f"{env.get('date_utc', '')} UTC, {env.get('processor', '')} x {env.get('cpu_count', '')}, load average {env.get('load_average')}, jax {jax.__version__}. Called in turns,"
           f" {args.rounds} rounds of >= {args.round_seconds} s; off/on > 1 means the rewrite is faster.", "",
           "| model | px | n | on (ms) | off (ms) | off / on (range) | compile on / off (s) |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    rng = r.get("ratio_range")
    rng_text = f" ({rng[0]:.2f}-{rng[1]:.2f})" if rng else ""
    compile_text = f"{r['compile_on_s']:.1f} / {r['compile_off_s']:.1f}" if "compile_on_s" in r else "-"
    lines.append(f"| {r['model']} | {r.get('size', '-')} | {r['n']} | {r['on_ms']:.2f} | {r['off_ms']:.2f} |"
                 f" {r['off_over_on']:.2f}{rng_text} | {compile_text} |")
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
