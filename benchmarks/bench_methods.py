"""The IG family, CAM and guided backprop against their PyTorch counterparts, on the same weights.

Ours (jitted, compiled once, compile time reported apart) against Captum 0.9
(``IntegratedGradients``, ``GradientShap``, ``NoiseTunnel``, ``LayerGradCam``,
``GuidedBackprop``, ``GuidedGradCam``) and PAIR saliency 0.2.1 (``BlurIG``,
``GuidedIG``, with the PyTorch model's batched gradient as its
``call_model_function``). One process; one model with random weights ported
both ways (``adaptgrad_jax.models.state_dict_from_model`` into
``tests/torch_reference.py``'s torchvision-named twin); one input; the same
settings on both sides (steps, samples, baselines, layer). Rounds are
interleaved: each round times every method once per side, the side that goes
first alternating, so load on the machine hits both alike; the table reports
medians over rounds and the ratio peer / ours.

Each row also says how far the two answers are apart (float32 on both sides):
the relative L2 difference for the deterministic methods, the cosine for the
stochastic ones (other random draws on each side).

Run: ``nice -n 5 python -m benchmarks.bench_methods`` (writes
``benchmarks/results/methods_cpu.{json,md}``); ``--models convnet:56`` and
``--only ig,grad_cam`` choose a subset; ``--rounds``, ``--steps``, ``--n``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import platform
import statistics
import time
from typing import Any, Callable, NamedTuple, Optional
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import adaptgrad_jax as ag
from adaptgrad_jax import flax_adapters, flax_cam, models
from benchmarks import _harness

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BOUNDS = (0.0, 1.0)
ALPHA = 0.2  # SmoothGrad's sigma / (x_max - x_min); Captum's stdevs = 0.2 on [0, 1] inputs
LAYERS = {"convnet": ("features.7", lambda m: m.features[7]), "resnet18": ("layer4", lambda m: m.layer4)}
METHODS = ("ig", "gradient_shap", "smoothgrad", "s_ig", "grad_cam", "guided_backprop", "guided_grad_cam", "blur_ig",
           "guided_ig")
# Captum's GuidedBackprop overrides nn.ReLU modules only; the torch ResNet twin applies some ReLUs as functions.
NEEDS_RELU_MODULES = ("guided_backprop", "guided_grad_cam")


class Pair(NamedTuple):
  """One method on both sides: ``ours()`` and ``peer()`` return HWC (or HW) numpy arrays."""

  name: str
  ours_label: str
  peer_label: str
  ours: Callable[[], np.ndarray]
  peer: Callable[[], np.ndarray]
  compile_s: float
  stochastic: bool
  note: str = ""


@contextlib.contextmanager
def pair_saliency():
  """PAIR saliency 0.2.1 with the NumPy 2 names it still uses (np.trapz, removed in 2.4; quantile's interpolation=)."""
  import saliency.core as sal  # pylint: disable=import-outside-toplevel

  quantile = np.quantile

  def old_quantile(a, q, *args, interpolation=None, **kwargs):
    if interpolation is not None:
      kwargs["method"] = interpolation
    return quantile(a, q, *args, **kwargs)

  with mock.patch.object(np, "trapz", np.trapezoid, create=True), mock.patch.object(np, "quantile", old_quantile):
    yield sal


class Setup(NamedTuple):
  name: str
  size: int
  model: Any  # nnx module, eval mode
  torch_model: Any
  x: np.ndarray  # HWC float32 in [0, 1]
  target: int
  baselines: np.ndarray  # (m, H, W, C): GradientSHAP's baseline dataset


def build(name: str, size: int, *, seed: int = 0) -> Setup:
  """The JAX model (random weights, eval mode), its PyTorch twin on the same weights, an input and its class."""
  spec = _harness.MODELS[name] if name in _harness.MODELS else None
  if name == "resnet18":
    from flax import nnx  # pylint: disable=import-outside-toplevel

    model = models.resnet18(num_classes=10, rngs=nnx.Rngs(0))
    torch_model = _harness._torch().torch_resnet("resnet18", num_classes=10)  # pylint: disable=protected-access
  else:
    model = spec.build_jax(size)
    torch_model = spec.build_torch(size)
  model.eval()
  ref = _harness._torch()  # pylint: disable=protected-access
  torch_model = ref.load_numpy_state_dict(torch_model, models.state_dict_from_model(model)).eval()
  x = _harness.make_input((size, size, 3), seed)
  target = int(np.argmax(np.asarray(jax.jit(lambda v: model(v[None]))(jnp.asarray(x)))[0]))
  baselines = np.random.default_rng(seed + 1).uniform(size=(8, size, size, 3)).astype(np.float32)
  return Setup(name, size, model, torch_model, x, target, baselines)


def _compiled(fn, *args) -> tuple[Callable[[], np.ndarray], float]:
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=ag.cpu.compiler_options())
  seconds = time.perf_counter() - start
  return (lambda: np.asarray(compiled(*args))), seconds


def pairs(setup: Setup, *, steps: int, n: int, only: Optional[set[str]] = None,
          cam_rewrite: bool = False) -> list[Pair]:
  """The methods on both sides, compiled and ready to time.

  ``cam_rewrite`` wraps our CAM and guided-backprop functions in ``ag.cpu.rewrite`` (the CPU rewrite the
  library's transforms apply to their gradients, which ``flax_cam`` does not apply by itself).
  """
  import captum.attr as ca  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  model, tm, t = setup.model, setup.torch_model, setup.target
  x = jnp.asarray(setup.x)
  xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(setup.x, -1, 0)))[None]
  f = flax_adapters.nnx_target_fn(model)
  g = jax.grad(f)
  key = jax.random.key(0)
  layer, torch_layer = LAYERS[setup.name]
  cam_cpu = (lambda fn: ag.cpu.rewrite(fn, canonical_kernels=False)) if cam_rewrite else (lambda fn: fn)
  rewritten = " + ag.cpu.rewrite" if cam_rewrite else ""
  hwc = lambda a: np.moveaxis(a.detach().numpy()[0], 0, -1)  # noqa: E731
  out: list[Pair] = []

  def want(name):
    if only is not None and name not in only:
      return False
    return not (setup.name == "resnet18" and name in NEEDS_RELU_MODULES)

  if want("ig"):
    run, c = _compiled(ag.integrated_gradients(g, steps, baseline=0.0, method="gauss_legendre"), x, t)
    ig = ca.IntegratedGradients(tm)
    out.append(Pair("ig", "integrated_gradients (gauss_legendre)", "captum IntegratedGradients", run,
                    lambda: hwc(ig.attribute(xt, baselines=0.0, target=t, n_steps=steps, method="gausslegendre")),
                    c, False))
  if want("gradient_shap"):
    data = jnp.asarray(setup.baselines)
    run, c = _compiled(ag.expected_gradients(g, steps, baselines=data), key, x, t)
    gs = ca.GradientShap(tm)
    data_t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(setup.baselines, -1, 1)))
    out.append(Pair("gradient_shap", "expected_gradients", "captum GradientShap", run,
                    lambda: hwc(gs.attribute(xt, baselines=data_t, target=t, n_samples=steps, stdevs=0.0)), c, True,
                    f"{steps} draws from the same 8 baselines"))
  if want("smoothgrad"):
    run, c = _compiled(ag.smooth_grad(g, ALPHA, n, bounds=BOUNDS), key, x, t)
    nt = ca.NoiseTunnel(ca.Saliency(tm))
    out.append(Pair("smoothgrad", "smooth_grad", "captum NoiseTunnel(Saliency(abs=False))", run,
                    lambda: hwc(nt.attribute(xt, nt_type="smoothgrad", nt_samples=n, stdevs=ALPHA, target=t,
                                             abs=False)), c, True))
  if want("s_ig"):
    run, c = _compiled(ag.integrated_gradients(ag.smooth_grad(g, ALPHA, n, bounds=BOUNDS), steps, baseline=0.0,
                                               method="gauss_legendre"), key, x, t)
    nt_ig = ca.NoiseTunnel(ca.IntegratedGradients(tm))
    out.append(Pair("s_ig", "S-IG: integrated_gradients(smooth_grad(g))", "captum NoiseTunnel(IntegratedGradients)",
                    run, lambda: hwc(nt_ig.attribute(xt, nt_type="smoothgrad", nt_samples=n, stdevs=ALPHA, target=t,
                                                     baselines=0.0, n_steps=steps, method="gausslegendre")),
                    c, True, "same cost (steps x n gradients), other definitions: ours smooths the gradient on the"
                    " clean path, NoiseTunnel averages IG of noisy inputs"))
  if want("grad_cam"):
    run, c = _compiled(cam_cpu(flax_cam.grad_cam(model, layer, relu=False)), x, t)
    gc = ca.LayerGradCam(tm, torch_layer(tm))
    out.append(Pair("grad_cam", f"flax_cam.grad_cam({layer}){rewritten}", "captum LayerGradCam", run,
                    lambda: gc.attribute(xt, target=t).detach().numpy()[0, 0], c, False))
  if want("guided_backprop"):
    run, c = _compiled(cam_cpu(flax_cam.guided_backprop(model)), x, t)
    gb = ca.GuidedBackprop(tm)
    out.append(Pair("guided_backprop", f"flax_cam.guided_backprop{rewritten}", "captum GuidedBackprop", run,
                    lambda: hwc(gb.attribute(xt, target=t)), c, False))
  if want("guided_grad_cam"):
    run, c = _compiled(cam_cpu(flax_cam.guided_grad_cam(model, layer)), x, t)
    ggc = ca.GuidedGradCam(tm, torch_layer(tm))
    out.append(Pair("guided_grad_cam", f"flax_cam.guided_grad_cam{rewritten}", "captum GuidedGradCam", run,
                    lambda: hwc(ggc.attribute(xt, target=t)), c, False))
  if want("blur_ig") or want("guided_ig"):
    def call_model_function(batch, call_model_args=None, expected_keys=None):
      del call_model_args, expected_keys
      inp = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(batch, np.float32), -1, 1)))
      inp.requires_grad_(True)
      tm(inp)[:, t].sum().backward()
      return {"INPUT_OUTPUT_GRADIENTS": np.moveaxis(inp.grad.numpy(), 1, -1)}

    sigma = float(max(1, setup.size // 4))
    if want("blur_ig"):
      run, c = _compiled(ag.blur_integrated_gradients(g, steps, max_sigma=sigma), x, t)

      def pair_blur():
        with pair_saliency() as sal:
          return sal.BlurIG().GetMask(setup.x, call_model_function, max_sigma=sigma, steps=steps, batch_size=steps)

      out.append(Pair("blur_ig", "blur_integrated_gradients", "PAIR BlurIG (batch_size=steps)", run, pair_blur, c,
                      False, f"max_sigma={sigma:g}"))
    if want("guided_ig"):
      run, c = _compiled(ag.guided_integrated_gradients(g, steps, baseline=0.0), x, t)
      zero = np.zeros_like(setup.x)

      def pair_guided():
        with pair_saliency() as sal:
          return sal.GuidedIG().GetMask(setup.x, call_model_function, x_baseline=zero, x_steps=steps, max_dist=0.02,
                                        fraction=0.25)

      out.append(Pair("guided_ig", "guided_integrated_gradients", "PAIR GuidedIG", run, pair_guided, c, False,
                      "one gradient per step on both sides"))
  return out


def _agreement(ours: np.ndarray, peer: np.ndarray, stochastic: bool) -> dict[str, float]:
  a, b = np.asarray(ours, np.float64).ravel(), np.asarray(peer, np.float64).ravel()
  cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
  if stochastic:
    return {"cosine": round(cosine, 4)}
  relative = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
  return {"relative_l2": float(f"{relative:.3g}"), "cosine": round(cosine, 6)}


def measure(setup: Setup, *, steps: int, n: int, rounds: int, only: Optional[set[str]] = None,
            log: Callable[[str], None] = print, cam_rewrite: bool = False) -> list[dict[str, Any]]:
  """Interleaved rounds: every method once per side per round; medians, ratios and agreement."""
  prepared = pairs(setup, steps=steps, n=n, only=only, cam_rewrite=cam_rewrite)
  times: dict[str, dict[str, list[float]]] = {p.name: {"ours": [], "peer": []} for p in prepared}
  results: dict[str, dict[str, np.ndarray]] = {}
  for p in prepared:  # warm-up (and the answers compared)
    results[p.name] = {"ours": p.ours(), "peer": p.peer()}
  for r in range(rounds):
    for p in prepared:
      order = (("ours", p.ours), ("peer", p.peer)) if r % 2 == 0 else (("peer", p.peer), ("ours", p.ours))
      for side, fn in order:
        start = time.perf_counter()
        fn()
        times[p.name][side].append(time.perf_counter() - start)
  records = []
  for p in prepared:
    ours_ms = 1000 * statistics.median(times[p.name]["ours"])
    peer_ms = 1000 * statistics.median(times[p.name]["peer"])
    record = {
      "model": setup.name, "size": setup.size, "method": p.name, "ours": p.ours_label, "peer": p.peer_label,
      "steps": steps, "n": n, "rounds": rounds, "ours_ms": round(ours_ms, 2), "peer_ms": round(peer_ms, 2),
      "ratio_peer_over_ours": round(peer_ms / ours_ms, 2), "compile_s": round(p.compile_s, 2),
      "agreement": _agreement(results[p.name]["ours"], results[p.name]["peer"], p.stochastic), "note": p.note,
    }
    records.append(record)
    log(f"{setup.name}:{setup.size} {p.name}: ours {ours_ms:.1f} ms, peer {peer_ms:.1f} ms"
        f" (x{record['ratio_peer_over_ours']}), {record['agreement']}")
  return records


def environment() -> dict[str, Any]:
  import captum  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  try:
    import importlib.metadata as md  # pylint: disable=import-outside-toplevel
    saliency_version = md.version("saliency")
  except Exception:  # pylint: disable=broad-except
    saliency_version = None
  load = None
  try:
    import os  # pylint: disable=import-outside-toplevel
    load = [round(v, 2) for v in os.getloadavg()]
  except OSError:
    pass
  return {"jax": jax.__version__, "torch": torch.__version__, "captum": captum.__version__,
          "saliency": saliency_version, "numpy": np.__version__, "python": platform.python_version(),
          "machine": platform.machine(), "cpus": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(),
          "devices": [str(d) for d in jax.devices()], "load_average_at_start": load,
          "xla_flags": __import__("os").environ.get("XLA_FLAGS", "")}


def write(records: list[dict[str, Any]], env: dict[str, Any], stem: str = "methods_cpu",
          folder: pathlib.Path = RESULTS) -> dict[str, pathlib.Path]:
  folder.mkdir(parents=True, exist_ok=True)
  paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md"}
  paths["json"].write_text(json.dumps({"environment": env, "records": records}, indent=2) + "\n", encoding="utf-8")
  lines = [
    "# The IG family, CAM and guided backprop vs Captum / PAIR saliency (CPU)",
    "",
    "Written by `python -m benchmarks.bench_methods`. Same weights (random, ported both ways), same input, same"
    " settings; interleaved rounds, medians; ms per explanation of one input, compile time excluded (reported"
    " apart). ratio = peer / ours (> 1: ours faster). Agreement: relative L2 difference (deterministic methods)"
    " or cosine (stochastic ones: other random draws), float32 on both sides.",
    "",
    f"jax {env['jax']} (XLA_FLAGS `{env.get('xla_flags', '')}`), torch {env['torch']}"
    f" ({env['torch_threads']} threads), captum {env['captum']}, saliency"
    f" {env['saliency']}, numpy {env['numpy']}; {env['cpus']} CPUs, load average at start"
    f" {env['load_average_at_start']} (shared machine: absolute times are under load, compare the ratios).",
    "",
    "| model | method | ours | peer | ours ms | peer ms | ratio | agreement | compile s | note |",
    "|---|---|---|---|---:|---:|---:|---|---:|---|",
  ]
  for r in records:
    agreement = ", ".join(f"{k} {v}" for k, v in r["agreement"].items())
    lines.append(f"| {r['model']} {r['size']}px | {r['method']} (steps {r['steps']}, n {r['n']}) | {r['ours']} |"
                 f" {r['peer']} | {r['ours_ms']:.1f} | {r['peer_ms']:.1f} | {r['ratio_peer_over_ours']:.2f} |"
                 f" {agreement} | {r['compile_s']:.1f} | {r['note']} |")
  paths["md"].write_text("\n".join(lines) + "\n", encoding="utf-8")
  return paths


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--models", default="convnet:56,resnet18:112", help="name:size, comma separated")
  parser.add_argument("--only", default=None, help=f"a comma-separated subset of {', '.join(METHODS)}")
  parser.add_argument("--steps", type=int, default=32, help="path points / GradientSHAP draws (default 32)")
  parser.add_argument("--n", type=int, default=16, help="noise samples of SmoothGrad and S-IG (default 16)")
  parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads per side (default 1: torch.set_num_threads(1) and XLA's CPU client with"
                           " one intra-op thread, set before JAX's backend starts; fair on a shared machine);"
                           " 0 leaves both libraries' defaults")
  parser.add_argument("--cam-rewrite", action="store_true",
                      help="wrap our CAM / guided-backprop functions in ag.cpu.rewrite (rows labelled so)")
  parser.add_argument("--append", action="store_true", help="add the records to those already in the results")
  parser.add_argument("--stem", default="methods_cpu")
  args = parser.parse_args(argv)
  if args.threads:
    import os  # pylint: disable=import-outside-toplevel

    import torch  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(args.threads)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                               f" intra_op_parallelism_threads={args.threads}").strip()
  only = set(args.only.split(",")) if args.only else None
  env = environment()  # after the thread settings: it starts JAX's backend
  records = []
  for item in args.models.split(","):
    name, size = item.split(":")
    setup = build(name, int(size))
    records += measure(setup, steps=args.steps, n=args.n, rounds=args.rounds, only=only,
                       cam_rewrite=args.cam_rewrite)
  if args.append:
    earlier = json.loads((RESULTS / f"{args.stem}.json").read_text(encoding="utf-8"))
    records = earlier["records"] + records
    env = {**earlier["environment"], "appended_run": env}
  paths = write(records, env, args.stem)
  print(f"wrote {paths['json']} and {paths['md']}")


if __name__ == "__main__":
  main()
