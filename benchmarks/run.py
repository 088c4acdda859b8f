"""Runs the adaptgrad-jax benchmark suite: one command, results as JSON, markdown and a plot.

    python -m benchmarks.run --quick            # about a minute: tiny sizes, checks the harness
    python -m benchmarks.run                    # the CPU suite (tens of minutes on 2 cores)
    python -m benchmarks.run --preset gpu --tag gpu

Each model runs in a fresh Python process (``--process-per method`` for one
per (model, method), ``--in-process`` for none); the peak RSS of a method is
read after resetting the process's high-water mark. Results go to ``benchmarks/results/<tag>.json``, ``<tag>.md``
and ``<tag>.png``. See benchmarks/README.md for what each method is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")

# Sizes per preset: (model, image size, ns). CPU sizes keep the 2-core suite under ~30 minutes.
PRESETS: dict[str, dict[str, Any]] = {
  "quick": {
    "models": [("mlp", 28, [4, 8]), ("convnet", 32, [4, 8])],
    "batch_sizes": [2, "auto"],
    "repeats": 1,
    "min_seconds": 0.0,
  },
  "cpu": {
    "models": [
      ("mlp", 28, [10, 50, 200]),
      ("convnet", 56, [10, 50, 200]),
      ("vgg16", 64, [10, 50], 1),
      ("resnet50", 64, [10, 50], 1),
      ("efficientnet_lite0", 64, [10, 50], 1),
    ],
    "batch_sizes": [5, "auto"],
    "repeats": 3,
    "min_seconds": 1.0,
  },
  "gpu": {
    "models": [
      ("mlp", 28, [10, 50, 200]),
      ("vgg16", 224, [50, 200]),
      ("resnet50", 224, [50, 200]),
      ("efficientnet_lite0", 224, [50, 200]),
      ("convnet", 56, [10, 50, 200]),
    ],
    "batch_sizes": [50, "auto"],
    "repeats": 3,
    "min_seconds": 0.5,
  },
}

SAME_NOISE = ("adapt_smooth", "jax_loop")


def jax_backend_is_cpu() -> bool:
  import jax  # pylint: disable=import-outside-toplevel

  return jax.default_backend() == "cpu"  # methods whose noise is split(key, n)[j]: equal results


def method_configs(batch_sizes, with_torch: bool, key_impls=()) -> list[dict[str, Any]]:
  configs = [{"method": "limit"}]
  if jax_backend_is_cpu():
    configs.append({"method": "limit", "xla_defaults": True})  # what cpu_compiler_options gives
  configs.append({"method": "adapt_smooth", "batch_size": None})
  if jax_backend_is_cpu():
    configs.append({"method": "adapt_smooth", "batch_size": None, "xla_defaults": True})
  configs += [{"method": "adapt_smooth", "batch_size": b} for b in batch_sizes]
  configs.append({"method": "jax_loop"})
  if with_torch:
    configs += [{"method": "torch_loop"}, {"method": "torch_batched"}]
  for impl in key_impls:
    configs += [{"method": "limit", "key_impl": impl}, {"method": "adapt_smooth", "batch_size": None, "key_impl": impl}]
  return configs


# ---------------------------------------------------------------------------
# Worker: one (model, method config) over several n, in this process.


def _reset_peak_rss() -> None:
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
      f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
  except OSError:
    pass


def run_worker(job: dict[str, Any], emit) -> None:
  """Measures ``job`` = {model, size, ns, configs: [{method, batch_size, key_impl}], repeats, min_seconds, save_dir}."""
  from benchmarks import _harness  # pylint: disable=import-outside-toplevel

  workload = _harness.build_workload(job["model"], job["size"])
  for config in job.get("configs") or [job]:
    for n in sorted(job["ns"]):
      batch_size = config.get("batch_size")
      if isinstance(batch_size, int) and batch_size >= n:
        continue  # the same as batch_size=None
      _reset_peak_rss()
      try:
        record = _harness.measure(
          workload, config["method"], n, batch_size=batch_size, repeats=job["repeats"],
          min_seconds=job["min_seconds"], key_impl=config.get("key_impl"),
          xla_defaults=config.get("xla_defaults", False),
        )
      except Exception as err:  # pylint: disable=broad-except
        emit({"model": job["model"], "size": job["size"], "n": n, "method": config["method"],
              "batch_size": batch_size, "key_impl": config.get("key_impl") or "threefry2x32",
              "error": f"{type(err).__name__}: {err}"[:2000]})
        continue
      result = record.pop("result")
      record["result_norm"] = float(np.linalg.norm(result))
      if job.get("save_dir"):
        label = _harness.method_label(config["method"], batch_size, config.get("key_impl"),
                                      config.get("xla_defaults", False))
        path = os.path.join(job["save_dir"], f"{job['model']}-{n}-{label}.npy".replace("/", "_"))
        np.save(path, result)
        record["result_path"] = path
      emit(record)


def _emit_stdout(record):
  print("RESULT " + json.dumps(record), flush=True)


# ---------------------------------------------------------------------------
# Orchestrator.


def run_suite(
  preset: dict[str, Any], *, with_torch: bool, in_process: bool, key_impls=(), log=print, timeout: float = 3600,
  checkpoint=None, process_per: str = "model",
) -> list[dict[str, Any]]:
  """Runs every (model, method config) of ``preset``; ``checkpoint(records)`` after each process.

  ``process_per="method"`` starts a fresh process per (model, method config)
  (clean peak RSS, but the model is built each time); ``"model"`` one per
  model (the peak RSS of a method is then measured after resetting the
  high-water mark, a lower bound when allocators keep freed memory).
  """
  records: list[dict[str, Any]] = []
  save_dir = tempfile.mkdtemp(prefix="adaptgrad-bench-")
  for entry in preset["models"]:
    model, size, ns = entry[:3]
    repeats = entry[3] if len(entry) > 3 else preset["repeats"]
    configs = method_configs(preset["batch_sizes"], with_torch, key_impls)
    groups = [configs] if process_per == "model" else [[c] for c in configs]
    for group in groups:
      job = {"model": model, "size": size, "ns": ns, "repeats": repeats,
             "min_seconds": preset["min_seconds"] if repeats > 1 else 0.0, "save_dir": save_dir, "configs": group}
      start = time.perf_counter()
      if in_process:
        run_worker(job, records.append)
      else:
        records.extend(_run_subprocess(job, log, timeout))
      what = "all methods" if len(group) > 1 else json.dumps(group[0])
      log(f"  {model:>18} {size:>3}  {what:<60} {time.perf_counter() - start:6.1f} s")
      if checkpoint is not None:
        _add_derived(records)
        checkpoint(records)
  _add_derived(records)
  return records


def _run_subprocess(job, log, timeout) -> list[dict[str, Any]]:
  cmd = [sys.executable, "-m", "benchmarks.run", "--worker", json.dumps(job)]
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  try:
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    log(f"    timeout after {timeout} s: {job}")
    return [{**_job_key(job), "error": f"timeout after {timeout} s"}]
  out = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  if proc.returncode != 0:
    log(f"    worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if not out:
      out.append({**_job_key(job), "error": proc.stderr[-2000:]})
  return out


def _job_key(job):
  return {"model": job["model"], "size": job["size"], "n": min(job["ns"]), "method": job["configs"][0]["method"],
          "batch_size": job["configs"][0].get("batch_size"), "key_impl": job["configs"][0].get("key_impl")}


def _label(record) -> str:
  from benchmarks._harness import method_label  # pylint: disable=import-outside-toplevel

  impl = record.get("key_impl")
  return method_label(record["method"], record.get("batch_size"), None if impl in (None, "threefry2x32") else impl,
                      record.get("xla_defaults", False))


def _add_derived(records: list[dict[str, Any]]) -> None:
  """Ratios to the limit (same model, n and key impl) and agreement with adapt_smooth[None]."""
  by_key = {}
  for r in records:
    if "error" not in r:
      r["label"] = _label(r)
      by_key[(r["model"], r["n"], r["key_impl"], r["label"].split("<")[0])] = r
  for r in records:
    if "error" in r:
      continue
    limit = by_key.get((r["model"], r["n"], r["key_impl"], "limit"))
    r["ratio_to_limit"] = r["samples_per_s"] / limit["samples_per_s"] if limit else None
    r["time_ratio_to_limit"] = r["median_s"] / limit["median_s"] if limit else None
    ref = by_key.get((r["model"], r["n"], r["key_impl"], "adapt_smooth[None]"))
    if ref and r.get("result_path") and ref.get("result_path") and r["method"] in SAME_NOISE:
      a, b = np.load(r["result_path"]), np.load(ref["result_path"])
      r["max_rel_diff_vs_adapt_smooth"] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
    if ref and r.get("result_path") and ref.get("result_path"):
      a, b = np.load(r["result_path"]), np.load(ref["result_path"])
      r["cosine_vs_adapt_smooth"] = float(np.sum(a * b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------------------
# Reports.


def _percent(value: Optional[float]) -> str:
  return "" if value is None else f"{100 * value:.0f}"


def _mb(value: Optional[float]) -> str:
  return "" if value is None else f"{value / 2**20:.0f}" if value >= 2**20 else f"{value / 2**20:.2f}"


def markdown(records: list[dict[str, Any]], env: dict[str, Any], title: str) -> str:
  lines = [f"# {title}", ""]
  lines.append(
    f"{env['date_utc']} UTC; {env.get('cpu_model', env['processor'])}, {env['cpu_count']} cores"
    + (f", {env['gpu']}" if env.get("gpu") else "")
    + f"; JAX {env['jax']} ({env['backend']}), jaxlib {env.get('jaxlib')}, Flax {env.get('flax')}, "
    f"PyTorch {env.get('torch')} ({env.get('torch_threads')} threads); load average at start "
    f"{', '.join(f'{v:.2f}' for v in env['load_average']) if env.get('load_average') else 'n/a'}."
  )
  lines.append("")
  lines.append(
    "samples/s = n / median wall time of one call (after a warm-up call); x limit = samples/s relative to "
    "(a) `limit` for the same model and n (above 1 is faster); compile = lower + compile seconds; mem MB = "
    "arguments + outputs + temporaries of the compiled function (XLA `memory_analysis()`; for `jax_loop` the "
    "per-sample step; for PyTorch on a GPU `torch.cuda.max_memory_allocated()`); RSS MB = peak resident memory of the process during the timed calls above its RSS "
    "before them (high-water mark reset before each method; not measured with --in-process); cos = cosine similarity with `adapt_smooth[None]`'s "
    "result (1 means identical noise, MC noise otherwise); steal % = share of the machine's CPU time the hypervisor "
    "gave to other guests during the timed calls (Linux /proc/stat; above a few % the row's timing is disturbed)."
  )
  options = env.get("jax_compiler_options")
  if options is not None:
    lines.append("")
    lines.append(
      "JAX methods are compiled with `compiler_options=ag.cpu.compiler_options()` = "
      f"`{json.dumps(options)}`" + ("; `limit[xla defaults]` is the limit compiled with XLA's default options."
                                    if options else ".")
    )
  lines += ["", "## Targets (issue 7.3), measured in this run", ""] + targets(records)
  models = []
  for r in records:
    if r["model"] not in models:
      models.append(r["model"])
  for model in models:
    rows = [r for r in records if r["model"] == model]
    size = rows[0].get("size")
    lines += ["", f"## {model} ({size} x {size})" if model != "mlp" else f"## {model} (28 x 28, 784-200-10)", ""]
    lines.append("| n | method | samples/s | x limit | median ms | compile s | mem MB | RSS MB | cos | steal % |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["n"], _order(r))):
      if "error" in r:
        lines.append(f"| {r['n']} | {_label_safe(r)} | error: {r['error'][:80]} | | | | | | | |")
        continue
      mem = (r.get("xla_memory") or {}).get("total") or r.get("torch_cuda_peak_bytes")
      rss = (max(r["rss_peak_bytes"] - r["rss_before_bytes"], 0)
             if r.get("rss_peak_bytes") and not env.get("in_process") else None)
      ratio = r.get("ratio_to_limit")
      cos = r.get("cosine_vs_adapt_smooth")
      lines.append(
        f"| {r['n']} | {r['label']} | {r['samples_per_s']:.1f} | {'' if ratio is None else f'{ratio:.2f}'} | "
        f"{1000 * r['median_s']:.1f} | {r['compile_s']:.2f} | {_mb(mem)} | {_mb(rss)} | "
        f"{'' if cos is None else f'{cos:.4f}'} | {_percent(r.get('steal_fraction'))} |"
      )
  return "\n".join(lines) + "\n"


def targets(records: list[dict[str, Any]]) -> list[str]:
  """Markdown bullets: each target of issue 7.3 with the measured ratios and whether it is met."""
  ok = {(r["model"], r["n"], r["label"]): r for r in records if "error" not in r and r["key_impl"] == "threefry2x32"}
  lines = []

  def get(model, n, label):
    return ok.get((model, n, label))

  ratios = []
  for (model, n, label), r in sorted(ok.items()):
    if label == "adapt_smooth[None]" and r.get("time_ratio_to_limit"):
      ratios.append(f"{model} n={n}: {r['time_ratio_to_limit']:.2f}")
  worst = max((float(v.rsplit(" ", 1)[1]) for v in ratios), default=None)
  if ratios:
    lines.append(
      f"- adapt_smooth (batch_size=None) time / limit time <= 1.05: {'met' if worst <= 1.05 else 'NOT met'} "
      f"(worst {worst:.2f}; {'; '.join(ratios)})"
    )
  for model in ("mlp",):
    parts = []
    for (m, n, label), r in sorted(ok.items()):
      loop = get(m, n, "torch_loop")
      if m == model and label == "adapt_smooth[None]" and loop:
        parts.append((n, r["samples_per_s"] / loop["samples_per_s"]))
    if parts:
      met = all(v >= 5 for _, v in parts)
      lines.append(f"- adapt_smooth >= 5x the PyTorch loop on the MLP: {'met' if met else 'NOT met'} ("
                   + "; ".join(f"n={n}: {v:.1f}x" for n, v in parts) + ")")
  for model in ("vgg16", "resnet50", "efficientnet_lite0"):
    parts = []
    for (m, n, label), r in sorted(ok.items()):
      batched = get(m, n, "torch_batched")
      if m == model and label == "adapt_smooth[None]" and batched:
        best = max((o for (mm, nn, ll), o in ok.items() if mm == m and nn == n and ll.startswith("adapt_smooth")),
                   key=lambda o: o["samples_per_s"])
        parts.append((n, r["samples_per_s"] / batched["samples_per_s"], best["label"],
                      best["samples_per_s"] / batched["samples_per_s"]))
    if parts:
      met = all(v >= 1.0 for _, v, _, _ in parts)
      lines.append(f"- adapt_smooth >= 1.0x batched PyTorch on {model}: {'met' if met else 'NOT met'} with "
                   "batch_size=None (" + "; ".join(f"n={n}: {v:.2f}x, best {b} {bv:.2f}x" for n, v, b, bv in parts)
                   + ")")
  parts = []
  for (m, n, label), r in sorted(ok.items()):
    if (label.startswith("adapt_smooth[") and label not in ("adapt_smooth[None]", "adapt_smooth[auto]")
        and "xla defaults" not in label):
      mem = (r.get("xla_memory") or {}).get("total")
      full = (get(m, n, "adapt_smooth[None]") or {}).get("xla_memory") or {}
      if mem and full.get("total"):
        parts.append(f"{m} {label} n={n}: {mem / 2**20:.0f} MB (None: {full['total'] / 2**20:.0f} MB)")
  if parts:
    lines.append("- peak memory grows with batch_size, not n (XLA memory analysis): " + "; ".join(parts))
  return lines


def _label_safe(r):
  try:
    return _label(r)
  except Exception:  # pylint: disable=broad-except
    return r.get("method", "?")


_ORDER = ["limit", "adapt_smooth", "jax_loop", "torch_loop", "torch_batched"]


def _order(r):
  label = r.get("label", r["method"])
  base = label.split("[")[0].split("<")[0]
  return (_ORDER.index(base) if base in _ORDER else 99, "<" in label, label)


def plot(records: list[dict[str, Any]], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  ok = [r for r in records if "error" not in r]
  models = list(dict.fromkeys(r["model"] for r in ok))
  fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.2), squeeze=False)
  for ax, model in zip(axes[0], models):
    rows = [r for r in ok if r["model"] == model]
    labels = sorted({r["label"] for r in rows}, key=lambda l: _order({"label": l, "method": l}))
    ns = sorted({r["n"] for r in rows})
    width = 0.8 / max(len(ns), 1)
    for i, n in enumerate(ns):
      values = [next((r["samples_per_s"] for r in rows if r["n"] == n and r["label"] == l), 0.0) for l in labels]
      ax.barh(np.arange(len(labels)) + i * width, values, height=width, label=f"n={n}")
    ax.set_yticks(np.arange(len(labels)) + 0.4 - width / 2)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xscale("log")
    positive = [r["samples_per_s"] for r in rows if r["samples_per_s"] > 0]
    if positive:
      ax.set_xlim(min(positive) / 3, max(positive) * 1.5)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("samples / s (log)")
    ax.set_title(model, fontsize=9)
    ax.invert_yaxis()
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_results(records, env, tag: str, out_dir: str, title: str, *, with_plot: bool = True) -> dict[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  paths = {ext: os.path.join(out_dir, f"{tag}.{ext}") for ext in ("json", "md", "png")}
  clean = [{k: v for k, v in r.items() if k != "result_path"} for r in records]
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump({"environment": env, "records": clean}, f, indent=1)
  with open(paths["md"], "w", encoding="utf-8") as f:
    f.write(markdown(records, env, title))
  if not with_plot:
    paths.pop("png")
    return paths
  try:
    plot(records, paths["png"], title)
  except Exception as err:  # pylint: disable=broad-except
    print(f"no plot: {err}")
    paths.pop("png")
  return paths


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks the harness")
  parser.add_argument("--preset", choices=sorted(PRESETS), help="cpu (default), gpu or quick")
  parser.add_argument("--models", help="comma-separated subset of the preset's models")
  parser.add_argument("--ns", help="comma-separated n, overriding the preset's")
  parser.add_argument("--size", type=int, help="image size for every model but the MLP")
  parser.add_argument("--batch-sizes", help="comma-separated adapt_smooth batch sizes (ints or auto)")
  parser.add_argument("--repeats", type=int)
  parser.add_argument("--key-impls", default="", help="also time limit/adapt_smooth with these key impls (rbg,unsafe_rbg)")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--in-process", action="store_true", help="no subprocesses (RSS then meaningless)")
  parser.add_argument("--process-per", choices=("model", "method"), default="model",
                      help="a fresh process per model (default) or per (model, method)")
  parser.add_argument("--tag", help="result file name (default: the preset)")
  parser.add_argument("--out", default=RESULTS_DIR)
  parser.add_argument("--render", help="re-render the markdown and plot of a results JSON file")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.worker:
    run_worker(json.loads(args.worker), _emit_stdout)
    return 0
  if args.render:
    with open(args.render, encoding="utf-8") as f:
      saved = json.load(f)
    for r in saved["records"]:
      if "error" not in r:
        r.setdefault("label", _label(r))
    tag = os.path.splitext(os.path.basename(args.render))[0]
    env = saved["environment"]
    title = f"adaptgrad-jax benchmarks: {tag} ({env['backend']})"
    print("wrote " + ", ".join(write_results(saved["records"], env, tag, os.path.dirname(args.render), title).values()))
    return 0

  name = "quick" if args.quick else (args.preset or "cpu")
  preset = dict(PRESETS[name])
  if args.models:
    wanted = args.models.split(",")
    known = {m[0]: m for m in PRESETS["cpu"]["models"] + PRESETS["gpu"]["models"]}
    preset["models"] = [next((m for m in preset["models"] if m[0] == w), known.get(w)) for w in wanted]
  if args.size:
    preset["models"] = [(e[0], 28 if e[0] == "mlp" else args.size, *e[2:]) for e in preset["models"]]
  if args.ns:
    ns = [int(v) for v in args.ns.split(",")]
    preset["models"] = [(e[0], e[1], ns, *e[3:]) for e in preset["models"]]
  if args.batch_sizes:
    preset["batch_sizes"] = [v if v == "auto" else int(v) for v in args.batch_sizes.split(",")]
  if args.repeats:  # for every model, the ImageNet ones' single call included
    preset["repeats"] = args.repeats
    preset["models"] = [tuple(e[:3]) for e in preset["models"]]
  with_torch = not args.no_torch
  if with_torch:
    try:
      import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      print("PyTorch is not installed: skipping the PyTorch baselines")
      with_torch = False

  from benchmarks import _harness  # pylint: disable=import-outside-toplevel

  env = _harness.environment()
  tag = args.tag or name
  print(f"adaptgrad-jax benchmarks ({tag}): JAX {env['jax']} on {env['backend']}, load {env.get('load_average')}")
  key_impls = [k for k in args.key_impls.split(",") if k]
  title = f"adaptgrad-jax benchmarks: {tag} ({env['backend']})"
  in_process = args.in_process or name == "quick"
  env["in_process"] = in_process
  records = run_suite(
    preset, with_torch=with_torch, in_process=in_process, key_impls=key_impls, process_per=args.process_per,
    checkpoint=lambda recs: write_results(recs, env, tag, args.out, title, with_plot=False),
  )
  env["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
  paths = write_results(records, env, tag, args.out, title)
  print(markdown(records, env, title))
  print("wrote " + ", ".join(paths.values()))
  errors = [r for r in records if "error" in r]
  return 1 if errors else 0


if __name__ == "__main__":
  sys.exit(main())
