"""The demo's photo maps against a many-sample truth: how far the captions' errors are from the whole error.

    python -m benchmarks.bench_demo_error            # needs the AdaptGrad reference of bench_estimators

The demo (``adaptgrad-jax demo``) writes each map's relative error ``||stderr|| / ||map||`` under it:
the Monte Carlo part only, relative to the map's own norm. This script computes the demo's ``chelsea``
AdaptGrad map (EfficientNet-Lite0, 224 px, the demo's key and target) with each estimator and
compares it with the i.i.d. AdaptGrad reference that ``python -m benchmarks.bench_estimators refs``
caches in ``benchmarks/results/tmp/estimators/ref/lite0-chelsea-224/adapt`` (chunks of mean and
stderr): relative L2 error ``||map - ref|| / ||ref||`` (which includes any bias), the reference's own
error, and the agreement a reader sees (Spearman and top-10% overlap of the channel-summed ``|map|``).
Writes ``benchmarks/results/demo_error.json`` and ``.md``.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
REFERENCE = RESULTS / "tmp" / "estimators" / "ref" / "lite0-chelsea-224" / "adapt"
RUNS = (("smooth-diff", 64), ("mc", 10), ("mc", 64))


def reference(folder: pathlib.Path):
  """The pooled mean of the cached chunks, its relative standard error and the samples."""
  chunks = [np.load(p) for p in sorted(folder.glob("chunk_*.npz"))]
  if not chunks:
    raise SystemExit(f"no reference in {folder}: run python -m benchmarks.bench_estimators refs first")
  counts = np.array([int(c["n"]) for c in chunks])
  total = int(counts.sum())
  mean = sum(c["mean"].astype(np.float64) * k for c, k in zip(chunks, counts)) / total
  variance = sum(c["stderr"].astype(np.float64) ** 2 * k * k for c, k in zip(chunks, counts)) / total
  return mean, float(np.linalg.norm(np.sqrt(variance / total)) / np.linalg.norm(mean)), total


def agreement(m: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
  from scipy import stats  # pylint: disable=import-outside-toplevel

  a, b = np.abs(m).sum(-1).ravel(), np.abs(ref).sum(-1).ravel()
  k = int(0.1 * a.size)
  top = len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k
  return float(stats.spearmanr(a, b).correlation), top


def main() -> None:
  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax.cli import _demo, _explain, _methods, _models  # pylint: disable=import-outside-toplevel

  ref, ref_error, samples = reference(REFERENCE)
  loaded = _models.load("efficientnet_lite0")
  imagenet = _models._imagenet()  # pylint: disable=protected-access
  x = jnp.asarray(loaded.preprocess(imagenet.load_photo(list(imagenet.PHOTOS)[0])))
  f, logits_fn, _ = _explain.model_functions(loaded)
  target = int(jnp.argmax(logits_fn(x[None])[0]))
  key = jax.random.fold_in(jax.random.key(0), 0)  # the demo's key for its first photo (seed 0)
  rows = []
  for estimator, n in RUNS:
    options = _methods.Options(n=n, estimator=estimator, return_stderr=True, batch_size=min(n, _demo.PHOTO_BATCH))
    explain = jax.jit(_methods.build("adaptgrad", f, loaded.bounds, options),
                      compiler_options=ag.cpu.compiler_options())
    start = time.perf_counter()
    estimate = explain(key, x, target)
    value = np.asarray(estimate.value, np.float64)
    seconds = time.perf_counter() - start
    spearman, top = agreement(value, ref)
    rows.append({"estimator": estimator, "n": n, "caption_error": float(ag.relative_error(estimate)),
                 "error_to_reference": float(np.linalg.norm(value - ref) / np.linalg.norm(ref)),
                 "spearman": spearman, "top10_overlap": top, "seconds_with_compile": round(seconds, 1)})
    print(rows[-1], flush=True)
  result = {"photo": "chelsea", "target": target, "reference_samples": samples,
            "reference_relative_error": ref_error, "rows": rows}
  (RESULTS / "demo_error.json").write_text(json.dumps(result, indent=2) + "\n")
  lines = [f"# The demo's chelsea AdaptGrad map against a {samples}-sample reference",
           "", f"Written by `python -m benchmarks.bench_demo_error`. The reference's own relative error:"
           f" {ref_error:.3f}. Times include compilation, on a shared 2-core CPU (noisy).", "",
           "| estimator | n | caption (rel. error, Monte Carlo part) | error to the reference | Spearman |"
           " top-10% overlap | seconds |", "|---|---|---|---|---|---|---|"]
  lines += [f"| {r['estimator']} | {r['n']} | {r['caption_error']:.3f} | {r['error_to_reference']:.3f} |"
            f" {r['spearman']:.3f} | {r['top10_overlap']:.3f} | {r['seconds_with_compile']:.0f} |" for r in rows]
  (RESULTS / "demo_error.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
