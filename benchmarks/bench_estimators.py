"""Estimators beyond Monte Carlo against 16k-sample truths (issue 28, items 2-4 and "Performance and memory").

Three parts, one command (``python -m benchmarks.bench_estimators``):

* **References** (item 2). For every workload and method (AdaptGrad
  ``c = 0.95``, SmoothGrad ``alpha = 0.2``, the library's defaults and the
  values of `bench_precision`) the i.i.d. Monte Carlo mean of up to
  ``--ref-n`` samples (16,384), computed in chunks of `CHUNK` samples with
  keys ``fold_in(key(REF_SEED), k)`` and cached, one ``.npz`` per chunk, in the
  ignored folder ``benchmarks/results/tmp/ref/`` so that a computation stopped
  by a time budget continues where it stopped (``refs`` sub-command, meant to
  run in the background under ``nice``). Each chunk keeps its mean and the
  library's standard error (``return_stderr=True``); the reference's
  element-wise standard error is the exact pooled one, and its relative error
  ``||stderr|| / ||mean||`` is reported with it. Whatever was reached is
  reported as reached (never padded).
* **Estimators** (item 3). i.i.d. Monte Carlo at n = 8 .. 4,096 (the small n
  from fresh calls, n >= CHUNK from disjoint groups of reference chunks
  against the mean of the *other* chunks, so the truth stays independent),
  antithetic noise, ``smooth_diff`` at several n and ``moment_smooth`` (when
  `adaptgrad_jax` provides them), and benchmark-local hybrids. For each: the
  relative L2 error to the reference, the error with the reference's own
  variance removed (``sqrt(err^2 - ref_err^2)``; at large n a biased
  estimator's bias floor), wall time per call (calls in turns in one
  process), evaluations, Spearman rank correlation and top-10% overlap of the
  channel-summed ``|map|`` with the reference's.
* **Sanity and speed** (item 4, Performance). MPRT / eMPRT and sparseness on
  the new estimators' maps beside SmoothGrad / AdaptGrad (MNIST MLP), and
  VGG16 at 224 px on CPU against Captum's ``NoiseTunnel(Saliency)`` (``--captum-size 112``: at the size
  of the VGG16 truth, which also gives Captum's seconds at each estimator's error).

Timings come from a 2-core machine shared with other work: they are noisy;
ratios are measured with calls in turns.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
from benchmarks._harness import environment

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "tmp" / "estimators"
C = 0.95  # AdaptGrad's c (the paper's value)
ALPHA = 0.2  # SmoothGrad's alpha (Smilkov et al.; the library's default)
REF_SEED = 20_281
CHUNK = 128
METHODS = ("adapt", "smooth")

# Photos for EfficientNet-Lite0 (real weights). Any setting chosen by this benchmark is chosen on SELECTION only;
# HELD_OUT photos are reported, never looked at to choose.
SELECTION = ("chelsea", "coffee")
HELD_OUT = ("astronaut", "rocket")


class Workload(NamedTuple):
  name: str
  description: str
  f: Callable[[jax.Array, Any], jax.Array]  # f(x, state): the target logit, a scalar
  state: Any
  x: jax.Array
  bounds: Any
  model: Any = None  # (graphdef, target) of NNX models: the Lite0 split hybrid needs the blocks


def _photo(name: str) -> np.ndarray:
  if name in models.PHOTOS:
    return models.load_photo(name)
  from adaptgrad_jax.reproduce._photos import load_table2_photo  # pylint: disable=import-outside-toplevel

  return load_table2_photo(name)


def _from_model(name: str, description: str, model, x, bounds) -> Workload:
  model.eval()
  graphdef, state = nnx.split(model)
  logits = lambda x, state: nnx.merge(graphdef, state)(x[None])[0]  # noqa: E731
  target = int(jnp.argmax(jax.jit(logits)(x, state)))
  return Workload(name, f"{description}; target class {target}",
                  lambda x, state: logits(x, state)[target], state, jnp.asarray(x), bounds, (graphdef, target))


def build(name: str, *, quick: bool = False) -> Workload:
  """``lite0-<photo>-<size>``, ``vgg16-<size>``, ``resnet50-<size>`` or ``mlp``."""
  parts = name.split("-")
  if parts[0] == "lite0":
    photo, size = parts[1], int(parts[2])
    model = models.pretrained_efficientnet_lite0()
    x = models.preprocess_efficientnet_lite(_photo(photo), size=size)
    role = "held out" if photo in HELD_OUT else "selection" if photo in SELECTION else "other"
    return _from_model(name, f"EfficientNet-Lite0, ImageNet weights, {photo!r} ({role}) at {size} x {size}",
                       model, x, models.EFFICIENTNET_LITE_BOUNDS)
  if parts[0] in ("vgg16", "resnet50"):
    size = int(parts[1])
    model = getattr(models, parts[0])(rngs=nnx.Rngs(0))
    x = models.preprocess_imagenet(models.load_photo("chelsea"), resize=size, crop=size)
    return _from_model(name, f"{parts[0]}, random weights (seed 0), 'chelsea' at {size} x {size}",
                       model, x, models.IMAGENET_BOUNDS)
  if parts[0] == "mlp":
    from adaptgrad_jax import datasets  # pylint: disable=import-outside-toplevel

    if quick:
      model, description = models.mlp(rngs=nnx.Rngs(0)), "MLP 784-200-10, random weights (quick)"
    else:
      from adaptgrad_jax.cli._mnist import demo_mlp  # pylint: disable=import-outside-toplevel

      model, description = demo_mlp(progress=False)
    x = np.asarray(datasets.mnist_embedded().x_test[0]).reshape(28, 28, 1)
    return _from_model(name, f"{description}; first embedded MNIST test digit", model, x, (0.0, 1.0))
  raise ValueError(f"workload={name!r} is unknown; use lite0-<photo>-<size>, vgg16-<size>, resnet50-<size> or mlp")


def sigma_kwargs(method: str, bounds) -> dict[str, Any]:
  return {"c": C, "bounds": bounds} if method == "adapt" else {"alpha": ALPHA, "bounds": bounds}


def mc(method: str, grad_fn, n: int, bounds, **kwargs):
  """The Monte Carlo transform of ``method`` (``adapt``: AdaptGrad c = 0.95; ``smooth``: SmoothGrad alpha = 0.2)."""
  if method == "adapt":
    return ag.adapt_smooth(grad_fn, C, n, bounds=bounds, **kwargs)
  return ag.smooth_grad(grad_fn, ALPHA, n, bounds=bounds, **kwargs)


# ---------------------------------------------------------------------------
# References: resumable, chunked, cached.


def _ref_dir(cache: pathlib.Path, workload: str, method: str) -> pathlib.Path:
  return cache / "ref" / workload / method


def ref_chunks(cache: pathlib.Path, workload: str, method: str) -> list[pathlib.Path]:
  d = _ref_dir(cache, workload, method)
  return sorted(d.glob("chunk_*.npz")) if d.exists() else []


def extend_reference(work: Workload, method: str, target_n: int, *, cache: pathlib.Path, deadline: float,
                     batch_size: int, chunk: int = CHUNK, log=print) -> int:
  """Adds chunks until ``target_n`` samples or ``deadline`` (``time.time()``); returns the samples cached."""
  d = _ref_dir(cache, work.name, method)
  d.mkdir(parents=True, exist_ok=True)
  have = {int(p.stem.split("_")[1]) for p in ref_chunks(cache, work.name, method)}
  todo = [k for k in range(math.ceil(target_n / chunk)) if k not in have]
  if not todo or time.time() >= deadline:
    return len(have) * chunk
  fn = jax.jit(mc(method, jax.grad(work.f), chunk, work.bounds, batch_size=batch_size, return_stderr=True))
  base = jax.random.key(REF_SEED)
  for k in todo:
    if time.time() >= deadline:
      break
    start = time.perf_counter()
    est = jax.block_until_ready(fn(jax.random.fold_in(base, k), work.x, work.state))
    seconds = time.perf_counter() - start
    path = d / f"chunk_{k:05d}.npz"

    def write(f, est=est, seconds=seconds):
      np.savez(f, mean=np.asarray(est.value, np.float32), stderr=np.asarray(est.stderr, np.float32),
               n=chunk, seconds=seconds)

    atomic_write(path, write)
    have.add(k)
    log(f"[ref {work.name} {method}] chunk {k}: {seconds:.1f} s, {len(have) * chunk} samples cached")
  return len(have) * chunk


class Reference(NamedTuple):
  mean: np.ndarray  # float64, the map's shape
  stderr: np.ndarray  # pooled element-wise standard error of ``mean``
  n: int
  chunk_means: np.ndarray  # (chunks, ...) float64
  seconds: float  # summed compute time of the chunks
  rel_stderr: float


def load_reference(cache: pathlib.Path, workload: str, method: str, *, max_n: Optional[int] = None
                   ) -> Optional[Reference]:
  paths = ref_chunks(cache, workload, method)
  if max_n is not None:
    paths = paths[:max(1, max_n // CHUNK)]
  if len(paths) < 2:
    return None
  means, variances, ns, secs = [], [], [], 0.0
  for p in paths:
    with np.load(p) as z:
      m = int(z["n"])
      means.append(z["mean"].astype(np.float64))
      variances.append(z["stderr"].astype(np.float64) ** 2 * m)  # within-chunk sample variance
      ns.append(m)
      secs += float(z["seconds"])
  means = np.stack(means)
  ns_a = np.asarray(ns, np.float64).reshape((-1,) + (1,) * (means.ndim - 1))
  total = int(sum(ns))
  mean = (means * ns_a).sum(0) / total
  pooled = (((ns_a - 1) * np.stack(variances)).sum(0) + (ns_a * (means - mean) ** 2).sum(0)) / (total - 1)
  stderr = np.sqrt(pooled / total)
  return Reference(mean, stderr, total, means, secs, float(np.linalg.norm(stderr) / np.linalg.norm(mean)))


# ---------------------------------------------------------------------------
# Benchmark-local prototype for EfficientNet-Lite0 (its only nonlinearity is ReLU6, every other layer is affine in
# eval mode): ReLU6 pieces averaged over n noisy forwards ("expected masks"), and a per-layer hybrid that keeps the
# exact per-sample mask in the LAST ``exact`` ReLU6 layers (expected masks before them). The hybrid's value is
# J_early(E[mask])^T E_s[J_late(s)^T e]; ``exact = 0`` is smoothed differentiation, ``exact = all`` is Monte Carlo
# with the same samples. Used to find which layers' mask correlations make smoothed differentiation's bias.


class _Relu6Patch:
  """Replaces ``jax.nn.relu6`` while a function is traced (the Lite0 port calls it by attribute)."""

  def __init__(self, fn):
    self.fn, self.old = fn, None

  def __enter__(self):
    self.old = jax.nn.relu6
    jax.nn.relu6 = self.fn

  def __exit__(self, *exc):
    jax.nn.relu6 = self.old


def _relu6(v):
  return jnp.clip(v, 0.0, 6.0)


def noise_sigma(method: str, x, bounds):
  if method == "adapt":
    return ag.adaptive_sigma(x, C, bounds=bounds)
  lo, hi = bounds
  return ALPHA * (jnp.asarray(hi) - jnp.asarray(lo)) * jnp.ones_like(x)


def target_fn(work: Workload) -> Callable[..., jax.Array]:
  """``fo(x, state, onehot) = logits(x) . onehot``: the target as an argument, so one compile serves every photo."""
  graphdef, _ = work.model
  return lambda x, state, onehot: jnp.dot(nnx.merge(graphdef, state)(x[None])[0], onehot)


def onehot_of(work: Workload) -> jax.Array:
  graphdef, target = work.model
  classes = jax.eval_shape(lambda x, s: nnx.merge(graphdef, s)(x[None]), work.x, work.state).shape[-1]
  return jax.nn.one_hot(target, classes, dtype=work.x.dtype)


def relu6_masks(fo, x, state, onehot) -> list[jax.Array]:
  """The derivative of every ReLU6 at input ``x`` (1 inside (0, 6)), in call order."""
  rec: list[jax.Array] = []

  def r6(v):
    rec.append(((v > 0) & (v < 6)).astype(v.dtype))
    return _relu6(v)

  with _Relu6Patch(r6):
    fo(x, state, onehot)
  return rec


def _mixed_grad(fo, x, state, onehot, means: list[jax.Array], exact: int):
  """Gradient with expected masks ``means`` in the first len(means) - exact ReLU6 layers, exact masks after."""
  count = [0]
  cut = len(means) - exact

  def r6(v):
    i = count[0]
    count[0] += 1
    if i >= cut:
      return _relu6(v)
    y = jax.lax.stop_gradient(_relu6(v))
    return y + means[i] * (v - jax.lax.stop_gradient(v))

  with _Relu6Patch(r6):
    return jax.grad(fo)(x, state, onehot)


def _noisy(method, key, x, bounds, n, batch_size):
  batches = max(1, n // batch_size)
  bs = n // batches
  z = jax.random.normal(key, (batches, bs) + x.shape, x.dtype)
  return x + noise_sigma(method, x, bounds) * z, batches * bs


def lite0_hybrid(work: Workload, method: str, n: int, exact: int, *, batch_size: int = 16):
  """``explain(key, x, state, onehot)``: n noisy forwards for the mean masks, then the hybrid gradient.

  Exact per-sample masks in the last ``exact`` ReLU6 layers (n backward
  passes: the value of the hybrid, not its cheapest computation; see
  `lite0_split_hybrid`), expected masks before them.
  """
  fo = target_fn(work)

  def explain(key, x, state, onehot):
    xs, total_n = _noisy(method, key, x, work.bounds, n, batch_size)

    def add(acc, xb):
      ms = jax.vmap(lambda v: relu6_masks(fo, v, state, onehot))(xb)
      return [a + m.sum(0) for a, m in zip(acc, ms)], None

    zero = [jnp.zeros(m.shape, m.dtype) for m in jax.eval_shape(lambda v: relu6_masks(fo, v, state, onehot), x)]
    sums, _ = jax.lax.scan(add, zero, xs)
    means = [m / total_n for m in sums]
    if exact == 0:
      return _mixed_grad(fo, x, state, onehot, means, 0)

    def gsum(acc, xb):
      return acc + jax.vmap(lambda v: _mixed_grad(fo, v, state, onehot, means, exact))(xb).sum(0), None

    total, _ = jax.lax.scan(gsum, jnp.zeros_like(x), xs)
    return total / total_n

  return explain


def lite0_split_hybrid(work: Workload, method: str, n: int, late_blocks: int, *, batch_size: int = 16):
  """The hybrid at its real cost: exact masks in the last ``late_blocks`` MBConv blocks and the head.

  Per noisy sample: one forward (recording the early ReLU6 masks) and the
  backward of the late part only, ``v_s = d logit / d h`` at the cut; then ONE
  backward through the early part with its expected masks: ``J_early(E[mask])^T
  E_s[v_s]``. Equal to `lite0_hybrid` with ``exact = 2 * late_blocks + 1`` (the
  same noise for the same key), at n forwards + n late backwards + 1 early
  backward.
  """
  graphdef, _ = work.model

  def parts(state, onehot):
    model = nnx.merge(graphdef, state)
    blocks = list(model._blocks)  # pylint: disable=protected-access
    cut = len(blocks) - late_blocks

    def early(x):
      h = jax.nn.relu6(model._bn0(model._conv_stem(x[None])))  # pylint: disable=protected-access
      for block in blocks[:cut]:
        h = block(h)
      return h

    def late(h):
      for block in blocks[cut:]:
        h = block(h)
      feats = jax.nn.relu6(model._bn1(model._conv_head(h)))  # pylint: disable=protected-access
      return jnp.dot(model._fc(jnp.mean(feats, axis=(1, 2)))[0], onehot)  # pylint: disable=protected-access

    return early, late

  def explain(key, x, state, onehot):
    early, late = parts(state, onehot)
    xs, total_n = _noisy(method, key, x, work.bounds, n, batch_size)

    def one(v):
      rec: list[jax.Array] = []

      def r6(u):
        rec.append(((u > 0) & (u < 6)).astype(u.dtype))
        return _relu6(u)

      with _Relu6Patch(r6):
        h = early(v)
      return rec, jax.grad(late)(h)

    def add(acc, xb):
      ms, vs = jax.vmap(one)(xb)
      return ([a + m.sum(0) for a, m in zip(acc[0], ms)], acc[1] + vs.sum(0)), None

    shapes = jax.eval_shape(one, x)
    zero = ([jnp.zeros(m.shape, m.dtype) for m in shapes[0]], jnp.zeros(shapes[1].shape, shapes[1].dtype))
    (sums, vsum), _ = jax.lax.scan(add, zero, xs)
    means = [m / total_n for m in sums]
    count = [0]

    def r6_expected(u):
      i = count[0]
      count[0] += 1
      return jax.lax.stop_gradient(_relu6(u)) + means[i] * (u - jax.lax.stop_gradient(u))

    with _Relu6Patch(r6_expected):
      _, vjp = jax.vjp(early, x)
    return vjp(vsum / total_n)[0]

  return explain


# ---------------------------------------------------------------------------
# Agreement with the reference.


def channel_abs(m: np.ndarray) -> np.ndarray:
  """The map users see: |map| summed over channels (H, W, C) -> (H * W,); other maps flattened."""
  m = np.asarray(m, np.float64)
  return (np.abs(m).sum(-1) if m.ndim == 3 else np.abs(m)).reshape(-1)


def agreement(est: np.ndarray, ref: np.ndarray) -> dict[str, float]:
  from scipy import stats  # pylint: disable=import-outside-toplevel

  a, b = channel_abs(est), channel_abs(ref)
  k = max(1, int(round(0.1 * a.size)))
  top_a, top_b = np.argsort(-a)[:k], np.argsort(-b)[:k]
  return {"spearman": float(stats.spearmanr(a, b)[0]),
          "top10_overlap": float(len(np.intersect1d(top_a, top_b)) / k)}


def rel_err(est, ref_mean) -> float:
  est = np.asarray(est, np.float64)
  return float(np.linalg.norm(est - ref_mean) / np.linalg.norm(ref_mean))


def corrected(errors: list[float], ref_rel: float) -> float:
  """sqrt(mean(err^2) - ref_rel^2): the error against the truth, the reference's own variance removed."""
  return float(math.sqrt(max(float(np.mean(np.square(errors))) - ref_rel**2, 0.0)))


def iid_variance_ratio(ref: Reference) -> float:
  """tr(Cov) / ||truth||^2 of ONE i.i.d. sample: i.i.d. Monte Carlo's squared relative error is this / n."""
  per_sample = float(np.sum(ref.stderr**2)) * ref.n
  truth2 = float(np.sum(ref.mean**2) - np.sum(ref.stderr**2))
  return per_sample / truth2


def iid_from_chunks(ref: Reference, s_per_grad: float) -> list[dict[str, Any]]:
  """i.i.d. Monte Carlo at n = CHUNK * 2^j from disjoint groups of reference chunks, each against the others."""
  out = []
  chunks = ref.chunk_means.shape[0]
  size = 1
  while 2 * size <= chunks:
    errs, agree = [], []
    for g in range(min(chunks // size, 4)):
      idx = np.arange(g * size, (g + 1) * size)
      rest = np.setdiff1d(np.arange(chunks), idx)
      est, other = ref.chunk_means[idx].mean(0), ref.chunk_means[rest].mean(0)
      errs.append(rel_err(est, other))
      agree.append(agreement(est, other))
    other_rel = ref.rel_stderr * math.sqrt(chunks / (chunks - size))
    n = size * CHUNK
    out.append({"estimator": "mc_iid", "n": n, "source": "reference chunks vs the other chunks", "keys": len(errs),
                "errors": errs, "error": float(np.mean(errs)), "error_vs_truth": corrected(errs, other_rel),
                "reference_rel_stderr": other_rel, "evaluations": n, "forwards": n, "backwards": n,
                "seconds": n * s_per_grad, "seconds_derived": True,
                "spearman": float(np.mean([a["spearman"] for a in agree])),
                "top10_overlap": float(np.mean([a["top10_overlap"] for a in agree]))})
    size *= 2
  return out


class Candidate(NamedTuple):
  estimator: str  # mc_iid, mc_antithetic, smooth_diff, moment_smooth, hybrid_last<k>, ...
  n: int
  forwards: int
  backwards: int
  run: Callable[[jax.Array], Any]  # run(key) -> map (compiled)
  compile_s: float
  keys: Optional[int] = None  # fewer keys than the plan's (expensive experiments)


def _compile(fn, *args):
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def candidates(work: Workload, method: str, plan: dict[str, Any], log) -> list[Candidate]:
  """Compiles the estimators of ``plan`` (``{"mc_iid": [n...], "mc_antithetic": [...], "smooth_diff": [...],
  "moment_smooth": True, "hybrid_last": [(n, k)...], "hybrid_split": [(n, blocks)...]}``).

  Every candidate is compiled once with the target as a one-hot argument: ``run(key, x, onehot)`` serves every
  input of the same shape (the four Lite0 photos share one compile).
  """
  fo, state, key, oh = target_fn(work), work.state, jax.random.key(0), onehot_of(work)
  grad = jax.grad(fo)
  bs = plan.get("batch_size", 32)
  args = (key, work.x, state, oh)
  out = []

  def add(name, n, fwd, bwd, fn, keys=None):
    compiled, secs = _compile(fn, *args)
    out.append(Candidate(name, n, fwd, bwd, lambda k, x, o, c=compiled: c(k, x, state, o), secs, keys))
    log(f"  compiled {name} n={n} in {secs:.0f} s")

  for n in plan.get("mc_iid", []):
    add("mc_iid", n, n, n, mc(method, grad, n, work.bounds, batch_size=min(n, bs)))
  for n in plan.get("mc_antithetic", []):
    add("mc_antithetic", n, n, n, mc(method, grad, n, work.bounds, batch_size=min(n, bs), noise="antithetic"))
  for n in plan.get("smooth_diff", []):
    add("smooth_diff", n, n, 1, ag.smooth_diff(fo, n, batch_size=min(n, bs), **sigma_kwargs(method, work.bounds)))
  if plan.get("moment_smooth") and hasattr(ag, "moment_smooth"):
    ms = ag.moment_smooth(fo, **sigma_kwargs(method, work.bounds))  # pylint: disable=no-member
    add("moment_smooth", 1, 1, 1, lambda key, x, s, o, ms=ms: ms(x, s, o))
  for n, k in plan.get("hybrid_last", []):
    add(f"hybrid_last{k}", n, n, n if k else 1, lite0_hybrid(work, method, n, k, batch_size=min(n, 16)),
        plan.get("hybrid_keys"))
  for n, k in plan.get("hybrid_split", []):
    add(f"hybrid_split{k}", n, n, 1, lite0_split_hybrid(work, method, n, k, batch_size=min(n, 16)),
        plan.get("hybrid_keys"))
  return out


def call_in_turns(cands: list[Candidate], x, onehot, *, keys: int, log, warmup: bool = True
                  ) -> list[dict[str, Any]]:
  """Calls every candidate with ``keys`` keys, in turns (round r calls each once); returns maps and times.

  ``warmup=False`` (the expensive workloads) times the first call after compiling too.
  """
  runs = [{"estimator": c.estimator, "n": c.n, "forwards": c.forwards, "backwards": c.backwards,
           "compile_s": c.compile_s, "times": [], "maps": []} for c in cands]
  for c in cands if warmup else []:
    jax.block_until_ready(c.run(jax.random.key(7_777), x, onehot))
  for r in range(keys):
    for i, c in enumerate(cands):
      if c.keys is not None and r >= c.keys:
        continue
      key = jax.random.fold_in(jax.random.key(5_000 + r), i)
      start = time.perf_counter()
      m = np.asarray(jax.block_until_ready(c.run(key, x, onehot)), np.float32)
      runs[i]["times"].append(time.perf_counter() - start)
      if not (c.estimator == "moment_smooth" and r):  # deterministic: timed every round, its map kept once
        runs[i]["maps"].append(m)
      log(f"  {c.estimator} n={c.n} key {r}: {runs[i]['times'][-1]:.2f} s")
  return runs


def save_runs(cache: pathlib.Path, name: str, method: str, runs: list[dict[str, Any]]) -> None:
  d = cache / "maps" / name
  d.mkdir(parents=True, exist_ok=True)
  meta = [{k: v for k, v in r.items() if k != "maps"} for r in runs]
  arrays = {f"m{i}_{k}": m for i, r in enumerate(runs) for k, m in enumerate(r["maps"])}
  atomic_write(d / f"{method}.npz", lambda f: np.savez(f, **arrays))
  atomic_write(d / f"{method}.json", lambda f: f.write(json.dumps(meta).encode()))


def load_runs(cache: pathlib.Path, name: str, method: str) -> Optional[list[dict[str, Any]]]:
  """The cached runs of ``name``: ``<method>.json`` first, then any ``<method>_<extra>.json`` (later runs)."""
  d = cache / "maps" / name
  if not (d / f"{method}.json").exists():
    return None
  out = []
  for path in [d / f"{method}.json"] + sorted(d.glob(f"{method}_*.json")):
    runs = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz")) as z:
      for i, r in enumerate(runs):
        r["maps"] = [z[f"m{i}_{k}"] for k in range(len([key for key in z.files if key.startswith(f"m{i}_")]))]
    out += runs
  return out


def score(runs: list[dict[str, Any]], ref: Reference, log) -> list[dict[str, Any]]:
  out = []
  for run in runs:
    maps = [np.asarray(m, np.float64) for m in run["maps"]]
    errs = [rel_err(m, ref.mean) for m in maps]
    agree = [agreement(m, ref.mean) for m in maps]
    rec = {"estimator": run["estimator"], "n": run["n"], "source": "fresh calls", "keys": len(maps), "errors": errs,
           "error": float(np.mean(errs)), "error_vs_truth": corrected(errs, ref.rel_stderr),
           "reference_rel_stderr": ref.rel_stderr,
           "evaluations": run["forwards"] if run["backwards"] == 1 else run["backwards"],
           "forwards": run["forwards"], "backwards": run["backwards"], "seconds": float(np.median(run["times"])),
           "seconds_per_call": run["times"], "seconds_derived": False, "compile_s": run["compile_s"],
           "spearman": float(np.mean([a["spearman"] for a in agree])),
           "top10_overlap": float(np.mean([a["top10_overlap"] for a in agree]))}
    if len(maps) >= 2:  # the estimator's own spread: half the mean squared difference of two keys' maps
      d2 = np.mean([np.sum((maps[a] - maps[b]) ** 2) for a in range(len(maps)) for b in range(a)])
      own = float(d2 / 2 / np.sum(ref.mean**2))
      rec["own_rel_stderr"] = math.sqrt(own)
      rec["bias_vs_truth"] = float(math.sqrt(max(rec["error_vs_truth"] ** 2 - own, 0.0)))
    out.append(rec)
    log(f"  {rec['estimator']} n={rec['n']}: err {rec['error']:.3f} (vs truth {rec['error_vs_truth']:.3f}),"
        f" {rec['seconds']:.2f} s, spearman {rec['spearman']:.3f}, top10 {rec['top10_overlap']:.3f}")
  return out


def add_speedups(records: list[dict[str, Any]], ratio: float, s_per_grad: float) -> None:
  """For each record: the i.i.d. Monte Carlo time to reach the same error vs truth, and the speed-up over it."""
  for rec in records:
    e = rec["error_vs_truth"]
    if e <= 0:
      rec["iid_seconds_same_error"] = rec["speedup_vs_iid"] = None
      continue
    n_iid = ratio / e**2
    rec["iid_n_same_error"] = n_iid
    rec["iid_seconds_same_error"] = n_iid * s_per_grad
    rec["speedup_vs_iid"] = n_iid * s_per_grad / rec["seconds"]


# ---------------------------------------------------------------------------
# One workload: reference, candidates, scores.

PLANS: dict[str, dict[str, Any]] = {
  # The MNIST MLP has one ReLU layer: smoothed differentiation is unbiased there (a check of the harness).
  "mlp": {"mc_iid": [16, 64, 256], "mc_antithetic": [64, 256], "smooth_diff": [16, 64, 256, 1024, 4096],
          "moment_smooth": True, "keys": 3, "batch_size": 256, "ref_n": 16_384},
  # Lite0 (ReLU6 only): hybrid_split<b> keeps exact masks in the last b of its 16 blocks and the head (the
  # per-layer experiment: which layers' mask correlations make smooth_diff's bias).
  "lite0": {"mc_iid": [64], "mc_antithetic": [64], "smooth_diff": [64, 256], "moment_smooth": True,
            "hybrid_split": [(64, 1), (64, 4), (64, 8)], "keys": 2, "batch_size": 16, "ref_n": 16_384,
            "warmup": False},
  "cnn": {"mc_iid": [64], "mc_antithetic": [64], "smooth_diff": [16, 64, 256], "moment_smooth": True,
          "keys": 2, "batch_size": 16, "ref_n": 16_384, "warmup": False},
}
QUICK_PLAN = {"mc_iid": [8], "smooth_diff": [16], "moment_smooth": True, "keys": 2, "batch_size": 8, "ref_n": 256}



def plan_for(name: str, quick: bool) -> dict[str, Any]:
  if quick:
    return dict(QUICK_PLAN)
  return dict(PLANS["mlp" if name == "mlp" else "lite0" if name.startswith("lite0") else "cnn"])


def produce_maps(names: list[str], method: str, *, quick: bool, cache: pathlib.Path, ref_budget_s: float,
                 log) -> None:
  """Compiles the candidates once (``names`` share a model and an input shape) and caches each input's maps."""
  works = [build(name, quick=quick) for name in names]
  plan = plan_for(names[0], quick)
  for work in works:
    if ref_budget_s > 0:
      extend_reference(work, method, plan["ref_n"], cache=cache, deadline=time.time() + ref_budget_s,
                       batch_size=min(CHUNK, plan["batch_size"]), log=lambda m: None)
  cands = candidates(works[0], method, plan, log)
  for work in works:
    log(f"[{work.name} {method}] {work.description}")
    runs = call_in_turns(cands, work.x, onehot_of(work), keys=plan["keys"], log=log,
                         warmup=plan.get("warmup", True))
    for r in runs:
      r["date_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
      r["load_average"] = list(os.getloadavg())
    save_runs(cache, work.name, method, runs)


def score_workload(name: str, method: str, *, quick: bool, cache: pathlib.Path, log) -> dict[str, Any]:
  """Scores the cached maps of ``name`` against its cached reference as it is now."""
  plan = plan_for(name, quick)
  work = build(name, quick=quick)
  ref = load_reference(cache, name, method)
  if ref is None:
    raise RuntimeError(f"no reference for {name} {method}: run `python -m benchmarks.bench_estimators refs"
                       f" --workloads {name} --methods {method}` first (or give --ref-budget-s)")
  runs = load_runs(cache, name, method)
  if runs is None:
    raise RuntimeError(f"no cached maps for {name} {method}: run without --rescore")
  log(f"[{name} {method}] reference: {ref.n} samples, rel. stderr {ref.rel_stderr:.4f}")
  records = score(runs, ref, log)
  fresh_iid = [r for r in records if r["estimator"] == "mc_iid"]
  s_per_grad = fresh_iid[-1]["seconds"] / fresh_iid[-1]["n"]
  records += iid_from_chunks(ref, s_per_grad)
  ratio = iid_variance_ratio(ref)
  add_speedups(records, ratio, s_per_grad)
  goal = [r for r in records if r["estimator"] != "mc_iid" and r["error_vs_truth"] <= 0.10
          and (r.get("speedup_vs_iid") or 0) >= 10]
  half = ref.chunk_means.shape[0] // 2
  split = agreement(ref.chunk_means[:half].mean(0), ref.chunk_means[half:].mean(0))
  return {"workload": name, "method": method, "description": work.description, "input_shape": list(work.x.shape),
          "date_utc": runs[0].get("date_utc", "?"), "load_average": runs[0].get("load_average", [float("nan")]),
          "scored_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
          "reference": {"n": ref.n, "target_n": plan["ref_n"], "rel_stderr": ref.rel_stderr,
                        "compute_s": ref.seconds, "chunk": CHUNK, "seed": REF_SEED,
                        "split_half_agreement": split},
          "s_per_grad": s_per_grad, "iid_variance_ratio": ratio,
          "iid_n_for_10pct": ratio / 0.01, "iid_s_for_10pct": ratio / 0.01 * s_per_grad,
          "records": records, "goal_met_by": [f"{r['estimator']} n={r['n']}" for r in goal]}


def refs_command(args) -> None:
  """Background worker: extends the references of ``--workloads`` x ``--methods`` in the given order."""
  cache = pathlib.Path(args.cache)
  deadline = time.time() + args.budget_s
  log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
  for name in [w for w in args.workloads.split(",") if w]:
    work = None
    for method in [m for m in args.methods.split(",") if m]:
      if time.time() >= deadline:
        return
      if len(ref_chunks(cache, name, method)) * CHUNK >= args.ref_n:
        continue
      work = work or build(name)
      got = extend_reference(work, method, args.ref_n, cache=cache, deadline=deadline,
                             batch_size=args.batch_size, log=log)
      log(f"[ref {name} {method}] {got} samples")


# ---------------------------------------------------------------------------
# Item 4: randomisation checks and sparseness on the MNIST MLP.


LITE0_LAYERS = ("_fc", "_conv_head", "_blocks/15/_project_conv")
"""Lite0's layers randomised (cascading, top-down) by the sanity checks: convolution and linear weights only
(N(0, 1) batch-norm variances would be negative)."""


def _sanity_setup(name: str, quick: bool):
  """(description, graphdef, params, xs, onehots, bounds, layers) of the sanity checks."""
  from adaptgrad_jax import datasets  # pylint: disable=import-outside-toplevel

  if name == "mlp":
    if quick:
      model, description = models.mlp(rngs=nnx.Rngs(0)), "MLP 784-200-10, random weights (quick)"
    else:
      from adaptgrad_jax.cli._mnist import demo_mlp  # pylint: disable=import-outside-toplevel

      model, description = demo_mlp(progress=False)
    count = 4 if quick else 8
    xs = jnp.asarray(np.asarray(datasets.mnist_embedded().x_test[:count]).reshape(count, 28, 28, 1))
    bounds, layers = (0.0, 1.0), ["fc2", "fc1"]
  else:
    size = 32 if quick else 64
    model = models.pretrained_efficientnet_lite0()
    photos = SELECTION + HELD_OUT
    xs = jnp.asarray(np.stack([models.preprocess_efficientnet_lite(_photo(p), size=size) for p in photos]))
    description = f"EfficientNet-Lite0, ImageNet weights, {', '.join(photos)} at {size} x {size}"
    bounds, layers = models.EFFICIENTNET_LITE_BOUNDS, list(LITE0_LAYERS[:2] if quick else LITE0_LAYERS[:3])
  model.eval()
  graphdef, params = nnx.split(model)
  logits = jax.vmap(lambda x, p: nnx.merge(graphdef, p)(x[None])[0], (0, None))(xs, params)
  onehots = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=xs.dtype)
  return description, graphdef, params, xs, onehots, bounds, layers


def sanity(*, quick: bool, log) -> dict[str, Any]:
  """MPRT (cascading), eMPRT and sparseness of each estimator's maps: the MNIST MLP and Lite0 at 64 px."""
  from adaptgrad_jax import metrics  # pylint: disable=import-outside-toplevel

  out: dict[str, Any] = {}
  for setup in ("mlp", "lite0"):
    description, graphdef, params, xs, onehots, bounds, layers = _sanity_setup(setup, quick)
    n = 8 if quick else 32
    f = lambda x, p, o, graphdef=graphdef: jnp.dot(nnx.merge(graphdef, p)(x[None])[0], o)  # noqa: E731
    grad = jax.grad(f)
    explainers: dict[str, Callable[..., Any]] = {
      "gradient": lambda key, x, p, o, grad=grad: grad(x, p, o),
      "smooth_grad (MC)": ag.smooth_grad(grad, ALPHA, n, bounds=bounds),
      "adapt_smooth (MC)": ag.adapt_smooth(grad, C, n, bounds=bounds),
      "smooth_diff (SG sigma)": ag.smooth_diff(f, n, alpha=ALPHA, bounds=bounds),
      "smooth_diff (AG sigma)": ag.smooth_diff(f, n, c=C, bounds=bounds),
    }
    if hasattr(ag, "moment_smooth"):
      for label, kw in (("moment_smooth (SG sigma)", {"alpha": ALPHA}), ("moment_smooth (AG sigma)", {"c": C})):
        ms = ag.moment_smooth(f, bounds=bounds, **kw)  # pylint: disable=no-member
        explainers[label] = lambda key, x, p, o, ms=ms: ms(x, p, o)
    count = xs.shape[0]
    rec: dict[str, Any] = {"model": description, "examples": count, "n": n, "layers": layers, "explainers": {}}
    for label, fn in explainers.items():
      start = time.perf_counter()
      batch = jax.jit(lambda key, p, fn=fn, xs=xs, onehots=onehots, count=count: jax.vmap(
          lambda kk, x, o: fn(kk, x, p, o))(jax.random.split(key, count), xs, onehots))
      explain_params = lambda p, batch=batch: batch(jax.random.key(2), p)  # noqa: E731
      mprt = metrics.model_parameter_randomisation(jax.random.key(1), explain_params, params, layers,
                                                   mode="cascading")
      classes = onehots.shape[-1]
      by_class = lambda key, x, p, t, fn=fn, classes=classes: fn(key, x, p, jax.nn.one_hot(t, classes))  # noqa: E731
      emprt = metrics.efficient_mprt(jax.random.key(3), by_class, xs, params, jnp.argmax(onehots, -1),
                                     layers=layers)
      maps = batch(jax.random.key(2), params)
      sparse = jax.vmap(metrics.sparseness)(maps)
      rec["explainers"][label] = {"mprt": {k: float(v) for k, v in mprt.items()},
                                  "emprt": float(jnp.mean(emprt)), "sparseness": float(jnp.mean(sparse)),
                                  "seconds": time.perf_counter() - start}
      log(f"[sanity {setup}] {label}: {rec['explainers'][label]}")
    out[setup] = rec
  return out


def sanity_markdown(sanity_results: dict[str, Any]) -> list[str]:
  lines = ["## Sanity: randomisation checks and sparseness (item 4)", "",
           "MPRT: Spearman rank correlation of the map after cascading randomisation (N(0, 1), top-down) with the"
           " trained model's map, after the first layer and after all listed layers (lower = the map depends on"
           " the model); eMPRT: relative rise of the map's histogram entropy on the randomised model (higher ="
           " depends on the model); sparseness: Gini of the channel-summed |map| (higher = sparser).", ""]
  for rec in sanity_results.values():
    first, last = rec["layers"][0], rec["layers"][-1]
    lines += [f"### {rec['model']}", "",
              f"{rec['examples']} inputs (predicted classes), n = {rec['n']} samples (Monte Carlo) or forwards"
              f" (smooth_diff); layers randomised: {', '.join(rec['layers'])}.", "",
              f"| explainer | MPRT after {first} | MPRT after all | eMPRT | sparseness |",
              "|---|---:|---:|---:|---:|"]
    for label, e in rec["explainers"].items():
      lines.append(f"| {label} | {e['mprt'][first]:.3f} | {e['mprt'][last]:.3f} | {e['emprt']:.3f} |"
                   f" {e['sparseness']:.3f} |")
    lines.append("")
  return lines


# ---------------------------------------------------------------------------
# Performance: VGG16 at 224 px on CPU against Captum's NoiseTunnel(Saliency).


def captum_side_by_side(*, quick: bool, log, size: int = 224) -> dict[str, Any]:
  """Median seconds per map, calls in turns: Captum NoiseTunnel(Saliency) vs ours (same weights, same n, SG sigma).

  The cost of a call does not depend on sigma or on the image, so at a size with a truth (``vgg16-<size>``,
  AdaptGrad) :func:`captum_equal_error` turns these seconds into seconds at equal error.
  """
  import captum.attr as ca  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  from benchmarks import _harness  # pylint: disable=import-outside-toplevel

  name, size = ("convnet", 56) if quick else ("vgg16", size)
  n = 8 if quick else 16
  rounds = 2
  w = _harness.build_workload(name, size)
  ref = _harness._torch()  # pylint: disable=protected-access
  tm = ref.load_numpy_state_dict(_harness.MODELS[name].build_torch(size), w.state_dict()).eval()
  xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(w.x, -1, 0)))[None]
  nt = ca.NoiseTunnel(ca.Saliency(tm))
  x = jnp.asarray(w.x)
  bounds = (0.0, 1.0)
  key = jax.random.key(0)
  fns: dict[str, Callable[[], Any]] = {
    "captum NoiseTunnel(Saliency)": lambda: nt.attribute(xt, nt_type="smoothgrad", nt_samples=n, stdevs=ALPHA,
                                                         target=w.target, abs=False),
  }
  compile_s = {}
  args = (key, x, w.state)
  for label, fn in (
      ("smooth_grad (MC)", ag.smooth_grad(jax.grad(w.logit), ALPHA, n, bounds=bounds, batch_size=n)),
      ("smooth_diff (SG sigma)", ag.smooth_diff(w.logit, n, alpha=ALPHA, bounds=bounds, batch_size=n)),
  ):
    compiled, compile_s[label] = _compile(fn, *args)
    fns[label] = lambda compiled=compiled: compiled(*args)
  if hasattr(ag, "moment_smooth"):
    compiled, compile_s["moment_smooth (SG sigma)"] = _compile(
        ag.moment_smooth(w.logit, alpha=ALPHA, bounds=bounds), x, w.state)  # pylint: disable=no-member
    fns["moment_smooth (SG sigma)"] = lambda compiled=compiled: compiled(x, w.state)
  times: dict[str, list[float]] = {k: [] for k in fns}
  for fn in fns.values():  # warm-up
    _block_any(fn())
  for _ in range(rounds):
    for label, fn in fns.items():
      start = time.perf_counter()
      _block_any(fn())
      times[label].append(time.perf_counter() - start)
      log(f"[captum] {label}: {times[label][-1]:.2f} s")
  captum_s = float(np.median(times["captum NoiseTunnel(Saliency)"]))
  return {"model": f"{name}, random weights, {size} x {size} px, make_input", "size": size, "n": n, "rounds": rounds,
          "torch_threads": torch.get_num_threads(),
          "methods": {k: {"median_s": float(np.median(v)), "times_s": v, "compile_s": compile_s.get(k),
                          "speedup_vs_captum": captum_s / float(np.median(v))} for k, v in times.items()}}


def captum_equal_error(c: dict[str, Any], workloads: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
  """Captum's seconds to reach each estimator's error vs the truth of ``vgg16-<size>`` (AdaptGrad), and ours.

  Captum's ``NoiseTunnel(Saliency)`` is i.i.d. Monte Carlo: its error after n samples is the reference's
  per-sample spread over sqrt(n) (``iid_n_same_error`` of the estimator's record), each sample costing its
  measured seconds per map / n. Our seconds are the same estimator's, timed in turns with Captum's.
  """
  size = c.get("size", 224)
  rec = next((w for w in workloads if w["workload"] == f"vgg16-{size}" and w["method"] == "adapt"), None)
  if rec is None:
    return None
  per_sample = c["methods"]["captum NoiseTunnel(Saliency)"]["median_s"] / c["n"]
  timed = {"smooth_diff": ("smooth_diff (SG sigma)", c["n"]), "moment_smooth": ("moment_smooth (SG sigma)", 1)}
  rows = []
  for r in rec["records"]:
    label, n = timed.get(r["estimator"], (None, None))
    if label not in c["methods"] or r["n"] != n or not r.get("iid_n_same_error"):
      continue
    captum_s = per_sample * r["iid_n_same_error"]
    ours = c["methods"][label]["median_s"]
    rows.append({"estimator": r["estimator"], "n": r["n"], "error_vs_truth": r["error_vs_truth"],
                 "iid_samples": r["iid_n_same_error"], "captum_s": captum_s, "ours_s": ours,
                 "speedup": captum_s / ours})
  return {"workload": rec["workload"], "reference_n": rec["reference"]["n"],
          "reference_rel_stderr": rec["reference"]["rel_stderr"], "captum_s_per_sample": per_sample, "rows": rows}


def _block_any(v):
  return jax.block_until_ready(v) if isinstance(v, jax.Array) else v


def captum_markdown(c: dict[str, Any]) -> list[str]:
  lines = [f"## Speed: against Captum's NoiseTunnel(Saliency) on CPU, {c.get('size', 224)} px", "",
           f"{c['model']}; n = {c['n']} (samples for Monte Carlo, forwards for smooth_diff); median of"
           f" {c['rounds']} calls in turns (torch {c['torch_threads']} threads). Equal n, not equal error: see the"
           " error tables above for what each n buys.", "",
           "| method | s per map | x Captum | compile s |", "|---|---:|---:|---:|"]
  for label, m in c["methods"].items():
    cs = m["compile_s"]
    lines.append(f"| {label} | {m['median_s']:.3g} | {m['speedup_vs_captum']:.2f} |"
                 f" {'' if cs is None else f'{cs:.0f}'} |")
  eq = c.get("equal_error")
  if eq:
    lines += ["", f"At equal error to the AdaptGrad truth of `{eq['workload']}` ({eq['reference_n']:,} samples, own"
              f" error {eq['reference_rel_stderr']:.1%}): Captum's seconds are {eq['captum_s_per_sample']:.3g} s"
              " per sample (from the row above) times the i.i.d. samples that reach the estimator's error.", "",
              "| estimator | n | error vs truth | i.i.d. samples for it | Captum s | ours s | x Captum |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['estimator']} | {r['n']} | {r['error_vs_truth']:.3f} | {r['iid_samples']:,.0f} |"
              f" {r['captum_s']:,.1f} | {r['ours_s']:.3g} | {r['speedup']:,.0f} |" for r in eq["rows"]]
  return lines + [""]


# ---------------------------------------------------------------------------
# Report.


def _fmt_rec(r: dict[str, Any]) -> str:
  sp = r.get("speedup_vs_iid")
  bias = r.get("bias_vs_truth")
  secs = ("~" if r["seconds_derived"] else "") + f"{r['seconds']:.3g}"
  return (f"| {r['estimator']} | {r['n']} | {r['forwards']} / {r['backwards']} | {secs} | {r['keys']} |"
          f" {r['error']:.3f} | {r['error_vs_truth']:.3f} |"
          f" {'' if bias is None else f'{bias:.3f}'} | {r['spearman']:.3f} | {r['top10_overlap']:.3f} |"
          f" {'' if sp is None else f'{sp:.3g}x'} |")


def markdown(results: dict[str, Any]) -> str:
  env = results["environment"]
  lines = ["# Estimators beyond Monte Carlo against i.i.d. truths (issue 28)", "",
           f"Generated by `python -m benchmarks.bench_estimators` (last run {env['date_utc']} UTC,"
           f" {env.get('cpu_model', '?')}, {env['cpu_count']} cores shared with other work, jax {env['jax']})."
           " Seconds are medians of calls made in turns within one process on a loaded machine (noisy);"
           " `~` marks seconds derived as n x the measured seconds per gradient.", "",
           "Columns: *err* = ||map - ref|| / ||ref|| (mean over keys); *vs truth* = sqrt(err^2 - ref_err^2), the"
           " reference's own Monte Carlo error removed; *bias* = vs truth with the estimator's own spread (from"
           " two keys) removed too: the bias floor of a biased estimator; *Spearman* / *top-10%*: rank"
           " correlation and overlap of the top 10% pixels of the channel-summed |map| with the reference's;"
           " *x iid*: i.i.d. Monte Carlo's time to reach the same error vs truth (from the reference's"
           " per-sample variance) over this estimator's time.", ""]
  for rec in results["workloads"]:
    ref = rec["reference"]
    lines += [f"## {rec['workload']}, {'AdaptGrad c = 0.95' if rec['method'] == 'adapt' else 'SmoothGrad alpha = 0.2'}",
              "", f"{rec['description']}; input {tuple(rec['input_shape'])}; run {rec['date_utc']} UTC"
              f" (load average {rec['load_average'][0]:.1f}).", "",
              f"Reference: {ref['n']:,} i.i.d. samples (target {ref['target_n']:,}; chunks of {ref['chunk']},"
              f" {ref['compute_s']:.0f} s of compute), own relative standard error {ref['rel_stderr']:.2%}"
              f" (split-half Spearman {ref['split_half_agreement']['spearman']:.3f}, top-10%"
              f" {ref['split_half_agreement']['top10_overlap']:.3f}: the ceiling of agreement a map can show"
              f" against it). i.i.d. Monte Carlo: {rec['s_per_grad'] * 1e3:.1f} ms per gradient;"
              f" 10% relative error needs {rec['iid_n_for_10pct']:,.0f} gradients,"
              f" ~{rec['iid_s_for_10pct']:,.0f} s. Goal (<= 10% vs truth, >= 10x faster than i.i.d. at the same"
              f" error): {'met by ' + ', '.join(rec['goal_met_by']) if rec['goal_met_by'] else 'not met'}.", "",
              "| estimator | n | forwards / backwards | s per map | keys | err | vs truth | bias | Spearman"
              " | top-10% | x iid |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [_fmt_rec(r) for r in rec["records"]]
    lines.append("")
  if results.get("sanity"):
    lines += sanity_markdown(results["sanity"])
  for key in sorted(k for k in results if k.startswith("captum") and results[k]):
    lines += captum_markdown(results[key])
  return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  recs = results["workloads"]
  if not recs:
    return
  fig, axes = plt.subplots(2, len(recs), figsize=(3.8 * len(recs), 6.6), squeeze=False)
  colours = {"mc_iid": "tab:blue", "mc_antithetic": "tab:orange", "smooth_diff": "tab:green",
             "moment_smooth": "tab:red", "hybrid_split1": "tab:purple", "hybrid_split4": "tab:brown",
             "hybrid_split8": "tab:pink"}
  for col, rec in enumerate(recs):
    for row, xkey in enumerate(("seconds", "evaluations")):
      ax = axes[row][col]
      names = sorted({r["estimator"] for r in rec["records"]})
      for name in names:
        pts = sorted((r[xkey], max(r["error_vs_truth"], 1e-3)) for r in rec["records"] if r["estimator"] == name)
        ax.loglog(*zip(*pts), marker="o", ms=3, label=name, color=colours.get(name, "tab:gray"))
      ax.axhline(0.10, color="grey", lw=0.6, ls=":")
      ax.set_xlabel("seconds per map" if xkey == "seconds" else "evaluations (forwards or gradients)")
      if row == 0:
        ax.set_title(f"{rec['workload']} ({rec['method']})", fontsize=9)
      if col == 0:
        ax.set_ylabel("relative L2 error vs truth")
      if row == 0:
        ax.legend(fontsize=5)
  fig.tight_layout()
  atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
  plt.close(fig)


def write(results: dict[str, Any], out: pathlib.Path, tag: str, *, plot_png: bool = True) -> None:
  out.mkdir(parents=True, exist_ok=True)
  atomic_write(out / f"{tag}.json", lambda f: f.write(json.dumps(results, indent=1).encode()))
  atomic_write(out / f"{tag}.md", lambda f: f.write(markdown(results).encode()))
  if plot_png:
    plot(results, out / f"{tag}.png")


def main(argv: Optional[list[str]] = None) -> Any:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes and references: checks the command in seconds")
  parser.add_argument("--workloads", default=None,
                      help="comma-separated (default: mlp, lite0-<4 photos>-224, vgg16-112, resnet50-112)")
  parser.add_argument("--methods", default="adapt,smooth")
  parser.add_argument("--parts", default="estimators,sanity,captum")
  parser.add_argument("--ref-budget-s", type=float, default=600.0,
                      help="seconds per workload and method to extend its cached reference before scoring")
  parser.add_argument("--update", action="store_true", help="keep the other entries of an existing results file")
  parser.add_argument("--plot-only", action="store_true", help="redraw <tag>.png from <tag>.json")
  parser.add_argument("--rescore", action="store_true",
                      help="score the cached maps against the references as they are now (no estimator calls)")
  parser.add_argument("--merge", action="append", default=[],
                      help="take the sanity / captum parts of another results file (runs split across processes)")
  parser.add_argument("--captum-size", type=int, default=224,
                      help="VGG16's input size for --parts captum (at 112 a truth gives seconds at equal error)")
  parser.add_argument("--cache", default=None)
  parser.add_argument("--out", default=str(RESULTS))
  parser.add_argument("--tag", default=None)
  sub = parser.add_subparsers(dest="command")
  refs = sub.add_parser("refs", help="extend the cached references (resumable; run under nice in the background)")
  refs.add_argument("--workloads", default="lite0-chelsea-224")
  refs.add_argument("--methods", default="adapt,smooth")
  refs.add_argument("--ref-n", type=int, default=16_384)
  refs.add_argument("--budget-s", type=float, default=3600.0)
  refs.add_argument("--batch-size", type=int, default=32)
  refs.add_argument("--cache", default=str(CACHE))
  args = parser.parse_args(argv)
  if args.command == "refs":
    return refs_command(args)
  log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
  out = pathlib.Path(args.out)
  tag = args.tag or ("estimators_quick" if args.quick else "estimators")
  if args.plot_only:
    return plot(json.loads((out / f"{tag}.json").read_text()), out / f"{tag}.png")
  cache = pathlib.Path(args.cache) if args.cache else (CACHE.parent / "estimators_quick" if args.quick else CACHE)
  if args.workloads is None:
    names = (["mlp"] if args.quick else
             ["mlp"] + [f"lite0-{p}-224" for p in SELECTION + HELD_OUT] + ["vgg16-112", "resnet50-112"])
  else:
    names = [w for w in args.workloads.split(",") if w]
  parts = set(args.parts.split(","))
  results: dict[str, Any] = {"environment": environment(), "workloads": [], "sanity": None, "captum": None}
  if args.update and (out / f"{tag}.json").exists():
    results = json.loads((out / f"{tag}.json").read_text())
    results["environment"] = environment()
  methods = [m for m in args.methods.split(",") if m]
  for path in args.merge:
    other = json.loads(pathlib.Path(path).read_text())
    for part in [p for p in other if p == "sanity" or p.startswith("captum")]:
      if other.get(part):
        results[part] = other[part]
    write(results, out, tag)
  if "estimators" in parts:
    for method in methods:
      groups: dict[str, list[str]] = {}
      for name in names:  # one compile per model and input shape
        groups.setdefault(name.split("-")[0] + "-" + name.split("-")[-1], []).append(name)
      if not args.rescore:
        for group in groups.values():
          produce_maps(group, method, quick=args.quick, cache=cache, ref_budget_s=args.ref_budget_s, log=log)
      for name in names:
        try:
          rec = score_workload(name, method, quick=args.quick, cache=cache, log=log)
        except RuntimeError as e:
          log(f"[{name} {method}] skipped: {e}")
          continue
        results["workloads"] = [r for r in results["workloads"]
                                if (r["workload"], r["method"]) != (name, method)] + [rec]
        write(results, out, tag)
  if "sanity" in parts:
    results["sanity"] = sanity(quick=args.quick, log=log)
    write(results, out, tag)
  if "captum" in parts:
    part = "captum" if args.captum_size == 224 else f"captum_{args.captum_size}"
    results[part] = captum_side_by_side(quick=args.quick, log=log, size=args.captum_size)
  for part in [p for p in results if p.startswith("captum") and results[p]]:
    results[part]["equal_error"] = captum_equal_error(results[part], results["workloads"])
  write(results, out, tag)
  return results


if __name__ == "__main__":
  main()
