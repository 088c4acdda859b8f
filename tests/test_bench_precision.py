"""Smoke test of benchmarks/bench_precision.py at tiny sizes (correctness only, no timing assertions)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from benchmarks import bench_precision as bp

f = lambda x, w: jnp.sum(jnp.sin(w * x))
X = jnp.linspace(0.05, 0.95, 32)
W = jnp.linspace(1.0, 4.0, 32)


@pytest.mark.parametrize("noise, group", [("iid", 1), ("antithetic", 2), ("orthogonal", 8), ("lhs", 8)])
def test_aux_samples_give_the_estimate_and_its_stderr(noise, group):
  # The benchmark reads every sample's gradient from aux; their mean is the map and the units'
  # spread is the library's stderr, so prefixes of them are the estimates at smaller n.
  grad = jax.grad(f)
  grad_aux = lambda x, w: (lambda g: (g, g))(grad(x, w))
  # Jitted: run eagerly, the transform's scan dispatches op by op (twice the seconds of a compile).
  fn = jax.jit(bp.transform("adapt_smooth", grad_aux, 32, (0.0, 1.0), noise=noise, has_aux=True,
                            return_stderr=True))
  est, samples = fn(jax.random.key(0), X, W)
  samples = np.asarray(samples, np.float64)
  assert samples.shape == (32, 32)
  np.testing.assert_allclose(samples.mean(0), est.value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bp._unit_rel_err(samples, 32, group), float(ag.relative_error(est)), rtol=1e-3)


def test_needed_finds_the_first_grid_point_or_extrapolates():
  ns = [8, 16, 32]
  assert bp.needed(ns, [0.3, 0.09, 0.04], 0.1) == {"n": 16, "extrapolated": False}
  # 0.04 at n = 32 -> 0.02 needs 4x the samples under the 1/sqrt(n) law.
  assert bp.needed(ns, [0.3, 0.09, 0.04], 0.02) == {"n": 128, "extrapolated": True}
  assert bp.grid(64) == [8, 16, 32, 64]


def test_quick_run_writes_json_markdown_and_plot(tmp_path):
  pytest.importorskip("matplotlib")
  # The harness treats every scheme alike but for its unit (group) size: i.i.d. (always run) and
  # orthogonal (units of 8) cover it; each scheme's units are checked above. Two schemes fewer:
  # eight compiles fewer.
  results = bp.main(["--quick", "--models", "mlp", "--schemes", "orthogonal", "--out", str(tmp_path),
                     "--tag", "t"])
  rec = results["models"][0]
  assert rec["grid"] == [8, 16]
  for method in bp.METHODS:
    assert tuple(rec["methods"][method]["schemes"]) == ("iid", "orthogonal")
    for scheme in ("iid", "orthogonal"):
      e = rec["methods"][method]["schemes"][scheme]
      assert len(e["mean_error"]) == 2 and all(math.isfinite(v) and v > 0 for v in e["mean_error"])
      assert e["calibration_ratio"] > 0
      # The rtol run stops where the rule (recomputed from the same units) says, never a chunk later.
      assert e["rtol_check"]["num_samples"] == e["rtol_check"]["needed_by_rule"]
    assert rec["methods"][method]["schemes"]["iid"]["variance_ratio_vs_iid"] == pytest.approx(1.0)
  saved = json.loads((tmp_path / "t.json").read_text())
  assert saved["models"][0]["model"] == "mlp"
  text = (tmp_path / "t.md").read_text()
  assert "| adapt_smooth | orthogonal |" in text
  assert (tmp_path / "t.png").stat().st_size > 1000
