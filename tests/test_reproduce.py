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
  released = jit(reproduce.table1_explainers(g, cfg, (1.0, 2.0),
                                            ag_bounds=reproduce.RELEASED_SHIFTED_AG_BOUNDS))
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
  for label, (_, per_el, _per_img, analytic, _) in rows.items():
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
  """For a linear score every gradient is w: SG = AG = Grad, IG(B) = (x - lo) w, GI = x w."""
  w = jax.random.normal(getkey(), (6,))
  params = {"w": w, "_fc": jnp.ones(())}

  def f(x, p, t):
    return jnp.dot(x, p["w"]) * p["_fc"] + 0.0 * t

  lo, hi = -1.0, 1.0
  x = jax.random.uniform(getkey(), (6,), minval=lo, maxval=hi)
  cfg = reproduce.Table2Config(n=3, ig_steps=4, sig_steps=4, ig_n=2, ng_m=2, sng_m=2, sng_n=2, batch_size=4)
  ex = reproduce.table2_explainers(jax.grad(f), params, cfg, (lo, hi))
  assert tuple(ex) == reproduce.TABLE2_METHODS
  key = getkey()
  for name in ("Grad", "SG", "AG"):
    np.testing.assert_allclose(jax.jit(ex[name])(key, x, 0), w, rtol=1e-5)
  for name in ("GI", "S-GI", "A-GI"):
    np.testing.assert_allclose(jax.jit(ex[name])(key, x, 0), x * w, rtol=1e-5, atol=1e-7)
  for name, base in (("IG(B)", lo), ("A-IG(B)", lo), ("S-IG(W)", hi)):
    np.testing.assert_allclose(jax.jit(ex[name])(key, x, 0), (x - base) * w,
                               rtol=1e-4, atol=1e-6)
  # NoiseGrad leaves the final "_fc" layer alone and perturbs w multiplicatively.
  ng = jax.jit(ex["NG"])(key, x, 0)
  assert not np.allclose(ng, w) and np.all(np.sign(ng) == np.sign(w))


def test_table2_photos_are_listed_with_licence_and_load_as_rgb():
  pytest.importorskip("skimage")
  names = [p.name for p in reproduce.TABLE2_PHOTOS]
  assert len(names) == len(set(names)) >= 12
  assert all(p.licence and p.source for p in reproduce.TABLE2_PHOTOS)
  cam = reproduce.load_table2_photo("camera")  # grey: the channel repeated
  assert cam.dtype == np.uint8 and cam.ndim == 3 and cam.shape[-1] == 3
  np.testing.assert_array_equal(cam[..., 0], cam[..., 2])
  with pytest.raises(ValueError, match="not one of the Table 2 photos"):
    reproduce.load_table2_photo("lena")


def test_table2_on_a_tiny_model_is_one_evaluate_call(tmp_path):
  """The whole pipeline on two photos with a tiny random model (the real run is a command)."""
  pytest.importorskip("skimage")
  from flax import nnx

  class Tiny(nnx.Module):
    def __init__(self, rngs):
      self._stem = nnx.Conv(3, 2, (32, 32), strides=(32, 32), rngs=rngs)
      self._fc = nnx.Linear(2, 1000, rngs=rngs)

    def __call__(self, x):
      return self._fc(jnp.tanh(self._stem(x)).mean((1, 2)))

  methods = ("Grad", "SG", "AG", "S-GI", "A-IG(B)")
  cfg = reproduce.Table2Config(photos=("chelsea", "camera"), methods=methods, n=2, ig_steps=2,
                               sig_steps=2, ig_n=1, ng_m=1, sng_m=1, sng_n=1, batch_size=2,
                               pic_masks=1, min_pred_value=0.5,
                               entropy="zlib", num_resamples=50)
  res = reproduce.table2(cfg, model=Tiny(nnx.Rngs(0)), log=None)
  ev = res.evaluation
  assert ev.explainers == methods and ev.num_examples == 2
  sparseness = jax.jit(jax.vmap(metrics.sparseness))  # one compile for every method's maps
  for m in methods:
    r = ev.summary_row(m, "sparseness")
    assert r.n == 2 and 0.0 <= r.low <= r.mean <= r.high <= 1.0
    np.testing.assert_allclose(ev.scores[(m, "sparseness")],
                               np.asarray(sparseness(jnp.asarray(ev.maps[m]))), rtol=1e-5)
    r = ev.summary_row(m, "information_level")
    if m in ("Grad", "SG", "AG"):
      assert r.note.startswith("not evaluated")
    elif m == "A-IG(B)":  # a random model is not confident: XRAI's filter skips both
      assert (r.n, r.skipped, r.mean) == (0, 2, None) and "min_pred_value=0.5" in r.note
  # GI maps are the Grad map times the photo (same key for every explainer).
  np.testing.assert_allclose(np.asarray(ev.maps["S-GI"]),
                             np.asarray(ev.maps["SG"]) * _table2_images(cfg), rtol=1e-4,
                             atol=1e-7)
  tests = res.paired_tests()
  assert [(t["a"], t["b"], t["metric"]) for t in tests] == [("AG", "SG", "sparseness"),
                                                            ("AG", "Grad", "sparseness")]
  d = ev.scores[("AG", "sparseness")] - ev.scores[("SG", "sparseness")]
  assert tests[0]["mean_difference"] == pytest.approx(d.mean())
  assert tests[0]["p_value"] == pytest.approx(1.0 if d[0] * d[1] < 0 else 0.5)
  data = json.loads(json.dumps(reproduce._report.to_jsonable(res.to_dict())))
  assert [p["name"] for p in data["photos"]] == ["chelsea", "camera"]
  assert "CC0" in res.to_markdown() and "| AG - SG | sparseness |" in res.to_markdown()


def _table2_images(cfg):
  return np.stack([models.preprocess_efficientnet_lite(reproduce.load_table2_photo(p))
                   for p in cfg.photos])


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


# ----------------------------------------------------------------------------
# The authors' released models and pipeline.


def test_reinterpret_bytes_reads_the_first_784_bytes_of_the_float32_buffer():
  import struct
  x = np.zeros((28, 28), np.float32)
  x[0, :4] = [1.0, 0.5, 2.0, 0.2]
  x[6, 27] = 0.75  # element 195: the last one whose bytes are read
  x[7, 0] = 0.9  # element 196: beyond the first 784 bytes
  expected = np.frombuffer(struct.pack("<196f", *x.reshape(-1)[:196].tolist()), np.uint8)
  got = reproduce.reinterpret_bytes(x)
  assert got.shape == (784,) and got.dtype == np.float32
  np.testing.assert_array_equal(got * 255.0, expected.astype(np.float32))
  # 1.0f is 00 00 80 3f little-endian; 0.5f is 00 00 00 3f.
  np.testing.assert_allclose(got[:8] * 255.0, [0, 0, 128, 63, 0, 0, 0, 63])
  x2 = x.copy()
  x2[20:] = 1.0
  np.testing.assert_array_equal(reproduce.reinterpret_bytes(x2), got)
  with pytest.raises(ValueError, match="784 elements"):
    reproduce.reinterpret_bytes(np.zeros(10, np.float32))


def test_released_inputs_shift_and_garble():
  digits = np.zeros((2, 28, 28), np.uint8)
  digits[1, 10:20, 10:20] = 255
  plain = reproduce.released_inputs(digits, 0.0)
  assert np.all(plain == 0.0)  # rows 0-6 of a digit are background: all zero bytes
  shifted = reproduce.released_inputs(digits, 1.0)
  # The shifted model's first rows are the bytes of 1.0f (00 00 80 3f) / 255, plus 1.
  np.testing.assert_allclose(shifted[0, :4], 1.0 + np.array([0, 0, 128, 63]) / 255.0, rtol=1e-6)
  real = reproduce.released_inputs(digits, 1.0, garbled=False)
  np.testing.assert_array_equal(real[1].reshape(28, 28)[10:20, 10:20], 2.0)
  with pytest.raises(ValueError, match="uint8"):
    reproduce.released_inputs(digits.astype(np.float32), 0.0)


def test_released_indices_are_the_scripts_draws():
  np.random.seed(0)
  expected = np.random.choice(list(range(10000)), size=1000)
  idx = reproduce.released_indices()
  np.testing.assert_array_equal(idx, expected)
  assert len(np.unique(idx)) == 951


def test_released_sigma_is_adaptgrad_with_bounds_1_3_on_the_shifted_domain():
  from scipy.special import erfinv as sp_erfinv
  x = 1.0 + np.linspace(0.0, 1.0, 101, dtype=np.float32)
  lo, hi = reproduce.RELEASED_SHIFTED_AG_BOUNDS
  ours = ag.adaptive_sigma(jnp.asarray(x), 0.95, bounds=(lo, hi))
  released = np.minimum(np.abs(x - 0.0), np.abs(x - 1.0)) / (math.sqrt(2.0) * sp_erfinv(0.95))
  np.testing.assert_allclose(ours, released, rtol=1e-5, atol=1e-7)


def test_inert_noisegrad_and_clean_term_on_a_linear_model(getkey):
  """For a linear score every gradient is w: the released NG is (m + 2) / 2 * w, S-NG = A-NG = w."""
  w = jax.random.normal(getkey(), (784,))
  f = lambda x, p, t: jnp.dot(x, p["w"]) + 0.0 * t
  cfg = reproduce.Table1Config(n=3, m=4)
  ex = reproduce.table1_explainers(jax.grad(f), cfg, (0.0, 1.0), include_clean=True,
                                   inert_noisegrad=True)
  x = jax.random.uniform(getkey(), (784,))
  key = getkey()
  for name in ("Grad", "SG", "AG", "S-NG", "A-NG"):
    np.testing.assert_allclose(jax.jit(ex[name])(key, x, {"w": w}, 0), w, rtol=1e-5, atol=1e-6,
                               err_msg=name)
  np.testing.assert_allclose(ex["NG"](key, x, {"w": w}, 0), 3.0 * w, rtol=1e-6)


def test_clean_term_with_zero_sigma_gives_the_gradient(getkey):
  """An all-zero image has AdaptGrad sigma 0 everywhere: AG is the clean gradient exactly."""
  params = _mlp_params(getkey())
  cfg = reproduce.Table1Config(n=5, m=2)
  ex = reproduce.table1_explainers(jax.grad(_mlp), cfg, (0.0, 1.0), include_clean=True)
  x = jnp.zeros(784)
  grad = jax.grad(_mlp)(x, params, 2)
  np.testing.assert_allclose(jax.jit(ex["AG"])(getkey(), x, params, 2), grad, rtol=1e-5,
                             atol=1e-7)
  assert not np.allclose(jax.jit(ex["SG"])(getkey(), x, params, 2), grad, rtol=1e-3)


def _torch_released(path):
  import torch
  net = torch.nn.Sequential(torch.nn.Linear(784, 200), torch.nn.ReLU(), torch.nn.Linear(200, 10),
                            torch.nn.Softmax(dim=1))
  net.load_state_dict({k.removeprefix("model."): v for k, v in
                       torch.load(path, map_location="cpu", weights_only=True).items()})
  return net.double()


@pytest.mark.parametrize("role", sorted(reproduce.RELEASED_FILES))
def test_released_checkpoint_matches_torch_load(released_models_dir, role):
  torch = pytest.importorskip("torch")
  path = released_models_dir / reproduce.RELEASED_FILES[role]
  ours = reproduce.released_state_dict(path)
  theirs = torch.load(path, map_location="cpu", weights_only=True)
  assert sorted(theirs) == sorted(reproduce.RELEASED_NAMES)
  for name, value in theirs.items():
    np.testing.assert_array_equal(ours[reproduce.RELEASED_NAMES[name]], value.numpy())
  # The mapped model computes what the torch nn.Sequential computes (float64).
  x = np.random.default_rng(0).uniform(0.0, 2.0, (16, 784))
  with jax.enable_x64(True):
    model = reproduce.load_released_mlp(path)
    params = {k: jnp.asarray(v, jnp.float64) for k, v in
              models.state_dict_from_model(model).items()}
    model = models.mlp(output="softmax", weights=params, rngs=__import__("flax").nnx.Rngs(0))
    probs = np.asarray(model(jnp.asarray(x)))
    logits = np.asarray(models.mlp(weights=params, rngs=__import__("flax").nnx.Rngs(0))(
        jnp.asarray(x)))
  net = _torch_released(path)
  with torch.no_grad():
    np.testing.assert_allclose(probs, net(torch.from_numpy(x)).numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(logits, net[:3](torch.from_numpy(x)).numpy(), rtol=1e-10,
                               atol=1e-12)


def test_fixed_pipeline_lists_every_correction(released_models_dir, mnist_npz):
  cfg = reproduce.Table1Config(num_examples=6, n=2, m=2, methods=("Grad",))
  res = reproduce.table1_released_weights(released_models_dir, reproduce.Pipeline(),
                                          mnist=mnist_npz, config=cfg, log=None)
  assert res.protocol == "fixed" and res.pipeline.deviations() == []
  assert res.pipeline.corrections() == list(reproduce.DEVIATIONS)
  assert res.num_digits == 6
  # On real digits the plain and the shifted model explain the same digit.
  assert res.invariance["Grad"] > 0.4


def test_cli_table1_released_needs_weights_dir(capsys):
  assert reproduce.main(["table1", "--protocol", "released"]) == 2
  assert "--weights-dir" in capsys.readouterr().err


def test_cli_table1_released_writes_json_and_grad_and_ng_match_torch(released_models_dir, mnist_npz, tmp_path,
                                                                    capsys):
  """The released pipeline from the command line; Grad and NG against torch autograd and scipy, computed here.

  One run serves both checks. The comparison is per digit (torch's map of each digit against the
  pipeline's); three digits keep it, twelve doubled the seconds of the run.
  """
  torch = pytest.importorskip("torch")
  from scipy import stats
  num = 3
  out = tmp_path / "t1.json"
  status = reproduce.main(["table1", "--protocol", "released", "--weights-dir",
                           str(released_models_dir), "--mnist", str(mnist_npz), "--examples", str(num),
                           "--n", "2", "--m", "2", "--json", str(out)])
  assert status == 0
  data = json.loads(out.read_text())
  assert set(data["consistency"]) == set(data["invariance"]) == set(reproduce.METHODS)
  idx = np.unique(reproduce.released_indices(num))
  assert data["protocol"] == "released" and data["num_digits"] == len(idx)
  assert data["deviations"] == reproduce.Pipeline.released().deviations()
  assert len(data["deviations"]) == len(reproduce.DEVIATIONS)
  assert "Image.fromarray" in data["deviations"][0]
  # NG is a positive multiple of Grad in the released code: the rank metric gives the same value.
  assert data["invariance"]["NG"] == pytest.approx(data["invariance"]["Grad"], abs=1e-6)
  printed = capsys.readouterr().out
  assert "Image.fromarray" in printed and (tmp_path / "t1.md").exists()

  digits = np.load(mnist_npz)["x_test"][idx]

  def torch_maps(role):
    shift = 1.0 if role == "shifted" else 0.0
    net = _torch_released(released_models_dir / reproduce.RELEASED_FILES[role]).float()
    maps = []
    for d in digits:
      x = torch.from_numpy(d.astype(np.float32)) / 255.0 + shift  # ToTensor (+ Normalize)
      raw = bytearray(x.numpy().astype("<f4").tobytes()[:784])
      img = torch.frombuffer(raw, dtype=torch.uint8).float() / 255.0 + shift
      img = img.view(1, 784).requires_grad_(True)
      pred = int(net(img).argmax())
      net(img)[0, pred].backward()
      maps.append(img.grad[0].double().numpy())
    return np.stack(maps)

  def noabs(v):
    return np.clip(v / (2 * abs(np.percentile(v, 99))), -1, 1)

  def mean_abs_rho(a, b):
    with np.errstate(all="ignore"):
      rho = np.array([stats.spearmanr(noabs(x), noabs(y)).correlation for x, y in zip(a, b)])
    return np.mean(np.abs(rho[~np.isnan(rho)]))

  plain, random_label, shifted = (torch_maps(r) for r in ("plain", "random_label", "shifted"))
  for name in ("Grad", "NG"):
    assert data["consistency"][name] == pytest.approx(mean_abs_rho(plain, random_label), abs=2e-4)
    assert data["invariance"][name] == pytest.approx(mean_abs_rho(plain, shifted), abs=2e-4)
  assert data["invariance"]["Grad"] < 0.6  # two different images, whatever the method
  assert data["accuracy"]["plain"] == pytest.approx(0.9387, abs=5e-4)


def test_cli_table2_refuses_unknown_rows_and_photos(capsys):
  assert reproduce.main(["table2", "--methods", "Grad,XG"]) == 2
  assert "XG" in capsys.readouterr().err
  assert reproduce.main(["table2", "--photos", "lena"]) == 2
  assert "lena" in capsys.readouterr().err
