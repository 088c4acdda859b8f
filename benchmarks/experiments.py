"""Experiments behind benchmarks/README.md: why batched conv gradients are slow on XLA:CPU, and what helps.

    python -m benchmarks.experiments                 # all, about 20 minutes on 2 cores
    python -m benchmarks.experiments --only prng,strategies

Sections (each row: variant, milliseconds per call, best of a few calls):

* ``batch``: per-sample cost of ``jax.vmap(jax.grad(f))`` against the vmap batch size.
* ``strategies``: one vmap, a scan over chunks without and with canonical
  convolution kernels, a ``lax.map`` over single samples, a Python loop of a
  jitted chunk, a Python loop of a jitted single-sample gradient.
* ``layout``: the same small convnet in NHWC and NCHW.
* ``dtype``: float32 against bfloat16 (input and weights).
* ``donation``: ``donate_argnums`` on the input.
* ``prng``: threefry (default), rbg and unsafe_rbg keys; ``jax_threefry_partitionable``.
* ``flags``: XLA:CPU flags, each in a fresh process.
* ``convs``: the input gradient of single convolution layers, as emitted and
  rewritten, against PyTorch.
* ``vgg_head``: VGG-16's head with the adaptive pool first and folded into
  ``classifier.0``, against PyTorch.
* ``versus_torch``: the limit, adapt_smooth and both PyTorch methods called in
  turns, for the ratios of issue 7's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
  "",
  "--xla_cpu_multi_thread_eigen=false",
  "--xla_cpu_use_thunk_runtime=false",
  "--xla_cpu_use_onednn=true",
  "--xla_cpu_experimental_onednn_custom_call=true",
  "--xla_cpu_use_xnnpack=true",
  "--xla_cpu_enable_fast_math=true",
  "--xla_cpu_enable_concurrency_optimized_scheduler=true",
]


def _best_ms(fn, repeats: int = 5) -> float:
  import jax  # pylint: disable=import-outside-toplevel

  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return 1000 * min(times)


def _convnet(name="convnet", size=56):
  from benchmarks import _harness  # pylint: disable=import-outside-toplevel

  return _harness.build_workload(name, size)


def exp_batch(rows, models=(("convnet", 56), ("vgg16", 64))):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  for name, size in models:
    w = _convnet(name, size)
    grad = jax.grad(w.logit)
    f = jax.jit(lambda xs, st: jax.vmap(grad, (0, None))(xs, st).sum(0))
    for b in (1, 2, 4, 8, 16, 32):
      xs = jnp.asarray(np.random.default_rng(0).uniform(size=(b,) + w.x.shape).astype(np.float32))
      ms = _best_ms(lambda: f(xs, w.state), 3 if name != "convnet" else 5)
      rows.append({"section": "batch", "model": f"{name} {size}", "variant": f"vmap batch {b}", "ms": ms,
                   "ms_per_sample": ms / b})


def exp_strategies(rows, n=50, chunk=5):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from benchmarks import _harness  # pylint: disable=import-outside-toplevel

  w = _convnet()
  grad = jax.grad(w.logit)
  x = jnp.asarray(w.x)
  key = jax.random.key(0)
  sigma = jax.jit(_harness.sigma_of)(x)
  keys = jax.random.split(key, n)

  def add(variant, ms, note=""):
    rows.append({"section": "strategies", "model": "convnet 56", "variant": variant, "ms": ms, "n": n, "note": note})

  limit = jax.jit(_harness.limit_fn(grad, n))
  add("limit (one normal call, one vmap)", _best_ms(lambda: limit(key, x, w.state)))
  vmap = jax.jit(ag.adapt_smooth(grad, 0.95, n, bounds=(0.0, 1.0)))
  add("adapt_smooth batch_size=None (one vmap)", _best_ms(lambda: vmap(key, x, w.state)))
  scan = jax.jit(ag.adapt_smooth(grad, 0.95, n, batch_size=chunk, bounds=(0.0, 1.0)))
  add(f"adapt_smooth batch_size={chunk} (scan, canonical kernels)", _best_ms(lambda: scan(key, x, w.state)))
  raw = jax.jit(ag.adapt_smooth(grad, 0.95, n, batch_size=chunk, cpu_rewrite=False, bounds=(0.0, 1.0)))
  add(f"adapt_smooth batch_size={chunk} (scan, cpu_rewrite=False)", _best_ms(lambda: raw(key, x, w.state), 3))

  def one(k):
    return grad(x + sigma * jax.random.normal(k, x.shape), w.state)

  lmap = jax.jit(lambda ks: jax.lax.map(one, ks).mean(0))
  add("lax.map over single samples (kernels as emitted)", _best_ms(lambda: lmap(keys), 3))
  lmap_c = jax.jit(lambda ks: jax.lax.map(ag.cpu.rewrite(one), ks).mean(0))
  add("lax.map over single samples (canonical kernels)", _best_ms(lambda: lmap_c(keys), 3))
  chunk_fn = jax.jit(lambda ks: jax.vmap(one)(ks).sum(0))
  chunks = keys.reshape((n // chunk, chunk) + keys.shape[1:])

  def host_chunks():
    total = chunk_fn(chunks[0])
    for c in chunks[1:]:
      total = total + chunk_fn(c)
    return total / n

  add(f"Python loop over jitted vmap chunks of {chunk}", _best_ms(host_chunks))
  single = jax.jit(one)

  def host_loop():
    total = single(keys[0])
    for k in keys[1:]:
      total = total + single(k)
    return total / n

  add("Python loop of a jitted single-sample gradient", _best_ms(host_loop))


def _nchw_convnet(layout):
  """The harness convnet's feature extractor as raw lax convolutions in NHWC or NCHW."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  widths = [3, 16, 32, 64]
  kernels = [jnp.asarray(rng.normal(0, (2 / (9 * a)) ** 0.5, (3, 3, a, b)).astype(np.float32))
             for a, b in zip(widths[:-1], widths[1:])]
  head = jnp.asarray(rng.normal(0, 0.01, (7 * 7 * 64,)).astype(np.float32))

  def f(x):  # x: one image, NHWC (H, W, C) or NCHW (C, H, W)
    y = x[None]
    for k in kernels:
      if layout == "NHWC":
        y = jax.lax.conv_general_dilated(y, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.nn.relu(y)
        b, h, w_, c = y.shape
        y = y.reshape(b, h // 2, 2, w_ // 2, 2, c).max(axis=(2, 4))
      else:
        y = jax.lax.conv_general_dilated(y, jnp.transpose(k, (3, 2, 0, 1)), (1, 1), "SAME",
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        y = jax.nn.relu(y)
        b, c, h, w_ = y.shape
        y = y.reshape(b, c, h // 2, 2, w_ // 2, 2).max(axis=(3, 5))
    return jnp.dot(y.reshape(-1), head)

  return f


def exp_layout(rows, n=50):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  x = np.random.default_rng(0).uniform(size=(56, 56, 3)).astype(np.float32)
  key = jax.random.key(0)
  for layout in ("NHWC", "NCHW"):
    xi = jnp.asarray(x if layout == "NHWC" else np.moveaxis(x, -1, 0))
    f = jax.jit(ag.adapt_smooth(jax.grad(_nchw_convnet(layout)), 0.95, n, bounds=(0.0, 1.0)))
    rows.append({"section": "layout", "model": "lax convnet 56", "variant": layout, "n": n,
                 "ms": _best_ms(lambda: f(key, xi))})


def exp_dtype(rows, n=50):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  w = _convnet()
  key = jax.random.key(0)
  for dtype in (jnp.float32, jnp.bfloat16):
    state = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, w.state)
    x = jnp.asarray(w.x).astype(dtype)
    f = jax.jit(ag.adapt_smooth(jax.grad(w.logit), 0.95, n, bounds=(0.0, 1.0)))
    rows.append({"section": "dtype", "model": "convnet 56", "variant": jnp.dtype(dtype).name, "n": n,
                 "ms": _best_ms(lambda: f(key, x, state))})


def exp_donation(rows, n=50):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  w = _convnet()
  key = jax.random.key(0)
  smoothed = ag.adapt_smooth(jax.grad(w.logit), 0.95, n, bounds=(0.0, 1.0))
  plain = jax.jit(smoothed)
  donated = jax.jit(smoothed, donate_argnums=(1,))
  rows.append({"section": "donation", "model": "convnet 56", "variant": "no donation", "n": n,
               "ms": _best_ms(lambda: plain(key, jnp.asarray(w.x), w.state))})
  rows.append({"section": "donation", "model": "convnet 56", "variant": "donate_argnums=(1,) (the input)", "n": n,
               "ms": _best_ms(lambda: donated(key, jnp.asarray(w.x), w.state))})


def exp_prng(rows, n=50):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from benchmarks import _harness  # pylint: disable=import-outside-toplevel

  w = _harness.build_workload("mlp")
  grad = jax.grad(w.logit)
  x = jnp.asarray(w.x)
  for partitionable in (True, False):
    jax.config.update("jax_threefry_partitionable", partitionable)
    impls = ("threefry2x32", "rbg", "unsafe_rbg") if partitionable else ("threefry2x32",)
    for impl in impls:
      key = jax.random.key(0, impl=impl)
      limit = jax.jit(_harness.limit_fn(grad, n))
      smoothed = jax.jit(ag.adapt_smooth(grad, 0.95, n, bounds=(0.0, 1.0)))
      chunked = jax.jit(ag.adapt_smooth(grad, 0.95, n, batch_size=10, bounds=(0.0, 1.0)))
      noise = jax.jit(lambda k: jax.random.normal(k, (n,) + x.shape))
      same = bool(np.allclose(smoothed(key, x, w.state), chunked(key, x, w.state), rtol=1e-5, atol=1e-7))
      variant = f"{impl}" + ("" if partitionable else " (jax_threefry_partitionable=False)")
      for what, fn in (("noise only", lambda: noise(key)), ("limit", lambda: limit(key, x, w.state)),
                       ("adapt_smooth", lambda: smoothed(key, x, w.state))):
        rows.append({"section": "prng", "model": "mlp", "variant": f"{variant}: {what}", "n": n,
                     "ms": _best_ms(fn, 20), "batch_size_invariant": same})
  jax.config.update("jax_threefry_partitionable", True)


_FLAG_PROBE = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp
import adaptgrad_jax as ag
from benchmarks import _harness
from benchmarks.experiments import _best_ms
out = {{}}
for name, size, n in (("convnet", 56, 50),):
  w = _harness.build_workload(name, size)
  key = jax.random.key(0)
  f = jax.jit(ag.adapt_smooth(jax.grad(w.logit), 0.95, n))
  out[f"{{name}} {{size}} n={{n}}"] = _best_ms(lambda: f(key, jnp.asarray(w.x), w.state), 3)
print("FLAGRESULT " + json.dumps(out))
"""


def exp_flags(rows):
  for flags in FLAGS:
    env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, "-c", _FLAG_PROBE.format(root=REPO_ROOT)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("FLAGRESULT ")), None)
    if line is None:
      rows.append({"section": "flags", "variant": flags or "(none)", "error": proc.stderr.strip().splitlines()[-1:]})
      continue
    for model, ms in json.loads(line[len("FLAGRESULT "):]).items():
      rows.append({"section": "flags", "model": model, "variant": flags or "(none)", "ms": ms})


# (name, input H = W, in features, out features, kernel, stride, groups): layers of ResNet-50, VGG16 and
# EfficientNet-Lite0 at 64 x 64, batch 20.
_CONV_CASES = [
  ("small output (ResNet-50 layer4 3x3)", 2, 512, 512, 3, 1, 1),
  ("strided, cotangent < kernel (layer4 3x3/2)", 4, 512, 512, 3, 2, 1),
  ("1x1 (layer3)", 4, 1024, 256, 1, 1, 1),
  ("1x1 /2 (layer4 downsample)", 4, 1024, 2048, 1, 2, 1),
  ("depthwise 3x3 (Lite0)", 32, 32, 32, 3, 1, 32),
  ("depthwise 5x5/2 (Lite0)", 16, 144, 144, 5, 2, 144),
  ("depthwise 5x5 (Lite0)", 4, 672, 672, 5, 1, 672),
  ("3x3 (VGG16 block 2)", 32, 64, 64, 3, 1, 1),
  ("3x3 (ResNet-50 layer1)", 16, 64, 64, 3, 1, 1),
  ("3x3 (VGG16 block 4)", 8, 512, 512, 3, 1, 1),
]


def exp_convs(rows, batch=20):
  """The input gradient of one convolution: as JAX emits it, rewritten, with and without compiler options."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  options = ag.cpu.compiler_options()
  for name, size, cin, cout, k, stride, groups in _CONV_CASES:
    x = jnp.asarray(rng.normal(size=(batch, size, size, cin)).astype(np.float32))
    w = jnp.asarray(0.05 * rng.normal(size=(k, k, cin // groups, cout)).astype(np.float32))

    def loss(x, w, stride=stride, groups=groups, k=k):
      y = jax.lax.conv_general_dilated(x, w, (stride, stride), [(k // 2, k // 2)] * 2,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
      return jnp.sum(jnp.sin(y))

    grad = jax.grad(loss)
    for variant, fn, opts in [
      ("as emitted, XLA defaults", grad, {}),
      ("rewrite_convolutions, XLA defaults", ag.cpu.rewrite(grad), {}),
      ("as emitted, cpu_compiler_options", grad, options),
      ("rewrite_convolutions, cpu_compiler_options", ag.cpu.rewrite(grad), options),
    ]:
      compiled = jax.jit(fn).lower(x, w).compile(compiler_options=opts)
      rows.append({"section": "convs", "model": name, "variant": variant, "ms": _best_ms(lambda: compiled(x, w), 5)})
    rows.append({"section": "convs", "model": name, "variant": "PyTorch (oneDNN)", "ms": _torch_conv_grad_ms(
      np.asarray(x), np.asarray(w), stride, k // 2, groups)})


def _torch_conv_grad_ms(x, w, stride, pad, groups) -> float:
  import torch  # pylint: disable=import-outside-toplevel

  tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).requires_grad_(True)
  tw = torch.from_numpy(np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1))))

  def run():
    y = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad, groups=groups)
    return torch.autograd.grad(torch.sin(y).sum(), tx)

  run()
  times = []
  for _ in range(5):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return 1000 * min(times)


VERSUS_TORCH = (("vgg16", 64, 50), ("resnet50", 64, 50), ("mlp", 28, 10), ("mlp", 28, 50), ("mlp", 28, 200))


def exp_versus_torch(rows, cases=VERSUS_TORCH, rounds=7, round_seconds=0.2):
  """The limit, adapt_smooth (one vmap) and PyTorch, called in turns in one process.

  The suite times each method in a block of calls; on a shared machine the
  blocks can see different load. Here every round times each method in turn
  (as many calls as fill ``round_seconds``, at least one), so drift hits them
  alike; the notes give adapt_smooth's per-round time ratios.
  """
  import jax  # pylint: disable=import-outside-toplevel

  from benchmarks import _harness  # pylint: disable=import-outside-toplevel

  for name, size, n in cases:
    workload = _harness.build_workload(name, size)
    runs = {
      "limit": _harness.prepare_jax(workload, "limit", n, jax.random.key(0)).run,
      "adapt_smooth[None]": _harness.prepare_jax(workload, "adapt_smooth", n, jax.random.key(0)).run,
      "torch_loop": _harness.prepare_torch(workload, "torch_loop", n).run,
      "torch_batched": _harness.prepare_torch(workload, "torch_batched", n).run,
    }
    calls = {}
    for variant, run in runs.items():  # warm-up, and the calls per round
      start = time.perf_counter()
      jax.block_until_ready(run())
      calls[variant] = max(1, int(round_seconds / (time.perf_counter() - start)))
    times: dict[str, Any] = {variant: [] for variant in runs}
    for _ in range(rounds):
      for variant, run in runs.items():
        start = time.perf_counter()
        for _ in range(calls[variant]):
          jax.block_until_ready(run())
        times[variant].append((time.perf_counter() - start) / calls[variant])
    times = {variant: np.array(ts) for variant, ts in times.items()}
    ours = times["adapt_smooth[None]"]
    notes = {
      "limit": ("adapt_smooth's time / the limit's", ours / times["limit"]),
      "torch_loop": ("adapt_smooth faster by", times["torch_loop"] / ours),
      "torch_batched": ("adapt_smooth faster by", times["torch_batched"] / ours),
    }
    for variant, ts in times.items():
      note = f"median of {rounds} rounds of {calls[variant]} calls; min {1000 * ts.min():.2f} ms"
      if variant in notes:
        label, ratios = notes[variant]
        note += f"; {label} {np.median(ratios):.2f}x (per round {ratios.min():.2f}-{ratios.max():.2f}x)"
      rows.append({"section": "versus_torch", "model": f"{name} {size}, n={n}", "variant": variant,
                   "ms": 1000 * float(np.median(ts)), "note": note})


def exp_vgg_head(rows, batch=50, size=64):
  """VGG-16's head (7 x 7 adaptive pool and classifier): the pool first, and folded into classifier.0."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import models  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax.models._vgg import _pooled_linear  # pylint: disable=import-outside-toplevel

  model = models.vgg16(rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  map_size = size // 32
  z = jax.random.uniform(jax.random.key(1), (batch, map_size, map_size, 512))

  def pooled_first(state, z):
    model = nnx.merge(graphdef, state)
    z = models.adaptive_avg_pool(z, 7).reshape(batch, -1)
    for layer in model.classifier:
      z = layer(z)
    return z

  def folded(state, z):  # what VGG.__call__ does on maps under 7 x 7
    model = nnx.merge(graphdef, state)
    first, *rest = model.classifier
    z = _pooled_linear(first, z, 7)
    for layer in rest:
      z = layer(z)
    return z

  for variant, head in [("adaptive pool, then classifier.0", pooled_first), ("pool folded into classifier.0", folded)]:
    def input_grad(state, z, head=head):
      return jax.grad(lambda z: head(state, z).sum())(z)

    compiled = jax.jit(input_grad).lower(state, z).compile(compiler_options=ag.cpu.compiler_options())
    rows.append({"section": "vgg_head", "model": f"vgg16 {size}, batch {batch}", "variant": variant,
                 "ms": _best_ms(lambda compiled=compiled: compiled(state, z), 5),
                 "note": "input gradient of the head (forward and backward)"})
  rows.append({"section": "vgg_head", "model": f"vgg16 {size}, batch {batch}", "variant": "PyTorch (oneDNN)",
               "ms": _torch_vgg_head_ms(model, np.asarray(z)), "note": "the same, torchvision's head"})


def _torch_vgg_head_ms(model, z) -> float:
  import torch  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax import models  # pylint: disable=import-outside-toplevel
  from benchmarks import _harness  # pylint: disable=import-outside-toplevel

  ref = _harness._torch()  # pylint: disable=protected-access
  vgg = ref.load_numpy_state_dict(_harness.MODELS["vgg16"].build_torch(64), models.state_dict_from_model(model))
  head = torch.nn.Sequential(vgg.avgpool, torch.nn.Flatten(), vgg.classifier).eval()
  tz = torch.from_numpy(np.ascontiguousarray(np.moveaxis(z, -1, 1))).requires_grad_(True)

  def run():
    return torch.autograd.grad(head(tz).sum(), tz)

  return _best_ms(run, 5)


SECTIONS = {"batch": exp_batch, "strategies": exp_strategies, "layout": exp_layout, "dtype": exp_dtype,
            "donation": exp_donation, "prng": exp_prng, "flags": exp_flags, "convs": exp_convs,
            "vgg_head": exp_vgg_head, "versus_torch": exp_versus_torch}


def markdown(rows, env) -> str:
  lines = ["# XLA:CPU experiments", "",
           f"{env['date_utc']} UTC; {env.get('cpu_model', env['processor'])}, {env['cpu_count']} cores; JAX "
           f"{env['jax']}; load average at start {env.get('load_average')}. Milliseconds per call, best of 3-20 calls.",
           ""]
  for section in SECTIONS:
    part = [r for r in rows if r["section"] == section]
    if not part:
      continue
    lines += [f"## {section}", ""]
    if part[0].get("measured_utc"):
      lines += [f"Measured {part[0]['measured_utc']} UTC, load average {part[0]['load_average']} at the start.", ""]
    lines += ["| model | variant | ms | note |", "|---|---|---:|---|"]
    for r in part:
      note = r.get("note", "")
      if "ms_per_sample" in r:
        note = f"{r['ms_per_sample']:.2f} ms/sample"
      if "batch_size_invariant" in r:
        note = f"batch_size-invariant: {r['batch_size_invariant']}"
      if "error" in r:
        lines.append(f"| {r.get('model', '')} | {r['variant']} | error | {r['error']} |")
      else:
        ms = f"{r['ms']:.2f}" if r["ms"] < 10 else f"{r['ms']:.1f}"
        lines.append(f"| {r.get('model', '')} | {r['variant']} | {ms} | {note} |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS))
  parser.add_argument("--tag", default="cpu_experiments")
  parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
  args = parser.parse_args(argv)
  from benchmarks import _harness  # pylint: disable=import-outside-toplevel

  env = _harness.environment()
  rows: list[dict[str, Any]] = []
  for name in (args.only.split(",") if args.only else SECTIONS):
    start = time.perf_counter()
    load = os.getloadavg()[0]
    first = len(rows)
    SECTIONS[name](rows)
    for r in rows[first:]:
      r.update(measured_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()), load_average=round(load, 2))
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
  env["load_average_end"] = os.getloadavg()
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f"{args.tag}.json")
  if os.path.exists(path):  # keep the sections not run this time
    with open(path, encoding="utf-8") as f:
      previous = json.load(f)
    ran = {r["section"] for r in rows}
    rows = [r for r in previous.get("rows", []) if r["section"] not in ran] + rows
    env = {**previous.get("environment", {}), "latest": env}
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"environment": env, "rows": rows}, f, indent=1)
  text = markdown(rows, env)
  with open(os.path.join(args.out, f"{args.tag}.md"), "w", encoding="utf-8") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
