"""``adaptgrad-jax explain-text``: token heat maps (HTML and PNG) of the text demo's classifier."""

from __future__ import annotations

import argparse
import json
import pathlib

from adaptgrad_jax.cli import _errors
from adaptgrad_jax.cli._errors import UsageError

METHODS = ("grad", "gi", "smoothgrad", "adaptgrad", "s-gi", "a-gi", "ig", "s-ig", "a-ig")
ALIASES = {"sg": "smoothgrad", "ag": "adaptgrad"}

EPILOG = """\
examples:
  adaptgrad-jax explain-text "w12 w30 B w41 a w17 B w22" --out text_maps/
      AdaptGrad (c=0.95, N=50) of the predicted class of the demo's marker classifier;
      writes text_maps/explain_adaptgrad.html, .png and .json
  adaptgrad-jax explain-text --random 3 --method a-ig --n 10 --ig-steps 20 --out text_maps/
      three sequences drawn from the synthetic task, A-IG from the [MASK] embedding

The demo's vocabulary: [PAD] [MASK], the markers A B C D (marker k decides class k), the decoys
a b c d (uninformative), and the distractors w10 ... w47. The model is trained on first use
(seconds) and cached like the MNIST demo's MLP.
"""


def add_parser(subparsers, formatter) -> None:
  parser = subparsers.add_parser(
      "explain-text", help="token heat maps of the text demo's classifier (HTML and PNG)",
      description="Explains sequences of the text demo's vocabulary with Grad, SmoothGrad, AdaptGrad and their"
                  " GI / IG combinations in embedding space (bounds: the embedding table's box), writing an HTML"
                  " heat map (hover: score and standard error), a PNG and the scores as JSON.",
      epilog=EPILOG, formatter_class=formatter)
  parser.add_argument("text", nargs="*", metavar="TOKENS",
                      help="sequences to explain, each one argument of space-separated demo tokens")
  parser.add_argument("--random", type=_errors.positive_int("--random", "e.g. 3"), default=None, metavar="K",
                      help="explain K sequences drawn from the synthetic task (with their ground truth)")
  parser.add_argument("--method", default="adaptgrad", metavar="NAME",
                      help=f"one of {', '.join(METHODS)} (sg, ag accepted; default: adaptgrad)")
  parser.add_argument("--n", type=_errors.positive_int("--n", "the paper uses 50"), default=50,
                      help="noise samples (default: 50)")
  parser.add_argument("--c", type=_errors.confidence, default=0.95, help="AdaptGrad's confidence level (0.95)")
  parser.add_argument("--alpha", type=_errors.noise_level, default=0.2, help="SmoothGrad's noise level (0.2)")
  parser.add_argument("--ig-steps", type=_errors.positive_int("--ig-steps", "Captum uses 50"), default=32,
                      help="IG path points (default: 32)")
  parser.add_argument("--target", type=_errors.target, default="predicted",
                      help="the class to explain, or 'predicted' (default)")
  parser.add_argument("--seed", type=_errors.seed, default=0, help="the PRNG seed (default: 0)")
  parser.add_argument("--out", type=_errors.output_folder, required=True, help="output folder")
  parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
  parser.add_argument("--quick", action="store_true", help="the smaller, faster demo model")
  parser.set_defaults(run=run)


def _parse_sequences(texts, vocab):
  index = {tok: i for i, tok in enumerate(vocab)}
  sequences = []
  for j, line in enumerate(texts):
    words = line.split()
    if not words:
      raise UsageError(f"sequence {j + 1} is empty; pass at least one token, e.g. \"w12 B w30\"")
    unknown = [w for w in words if w not in index]
    if unknown:
      raise UsageError(f"token {unknown[0]!r} (sequence {j + 1}) is not in the demo's vocabulary: [PAD] [MASK],"
                       " A B C D, a b c d, w10 ... w47")
    if "[PAD]" in words:
      raise UsageError(f"sequence {j + 1} holds [PAD]; padding is added for you, leave it out")
    if len(words) > 32:
      raise UsageError(f"sequence {j + 1} has {len(words)} tokens; the demo model takes at most 32")
    sequences.append([index[w] for w in words])
  return sequences


def run(args: argparse.Namespace, console, err_console) -> int:
  del err_console
  method = ALIASES.get(args.method.lower(), args.method.lower())
  if method not in METHODS:
    raise UsageError(f"--method {args.method!r} is not a text method; use one of {', '.join(METHODS)}")
  if bool(args.text) == bool(args.random):
    raise UsageError("pass sequences to explain (TOKENS) or --random K, not both and not neither")
  _errors.require_plotting("explain-text")
  from adaptgrad_jax.text import _demo  # pylint: disable=import-outside-toplevel

  sequences = _parse_sequences(args.text, _demo.VOCAB) if args.text else None
  out = pathlib.Path(args.out).expanduser()
  stem = f"explain_{method}"
  paths = [out / f"{stem}.{ext}" for ext in ("html", "png", "json")]
  existing = [p for p in paths if p.exists()]
  if existing and not args.overwrite:
    raise FileExistsError(17, "refusing to overwrite an existing file", str(existing[0]))
  with console.status("loading the text demo model (trained and cached on first use)"):
    demo = _demo.demo_classifier(quick=args.quick)
  results = _explain(demo, method, args, sequences)
  out.mkdir(parents=True, exist_ok=True)
  _write(out, stem, results, method, args, demo)
  for p in paths:
    console.print(f"wrote {p}")
  return 0


def _explain(demo, method, args, sequences):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import text  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax.text import _demo  # pylint: disable=import-outside-toplevel

  if sequences is None:
    task = text.synthetic_task(args.seed, args.random)
    ids, mask, deciding = task.ids, task.mask, np.asarray(task.deciding)
  else:
    ids, mask = text.pad_batch(sequences, pad_id=_demo.PAD_ID, length=32, vocab_size=len(_demo.VOCAB))
    deciding = None
  x = demo.split.embeddings(ids)
  logits = jax.jit(jax.vmap(demo.split))(ids, mask)
  probs = np.asarray(jax.nn.softmax(logits, -1))
  if args.target == "predicted":
    targets = jnp.argmax(logits, -1)
  else:
    if not 0 <= int(args.target) < probs.shape[1]:
      raise UsageError(f"--target {args.target} is out of range: the demo has {probs.shape[1]} classes (0 to"
                       f" {probs.shape[1] - 1})")
    targets = jnp.full(len(ids), int(args.target))
  g = jax.grad(text.classifier_fn(demo.split))
  bounds = text.embedding_bounds(demo.table)
  base = text.baseline_embedding(demo.table, "mask", token_id=_demo.MASK_ID)
  smooth = {"smoothgrad": lambda n: ag.smooth_grad(g, args.alpha, n, bounds=bounds, return_stderr=True),
            "adaptgrad": lambda n: ag.adapt_smooth(g, args.c, n, bounds=bounds, return_stderr=True)}
  kind = {"s": "smoothgrad", "a": "adaptgrad"}
  if method == "grad":
    fn, reduction = (lambda key, *a: g(*a)), "l2"
  elif method == "gi":
    fn, reduction = (lambda key, *a: g(*a)), "grad_x_input"
  elif method in ("smoothgrad", "adaptgrad"):
    fn, reduction = smooth[method](args.n), "l2"
  elif method in ("s-gi", "a-gi"):
    fn, reduction = smooth[kind[method[0]]](args.n), "grad_x_input"
  elif method == "ig":
    ig = ag.integrated_gradients(g, args.ig_steps, baseline=base)
    fn, reduction = (lambda key, *a: ig(*a)), "sum"
  else:
    fn, reduction = ag.integrated_gradients(smooth[kind[method[0]]](args.n), args.ig_steps, baseline=base), "sum"
  maps = jax.jit(lambda key, *a: text.explain_batch(fn, key, *a, batch_size=4))(
      jax.random.key(args.seed), x, ids, mask, targets)
  scores = text.token_scores(maps, x if reduction == "grad_x_input" else None, mask, reduction=reduction)
  value, stderr = (scores.value, scores.stderr) if isinstance(scores, ag.Estimate) else (scores, None)
  results = []
  for i in range(len(ids)):
    m = np.asarray(mask[i])
    results.append({
        "tokens": [_demo.VOCAB[t] for t in np.asarray(ids[i])[m]],
        "scores": np.asarray(value[i])[m].tolist(),
        "stderr": None if stderr is None else np.asarray(stderr[i])[m].tolist(),
        "target": int(targets[i]),
        "probabilities": probs[i].round(6).tolist(),
        "deciding": None if deciding is None else deciding[i][m].tolist(),
    })
  return results


def _write(out, stem, results, method, args, demo):
  from adaptgrad_jax import _files  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax.text import _viz  # pylint: disable=import-outside-toplevel

  parts, tokens, scores, breaks = [], [], [], []
  for i, r in enumerate(results):
    title = f"sequence {i + 1}: {method}, class {r['target']} (p = {r['probabilities'][r['target']]:.3f})"
    parts.append(_viz.token_heatmap_html(r["tokens"], r["scores"], stderr=r["stderr"], title=title,
                                         full_document=False))
    if i:
      tokens.append("||")
      scores.append(0.0)
    tokens += r["tokens"]
    scores += [s / (max(abs(v) for v in r["scores"]) or 1.0) for s in r["scores"]]  # per sequence scale
    breaks.append(len(tokens))
  page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>explain-text</title></head>\n<body>\n"
          f"<p>{demo.description}. Red: evidence for the class, blue: against (hover for score ± standard"
          " error).</p>\n" + "\n".join(parts) + "\n</body></html>\n")
  _viz.save_html(out / f"{stem}.html", page, overwrite=args.overwrite)
  fig = _viz.token_heatmap_png(out / f"{stem}.png", tokens, scores, overwrite=args.overwrite, line_width=80,
                               title=f"{method} (each sequence scaled to its largest |score|; || separates them)")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.close(fig)
  settings = {"method": method, "n": args.n, "c": args.c, "alpha": args.alpha, "ig_steps": args.ig_steps,
              "seed": args.seed, "model": demo.description}
  _files.atomic_write(out / f"{stem}.json", lambda f: f.write(json.dumps(
      {"settings": settings, "sequences": results}, indent=1).encode()), overwrite=args.overwrite)
