"""Benchmark harness: workloads (model + input on shared weights) and the methods being compared.

Methods (the ids used in results):

* ``limit``: the bare jitted computation adapt_smooth stands for (issue 7 (a)):
  sigma from `adaptive_sigma`, the n noise arrays from ONE
  ``jax.random.normal(key, (n,) + x.shape)`` call, ``jax.vmap(jax.grad(f))``
  over the noisy inputs, the mean.
* ``adapt_smooth[B]``: ``jax.jit(adapt_smooth(jax.grad(f), 0.95, n,
  batch_size=B))`` for B in None, ints, ``auto``.
* ``jax_loop``: a Python loop of a jitted per-sample gradient (noise drawn
  inside the jitted step from ``split(key, n)[j]``).
* ``torch_loop``: the released AdaptGrad code's per-sample loop in PyTorch.
* ``torch_batched``: Captum-NoiseTunnel-style batched PyTorch (all n at once).

Every method gets the same per-element sigma and the same weights; the
PyTorch models receive the JAX model's parameters through its torchvision
names (`adaptgrad_jax.models.state_dict_from_model`).
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import platform
import resource
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import adaptgrad_jax as ag
from adaptgrad_jax import models

C = 0.95
BOUNDS = (0.0, 1.0)

# A small VGG-style convnet, written here (issue 2's "small convnet"): 56 x 56 x 3 -> 7 x 7 x 64 -> 128 -> 10.
CONVNET_CONFIG = [16, "M", 32, "M", 64, "M"]


class ModelSpec(NamedTuple):
  """How to build one benchmark model in JAX and in PyTorch."""

  build_jax: Callable[[int], nnx.Module]
  build_torch: Callable[[int], Any]
  shape: Callable[[int], tuple[int, ...]]  # input shape (no batch axis), NHWC
  default_size: int


TESTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests"


def _torch():
  """The PyTorch models and baselines: ``tests/torch_reference.py``, shared with the tests (not shipped).

  Imported under the name the tests use (pytest puts ``tests/`` on
  ``sys.path``), so one module object serves both.
  """
  if str(TESTS_DIR) not in sys.path:
    sys.path.append(str(TESTS_DIR))
  import torch_reference  # pylint: disable=import-outside-toplevel

  return torch_reference


MODELS: dict[str, ModelSpec] = {
  "mlp": ModelSpec(
    lambda size: models.mlp(rngs=nnx.Rngs(0)),
    lambda size: _torch().TorchMLP(),
    lambda size: (28, 28, 1),
    28,
  ),
  "convnet": ModelSpec(
    lambda size: models.VGG(CONVNET_CONFIG, num_classes=10, hidden=128, dropout=0.0, rngs=nnx.Rngs(0)),
    lambda size: _torch().TorchVGG(CONVNET_CONFIG, num_classes=10, hidden=128),
    lambda size: (size, size, 3),
    56,
  ),
  "vgg16": ModelSpec(
    lambda size: models.vgg16(rngs=nnx.Rngs(0)),
    lambda size: _torch().torch_vgg("vgg16"),
    lambda size: (size, size, 3),
    224,
  ),
  "resnet50": ModelSpec(
    lambda size: models.resnet50(rngs=nnx.Rngs(0)),
    lambda size: _torch().torch_resnet("resnet50"),
    lambda size: (size, size, 3),
    224,
  ),
  "efficientnet_lite0": ModelSpec(
    lambda size: _efficientnet_lite0(),
    lambda size: _torch().TorchEfficientNetLite0(image_size=size),
    lambda size: (size, size, 3),
    224,
  ),
}


def _efficientnet_lite0():
  from adaptgrad_jax.models._efficientnet import efficientnet_lite0  # pylint: disable=import-outside-toplevel

  return efficientnet_lite0(rngs=nnx.Rngs(0))


class Workload(NamedTuple):
  """One model on one input: what every method explains."""

  name: str
  size: int
  logit: Callable[[jax.Array, Any], jax.Array]  # logit(x, state) -> the target logit (scalar)
  state: Any  # the NNX state (parameters and batch statistics), passed as an argument
  x: np.ndarray  # one input, NHWC, float32 in [0, 1]
  target: int
  state_dict: Callable[[], dict[str, np.ndarray]]  # torch-named weights, computed on demand


def make_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  """A smooth random image in [0, 1] with some pixels exactly on the bounds (sigma = 0 there)."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
  x[rng.uniform(size=shape) < 0.1] = 0.0
  x[rng.uniform(size=shape) < 0.02] = 1.0
  return x


def build_workload(name: str, size: Optional[int] = None, *, seed: int = 0) -> Workload:
  """Builds model ``name`` (random weights, eval mode) and an input of ``size`` x ``size``."""
  spec = MODELS[name]
  size = spec.default_size if size is None else size
  model = spec.build_jax(size)
  model.eval()
  graphdef, state = nnx.split(model)
  x = make_input(spec.shape(size), seed)

  def logits(x, state):
    return nnx.merge(graphdef, state)(x[None])[0]

  target = int(jnp.argmax(jax.jit(logits)(jnp.asarray(x), state)))

  def logit(x, state):
    return logits(x, state)[target]

  def state_dict():
    return models.state_dict_from_model(nnx.merge(graphdef, state))

  return Workload(name, size, logit, state, x, target, state_dict)


def sigma_of(x: Any) -> jax.Array:
  """The per-element AdaptGrad sigma every method uses (c = 0.95, two-sided rule)."""
  return ag.adaptive_sigma(x, C, bounds=BOUNDS)


# ---------------------------------------------------------------------------
# Methods: each returns (run, compile_seconds, xla_memory) with run() -> np.ndarray result.


class Prepared(NamedTuple):
  run: Callable[[], Any]
  compile_s: float
  memory: Optional[dict[str, int]]


def _memory(compiled) -> Optional[dict[str, int]]:
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
  out = {f.replace("_size_in_bytes", ""): int(getattr(stats, f, 0)) for f in fields}
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def _compile(fn, *args, xla_defaults: bool = False) -> tuple[Any, float]:
  """Lowers and compiles ``fn``; with ``ag.cpu.compiler_options()`` unless ``xla_defaults``."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile(compiler_options={} if xla_defaults else ag.cpu.compiler_options())
  return compiled, time.perf_counter() - start


def limit_fn(grad_fn: Callable[..., Any], n: int) -> Callable[..., Any]:
  """Issue 7 (a): one normal call for all n noise arrays, vmap(grad), mean."""

  def limit(key, x, state):
    sigma = sigma_of(x)
    z = jax.random.normal(key, (n,) + x.shape, x.dtype)
    noisy = x + sigma * z
    return jnp.mean(jax.vmap(grad_fn, (0, None))(noisy, state), axis=0)

  return limit


def prepare_jax(
  workload: Workload, method: str, n: int, key: jax.Array, batch_size: Any = None, xla_defaults: bool = False
) -> Prepared:
  """Compiles a JAX method; ``method`` is ``limit``, ``adapt_smooth`` or ``jax_loop``.

  Every method is compiled with ``ag.cpu.compiler_options()`` (``{}`` off
  CPU) unless ``xla_defaults``.
  """
  grad_fn = jax.grad(workload.logit)
  x = jnp.asarray(workload.x)
  state = workload.state
  if method == "limit":
    compiled, compile_s = _compile(limit_fn(grad_fn, n), key, x, state, xla_defaults=xla_defaults)
    return Prepared(lambda: compiled(key, x, state), compile_s, _memory(compiled))
  if method == "adapt_smooth":
    smoothed = ag.adapt_smooth(grad_fn, C, n, bounds=BOUNDS, batch_size=batch_size)
    compiled, compile_s = _compile(smoothed, key, x, state, xla_defaults=xla_defaults)
    return Prepared(lambda: compiled(key, x, state), compile_s, _memory(compiled))
  if method == "jax_loop":

    def step(sample_key, x, sigma, state):
      return grad_fn(x + sigma * jax.random.normal(sample_key, x.shape, x.dtype), state)

    keys = jax.random.split(key, n)
    sigma = jax.jit(sigma_of)(x)
    compiled, compile_s = _compile(step, keys[0], x, sigma, state, xla_defaults=xla_defaults)

    def run():
      total = compiled(keys[0], x, sigma, state)
      for j in range(1, n):
        total = total + compiled(keys[j], x, sigma, state)
      return total / n

    return Prepared(run, compile_s, _memory(compiled))
  raise ValueError(f"unknown JAX method {method!r}")


def prepare_torch(workload: Workload, method: str, n: int, seed: int = 0, batch_size: Optional[int] = None) -> Prepared:
  """Builds the PyTorch model on the workload's weights; ``torch_loop`` or ``torch_batched``."""
  import torch  # pylint: disable=import-outside-toplevel

  ref = _torch()
  device = torch_device()
  module = ref.load_numpy_state_dict(MODELS[workload.name].build_torch(workload.size), workload.state_dict())
  module = module.to(device)
  x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(workload.x, -1, 0)))[None].to(device)
  sigma_nhwc = np.asarray(jax.jit(sigma_of)(jnp.asarray(workload.x)))
  sigma = torch.from_numpy(np.ascontiguousarray(np.moveaxis(sigma_nhwc, -1, 0)))[None].to(device)
  torch.manual_seed(seed)

  def to_nhwc(t):
    return np.moveaxis(t.detach().cpu().numpy()[0], 0, -1)

  if method == "torch_loop":
    return Prepared(lambda: to_nhwc(ref.torch_loop_smooth(module, x, sigma, workload.target, n)), 0.0, None)
  if method == "torch_batched":
    return Prepared(
      lambda: to_nhwc(ref.torch_batched_smooth(module, x, sigma, workload.target, n, batch_size=batch_size)),
      0.0,
      None,
    )
  raise ValueError(f"unknown PyTorch method {method!r}")


def torch_device() -> str:
  """``"cuda"`` when JAX runs on a GPU and PyTorch sees one, else ``"cpu"``."""
  import torch  # pylint: disable=import-outside-toplevel

  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def clean_gradients(workload: Workload) -> tuple[np.ndarray, np.ndarray]:
  """The unsmoothed input gradient in JAX and in PyTorch, both in float64 (a check that the weights agree).

  Float64 on both sides (JAX under `jax.enable_x64`, the weights and input
  cast): in float32 a ReLU or max-pool input a fraction of an ulp from its
  kink takes either side depending on the CPU's rounding, and the gradient
  jumps by percents, so no float32 tolerance separates a wrong port from
  another CPU.
  """
  import torch  # pylint: disable=import-outside-toplevel

  ref = _torch()
  with jax.enable_x64(True):
    state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, workload.state)
    x = jnp.asarray(workload.x, jnp.float64)
    jax_grad = np.asarray(jax.jit(jax.grad(workload.logit))(x, state))
  assert jax_grad.dtype == np.float64
  module = ref.load_numpy_state_dict(MODELS[workload.name].build_torch(workload.size), workload.state_dict()).double()
  x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(workload.x, -1, 0)))[None].double()
  with ref.single_threaded_torch():
    torch_grad = ref.torch_loop_smooth(module, x, torch.zeros_like(x), workload.target, 1)
  return jax_grad, np.moveaxis(torch_grad.numpy()[0], 0, -1)


# ---------------------------------------------------------------------------
# Timing.


def _block(value):
  return jax.block_until_ready(value) if isinstance(value, jax.Array) else value


def cpu_jiffies() -> Optional[tuple[int, int]]:
  """(stolen, total) CPU time of the whole machine in jiffies, from Linux's /proc/stat; None elsewhere.

  "Steal" is time the hypervisor gave our virtual CPUs to other guests: on a
  shared virtual machine it is the noise no repeat count removes, so every
  record carries the stolen share of its timed calls.
  """
  try:
    with open("/proc/stat", encoding="ascii") as stat:
      fields = [int(v) for v in stat.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_fraction(start: Optional[tuple[int, int]], end: Optional[tuple[int, int]]) -> Optional[float]:
  if start is None or end is None or end[1] <= start[1]:
    return None
  return (end[0] - start[0]) / (end[1] - start[1])


def rss_bytes() -> tuple[int, int]:
  """(current RSS, peak RSS) of this process in bytes (Linux /proc, else getrusage)."""
  current = peak = 0
  try:
    with open("/proc/self/status", encoding="ascii") as status:
      for line in status:
        if line.startswith("VmRSS:"):
          current = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
          peak = int(line.split()[1]) * 1024
  except OSError:
    pass
  if not peak:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return current, peak


MAX_CALLS = 2000
"""Cap on the timed calls of one method: sub-millisecond calls (the MLP) get ``min_seconds`` of them."""


def time_calls(run: Callable[[], Any], *, repeats: int, min_seconds: float = 0.0, max_seconds: float = 60.0) -> dict[str, Any]:
  """Warm-up call, then at least ``repeats`` timed calls (more, up to `MAX_CALLS`, while under ``min_seconds``)."""
  start = time.perf_counter()
  result = _block(run())
  first = time.perf_counter() - start
  times = []
  spent = 0.0
  while len(times) < repeats or (spent < min_seconds and len(times) < MAX_CALLS):
    if times and spent + times[-1] > max_seconds:
      break
    start = time.perf_counter()
    _block(run())
    times.append(time.perf_counter() - start)
    spent += times[-1]
  return {"first_call_s": first, "times_s": times, "median_s": float(np.median(times)), "min_s": float(min(times)),
          "result": np.asarray(result)}


def measure(
  workload: Workload,
  method: str,
  n: int,
  *,
  batch_size: Any = None,
  repeats: int = 3,
  min_seconds: float = 0.0,
  key_impl: Optional[str] = None,
  seed: int = 0,
  xla_defaults: bool = False,
) -> dict[str, Any]:
  """Prepares and times one (method, n, batch_size); returns a JSON-able record plus ``result``."""
  rss_before, _ = rss_bytes()
  if method.startswith("torch"):
    prepared = prepare_torch(workload, method, n, seed, batch_size)
  else:
    key = jax.random.key(seed, impl=key_impl) if key_impl else jax.random.key(seed)
    prepared = prepare_jax(workload, method, n, key, batch_size, xla_defaults)
  cuda = method.startswith("torch") and torch_device() == "cuda"
  if cuda:
    import torch  # pylint: disable=import-outside-toplevel

    torch.cuda.reset_peak_memory_stats()
  jiffies = cpu_jiffies()
  timing = time_calls(prepared.run, repeats=repeats, min_seconds=min_seconds)
  steal = steal_fraction(jiffies, cpu_jiffies())
  _, peak = rss_bytes()
  record = {
    "model": workload.name,
    "size": workload.size,
    "n": n,
    "method": method,
    "batch_size": batch_size if batch_size is None or isinstance(batch_size, (int, str)) else str(batch_size),
    "key_impl": key_impl or "threefry2x32",
    "xla_defaults": xla_defaults,
    "compile_s": prepared.compile_s,
    "xla_memory": prepared.memory,
    "rss_before_bytes": rss_before,
    "rss_peak_bytes": peak,
    "torch_cuda_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    "steal_fraction": steal,
    **{k: v for k, v in timing.items() if k != "result"},
  }
  record["samples_per_s"] = n / record["median_s"]
  record["result"] = timing["result"]
  return record


def method_label(method: str, batch_size: Any = None, key_impl: Optional[str] = None, xla_defaults: bool = False) -> str:
  label = method
  if method == "adapt_smooth" or (method == "torch_batched" and batch_size is not None):
    label += f"[{batch_size}]"
  if xla_defaults:
    label += "[xla defaults]"
  if key_impl:
    label += f"<{key_impl}>"
  return label


def environment() -> dict[str, Any]:
  """Machine, versions and date, recorded with every result file."""
  info: dict[str, Any] = {
    "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "python": platform.python_version(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "jax_compiler_options": ag.cpu.compiler_options(),
    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
  }
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          info["cpu_model"] = line.split(":", 1)[1].strip()
          break
    with open("/proc/meminfo", encoding="ascii") as meminfo:
      info["memory_total_kib"] = int(meminfo.readline().split()[1])
  except OSError:
    pass
  for module in ("jaxlib", "flax", "numpy", "torch"):
    try:
      info[module] = __import__(module).__version__
    except Exception:  # pylint: disable=broad-except
      info[module] = None
  try:
    import torch  # pylint: disable=import-outside-toplevel

    info["torch_threads"] = torch.get_num_threads()
    info["torch_cuda"] = torch.cuda.is_available()
    if torch.cuda.is_available():
      info["gpu"] = torch.cuda.get_device_name(0)
  except Exception:  # pylint: disable=broad-except
    pass
  return info
