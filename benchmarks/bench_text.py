"""SmoothGrad and Integrated Gradients on the GPT-2-style port against Captum, on the same random weights (CPU).

One process. `transformers` builds a ``GPT2LMHeadModel`` from a config with
random weights (``torch.manual_seed(0)``, no hub access); its state dict loads
into `adaptgrad_jax.models.gpt2` by name. The explained function is the same
on both sides: the logit of a target token (the model's own argmax) at the
last position of one random sequence of ``--length`` tokens, as a function of
the input embeddings, with ``logits_to_keep=1`` on both sides (only the last
position's logits; the port's last block then also computes its queries and
MLP for that position only, `transformers` for all).

Methods, per side, float32, one explanation (``(L, D)`` map) per call:

* ``smoothgrad``: ours ``jax.jit(ag.smooth_grad(jax.grad(f), sigma=s, n=n))``
  on the embeddings; Captum ``NoiseTunnel(Saliency(f))`` with
  ``nt_type="smoothgrad", nt_samples=n, stdevs=s, abs=False`` (all n noisy
  copies in one batch). ``s = 0.2 (max - min)`` of the embedding table.
* ``ig``: ours ``jax.jit(ag.integrated_gradients(jax.grad(f), steps,
  baseline=embed(baseline_ids), method="gauss_legendre"))``; Captum
  ``LayerIntegratedGradients(forward(ids), model.transformer.wte)`` from
  ``baselines=baseline_ids`` (every token the end-of-text id) with
  ``method="gausslegendre"`` (all steps in one batch).
* ``limit`` (JAX only): the bare jitted computation: ONE ``jax.random.normal``
  call for all n noise arrays (or the path points), ``jax.vmap(jax.grad(f))``,
  the mean (or weighted sum).
* ``ours_all_positions`` (SmoothGrad, JAX only; ``--no-ablation`` skips it):
  ours without ``logits_to_keep``, every position through the last block.

Rounds are interleaved (each round times every method on every side once, the
first side alternating); the table reports medians over rounds and the ratios
Captum / ours and limit / ours (> 1: ours faster). Compile time is reported
apart. Agreement: relative L2 difference (IG, deterministic) and cosine
(SmoothGrad, other noise on each side).

Run: ``nice -n 10 python -m benchmarks.bench_text`` (writes
``benchmarks/results/text_cpu.{json,md}``); ``--quick`` runs a tiny config in
seconds (what ``tests/test_models_text.py`` checks) and writes nothing unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time
from typing import Any, Callable, NamedTuple, Optional

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ALPHA = 0.2

# The measured config: GPT-2's vocabulary and context length, a quarter of GPT-2 small's width and a third of its
# depth (2 shared cores make GPT-2 small's 3 TFLOP per 50-sample explanation a minute per call).
FULL = dict(vocab_size=50257, n_positions=1024, n_embd=256, n_layer=4, n_head=4)
QUICK = dict(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)


class Timed(NamedTuple):
  method: str
  side: str  # "ours", "limit" or "captum"
  label: str
  run: Callable[[], Any]
  compile_s: float


def _set_threads(threads: int) -> None:
  if threads:
    import torch  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(threads)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                               f" intra_op_parallelism_threads={threads}").strip()


def build(config: dict[str, int], length: int, seed: int = 0):
  """The `transformers` model (eval, float32), our port on its weights, the ids, baseline ids and target."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax import models  # pylint: disable=import-outside-toplevel

  vocab = config["vocab_size"]
  hf_config = transformers.GPT2Config(**config, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=vocab - 1, eos_token_id=vocab - 1)
  torch.manual_seed(seed)
  hf = transformers.GPT2LMHeadModel(hf_config).eval()
  hf.requires_grad_(False)
  model = models.gpt2(models.GPT2Config.from_transformers(hf_config), weights=hf.state_dict(), rngs=nnx.Rngs(0))
  ids = np.random.default_rng(seed).integers(0, vocab - 1, size=length)
  baseline_ids = np.full(length, vocab - 1)  # every token the end-of-text id
  with torch.no_grad():
    target = int(hf(input_ids=torch.from_numpy(ids)[None], logits_to_keep=1).logits[0, -1].argmax())
  jax_logit = jax.jit(lambda i: model(i)[-1, target])(ids)
  return hf, model, ids, baseline_ids, target, float(jax_logit)


def prepare(hf, model, ids, baseline_ids, target, *, n: int, steps: int,
            ablation: bool = False) -> tuple[list[Timed], dict[str, Any]]:
  """The methods on every side, compiled and ready to time."""
  import captum.attr as ca  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax._attribution import quadrature  # pylint: disable=import-outside-toplevel

  from flax import nnx  # pylint: disable=import-outside-toplevel

  table = np.asarray(model.embedding_table)
  sigma = float(ALPHA * (table.max() - table.min()))
  x = model.embed(ids)  # (L, D)
  base = model.embed(baseline_ids)
  key = jax.random.key(0)

  graphdef, state = nnx.split(model)  # the weights are an argument (closed over, XLA would fold them as constants)

  def f(e, state):  # the target logit at the last position, from the embeddings (L, D)
    return nnx.merge(graphdef, state).forward_from_embeddings(e, logits_to_keep=1)[0, target]

  g = jax.grad(f)
  out: list[Timed] = []

  def compiled(fn, *args):
    start = time.perf_counter()
    c = jax.jit(fn).lower(*args).compile(compiler_options=ag.cpu.compiler_options())
    return (lambda: np.asarray(c(*args))), time.perf_counter() - start

  run, c = compiled(ag.smooth_grad(g, sigma=sigma, n=n), key, x, state)
  out.append(Timed("smoothgrad", "ours", f"smooth_grad(jax.grad(f), sigma, n={n})", run, c))
  if ablation:
    def f_all(e, state):  # every position through the last block, then the last one's logit
      return nnx.merge(graphdef, state).forward_from_embeddings(e)[-1, target]

    run, c = compiled(ag.smooth_grad(jax.grad(f_all), sigma=sigma, n=n), key, x, state)
    out.append(Timed("smoothgrad", "ours_all_positions", "the same without logits_to_keep", run, c))

  def sg_limit(key, x, state):
    noisy = x + sigma * jax.random.normal(key, (n,) + x.shape, x.dtype)
    return jnp.mean(jax.vmap(g, (0, None))(noisy, state), axis=0)

  run, c = compiled(sg_limit, key, x, state)
  out.append(Timed("smoothgrad", "limit", "one normal call, vmap(grad), mean", run, c))

  run, c = compiled(ag.integrated_gradients(g, steps, baseline=base, method="gauss_legendre"), x, state)
  out.append(Timed("ig", "ours", f"integrated_gradients(jax.grad(f), {steps}, gauss_legendre)", run, c))
  alphas, weights = quadrature("gauss_legendre", steps)
  alphas, weights = jnp.asarray(alphas, x.dtype), jnp.asarray(weights, x.dtype)

  def ig_limit(x, base, state):
    points = base + alphas[:, None, None] * (x - base)
    return (x - base) * jnp.tensordot(weights, jax.vmap(g, (0, None))(points, state), axes=1)

  run, c = compiled(ig_limit, x, base, state)
  out.append(Timed("ig", "limit", "vmap(grad) over the path, weighted sum", run, c))

  # Captum, on the same weights.
  def forward_embeds(e):
    return hf(inputs_embeds=e, logits_to_keep=1).logits[:, -1]

  def forward_ids(i):
    return hf(input_ids=i, logits_to_keep=1).logits[:, -1]

  xt = torch.from_numpy(np.array(x))[None]
  nt = ca.NoiseTunnel(ca.Saliency(forward_embeds))
  out.append(Timed("smoothgrad", "captum", "NoiseTunnel(Saliency(abs=False)) on inputs_embeds",
                   lambda: nt.attribute(xt, nt_type="smoothgrad", nt_samples=n, stdevs=sigma, target=target,
                                        abs=False).numpy()[0], 0.0))
  lig = ca.LayerIntegratedGradients(forward_ids, hf.transformer.wte)
  it, bt = torch.from_numpy(ids)[None], torch.from_numpy(baseline_ids)[None]
  out.append(Timed("ig", "captum", "LayerIntegratedGradients(wte), gausslegendre",
                   lambda: lig.attribute(it, baselines=bt, target=target, n_steps=steps,
                                         method="gausslegendre").numpy()[0], 0.0))
  return out, {"sigma": sigma}


def _agreement(a, b, stochastic: bool) -> dict[str, float]:
  import numpy as np  # pylint: disable=import-outside-toplevel

  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
  if stochastic:
    return {"cosine": round(cosine, 4)}
  return {"relative_l2": float(f"{np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30):.3g}"),
          "cosine": round(cosine, 6)}


def measure(timed: list[Timed], rounds: int, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Warm-up, then interleaved rounds; medians per (method, side), ratios and agreement with Captum."""
  results = {(t.method, t.side): t.run() for t in timed}  # warm-up, and the answers compared
  times: dict[tuple[str, str], list[float]] = {(t.method, t.side): [] for t in timed}
  methods = sorted({t.method for t in timed})
  for r in range(rounds):
    for method in methods:
      row = [t for t in timed if t.method == method]
      for t in (row if r % 2 == 0 else row[::-1]):
        start = time.perf_counter()
        t.run()
        times[(t.method, t.side)].append(time.perf_counter() - start)
  records = []
  for method in methods:
    row = {t.side: t for t in timed if t.method == method}
    ms = {side: 1000 * statistics.median(times[(method, side)]) for side in row}
    record = {
      "method": method,
      "labels": {side: t.label for side, t in row.items()},
      "ms": {side: round(v, 3) for side, v in ms.items()},
      "all_ms": {side: [round(1000 * v, 3) for v in times[(method, side)]] for side in row},
      "captum_over_ours": round(ms["captum"] / ms["ours"], 2),
      "limit_over_ours": round(ms["limit"] / ms["ours"], 2),
      "captum_over_limit": round(ms["captum"] / ms["limit"], 2),
      "compile_s": {side: round(t.compile_s, 2) for side, t in row.items() if side != "captum"},
      **({"all_positions_over_ours": round(ms["ours_all_positions"] / ms["ours"], 2),
          "captum_over_ours_all_positions": round(ms["captum"] / ms["ours_all_positions"], 2)}
         if "ours_all_positions" in ms else {}),
      "agreement_with_captum": _agreement(results[(method, "ours")], results[(method, "captum")],
                                          stochastic=method == "smoothgrad"),
      "agreement_ours_limit": _agreement(results[(method, "ours")], results[(method, "limit")],
                                         stochastic=method == "smoothgrad"),
    }
    records.append(record)
    log(f"{method}: ours {ms['ours']:.1f} ms, limit {ms['limit']:.1f} ms, captum {ms['captum']:.1f} ms "
        f"(captum/ours x{record['captum_over_ours']}, limit/ours x{record['limit_over_ours']})")
  return records


def profile(model, ids, target, *, n: int, calls: int = 3) -> dict[str, Any]:
  """Where the jitted ``vmap(grad)`` of n samples spends its time: `jax.profiler` events grouped by kind."""
  import collections  # pylint: disable=import-outside-toplevel
  import gzip  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  graphdef, state = nnx.split(model)
  x = model.embed(ids)
  xs = x + 0.04 * jax.random.normal(jax.random.key(0), (n,) + x.shape, x.dtype)
  out = {}
  for keep in (1, None):
    def f(e, state, keep=keep):
      logits = nnx.merge(graphdef, state).forward_from_embeddings(e, logits_to_keep=keep)
      return logits[-1, target]

    compiled = jax.jit(lambda xs, s, f=f: jax.vmap(jax.grad(f), (0, None))(xs, s)).lower(xs, state).compile()
    jax.block_until_ready(compiled(xs, state))
    with tempfile.TemporaryDirectory() as folder:
      jax.profiler.start_trace(folder)
      for _ in range(calls):
        jax.block_until_ready(compiled(xs, state))
      jax.profiler.stop_trace()
      (trace,) = pathlib.Path(folder).rglob("*.trace.json.gz")
      events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    kinds: collections.Counter = collections.Counter()
    for e in events:
      name = e.get("name", "")
      if e.get("ph") != "X" or name.startswith("$") or "Thunk" in name or "Slinky" in name or "Await" in name:
        continue
      kind = ("dots" if name.startswith(("ynn_fusion", "dot")) else
              "transposes and copies" if ("transpose" in name or "copy" in name) else "elementwise and other fusions")
      kinds[kind] += e["dur"] / 1000 / calls
    total = sum(kinds.values())
    out["logits_to_keep=1" if keep else "every position"] = {
      "ms": round(total, 1), "share": {k: round(v / total, 3) for k, v in kinds.most_common()}}
  return out


def environment() -> dict[str, Any]:
  import captum  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  try:
    load = [round(v, 2) for v in os.getloadavg()]
  except OSError:
    load = None
  return {"jax": jax.__version__, "torch": torch.__version__, "captum": captum.__version__,
          "transformers": transformers.__version__, "numpy": np.__version__, "python": platform.python_version(),
          "machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average_at_start": load,
          "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def write(result: dict[str, Any], folder: pathlib.Path, stem: str) -> dict[str, pathlib.Path]:
  folder.mkdir(parents=True, exist_ok=True)
  paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md"}
  paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
  env, s = result["environment"], result["settings"]
  c = s["config"]
  lines = [
    "# Token attribution on a GPT-2-style model: adaptgrad-jax vs Captum (CPU)",
    "",
    "Written by `nice -n 10 python -m benchmarks.bench_text" + (" --quick" if s["quick"] else "") + "`. "
    f"GPT-2 architecture ({c['n_layer']} layers, width {c['n_embd']}, {c['n_head']} heads, vocabulary "
    f"{c['vocab_size']}; {s['parameters'] / 1e6:.1f}M parameters, {s['parameters_non_embedding'] / 1e6:.2f}M outside "
    f"the embeddings), random weights built by `transformers` and ported by name to `models.gpt2`; one sequence of "
    f"{s['length']} tokens; target: the logit of the argmax token at the last position, as a function of the input "
    f"embeddings. SmoothGrad n = {s['n']} (sigma = 0.2 x the embedding table's range = {s['sigma']:.4f}), IG "
    f"{s['steps']} Gauss-Legendre steps from an all-end-of-text baseline. Interleaved rounds ({s['rounds']}), "
    "medians, ms per explanation, float32, compile time apart. ratio > 1: ours faster.",
    "",
    f"jax {env['jax']} (XLA_FLAGS `{env['xla_flags']}`), torch {env['torch']} ({env['torch_threads']} threads), "
    f"captum {env['captum']}, transformers {env['transformers']}; {env['cpus']} CPUs shared with other jobs, load "
    f"average at start {env['load_average_at_start']} ({env['date_utc']} UTC): absolute times are under load, "
    "compare the ratios.",
    "",
    "| method | ours ms | bare vmap(grad) ms | Captum ms | Captum / ours | limit / ours | agreement with Captum | "
    "compile s (ours, limit) |",
    "|---|---:|---:|---:|---:|---:|---|---|",
  ]
  for r in result["records"]:
    agreement = ", ".join(f"{k} {v}" for k, v in r["agreement_with_captum"].items())
    lines.append(f"| {r['method']} | {r['ms']['ours']:.1f} | {r['ms']['limit']:.1f} | {r['ms']['captum']:.1f} | "
                 f"{r['captum_over_ours']:.2f} | {r['limit_over_ours']:.2f} | {agreement} | "
                 f"{r['compile_s']['ours']:.1f}, {r['compile_s']['limit']:.1f} |")
  for r in result["records"]:
    if "all_positions_over_ours" in r:
      lines += ["", f"Without `logits_to_keep=1` (every position through the last block, then the last one's logit), "
                    f"{r['method']} takes {r['ms']['ours_all_positions']:.1f} ms: {r['all_positions_over_ours']:.2f}x "
                    f"ours, Captum / that = {r['captum_over_ours_all_positions']:.2f}."]
  lines += ["", "Rows: " + "; ".join(f"{r['method']}: " + ", ".join(f"{k}: {v}" for k, v in r["labels"].items())
                                     for r in result["records"]) + "."]
  if result.get("notes"):
    lines += ["", *result["notes"]]
  paths["md"].write_text("\n".join(lines) + "\n", encoding="utf-8")
  return paths


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--quick", action="store_true", help="a tiny config, one round (seconds); writes only with --out")
  parser.add_argument("--length", type=int, default=None, help="tokens (default 128; quick 12)")
  parser.add_argument("--n", type=int, default=None, help="SmoothGrad samples (default 32; quick 4)")
  parser.add_argument("--steps", type=int, default=None, help="IG steps (default 32; quick 4)")
  parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; quick 1)")
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads per side (default 1: torch.set_num_threads and XLA's intra-op threads, "
                           "set before JAX starts; fair on a shared machine); 0 leaves the libraries' defaults")
  parser.add_argument("--no-ablation", action="store_true",
                      help="skip the SmoothGrad row without logits_to_keep (what computing every position through "
                           "the last block costs)")
  parser.add_argument("--profile", type=int, default=0, metavar="N",
                      help="instead of the comparison, profile the port's vmap(grad) of N samples (with and without "
                           "logits_to_keep) and write <stem>_profile.{json,md}")
  parser.add_argument("--out", default=None, help="results folder (default benchmarks/results; quick: none)")
  parser.add_argument("--stem", default="text_cpu")
  args = parser.parse_args(argv)
  q = args.quick
  length = args.length or (12 if q else 128)
  n, steps, rounds = args.n or (4 if q else 32), args.steps or (4 if q else 32), args.rounds or (1 if q else 7)
  config = QUICK if q else FULL
  _set_threads(args.threads)
  env = environment()  # after the thread settings: it starts JAX's backend
  hf, model, ids, baseline_ids, target, _ = build(config, length)
  if args.profile:
    result = {"environment": env, "settings": {"config": config, "length": length, "samples": args.profile},
              "profile": profile(model, ids, target, n=args.profile)}
    folder = pathlib.Path(args.out) if args.out else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{args.stem}_profile.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["# Where the port's input gradient spends its time (CPU)", "",
             f"Written by `nice -n 10 python -m benchmarks.bench_text{' --quick' if q else ''} --profile "
             f"{args.profile}`: `jax.profiler` on "
             f"the jitted `vmap(grad)` of {args.profile} noisy copies of one {length}-token sequence, the config of "
             f"`text_cpu.md`; XLA:CPU's events grouped by kind. Load average at start "
             f"{env['load_average_at_start']} ({env['date_utc']} UTC).", "",
             "| target | ms per call | " + " | ".join(["dots", "elementwise and other fusions",
                                                       "transposes and copies"]) + " |", "|---|---:|---:|---:|---:|"]
    for name, r in result["profile"].items():
      shares = " | ".join(f"{100 * r['share'].get(k, 0):.0f}%" for k in
                          ("dots", "elementwise and other fusions", "transposes and copies"))
      lines.append(f"| {name} | {r['ms']:.1f} | {shares} |")
    (folder / f"{args.stem}_profile.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps(result["profile"], indent=2))
    return result
  timed, extra = prepare(hf, model, ids, baseline_ids, target, n=n, steps=steps, ablation=not (q or args.no_ablation))
  records = measure(timed, rounds)
  parameters = sum(p.numel() for p in hf.parameters())
  embedding = hf.transformer.wte.weight.numel() + hf.transformer.wpe.weight.numel()
  result = {
    "environment": env,
    "settings": {"quick": q, "config": config, "length": length, "n": n, "steps": steps, "rounds": rounds,
                 "target": target, "sigma": extra["sigma"], "parameters": parameters,
                 "parameters_non_embedding": parameters - embedding},
    "records": records,
  }
  if args.out or not q:
    paths = write(result, pathlib.Path(args.out) if args.out else RESULTS, args.stem)
    print(f"wrote {paths['json']} and {paths['md']}")
  return result


if __name__ == "__main__":
  main()
