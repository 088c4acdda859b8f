"""How many samples are enough? Monte Carlo error of SmoothGrad and AdaptGrad per noise scheme (issue 16).

For each model, method (SmoothGrad alpha = 0.2, AdaptGrad c = 0.95) and noise
scheme (``"iid"``, ``"antithetic"``, ``"orthogonal"``) it measures:

* **Error against a reference.** The reference is the i.i.d. mean of ``n_ref``
  samples (its own relative standard error is recorded). For each of ``keys``
  keys the transform is called once with ``n = n_max`` and ``has_aux=True``
  (the gradient function returns its gradient as aux too), which gives every
  sample's gradient in the order of its unit. The mean of the first ``m``
  samples (``m`` a multiple of the scheme's unit) *is* the scheme's estimate
  with ``m`` samples: its units are independent and identically distributed,
  as those of a call with ``n = m`` (whose keys differ, not their law). So one
  call per key gives the whole grid ``n = 8, 16, ..., n_max``. The relative
  error ``||map - reference|| / ||reference||`` is averaged over the keys; the
  smallest grid n whose mean is below 10%, 5% and 2% is reported. Past
  ``n_max`` the count is extrapolated by the ``1/sqrt(n)`` law (marked ``~``).
  Errors are also reported with the reference's own Monte Carlo variance
  subtracted (``sqrt(err^2 - ref_err^2)``), which the raw figure contains.
* **Variance ratio.** The mean over keys of ``relative_error(estimate)^2``
  (the library's standard error, independent of the reference) at ``n_max``,
  i.i.d. over scheme: how many times fewer evaluations the scheme needs for
  the same error (the goal of issue 16 is at least 2x for the best scheme).
* **Wall time.** The seconds per gradient evaluation of each timed call at
  ``n_max`` (the median over keys after a warm-up call), times the
  evaluations needed. Secondary: this machine is shared.
* **Calibration.** RMS over elements of the standard deviation over keys of
  the map at ``n_max``, over the RMS of the reported ``stderr`` (goal 0.85 to 1.15).
* **Cost of ``return_stderr=True``** over the plain map (same n, calls in
  turns, medians), and **``rtol``**: ``num_samples`` of a call with ``rtol``
  against the smallest multiple of the chunk (from 2 chunks) whose relative
  standard error, computed from the same units' gradients, is at most rtol.

Run ``python -m benchmarks.bench_precision`` (all four models, ~25 minutes on
2 shared cores) or ``--quick`` (tiny sizes, seconds). Writes
``benchmarks/results/<tag>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import adaptgrad_jax as ag
from adaptgrad_jax import models
from adaptgrad_jax._files import atomic_write
from adaptgrad_jax._noise import group_size
from benchmarks._harness import environment

SCHEMES = ("iid", "antithetic", "orthogonal", "lhs")
METHODS = ("smooth_grad", "adapt_smooth")
TARGETS = (0.10, 0.05, 0.02)
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class Workload(NamedTuple):
  name: str
  description: str
  logit: Callable[[jax.Array, Any], jax.Array]  # logit(x, state), a scalar
  state: Any
  x: jax.Array
  bounds: Any


class Settings(NamedTuple):
  n_max: int
  n_ref: int
  keys: int
  batch_size: int
  rtol_check: bool = True  # one more compile per scheme: the MLP only in the full run
  stderr_cost: bool = True


# Full-run settings per model, chosen to fit ~25 minutes on 2 shared cores (see the docstring and docs/precision.md).
# The machine ran at a load average of ~14 on 2 cores (this process got ~1/4 of a core): compiles dominate.
FULL = {
  "mlp": Settings(n_max=1024, n_ref=4096, keys=8, batch_size=1024),
  "efficientnet_lite0": Settings(n_max=64, n_ref=512, keys=4, batch_size=64, rtol_check=False),
  "resnet50": Settings(n_max=64, n_ref=256, keys=3, batch_size=64, rtol_check=False, stderr_cost=False),
  "vgg16": Settings(n_max=64, n_ref=256, keys=3, batch_size=64, rtol_check=False, stderr_cost=False),
}
QUICK = Settings(n_max=16, n_ref=32, keys=3, batch_size=16)


def _from_model(name, description, model, x, bounds) -> Workload:
  model.eval()
  graphdef, state = nnx.split(model)
  logits = lambda x, state: nnx.merge(graphdef, state)(x[None])[0]
  target = int(jnp.argmax(jax.jit(logits)(x, state)))
  return Workload(name, f"{description}; target class {target}",
                  lambda x, state: logits(x, state)[target], state, x, bounds)


def build(name: str, size: Optional[int] = None, *, quick: bool = False) -> Workload:
  """The model ``name`` on its input: trained MNIST MLP, pretrained EfficientNet-Lite0, random VGG16/ResNet50."""
  if name == "mlp":
    if quick:
      model, description = models.mlp(rngs=nnx.Rngs(0)), "MLP 784-200-10, random weights (quick)"
    else:
      from adaptgrad_jax.cli._mnist import demo_mlp  # pylint: disable=import-outside-toplevel

      model, description = demo_mlp(progress=False)
    from adaptgrad_jax import datasets  # pylint: disable=import-outside-toplevel

    x = jnp.asarray(datasets.mnist_embedded().x_test[0]).reshape(28, 28, 1)
    return _from_model(name, f"{description}; first embedded MNIST test digit", model, x, (0.0, 1.0))
  if name == "efficientnet_lite0":
    size = size or 64
    model = models.pretrained_efficientnet_lite0()
    x = jnp.asarray(models.preprocess_efficientnet_lite(models.load_photo("chelsea"), size=size))
    return _from_model(name, f"EfficientNet-Lite0, ImageNet weights, 'chelsea' photo at {size} x {size}",
                       model, x, models.EFFICIENTNET_LITE_BOUNDS)
  if name in ("vgg16", "resnet50"):
    size = size or 32
    model = getattr(models, name)(rngs=nnx.Rngs(0))
    image = models.load_photo("chelsea")
    x = jnp.asarray(models.preprocess_imagenet(image, resize=size, crop=size))
    return _from_model(name, f"{name}, random weights (seed 0), 'chelsea' photo at {size} x {size}",
                       model, x, models.IMAGENET_BOUNDS)
  raise ValueError(f"model={name!r} is unknown; choose from {sorted(FULL)}")


def transform(method: str, grad_fn, n: int, bounds, **kwargs):
  if method == "smooth_grad":
    return ag.smooth_grad(grad_fn, 0.2, n, bounds=bounds, **kwargs)
  return ag.adapt_smooth(grad_fn, 0.95, n, bounds=bounds, **kwargs)


def grid(n_max: int) -> list[int]:
  out, n = [], 8
  while n <= n_max:
    out.append(n)
    n *= 2
  return out


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in jax.tree.leaves(tree)])


def _unit_rel_err(samples: np.ndarray, m: int, group: int) -> float:
  """Relative standard error of the mean of the first m samples, from their units' means (as the library)."""
  units = samples[:m].reshape(m // group, group, -1).mean(1)
  k = units.shape[0]
  stderr = units.std(0, ddof=1) / math.sqrt(k)
  return float(np.linalg.norm(stderr) / np.linalg.norm(units.mean(0)))


def _time_calls(fn, args, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - start)
  return out


def needed(ns: list[int], errors: list[float], target: float) -> dict[str, Any]:
  """Smallest grid n with error below target; else an extrapolation by 1/sqrt(n) from the largest n."""
  for n, e in zip(ns, errors):
    if e <= target:
      return {"n": n, "extrapolated": False}
  return {"n": int(math.ceil(ns[-1] * (errors[-1] / target) ** 2)), "extrapolated": True}


def run_model(name: str, settings: Settings, *, quick: bool, size: Optional[int], log,
              schemes: tuple[str, ...] = SCHEMES) -> dict[str, Any]:
  work = build(name, size, quick=quick)
  log(f"[{name}] {work.description}; {settings}")
  grad = jax.grad(work.logit)
  grad_aux = lambda x, state: (lambda g: (g, g))(grad(x, state))
  x, state, bounds = work.x, work.state, work.bounds
  bs = settings.batch_size
  record: dict[str, Any] = {"model": name, "description": work.description, "input_shape": list(x.shape),
                            "date_utc": environment()["date_utc"],
                            "settings": settings._asdict(), "grid": grid(settings.n_max), "methods": {}}
  ns = record["grid"]
  for method in METHODS:
    start = time.perf_counter()
    ref_fn = jax.jit(transform(method, grad, settings.n_ref, bounds, batch_size=bs, return_stderr=True))
    ref = ref_fn(jax.random.key(10_000), x, state)
    ref_flat = _flat(ref.value)
    ref_rel = float(ag.relative_error(ref))
    log(f"[{name}] {method} reference n={settings.n_ref}: rel. stderr {ref_rel:.4f} ({time.perf_counter() - start:.0f} s)")
    out: dict[str, Any] = {"reference": {"n": settings.n_ref, "relative_stderr": ref_rel}, "schemes": {}}
    for scheme in schemes:
      group = group_size(scheme)
      fn = jax.jit(transform(method, grad_aux, settings.n_max, bounds, batch_size=bs, noise=scheme,
                             has_aux=True, return_stderr=True))
      start = time.perf_counter()
      fn = fn.lower(jax.random.key(999), x, state).compile()
      compile_s = time.perf_counter() - start
      errors, values, stderrs, rel_errs, seconds, per_sample = [], [], [], [], [], []
      for k in range(settings.keys):
        start = time.perf_counter()
        est, samples = jax.block_until_ready(fn(jax.random.key(k), x, state))
        seconds.append(time.perf_counter() - start)
        samples = np.asarray(samples, np.float64).reshape(settings.n_max, -1)
        cums = np.cumsum(samples, axis=0)
        errors.append([float(np.linalg.norm(cums[m - 1] / m - ref_flat) / np.linalg.norm(ref_flat)) for m in ns])
        values.append(_flat(est.value))
        stderrs.append(_flat(est.stderr))
        rel_errs.append(float(ag.relative_error(est)))
        per_sample.append(samples if k == 0 else None)
      errors = np.asarray(errors)
      mean_err = errors.mean(0)
      corrected = np.sqrt(np.maximum(np.mean(errors**2, 0) - ref_rel**2, 0.0))
      spread = np.asarray(values).std(0, ddof=1)
      calibration = float(np.sqrt(np.mean(spread**2)) / np.sqrt(np.mean(np.square(stderrs))))
      s_per_eval = float(np.median(seconds)) / settings.n_max
      entry = {
        "mean_error": mean_err.tolist(), "std_error_over_keys": errors.std(0, ddof=1).tolist(),
        "error_minus_reference_noise": corrected.tolist(),
        "needed": {f"{t:g}": needed(ns, mean_err.tolist(), t) for t in TARGETS},
        "needed_corrected": {f"{t:g}": needed(ns, corrected.tolist(), t) for t in TARGETS},
        "relative_stderr_at_n_max_ms": float(np.mean(np.square(rel_errs))),
        "calibration_ratio": calibration, "compile_s": compile_s,
        "seconds_per_call_at_n_max": seconds, "seconds_per_evaluation": s_per_eval,
      }
      for t in entry["needed"].values():
        t["seconds"] = t["n"] * s_per_eval
      if not settings.rtol_check:
        out["schemes"][scheme] = entry
        log(f"[{name}] {method} {scheme}: err@{ns[-1]} {mean_err[-1]:.4f} (corr. {corrected[-1]:.4f}),"
            f" calib {calibration:.3f}, {s_per_eval * 1e3:.2f} ms/eval, {compile_s:.0f} s compile")
        continue
      # rtol: stop at the library's rel. error at about n_max / 4 (from the first key's units, same keys).
      chunk = max(group, min(bs, settings.n_max // 16 // group * group or group))
      first = per_sample[0]
      rtol = round(_unit_rel_err(first, max(2 * chunk, settings.n_max // 4), group) * 1.001, 5)
      rtol = min(max(rtol, 1e-4), 0.99)
      expected = next((m for m in range(2 * chunk, settings.n_max + 1, chunk)
                       if _unit_rel_err(first, m, group) <= rtol), settings.n_max)
      rtol_fn = jax.jit(transform(method, grad, settings.n_max, bounds, batch_size=chunk, noise=scheme, rtol=rtol))
      got = int(rtol_fn(jax.random.key(0), x, state).num_samples)
      entry["rtol_check"] = {"rtol": rtol, "chunk": chunk, "num_samples": got, "needed_by_rule": expected,
                             "chunks_beyond": (got - expected) / chunk}
      out["schemes"][scheme] = entry
      log(f"[{name}] {method} {scheme}: err@{ns[-1]} {mean_err[-1]:.4f} (corr. {corrected[-1]:.4f}),"
          f" calib {calibration:.3f}, {s_per_eval * 1e3:.2f} ms/eval, rtol {rtol}: {got} vs {expected}")
    iid_ms = out["schemes"]["iid"]["relative_stderr_at_n_max_ms"]
    for scheme in schemes:
      entry = out["schemes"][scheme]
      entry["variance_ratio_vs_iid"] = iid_ms / entry["relative_stderr_at_n_max_ms"]
      last = out["schemes"]["iid"]["error_minus_reference_noise"][-1]
      mine = entry["error_minus_reference_noise"][-1]
      entry["mse_ratio_vs_iid_against_reference"] = (last / mine) ** 2 if mine > 0 else None
    record["methods"][method] = out
  record["stderr_cost"] = stderr_cost(work, grad, bs, quick=quick) if settings.stderr_cost else None
  log(f"[{name}] return_stderr cost: {record['stderr_cost']}")
  return record


def stderr_cost(work: Workload, grad, bs: int, *, quick: bool) -> dict[str, Any]:
  """Median time of AdaptGrad (i.i.d.) with and without return_stderr, calls in turns.

  Two layouts at the same n: all samples in one chunk (``batch_size`` >= n)
  and four chunks (``batch_size = n / 4``, a ``lax.scan`` whose carry merges
  the chunks' moments). Each round times every function in turn (the
  fastest of ``repeats`` calls); the ratio is the median over rounds of the
  per-round ratios.
  """
  n = 64 if quick else min(bs, 128)
  args = (jax.random.key(0), work.x, work.state)
  rounds = 3 if quick else 15
  out: dict[str, Any] = {"n": n}
  for layout, batch in (("one_chunk", bs), ("four_chunks", n // 4)):
    plain = jax.jit(transform("adapt_smooth", grad, n, work.bounds, batch_size=batch))
    with_err = jax.jit(transform("adapt_smooth", grad, n, work.bounds, batch_size=batch, return_stderr=True))
    jax.block_until_ready(plain(*args))
    jax.block_until_ready(with_err(*args))
    repeats = max(1, min(50, int(0.25 / max(1e-4, min(_time_calls(plain, args, 1))))))
    a, b = [], []
    for _ in range(rounds):
      a.append(min(_time_calls(plain, args, repeats)))
      b.append(min(_time_calls(with_err, args, repeats)))
    ratios = [y / x for x, y in zip(a, b)]
    out[layout] = {"batch_size": batch, "plain_s": float(np.median(a)), "with_stderr_s": float(np.median(b)),
                   "ratio_median": float(np.median(ratios)), "ratio_per_round": ratios, "calls_per_round": repeats}
  # The headline figures (as before): one chunk.
  out.update({k: out["one_chunk"][k] for k in ("plain_s", "with_stderr_s", "ratio_median", "ratio_per_round",
                                                "calls_per_round")})
  return out


def needed_by_stderr(rec: dict[str, Any], entry: dict[str, Any]) -> dict[str, int]:
  """Samples for each target from the library's own error at n_max: ``n_max * rel_stderr^2 / target^2``.

  Independent of the reference (whose own noise dominates the error against it
  on the ImageNet models), by the ``1/sqrt(n)`` law the standard error obeys
  for every scheme (independent units). ``relative_error`` divides by the norm
  of the noisy map, ``||value||^2 ~ ||mean||^2 + ||stderr||^2``, so the squared
  error relative to the smoothed gradient itself is about ``e^2 / (1 - e^2)``
  (``e^2`` for small e; 2.15 instead of 0.68 at e = 0.83).
  """
  n_max, ms = rec["grid"][-1], entry["relative_stderr_at_n_max_ms"]
  r2 = ms / max(1.0 - ms, 1e-6)
  return {f"{t:g}": int(math.ceil(n_max * r2 / t**2)) for t in TARGETS}


def markdown(results: dict[str, Any]) -> str:
  lines = ["# Monte Carlo precision: samples needed per noise scheme", "",
           f"Generated by `python -m benchmarks.bench_precision` on {results['environment']['date_utc']} UTC"
           f" ({results['environment'].get('cpu_model', '?')}, {results['environment']['cpu_count']} cores,"
           f" load average at start {results['load_average_start']}, jax {results['environment']['jax']}).",
           "Evaluations are the primary figure; seconds are evaluations times the measured seconds per"
           " evaluation on a shared, loaded machine (noisy, secondary).", ""]
  for rec in results["models"]:
    s = rec["settings"]
    lines += [f"## {rec['model']}", "", f"Run {rec.get('date_utc', results['environment']['date_utc'])} UTC."
              f" {rec['description']}; input {tuple(rec['input_shape'])}; grid n ="
              f" {rec['grid'][0]}..{rec['grid'][-1]}, {s['keys']} keys, reference {s['n_ref']} i.i.d. samples,"
              f" batch_size {s['batch_size']}.", "",
              "| method | noise | n for 10% | n for 5% | n for 2% | s for 10 / 5 / 2% | n for 10 / 5 / 2% by stderr"
              " | err at n_max | minus ref. noise | rel. stderr at n_max | variance ratio vs iid | calibration"
              " | rtol: used / rule (chunk) |",
              "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for method, out in rec["methods"].items():
      for scheme, e in out["schemes"].items():
        fmt = lambda t: ("~" if t["extrapolated"] else "") + str(t["n"])
        need = [e["needed"][f"{t:g}"] for t in TARGETS]
        secs = " / ".join(("~" if t["extrapolated"] else "") + f"{t['seconds']:.2g}" for t in need)
        r = e.get("rtol_check")
        rt = f"{r['num_samples']} / {r['needed_by_rule']} ({r['chunk']}, rtol {r['rtol']:.3g})" if r else "not run"
        by_stderr = " / ".join(str(v) for v in needed_by_stderr(rec, e).values())
        lines.append(
            f"| {method} | {scheme} | {fmt(need[0])} | {fmt(need[1])} | {fmt(need[2])} | {secs} | {by_stderr} |"
            f" {e['mean_error'][-1]:.2%} | {e['error_minus_reference_noise'][-1]:.2%} |"
            f" {math.sqrt(e['relative_stderr_at_n_max_ms']):.2%} | {e['variance_ratio_vs_iid']:.2f} | {e['calibration_ratio']:.3f} |"
            f" {rt} |")
    refs = ", ".join(f"{m} {o['reference']['relative_stderr']:.2%}" for m, o in rec["methods"].items())
    c = rec["stderr_cost"]

    def cost_of(c):
      return (f"{c['with_stderr_s'] * 1e3:.1f} ms against {c['plain_s'] * 1e3:.1f} ms plain (median ratio"
              f" {c['ratio_median']:.3f} over {len(c['ratio_per_round'])} rounds, range"
              f" {min(c['ratio_per_round']):.2f}-{max(c['ratio_per_round']):.2f})")

    if c is None:
      cost = "not measured"
    elif "one_chunk" in c:
      cost = (f"at n = {c['n']}, one chunk: {cost_of(c['one_chunk'])}; four chunks of"
              f" {c['four_chunks']['batch_size']}: {cost_of(c['four_chunks'])}")
    else:
      cost = f"at n = {c['n']}: {cost_of(c)}"
    lines += ["", f"Reference's own relative standard error: {refs}. `return_stderr=True`: {cost}.", ""]
  return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  recs = results["models"]
  fig, axes = plt.subplots(1, len(recs), figsize=(4.2 * len(recs), 3.8), squeeze=False)
  colours = {"iid": "tab:blue", "antithetic": "tab:orange", "orthogonal": "tab:green", "lhs": "tab:red"}
  for ax, rec in zip(axes[0], recs):
    for method, style in (("smooth_grad", "--"), ("adapt_smooth", "-")):
      for scheme, e in rec["methods"][method]["schemes"].items():
        ax.loglog(rec["grid"], e["mean_error"], style, marker="o", ms=3, color=colours[scheme],
                  label=f"{'SG' if method == 'smooth_grad' else 'AG'} {scheme}")
    for t in TARGETS:
      ax.axhline(t, color="grey", lw=0.6, ls=":")
    ax.set_title(rec["model"])
    ax.set_xlabel("gradient evaluations n")
  axes[0][0].set_ylabel("||map - reference|| / ||reference||")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
  plt.close(fig)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="mlp,efficientnet_lite0,resnet50,vgg16")
  parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness in seconds")
  parser.add_argument("--size", type=int, default=None, help="image size for the ImageNet models")
  parser.add_argument("--tag", default=None, help="results file name (default precision, quick: precision_quick)")
  parser.add_argument("--out", default=str(RESULTS))
  parser.add_argument("--no-plot", action="store_true")
  parser.add_argument("--from-json", default=None, help="only rewrite the markdown and plot of a results file")
  parser.add_argument("--schemes", default=",".join(SCHEMES), help="noise schemes to run (iid is always run)")
  parser.add_argument("--update", action="store_true",
                      help="keep the other models of an existing <tag>.json; replace the ones run now")
  args = parser.parse_args(argv)
  if args.from_json:
    path = pathlib.Path(args.from_json)
    results = json.loads(path.read_text())
    atomic_write(path.with_suffix(".md"), lambda f: f.write(markdown(results).encode()))
    if not args.no_plot:
      plot(results, path.with_suffix(".png"))
    return results
  log = lambda message: print(message, file=sys.stderr, flush=True)
  names = [m for m in args.models.split(",") if m]
  results: dict[str, Any] = {"environment": environment(), "load_average_start": list(np.round(np.asarray(
      __import__("os").getloadavg()), 1)), "models": []}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  tag = args.tag or ("precision_quick" if args.quick else "precision")
  schemes = tuple(dict.fromkeys(["iid"] + [s for s in args.schemes.split(",") if s]))
  unknown = [s for s in schemes if s not in SCHEMES]
  if unknown:
    parser.error(f"--schemes: unknown {unknown}; choose from {SCHEMES}")
  kept = []
  if args.update and (out / f"{tag}.json").exists():
    old = json.loads((out / f"{tag}.json").read_text())
    kept = [rec for rec in old["models"] if rec["model"] not in names]
    for rec in kept:
      rec.setdefault("date_utc", old["environment"]["date_utc"])
  start = time.perf_counter()
  for name in names:
    settings = QUICK if args.quick else FULL[name]
    results["models"].append(run_model(name, settings, quick=args.quick, size=args.size, log=log, schemes=schemes))
    order = {m: i for i, m in enumerate(FULL)}
    results["models"] = sorted([r for r in results["models"] if r["model"] not in {k["model"] for k in kept}] + kept,
                               key=lambda r: order.get(r["model"], len(order)))
    results["total_s"] = time.perf_counter() - start
    atomic_write(out / f"{tag}.json", lambda f: f.write(json.dumps(results, indent=1).encode()))
    atomic_write(out / f"{tag}.md", lambda f: f.write(markdown(results).encode()))
    if not args.no_plot:
      plot(results, out / f"{tag}.png")
    log(f"[{name}] done at {results['total_s']:.0f} s")
  return results


if __name__ == "__main__":
  main()
