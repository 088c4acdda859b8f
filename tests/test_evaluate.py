"""Tests of metrics.evaluate (the runner) and metrics._statistics, on a tiny classifier."""

import csv
import io
import itertools
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import metrics

N, K = 6, 3
BOUNDS = (0.0, 1.0)
_W1 = jax.random.normal(jax.random.key(11), (64, 8)) * 0.4
_W2 = jax.random.normal(jax.random.key(12), (8, K))


def _logits(xb):
  return jnp.tanh(xb.reshape(xb.shape[0], -1) @ _W1) @ _W2


def predict(xb):
  return jax.nn.softmax(_logits(xb), axis=-1)


_grad = jax.grad(lambda x, t: _logits(x[None])[0, t])
EXPLAINERS = {
    "Grad": lambda key, x, t: _grad(x, t),
    "SG": ag.smooth_grad(_grad, 0.2, 4, bounds=BOUNDS),
}
XS = np.asarray(jax.random.uniform(jax.random.key(5), (N, 8, 8, 1)))
TS = np.asarray(jnp.argmax(predict(XS), -1)).astype(np.int32)
OPTIONS = {"max_sensitivity": {"num_samples": 3}}


def _run(metric_names=("sparseness", "deletion", "max_sensitivity"), **kw):
  args = dict(predict_fn=predict, bounds=BOUNDS, metric_options=OPTIONS, batch_size=4)
  args.update(kw)
  return metrics.evaluate(EXPLAINERS, list(metric_names), (XS, TS), jax.random.key(0), **args)


@pytest.fixture(scope="module")
def result():
  return _run()


def _keys():
  return jax.random.split(jax.random.key(0), 3)


def test_scores_equal_direct_calls_of_the_metric_functions(result):
  k_maps, k_metrics, _ = _keys()
  for name, fn in EXPLAINERS.items():
    for i in (0, N - 1):
      m = jax.jit(fn)(jax.random.fold_in(k_maps, i), XS[i], TS[i])
      np.testing.assert_allclose(result.maps[name][i], m, rtol=1e-5, atol=2e-6)
      np.testing.assert_allclose(result.scores[(name, "sparseness")][i],
                                 metrics.sparseness(m), rtol=1e-5)
      np.testing.assert_allclose(result.scores[(name, "deletion")][i],
                                 metrics.deletion(predict, XS[i], m, target=TS[i]).auc,
                                 rtol=1e-5)
      mk = jax.random.fold_in(jax.random.fold_in(k_metrics, zlib.crc32(b"max_sensitivity")), i)
      np.testing.assert_allclose(result.scores[(name, "max_sensitivity")][i],
                                 metrics.max_sensitivity(mk, fn, XS[i], TS[i], num_samples=3),
                                 rtol=1e-4)


def test_batch_size_and_iterable_data_do_not_change_scores(result):
  batches = [(XS[:1], TS[:1]), (XS[1:5], TS[1:5]), (XS[5:], TS[5:])]
  other = metrics.evaluate(EXPLAINERS, ["sparseness", "max_sensitivity"], batches,
                           jax.random.key(0), predict_fn=predict, metric_options=OPTIONS,
                           batch_size=1)
  for em, s in other.scores.items():
    np.testing.assert_allclose(s, result.scores[em], rtol=1e-4, err_msg=str(em))


def test_bootstrap_ci_against_numpy():
  v = np.random.default_rng(0).normal(size=17)
  key = jax.random.key(3)
  ci = metrics.bootstrap_ci(key, v, confidence=0.9, num_resamples=500)
  idx = np.asarray(jax.random.randint(key, (500, 17), 0, 17))
  lo, hi = np.percentile(v[idx].mean(axis=1), [5, 95])
  assert (ci.mean, ci.n) == (pytest.approx(v.mean()), 17)
  assert ci.low == pytest.approx(lo) and ci.high == pytest.approx(hi)
  assert ci.low < v.mean() < ci.high


def test_summary_is_the_bootstrap_of_the_scores(result):
  r = result.summary_row("SG", "sparseness")
  s = result.scores[("SG", "sparseness")]
  ci = metrics.bootstrap_ci(jax.random.fold_in(result.key, zlib.crc32(b"sparseness")), s)
  assert (r.mean, r.low, r.high, r.n, r.skipped) == (ci.mean, ci.low, ci.high, N, 0)


def _exact_p(d):
  n = len(d)
  obs = abs(np.mean(d))
  count = sum(abs(np.mean(np.array(s) * d)) >= obs - 1e-12
              for s in itertools.product((1, -1), repeat=n))
  return count / 2**n


def test_paired_test_p_value_equals_exact_enumeration():
  rng = np.random.default_rng(1)
  a = rng.normal(size=9)
  b = a - 0.3 + rng.normal(scale=0.4, size=9)
  t = metrics.paired_test(jax.random.key(0), a, b)
  assert t.method == "exact" and t.num_permutations == 2**9
  assert t.p_value == pytest.approx(_exact_p(a - b))
  assert t.mean_difference == pytest.approx(np.mean(a - b))
  assert t.low < t.mean_difference < t.high
  # Monte Carlo above exact_max_n: close to the exact value.
  mc = metrics.paired_test(jax.random.key(1), a, b, exact_max_n=4, num_permutations=20000)
  assert mc.method == "monte carlo"
  assert abs(mc.p_value - _exact_p(a - b)) < 0.02
  with pytest.raises(ValueError, match="same examples"):
    metrics.paired_test(jax.random.key(0), a, b[:5])


def test_compare_uses_the_pairs(result):
  c = result.compare("SG", "Grad", "sparseness")
  d = result.scores[("SG", "sparseness")] - result.scores[("Grad", "sparseness")]
  assert c.test.p_value == pytest.approx(_exact_p(d))
  assert c.higher_is_better is True


def test_resume_completes_a_partial_output_to_the_same_result(tmp_path, result):
  out = tmp_path / "maps"
  first = _run(out=out, metric_names=["sparseness"])
  # What a killed run leaves: no manifest, a shard missing.
  sg_dir = next(out.glob("SG-*"))
  (sg_dir / "manifest.json").unlink()
  shard = sorted(sg_dir.glob("shard-*.npy"))[-1]
  shard.unlink()
  again = _run(out=out, metric_names=["sparseness"])
  assert shard.exists()
  for e in EXPLAINERS:
    np.testing.assert_array_equal(again.scores[(e, "sparseness")],
                                  first.scores[(e, "sparseness")])
    np.testing.assert_allclose(again.scores[(e, "sparseness")],
                               result.scores[(e, "sparseness")], rtol=1e-6)


def test_writers(tmp_path, result):
  paths = result.write(tmp_path / "sub" / "ev")
  md = paths[".md"].read_text()
  r = result.summary_row("Grad", "deletion")
  assert f"{r.mean:.4f} [{r.low:.4f}, {r.high:.4f}]" in md and "(lower better)" in md
  rows = list(csv.DictReader(io.StringIO(paths[".csv"].read_text())))
  assert len(rows) == 2 * 3
  row = next(x for x in rows if x["explainer"] == "SG" and x["metric"] == "sparseness")
  assert float(row["mean"]) == pytest.approx(result.summary_row("SG", "sparseness").mean)
  data = json.loads(paths[".json"].read_text())
  np.testing.assert_allclose(data["scores"]["SG"]["deletion"], result.scores[("SG", "deletion")])
  assert len(paths[".scores.csv"].read_text().splitlines()) == 1 + 2 * 3 * N
  pytest.importorskip("matplotlib")
  result.plot(tmp_path / "ev.png")
  assert (tmp_path / "ev.png").read_bytes()[:4] == b"\x89PNG"


def test_skipped_and_undefined_examples_are_counted_not_averaged():
  def skip_first(a):
    # The first example's map, computed outside evaluate (another XLA program: equal up to rounding).
    if np.allclose(a, skip_first.first, rtol=1e-3, atol=1e-4 * np.abs(skip_first.first).max()):
      raise metrics.ExampleSkipped("the first one is out")
    return float(np.abs(a).max())
  skip_first.first = EXPLAINERS["Grad"](None, XS[0], TS[0])
  nan_all = metrics.Metric(lambda a: jnp.where(jnp.abs(a).sum() > 0, jnp.nan, 0.0), "map")
  res = metrics.evaluate({"Grad": EXPLAINERS["Grad"]},
                         {"skip": metrics.Metric(skip_first, "map", jit=False),
                          "nan": nan_all, "sparseness": "sparseness"},
                         (XS, TS), jax.random.key(0),
                         metrics_per_explainer={"Grad": ["skip", "nan"]})
  r = res.summary_row("Grad", "skip")
  assert (r.n, r.skipped, r.undefined, r.note) == (N - 1, 1, 0, "the first one is out")
  assert np.isfinite(r.mean)
  r = res.summary_row("Grad", "nan")
  assert (r.n, r.mean, r.undefined) == (0, None, N) and "non-finite" in r.note
  assert res.summary_row("Grad", "sparseness").note.startswith("not evaluated")
  text = json.dumps(res.to_dict())
  assert "NaN" not in text


def test_information_level_per_example_equals_the_direct_call():
  xs = np.zeros((2, 16, 16), np.float32)
  xs[:, 4:12, 4:12] = np.asarray(jax.random.uniform(jax.random.key(1), (2, 8, 8)))

  @jax.jit
  def probs(b):  # confident when the central patch is intact
    s = 40 * jnp.abs(b - xs[:1]).mean((1, 2))
    return jnp.stack([1 - jnp.tanh(s) / 2, jnp.tanh(s) / 2], axis=1)

  explainer = {"id": lambda key, x, t: x}
  opts = {"entropy": "zlib", "min_pred_value": 0.5, "masks_per_image": 2,
          "thresholds": (0.1, 0.3, 0.6)}
  res = metrics.evaluate(explainer, ["information_level"], (xs, np.zeros(2, int)),
                         jax.random.key(0), predict_fn=probs, bounds=BOUNDS,
                         metric_options={"information_level": opts})
  _, k_metrics, _ = _keys()
  k = jax.random.fold_in(k_metrics, zlib.crc32(b"information_level"))
  for i in range(2):
    ref = metrics.information_level(jax.random.fold_in(k, i), xs[i:i + 1], xs[i:i + 1], probs,
                                    bounds=BOUNDS, **opts)
    assert res.scores[("id", "information_level")][i] == pytest.approx(ref.auc)


def test_errors_name_the_argument():
  data = (XS, TS)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="not a metric of the library.*sparseness"):
    metrics.evaluate(EXPLAINERS, ["sparsity"], data, key)
  with pytest.raises(ValueError, match="'deletion' needs the model.*predict_fn"):
    metrics.evaluate(EXPLAINERS, ["deletion"], data, key)
  with pytest.raises(ValueError, match="bounds"):
    metrics.evaluate(EXPLAINERS, ["information_level"], data, key, predict_fn=predict)
  with pytest.raises(ValueError, match=r"explainers\['flat'\] returns maps of shape \(64,\)"):
    metrics.evaluate({"flat": lambda k, x, t: x.ravel()}, ["sparseness"], data, key)
  bad = lambda k, x, t: jnp.where(jnp.sum(x) == jnp.sum(XS[2]), jnp.nan, 1.0) * x
  with pytest.raises(ValueError, match=r"explainers\['bad'\].*non-finite.*example 2"):
    metrics.evaluate({"bad": bad}, ["sparseness"], data, key)
  with pytest.raises(ValueError, match=r"targets\[1\] = 3 is out of range.*\[0, 3\)"):
    metrics.evaluate(EXPLAINERS, ["sparseness"], (XS, np.array([0, 3, 0, 0, 0, 0])), key,
                     predict_fn=predict)
  with pytest.raises(ValueError, match="data is empty"):
    metrics.evaluate(EXPLAINERS, ["sparseness"], iter([]), key)
  with pytest.raises(ValueError, match="no example"):
    metrics.evaluate(EXPLAINERS, ["sparseness"], (XS[:0], TS[:0]), key)
  with pytest.raises(TypeError, match="explain_fn\\(key, x, target\\)"):
    metrics.evaluate({"nokey": lambda x: x}, ["sparseness"], data, key)


def test_a_map_metric_compiles_once_for_every_explainer():
  traces = []

  def peak(a):
    traces.append(1)  # runs once per trace, not per call
    return jnp.max(jnp.abs(a))

  explainers = {f"Grad{i}": EXPLAINERS["Grad"] for i in range(3)}
  res = metrics.evaluate(explainers, {"peak": metrics.Metric(peak, "map")}, (XS, TS), jax.random.key(0),
                         batch_size=N)
  assert len(traces) == 1
  direct = np.asarray(jax.vmap(lambda x, t: jnp.max(jnp.abs(_grad(x, t))))(XS, TS))
  for name in explainers:
    np.testing.assert_allclose(res.scores[(name, "peak")], direct, rtol=1e-6)


def test_paired_test_enumerates_up_to_twenty_and_refuses_more():
  d = np.random.default_rng(0).normal(0.1, 1.0, 18)
  t = metrics.paired_test(jax.random.key(0), d, np.zeros(18), exact_max_n=18)
  assert t.method == "exact" and t.num_permutations == 2**18
  # The exact p-value is the share of the 2**18 sign patterns at least as extreme; Monte Carlo agrees.
  mc = metrics.paired_test(jax.random.key(1), d, np.zeros(18), exact_max_n=0, num_permutations=20000)
  assert abs(mc.p_value - t.p_value) < 0.02
  with pytest.raises(ValueError, match=r"exact_max_n=24 .*\[0, 20\]"):
    metrics.paired_test(jax.random.key(0), d, np.zeros(18), exact_max_n=24)


def test_confidence_accepts_numpy_floats_and_refuses_bools():
  a = metrics.bootstrap_ci(jax.random.key(0), np.arange(6.0), confidence=np.float32(0.9))
  b = metrics.bootstrap_ci(jax.random.key(0), np.arange(6.0), confidence=0.9)
  assert a.low == pytest.approx(b.low) and a.high == pytest.approx(b.high)
  with pytest.raises(ValueError, match="confidence=True"):
    metrics.bootstrap_ci(jax.random.key(0), np.arange(6.0), confidence=True)
