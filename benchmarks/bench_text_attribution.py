"""Token attribution with ground truth, and the out-of-box shares of noisy embeddings (Section 3.2 for text).

    python -m benchmarks.bench_text_attribution              # about 10 minutes on 2 busy CPU cores
    python -m benchmarks.bench_text_attribution --quick      # seconds: tiny sizes, checks the script

writes ``benchmarks/results/text_attribution.{json,md}`` (``--out`` to change).

1. **Out of the box** (the analogue of the paper's Section 3.2). The data
   domain of input embeddings is the box spanned by the embedding table
   (``text.embedding_bounds``: per-dimension min / max over the vocabulary).
   For the real tokens of held-out sequences, the share of noisy embedding
   elements ``x + eps`` outside the box (``ag.out_of_range_rate``, the noise
   the transforms draw) and the share of sequences with at least one element
   outside, for SmoothGrad's ``sigma = alpha (x_max - x_min)`` per dimension
   (``ag.smoothgrad_sigma``) at alpha 0.1, 0.2, 0.3 and for AdaptGrad's
   ``adaptive_sigma`` at c = 0.95 and 0.99. On two tables: the demo
   classifier's trained table (48 x 32) and a random GPT-2-style table
   (50257 x 768, N(0, 0.02^2) as ``transformers``' ``GPT2PreTrainedModel``
   initialises ``wte``), with uniformly drawn token ids.

2. **Accuracy against ground truth.** The demo classifier
   (``text.demo_classifier``) explains the logit of the true class of
   held-out sequences of the synthetic task, whose deciding tokens (the class
   marker) are known. Per sequence: the pointing game (is the top-scoring real
   token a deciding one?) and the AUC of the token scores separating deciding
   from other real tokens (Mann-Whitney, ties count 1/2); means with
   bootstrap 95% intervals (``metrics.bootstrap_ci``) and paired sign-flip
   tests of AG against SG (``metrics.paired_test``). Gradient maps are reduced
   by the L2 norm per token (Grad, SG, AG) and by gradient x input (GI, S-GI,
   A-GI); IG maps by their sum per token (IG, S-IG, A-IG; baseline: the
   [MASK] token's embedding). Signed scores are ranked as they are (positive
   = evidence for the class).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

import adaptgrad_jax as ag
from adaptgrad_jax import metrics
from adaptgrad_jax import text
from adaptgrad_jax import _files

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ROWS = ("Grad", "GI", "SG", "S-GI", "AG", "A-GI", "IG", "S-IG", "A-IG")


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
  pos, neg = scores[positive], scores[~positive]
  if pos.size == 0 or neg.size == 0:
    return float("nan")
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return float((greater + 0.5 * ties) / (pos.size * neg.size))


def out_of_box(key, table, ids, mask, n: int) -> dict:
  """Shares of noisy elements (and sequences) outside the table's box, per noise rule."""
  bounds = text.embedding_bounds(table)
  rules = {f"SG alpha={a}": ("sg", a) for a in (0.1, 0.2, 0.3)}
  rules.update({f"AG c={c}": ("ag", c) for c in (0.95, 0.99)})
  out = {}
  x = jnp.asarray(table)[ids]  # (B, L, D)
  real = np.asarray(mask)

  for name, (kind, level) in rules.items():
    def one(k, xs, m, kind=kind, level=level):
      sigma = (ag.smoothgrad_sigma(level, bounds=bounds) if kind == "sg"
               else ag.adaptive_sigma(xs, level, bounds=bounds))
      sigma = jnp.broadcast_to(sigma, xs.shape)
      eps = sigma * jax.random.normal(k, (n,) + xs.shape, xs.dtype)
      noisy = xs + eps
      outside = ((noisy < bounds[0]) | (noisy > bounds[1])) & m[None, :, None]
      expected = jnp.sum(ag.inherent_noise(xs, sigma, bounds=bounds) * m[:, None])
      return jnp.sum(outside), jnp.mean(jnp.any(outside, axis=(1, 2))), expected

    keys = jax.random.split(jax.random.fold_in(key, zlib.crc32(name.encode()) % 2**31), len(ids))
    counts, seq_share, expected = jax.lax.map(lambda a: one(*a), (keys, x, jnp.asarray(real)), batch_size=8)
    elements = float(real.sum()) * x.shape[-1]
    out[name] = {
        "per_element": float(np.sum(counts)) / (n * elements),
        "per_sequence": float(np.mean(seq_share)),
        "expected_per_element": float(np.sum(expected)) / elements,
    }
  # The library's own measurement on the first sequence, as a cross-check of the code above.
  first = x[0][real[0]]
  sigma = ag.smoothgrad_sigma(0.2, bounds=bounds)
  out["check: ag.out_of_range_rate, SG alpha=0.2, sequence 0"] = float(
      ag.out_of_range_rate(key, first, sigma, n, bounds=bounds).per_element)
  return out


def sigma_by_token_kind(table) -> dict:
  """AdaptGrad's sigma (c = 0.95) relative to SmoothGrad's (alpha = 0.2), per kind of demo token."""
  from adaptgrad_jax.text import _demo  # pylint: disable=import-outside-toplevel
  bounds = text.embedding_bounds(table)
  ratio = np.asarray(ag.adaptive_sigma(table, 0.95, bounds=bounds)) / np.asarray(
      ag.smoothgrad_sigma(0.2, bounds=bounds))
  kinds = {"markers (deciding)": list(_demo.MARKERS), "decoys": list(_demo.DECOYS),
           "distractors": list(range(10, len(_demo.VOCAB)))}
  return {name: {"mean_sigma_ratio": float(ratio[ids].mean()), "share_on_a_face": float((ratio[ids] == 0).mean()),
                 "mean_norm": float(np.linalg.norm(np.asarray(table)[ids], axis=1).mean())}
          for name, ids in kinds.items()}


def explainers(demo, n: int, steps: int, inner: int):
  f = text.classifier_fn(demo.split)
  g = jax.grad(f)
  bounds = text.embedding_bounds(demo.table)
  base = text.baseline_embedding(demo.table, "mask", token_id=text._demo.MASK_ID)  # pylint: disable=protected-access
  sg = ag.smooth_grad(g, 0.2, n, bounds=bounds)
  adapt = ag.adapt_smooth(g, 0.95, n, bounds=bounds)
  ig = ag.integrated_gradients(g, steps, baseline=base)
  s_ig = ag.integrated_gradients(ag.smooth_grad(g, 0.2, inner, bounds=bounds), steps // 2, baseline=base)
  a_ig = ag.integrated_gradients(ag.adapt_smooth(g, 0.95, inner, bounds=bounds), steps // 2, baseline=base)

  def explain(key, x, ids, mask, target):
    k1, k2 = jax.random.split(key)
    grad = g(x, ids, mask, target)
    sg_map, ag_map = sg(k1, x, ids, mask, target), adapt(k1, x, ids, mask, target)  # common random numbers
    scores = {
        "Grad": text.token_scores(grad, mask=mask, reduction="l2"),
        "GI": text.token_scores(grad, x, mask),
        "SG": text.token_scores(sg_map, mask=mask, reduction="l2"),
        "S-GI": text.token_scores(sg_map, x, mask),
        "AG": text.token_scores(ag_map, mask=mask, reduction="l2"),
        "A-GI": text.token_scores(ag_map, x, mask),
        "IG": text.token_scores(ig(x, ids, mask, target), mask=mask, reduction="sum"),
        "S-IG": text.token_scores(s_ig(k2, x, ids, mask, target), mask=mask, reduction="sum"),
        "A-IG": text.token_scores(a_ig(k2, x, ids, mask, target), mask=mask, reduction="sum"),
    }
    return scores

  return explain


def accuracy(key, demo, task, *, n: int, steps: int, inner: int, batch_size: int) -> dict:
  explain = explainers(demo, n, steps, inner)
  x = demo.split.embeddings(task.ids)
  run = jax.jit(lambda key, *a: text.explain_batch(explain, key, *a, batch_size=batch_size))
  t0 = time.perf_counter()
  scores = jax.tree.map(np.asarray, run(key, x, task.ids, task.mask, task.labels))
  seconds = time.perf_counter() - t0
  mask, deciding = np.asarray(task.mask), np.asarray(task.deciding)
  per = {}
  for name in ROWS:
    point, auc = [], []
    for i in range(len(mask)):
      s, d = scores[name][i][mask[i]], deciding[i][mask[i]]
      point.append(float(d[int(np.argmax(s))]))
      auc.append(_auc(s, d))
    per[name] = {"pointing_game": np.array(point), "auc": np.array(auc)}
  k_ci, k_test = jax.random.split(jax.random.fold_in(key, 1))
  table = {}
  for name in ROWS:
    row = {}
    for metric, values in per[name].items():
      ci = metrics.bootstrap_ci(k_ci, values)
      row[metric] = {"mean": ci.mean, "low": ci.low, "high": ci.high}
    table[name] = row
  tests = {}
  for a, b in (("AG", "SG"), ("A-GI", "S-GI"), ("A-IG", "S-IG"), ("SG", "Grad"), ("AG", "Grad")):
    for metric in ("pointing_game", "auc"):
      t = metrics.paired_test(k_test, per[a][metric], per[b][metric])
      tests[f"{a} - {b} ({metric})"] = {"mean_difference": t.mean_difference, "low": t.low, "high": t.high,
                                         "p_value": t.p_value}
  return {"table": table, "paired_tests": tests, "seconds_with_compile": seconds}


def _markdown(result: dict) -> str:
  s = result["settings"]
  lines = [
      "# Token attribution on the synthetic marker task; out-of-box shares of noisy embeddings",
      "",
      f"Written by `python -m benchmarks.bench_text_attribution{' --quick' if s['quick'] else ''}` on"
      f" {result['machine']} ({result['date']}). Model: {result['model']}.",
      "",
      "## Noisy embedding elements outside the table's box (Section 3.2 analogue)",
      "",
      f"Demo: the real tokens of {s['oob_sequences']} task sequences, {s['oob_n']} noisy copies each. GPT-2-style:"
      f" {s['gpt2_sequences']} sequences of {s['gpt2_tokens']} uniformly drawn token ids, {s['gpt2_n']} noisy"
      " copies each. Bounds = per-dimension min / max over the vocabulary (`text.embedding_bounds`); the last"
      " column is the mean of Eq. 9's closed form (`ag.inherent_noise`).",
      "",
      "| table | noise | elements outside | sequences with one outside | expected (Eq. 9) |",
      "|---|---|---|---|---|",
  ]
  for table, rows in result["out_of_box"].items():
    for name, v in rows.items():
      if name.startswith("check"):
        continue
      lines.append(f"| {table} | {name} | {100 * v['per_element']:.2f}% | {100 * v['per_sequence']:.1f}% |"
                   f" {100 * v['expected_per_element']:.2f}% |")
  lines += [
      "",
      "## AdaptGrad's noise per kind of token (demo table)",
      "",
      "AdaptGrad's sigma (c = 0.95) over SmoothGrad's (alpha = 0.2), averaged over each kind's embedding elements;"
      " 'on a face': elements where the token holds the table's min or max of that dimension (AdaptGrad: no"
      " noise).",
      "",
      "| tokens | mean sigma ratio AG / SG | elements on a face | mean embedding norm |",
      "|---|---|---|---|",
  ]
  for name, v in result["sigma_by_token_kind"].items():
    lines.append(f"| {name} | {v['mean_sigma_ratio']:.3f} | {100 * v['share_on_a_face']:.1f}% | {v['mean_norm']:.2f} |")
  acc = result["accuracy"]
  lines += [
      "",
      f"## Ground-truth accuracy ({s['sequences']} held-out sequences; n = {s['n']} noise samples,"
      f" IG {s['steps']} steps, S-/A-IG {s['steps'] // 2} steps x {s['inner']} samples)",
      "",
      "Mean with bootstrap 95% interval. Pointing game: share of sequences whose top-scoring token is a"
      " deciding marker. AUC: deciding vs other real tokens.",
      "",
      "| method | pointing game | AUC |",
      "|---|---|---|",
  ]
  for name in ROWS:
    cells = [f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
             for v in (acc["table"][name]["pointing_game"], acc["table"][name]["auc"])]
    lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
  lines += ["", "Paired differences (mean, bootstrap 95% interval, sign-flip p-value):", "",
            "| comparison | difference | p |", "|---|---|---|"]
  for name, t in acc["paired_tests"].items():
    lines.append(f"| {name} | {t['mean_difference']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}] | {t['p_value']:.3g} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
  parser.add_argument("--sequences", type=int, default=None, help="held-out sequences explained")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
  parser.add_argument("--tag", default="text_attribution")
  args = parser.parse_args(argv)
  quick = args.quick
  settings = {"quick": quick, "sequences": args.sequences or (4 if quick else 200), "n": 4 if quick else 32,
              "steps": 4 if quick else 32, "inner": 2 if quick else 8, "batch_size": 4 if quick else 16,
              "oob_sequences": 4 if quick else 256, "oob_n": 4 if quick else 50,
              "gpt2_sequences": 4 if quick else 64, "gpt2_tokens": 16 if quick else 128, "gpt2_n": 4 if quick else 20}
  key = jax.random.key(0)
  demo = text.demo_classifier(quick=quick)
  held_out = text.synthetic_task(777, settings["sequences"])
  oob_task = text.synthetic_task(778, settings["oob_sequences"])
  rng = np.random.default_rng(0)
  vocab, dim = (50257, 768) if not quick else (1000, 64)
  gpt2_table = (0.02 * rng.standard_normal((vocab, dim))).astype(np.float32)
  gpt2_ids = rng.integers(0, vocab, (settings["gpt2_sequences"], settings["gpt2_tokens"]))
  result = {
      "settings": settings,
      "machine": f"{platform.machine()} {platform.system()}, {jax.device_count()} x {jax.devices()[0].platform},"
                 f" python {platform.python_version()}, jax {jax.__version__}",
      "date": time.strftime("%Y-%m-%d"),
      "model": demo.description,
      "out_of_box": {
          "demo classifier (48 x 32, trained)": out_of_box(key, demo.table, oob_task.ids, oob_task.mask,
                                                           settings["oob_n"]),
          f"GPT-2-style random init ({vocab} x {dim}, N(0, 0.02^2))": out_of_box(
              key, jnp.asarray(gpt2_table), jnp.asarray(gpt2_ids), jnp.ones(gpt2_ids.shape, bool),
              settings["gpt2_n"]),
      },
      "sigma_by_token_kind": sigma_by_token_kind(demo.table),
      "accuracy": accuracy(key, demo, held_out, n=settings["n"], steps=settings["steps"], inner=settings["inner"],
                           batch_size=settings["batch_size"]),
  }
  args.out.mkdir(parents=True, exist_ok=True)
  _files.atomic_write(args.out / f"{args.tag}.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
  _files.atomic_write(args.out / f"{args.tag}.md", lambda f: f.write(_markdown(result).encode()))
  print(_markdown(result))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
