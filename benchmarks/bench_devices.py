"""Throughput of `adaptgrad_jax.attribute.attribute` against the number of devices.

Explains random MNIST-sized inputs with AdaptGrad (``adapt_smooth``, c=0.95)
on a small MLP (784-256-256-10, fixed random weights) and measures examples/s
with the maps kept in memory and streamed to ``.npy`` shards on disk, for each
device count, in steady state and end to end (including the one compilation
per ``attribute`` call). Every device count runs in its own subprocess, because the
number of forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count``)
must be set before JAX starts. Each run's maps are compared with the
1-device maps (they must agree to float rounding: keys depend on the example
index only).

On a CPU machine the "devices" are host threads sharing the same cores, so
the table shows correctness and the overhead of sharding, not a speed-up.
With ``--platform gpu`` (or tpu) the script uses the real local accelerators
instead (device counts up to their number).

Usage:
  python benchmarks/bench_devices.py                 # CPU: 1, 2, 4, 8 devices
  python benchmarks/bench_devices.py --platform gpu --examples 65536 \
      --batch-size 1024 --tag gpu

Writes ``benchmarks/results/bench_devices[_TAG].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _worker(args) -> None:
  sys.path.insert(0, str(REPO))
  import jax
  import jax.numpy as jnp
  import numpy as np

  from adaptgrad_jax import adapt_smooth
  from adaptgrad_jax.attribute import attribute

  rng = np.random.default_rng(0)
  sizes = [784, 256, 256, 10]
  params = [(rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
            for a, b in zip(sizes[:-1], sizes[1:])]

  def logit(x, target=3):
    h = x
    for w in params[:-1]:
      h = jax.nn.relu(h @ w)
    return (h @ params[-1])[target]

  explain = adapt_smooth(jax.grad(logit), 0.95, args.n, bounds=(0.0, 1.0))
  xs = rng.uniform(size=(args.examples, 784)).astype(np.float32)
  count = args.devices[0]
  devices = jax.local_devices()[:count]
  if len(devices) != count:
    sys.exit(f"asked for {count} devices, {len(jax.local_devices())} exist")
  mesh = jax.make_mesh((count,), ("data",), devices=devices)
  key = jax.random.key(0)
  kw = dict(batch_size=args.batch_size, mesh=mesh, progress=False)

  B, N = args.batch_size, args.examples

  def timed(out=None):
    """(seconds to first steady batch, seconds in total, result).

    Data comes as an iterable whose batch requests are time-stamped:
    ``attribute`` asks for batch 1 only after compiling and dispatching
    batch 0, so the time from that request to the end is compile-free.
    """
    stamps = []

    def batches():
      for i in range(0, N, B):
        stamps.append(time.perf_counter())
        yield xs[i:i + B]

    t = time.perf_counter()
    res = attribute(explain, key, batches(), out=out, num_examples=N, **kw)
    return stamps[1] - t, time.perf_counter() - t, res

  first_mem, full_mem, res = timed()
  maps = np.asarray(res)
  with tempfile.TemporaryDirectory() as tmp:
    first_disk, full_disk, _ = timed(pathlib.Path(tmp) / "maps")
  np.save(args.save, maps)
  print(json.dumps({
      "devices": count, "platform": devices[0].platform,
      "device_kind": devices[0].device_kind, "jax": jax.__version__,
      "compile_and_first_batch_s": first_mem, "memory_s": full_mem,
      "disk_s": full_disk, "compile_and_first_batch_disk_s": first_disk,
      "memory_examples_per_s": (N - B) / (full_mem - first_mem),
      "disk_examples_per_s": (N - B) / (full_disk - first_disk),
      "end_to_end_memory_examples_per_s": N / full_mem,
      "end_to_end_disk_examples_per_s": N / full_disk}))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
  p.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"])
  p.add_argument("--examples", type=int, default=2048)
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--n", type=int, default=16, help="noise samples per map")
  p.add_argument("--tag", default="", help="suffix of the result files")
  p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--save", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    _worker(args)
    return

  import numpy as np
  load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for d in args.devices:
      env = dict(os.environ)
      if args.platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={d}")
      save = str(pathlib.Path(tmp) / f"maps_{d}.npy")
      cmd = [sys.executable, __file__, "--worker", "--devices", str(d),
             "--examples", str(args.examples), "--batch-size",
             str(args.batch_size), "--n", str(args.n), "--save", save]
      done = subprocess.run(cmd, env=env, capture_output=True, text=True)
      if done.returncode:
        sys.exit(f"worker with {d} devices failed:\n{done.stderr[-4000:]}")
      row = json.loads(done.stdout.strip().splitlines()[-1])
      maps = np.load(save)
      base = np.load(str(pathlib.Path(tmp) / f"maps_{args.devices[0]}.npy"))
      row["max_abs_diff_vs_first"] = float(np.max(np.abs(maps - base)))
      row["max_abs_map"] = float(np.max(np.abs(base)))
      rows.append(row)
      print(json.dumps(row), flush=True)

  config = {"examples": args.examples, "batch_size": args.batch_size,
            "n": args.n, "model": "MLP 784-256-256-10, adapt_smooth c=0.95",
            "platform": args.platform, "host": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(),
            "load_average_1min_before": load_before}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = "bench_devices" + (f"_{args.tag}" if args.tag else "")
  (out / f"{stem}.json").write_text(json.dumps(
      {"config": config, "rows": rows}, indent=1) + "\n")
  lines = [
      f"Attribution throughput: {args.examples} examples, batch_size="
      f"{args.batch_size}, AdaptGrad n={args.n} on an MLP 784-256-256-10, "
      f"{rows[0]['platform']} ({rows[0]['device_kind']}), "
      f"{os.cpu_count()} host cores (1-min load average "
      f"{'?' if load_before is None else f'{load_before:.1f}'} before the "
      f"run), jax {rows[0]['jax']}.",
      "",
      "| devices | examples/s in memory | examples/s to .npy shards | "
      "end-to-end examples/s in memory (incl. compile) | compile + first "
      f"batch (s) | max abs diff vs {args.devices[0]} device(s) |",
      "|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
        f"| {r['devices']} | {r['memory_examples_per_s']:.0f} | "
        f"{r['disk_examples_per_s']:.0f} | "
        f"{r['end_to_end_memory_examples_per_s']:.0f} | "
        f"{r['compile_and_first_batch_s']:.2f} | "
        f"{r['max_abs_diff_vs_first']:.1e} |")
  lines += ["", "Steady state: the examples after the first batch divided by "
            "the time from the request of batch 2 (after compiling and "
            "dispatching batch 1) to the end. Each attribute() call compiles "
            "once; end to end includes that."]
  if args.platform == "cpu":
    lines += ["", f"Forced host devices share the machine's {os.cpu_count()} "
              "cores. On 2 cores this shows correctness and sharding "
              "overhead, not speed-up; with more cores each forced device "
              "gets its own thread, so some speed-up can appear."]
  (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
