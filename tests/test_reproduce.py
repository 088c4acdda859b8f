"""Tests of adaptgrad_jax.reproduce: small-data versions, correctness only."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import erfinv

import adaptgrad_jax as ag
from adaptgrad_jax import metrics, models, reproduce


def _mlp_params(key, hidden=16):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"w1": jax.random.normal(k1, (784, hidden)) / 28.0,
          "b1": 0.1 * jax.random.normal(k3, (hidden,)),
          "w2": jax.random.normal(k2, (hidden, 10)) / 4.0,
          "b2": jnp.zeros(10)}


def _mlp(x, p, target):
  return (jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])[target]


def test_released_sigma_is_distance_to_lower_edge_for_shifted_inputs():
  x = jnp.linspace(0.0, 1.0, 11)
  scale = math.sqrt(2.0) * float(erfinv(0.95))
  released = reproduce.released_sigma(0.95)(x + 1.0)  # bounds (0, 1) on [1, 2]
  np.testing.assert_allclose(released, x / scale, rtol=1e-6, atol=1e-7)
  # The correct bounds give the sigma of the unshifted input, zero at both edges.
  own = ag.adaptive_sigma(x + 1.0, 0.95, bounds=(1.0, 2.0))
  np.testing.assert_allclose(own, ag.adaptive_sigma(x, 0.95, bounds=(0.0, 1.0)), atol=1e-6)
  assert float(own[-1]) == 0.0 and float(released[-1]) > 0.5


def test_own_bounds_make_adaptgrad_exactly_shift_invariant(getkey):
  """A model on x + 1 built by the analytic bias shift computes the same function.

  With the shifted model's own bounds (1, 2), SG and AG draw the same noise
  for x + 1 as for x (same key), so their maps are identical; with the
  released (0, 1) reading AG's sigma differs on the digit strokes.
  """
  params = _mlp_params(getkey())
  shifted = dict(params, b1=params["b1"] - jnp.ones(784) @ params["w1"])
  x = jax.random.uniform(getkey(), (784,)).at[:300].set(0.0).at[300:400].set(1.0)
  cfg = reproduce.Table1Config(n=6, m=2)
  g = jax.grad(_mlp)
  jit = lambda d: {k: jax.jit(v) for k, v in d.items() if k in ("SG", "AG")}
  plain = jit(reproduce.table1_explainers(g, cfg, (0.0, 1.0)))
  own = jit(reproduce.table1_explainers(g, cfg, (1.0, 2.0)))
  released = jit(reproduce.table1_explainers(g, cfg, (1.0, 2.0), released=True))
  key = getkey()
  for name in ("SG", "AG"):
    a = plain[name](key, x, params, 3)
    b = own[name](key, x + 1.0, shifted, 3)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
  a = plain["AG"](key, x, params, 3)
  c = released["AG"](key, x + 1.0, shifted, 3)
  assert float(jnp.max(jnp.abs(a - c))) > 1e-3
  maps = jnp.stack([plain["AG"](jax.random.fold_in(key, i), x, params, i) for i in range(4)])
  same = jnp.stack([own["AG"](jax.random.fold_in(key, i), x + 1.0, shifted, i) for i in range(4)])
  assert float(metrics.invariance(maps, same)) == pytest.approx(1.0, abs=1e-6)


def test_table1_noisegrad_explainers_are_deterministic_per_key(getkey):
  params = _mlp_params(getkey(), hidden=8)
  x = jax.random.uniform(getkey(), (784,))
  ex = reproduce.table1_explainers(jax.grad(_mlp), reproduce.Table1Config(n=3, m=2), (0.0, 1.0))
  fn = jax.jit(ex["A-NG"])
  key = getkey()
  a, b = fn(key, x, params, 1), fn(key, x, params, 1)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, fn(getkey(), x, params, 1))


def test_table1_small_pipeline(mnist_npz, tmp_path):
  methods = ("Grad", "SG", "AG")
  cfg = reproduce.Table1Config(epochs=1, train_size=3000, hidden=64, learning_rate=0.05,
                               num_examples=12, n=2, chunk=12, shifted_bounds="both",
                               methods=methods)
  res = reproduce.table1(cfg, mnist=mnist_npz, progress=False, log=None)
  assert set(res.consistency) == set(methods) == set(res.invariance)
  for table in (res.consistency, res.invariance, res.invariance_released):
    for value in table.values():
      assert 0.0 <= value <= 1.0
  assert res.accuracy["plain"] > 0.75
  assert res.consistency["Grad"] < 0.5  # each model explained with its own parameters
  assert res.accuracy["random_label"] < 0.3
  # Only AG and A-NG depend on the shifted model's bounds.
  for m in ("Grad", "SG"):
    assert res.invariance_released[m] == res.invariance[m]
  md = res.to_markdown()
  assert "0.0209" in md and "0.3483" in md and "12 test digits" in md
  from adaptgrad_jax.reproduce import _report
  js, _ = _report.write_outputs(tmp_path, "t1", res.to_dict(), md)
  assert json.loads(js.read_text())["config"]["num_examples"] == 12


def test_inherent_noise_rates_match_eq9(getkey):
  images, names = reproduce.imagenet_photo_batch(("coffee",), 1, seed=0)
  assert images.shape == (2, 224, 224, 3) and names == ["coffee", "coffee/crop0"]
  lo, hi = models.IMAGENET_BOUNDS
  assert np.all(images >= lo - 1e-5) and np.all(images <= hi + 1e-5)
  cfg = reproduce.InherentNoiseConfig(n=8, crops_per_photo=1, photos=("coffee",),
                                      released_bounds=False)
  small = images[:, 50:82, 60:92]  # 32 x 32 patches keep the test fast
  res = reproduce.inherent_noise_experiment(cfg, images=small, log=None)
  rows = {r[0].split(" (")[0]: r for r in res.per_channel}
  for label, (_, per_el, per_img, analytic, _) in rows.items():
    assert per_el == pytest.approx(analytic, abs=3e-3), label
  assert rows["SmoothGrad"][2] == 1.0
  # AdaptGrad bounds the rate per element by 1 - c (exact: equal, inside pixels).
  assert rows["AdaptGrad exact"][3] == pytest.approx(0.05 * np.mean(
      (small > lo) & (small < hi)), abs=1e-3)
  assert rows["AdaptGrad eq13"][3] < rows["AdaptGrad two_sided"][3] < 0.05
  fig3 = dict(res.figure3)
  assert fig3["SmoothGrad (alpha=0.2)"] == pytest.approx(0.1596, abs=1e-4)
  assert res.to_dict()["num_images"] == 2 and res.released_bounds == []


def test_table2_explainers_on_a_linear_model(getkey):
  """For a linear score every gradient is w: SG = AG = Grad, IG(B) = (x - lo) w."""
  w = jax.random.normal(getkey(), (6,))
  params = {"w": w, "_fc": jnp.ones(())}

  def f(x, p, t):
    return jnp.dot(x, p["w"]) * p["_fc"] + 0.0 * t

  lo, hi = -1.0, 1.0
  x = jax.random.uniform(getkey(), (6,), minval=lo, maxval=hi)
  cfg = reproduce.Table2Config(n=3, ig_steps=4, ig_n=2, m=2, batch_size=4)
  ex = reproduce.table2_explainers(jax.grad(f), cfg, (lo, hi))
  assert set(ex) | {"GI", "S-GI", "A-GI"} == set(reproduce.TABLE2_METHODS)
  key = getkey()
  for name in ("Grad", "SG", "AG"):
    np.testing.assert_allclose(jax.jit(ex[name])(key, x, params, 0), w, rtol=1e-5)
  for name, base in (("IG(B)", lo), ("A-IG(B)", lo), ("S-IG(W)", hi)):
    np.testing.assert_allclose(jax.jit(ex[name])(key, x, params, 0), (x - base) * w,
                               rtol=1e-4, atol=1e-6)
  # NoiseGrad leaves the final "_fc" layer alone and perturbs w multiplicatively.
  ng = jax.jit(ex["NG"])(key, x, params, 0)
  assert not np.allclose(ng, w) and np.all(np.sign(ng) == np.sign(w))


def test_cli_inherent_noise_writes_outputs(tmp_path):
  status = reproduce.main(["inherent-noise", "--quick", "--crops", "0", "--n", "1",
                           "--out", str(tmp_path)])
  assert status == 0
  data = json.loads((tmp_path / "reproduce_inherent_noise_quick.json").read_text())
  assert data["num_images"] == 2
  md = (tmp_path / "reproduce_inherent_noise_quick.md").read_text()
  assert "0.1262" in md


def test_cli_rejects_unknown_options():
  with pytest.raises(SystemExit):
    reproduce.main(["table1", "--shifted-bounds", "wrong"])
  with pytest.raises(ValueError, match="shifted_bounds"):
    reproduce.Table1Config(shifted_bounds="wrong")
