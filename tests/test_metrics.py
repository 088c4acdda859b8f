"""Tests for adaptgrad_jax.metrics: closed forms, invariants, references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from adaptgrad_jax import metrics
from adaptgrad_jax.metrics import _information



def maybe_jit(fn, jit, **static):
  f = lambda *a: fn(*a, **static)
  return jax.jit(f) if jit else f


def maybe_jit_predict(fn, jit, predict, **static):
  f = lambda *a: fn(predict, *a, **static)
  return jax.jit(f) if jit else f


# ---------------------------------------------------------------- sparseness
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("n", [2, 10, 784])
def test_sparseness_one_hot(jit, n):
  eps = 1e-7
  x = jnp.zeros(n).at[n // 3].set(1.0)
  g = float(maybe_jit(metrics.sparseness, jit)(x))  # a Python float: pytest.approx's handling of JAX arrays varies
  assert g == pytest.approx((n - 1) / (n * (1 + n * eps)), rel=1e-5)
  assert g == pytest.approx(1 - 1 / n, abs=n * eps + 1e-6)


@pytest.mark.parametrize("value", [0.0, 0.3, -2.0])
def test_sparseness_constant_is_zero(value):
  assert float(metrics.sparseness(jnp.full(50, value))) == pytest.approx(0.0, abs=1e-6)


def paper_gini(array):
  """The AdaptGrad code's gini (metrics/sparseness.py), in float64."""
  array = np.sort(np.abs(np.asarray(array, np.float64).ravel()) + 1e-7)
  index = np.arange(1, array.shape[0] + 1)
  n = array.shape[0]
  return np.sum((2 * index - n - 1) * array) / (n * np.sum(array))


def test_sparseness_matches_paper_code_and_channels(rng):
  a = rng.normal(size=(12, 10, 3)).astype(np.float32)
  # Default: (H, W, C) maps are channel-summed (signed), as the paper code.
  assert float(metrics.sparseness(a)) == pytest.approx(paper_gini(a.sum(-1)), rel=1e-5)
  assert float(metrics.sparseness(a, reduce_channels=None)) == pytest.approx(
      paper_gini(a), rel=1e-5)
  assert float(metrics.sparseness(a, reduce_channels="abs_sum")) == pytest.approx(
      paper_gini(np.abs(a).sum(-1)), rel=1e-5)
  # Batched use through vmap.
  batch = jax.vmap(metrics.sparseness)(jnp.asarray(a[None].repeat(2, 0)))
  np.testing.assert_allclose(batch, paper_gini(a.sum(-1)), rtol=1e-5)


def test_sparseness_options(rng):
  a = rng.normal(size=100).astype(np.float32)
  # abs=False clips negatives: same as the Gini of max(a, 0).
  assert float(metrics.sparseness(a, abs=False)) == pytest.approx(
      paper_gini(np.maximum(a, 0)), rel=1e-5)
  # normalise makes the index scale-invariant even for tiny maps.
  tiny = a * 1e-9
  assert float(metrics.sparseness(tiny, normalise=True)) == pytest.approx(
      float(metrics.sparseness(a, normalise=True)), rel=1e-4)
  assert float(metrics.sparseness(tiny)) < float(metrics.sparseness(a)) - 0.1


def test_sparseness_bad_input():
  with pytest.raises(ValueError, match="attribution holds 1 non-finite"):
    metrics.sparseness(jnp.array([1.0, jnp.nan, 0.0]))
  with pytest.raises(ValueError, match="reduce_channels='median'"):
    metrics.sparseness(jnp.ones((2, 2, 3)), reduce_channels="median")
  with pytest.raises(ValueError, match="empty"):
    metrics.sparseness(jnp.zeros((0,)))


# ---------------------------------------------------------- rank correlation
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("scaling", [None, "abs", "no_abs"])
def test_rank_correlation_monotone(jit, scaling, rng):
  x = jnp.asarray(rng.normal(size=200))
  f = maybe_jit(metrics.rank_correlation, jit, scaling=scaling, clip_percentile=100)
  assert float(f(x, jnp.exp(x))) == pytest.approx(1.0, abs=1e-6)
  assert float(f(x, -3 * x)) == pytest.approx(-1.0, abs=1e-6)


def test_average_ranks_match_scipy(rng):
  x = rng.integers(0, 5, size=40).astype(np.float32)
  np.testing.assert_allclose(metrics.average_ranks(x),
                             scipy.stats.rankdata(x, method="average"))


@pytest.mark.parametrize("jit", [False, True])
def test_rank_correlation_matches_scipy_with_ties(jit, rng):
  f = maybe_jit(metrics.rank_correlation, jit)
  for _ in range(5):
    a = rng.integers(0, 6, size=(8, 8)).astype(np.float32)  # many ties
    b = (a + rng.integers(0, 4, size=(8, 8))).astype(np.float32)
    expected = scipy.stats.spearmanr(a.ravel(), b.ravel()).statistic
    assert float(f(a, b)) == pytest.approx(expected, abs=1e-5)


def paper_correlation(s, t, scale):
  """experiments/get_correlation.py of the AdaptGrad code, in numpy/scipy."""
  def absscale(x):
    vmax = abs(np.percentile(x, 99))
    vmin = np.min(x)
    return np.clip((x - vmin) / (vmax - vmin), 0, 1)

  def noabsscale(x):
    span = abs(np.percentile(x, 99))
    return np.clip(x / (2 * span), -1, 1)

  f = absscale if scale == "abs" else noabsscale
  return scipy.stats.spearmanr(f(s).ravel(), f(t).ravel()).statistic


@pytest.mark.parametrize("scaling", ["abs", "no_abs"])
def test_rank_correlation_paper_scalings(scaling, rng):
  # Heavy tails so that the 99th-percentile clipping creates ties.
  a = rng.standard_t(1.5, size=784)
  b = a + rng.standard_t(1.5, size=784)
  got = metrics.rank_correlation(a, b, scaling=scaling)
  assert float(got) == pytest.approx(paper_correlation(a, b, scaling), abs=1e-4)


def test_rank_correlation_clipping_creates_ties():
  a = jnp.arange(100.0)
  b = a.at[98].set(99.0).at[99].set(98.0)  # the two largest swapped
  assert float(metrics.rank_correlation(a, b)) < 1.0
  # Clipping at the 97th percentile saturates 97, 98, 99: the swap vanishes.
  for scaling in ("abs", "no_abs"):
    c = 0.5 * (b - 50.0) if scaling == "no_abs" else b
    d = 0.5 * (a - 50.0) if scaling == "no_abs" else a
    r = metrics.rank_correlation(d, c, scaling=scaling, clip_percentile=97 if scaling == "abs" else 48)
    assert float(r) == pytest.approx(1.0, abs=1e-6), scaling


def test_rank_correlation_errors_and_constant():
  with pytest.raises(ValueError, match=r"a has shape \(3,\) but b has shape \(4,\)"):
    metrics.rank_correlation(jnp.ones(3), jnp.ones(4))
  with pytest.raises(ValueError, match="b holds 1 non-finite"):
    metrics.rank_correlation(jnp.ones(3), jnp.array([1.0, jnp.inf, 2.0]))
  with pytest.raises(ValueError, match="scaling='minmax'"):
    metrics.rank_correlation(jnp.ones(3), jnp.ones(3), scaling="minmax")
  with pytest.raises(ValueError, match="clip_percentile=0"):
    metrics.rank_correlation(jnp.ones(3), jnp.ones(3), clip_percentile=0)
  assert np.isnan(float(metrics.rank_correlation(jnp.ones(5), jnp.arange(5.0))))


# -------------------------------------------------- consistency / invariance
def test_consistency_reductions(rng):
  m = jnp.asarray(rng.normal(size=(4, 30)))
  assert float(metrics.consistency(m, m)) == pytest.approx(1.0, abs=1e-6)
  assert float(metrics.consistency(m, -m, scaling=None)) == pytest.approx(1.0, abs=1e-6)
  assert float(metrics.consistency(m, -m, scaling=None, reduce="mean")) == pytest.approx(-1.0, abs=1e-6)
  per = metrics.consistency(m, -m, scaling=None, reduce=None)
  assert per.shape == (4,)
  # A constant map gives NaN for its example, which the aggregate drops.
  m2 = m.at[0].set(0.0)
  per = metrics.consistency(m2, m, scaling=None, reduce=None)
  assert np.isnan(per[0]) and np.all(np.isfinite(per[1:]))
  assert float(metrics.consistency(m2, m, scaling=None)) == pytest.approx(1.0, abs=1e-6)


def test_consistency_bad_input():
  with pytest.raises(ValueError, match="maps has shape .* random_label_maps has shape"):
    metrics.consistency(jnp.ones((2, 5)), jnp.ones((2, 6)))
  with pytest.raises(ValueError, match="random_label_maps holds 1 non-finite"):
    metrics.consistency(jnp.ones((2, 3)), jnp.ones((2, 3)).at[1, 1].set(jnp.nan))
  with pytest.raises(ValueError, match="leading axis"):
    metrics.consistency(jnp.ones(5), jnp.ones(5))
  with pytest.raises(ValueError, match="reduce='max'"):
    metrics.consistency(jnp.ones((2, 3)), jnp.ones((2, 3)), reduce="max")


def test_invariance_hand_computed():
  a = jnp.array([[0.0, 1.0], [2.0, 3.0]])
  b = jnp.array([[1.0, 1.0], [2.0, 5.0]])
  assert float(metrics.invariance(a, b, similarity="mean_abs_difference")) == 0.75
  np.testing.assert_allclose(
      metrics.invariance(a, b, similarity="mean_abs_difference", reduce=None),
      [0.5, 1.0])
  assert float(metrics.invariance(a, a * 7 + 1)) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="similarity='l2'"):
    metrics.invariance(a, b, similarity="l2")
  with pytest.raises(ValueError, match="shifted_maps has shape"):
    metrics.invariance(a, b[:1], similarity="mean_abs_difference")


def init_mlp(key, sizes=(12, 16, 3)):
  params = {}
  for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
    key, k = jax.random.split(key)
    params[f"fc{i + 1}"] = {"kernel": jax.random.normal(k, (m, n)) / np.sqrt(m),
                            "bias": jnp.full((n,), 0.1)}
  return params


def mlp_apply(params, x):
  h = jax.nn.relu(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
  return h @ params["fc2"]["kernel"] + params["fc2"]["bias"]


@jax.jit
def gradient_maps(params, xs):
  def one(x):
    target = jnp.argmax(mlp_apply(params, x))
    return jax.grad(lambda z: mlp_apply(params, z)[target])(x)
  return jax.vmap(one)(xs)


def test_shift_first_layer_bias_hand_computed():
  p = {"l1": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "bias": jnp.array([1.0, 1.0])}}
  out = metrics.shift_first_layer_bias(p, jnp.array([1.0, -1.0]), layer="l1")
  np.testing.assert_allclose(out["l1"]["bias"], [1 - (1 - 3), 1 - (2 - 4)])
  np.testing.assert_array_equal(out["l1"]["kernel"], p["l1"]["kernel"])
  with pytest.raises(ValueError, match="no parameter 'l2/kernel'"):
    metrics.shift_first_layer_bias(p, 1.0, layer="l2")
  with pytest.raises(ValueError, match="shift has 3 elements"):
    metrics.shift_first_layer_bias(p, jnp.ones(3), layer="l1")


def test_analytic_invariance_of_gradient_is_exact(getkey):
  params = init_mlp(getkey())
  xs = jax.random.uniform(getkey(), (16, 12))
  shifted = metrics.shift_first_layer_bias(params, 1.0, layer="fc1")
  np.testing.assert_allclose(mlp_apply(shifted, xs + 1.0), mlp_apply(params, xs),
                             atol=1e-5)
  g1, g2 = gradient_maps(params, xs), gradient_maps(shifted, xs + 1.0)
  assert float(metrics.invariance(g1, g2, similarity="mean_abs_difference")) == 0.0
  assert float(metrics.invariance(g1, g2)) == pytest.approx(1.0, abs=1e-6)
  # Gradient x input is NOT invariant (Kindermans et al.'s point).
  gi1, gi2 = g1 * xs, g2 * (xs + 1.0)
  assert float(metrics.invariance(gi1, gi2, similarity="mean_abs_difference")) > 0.01


def test_analytic_shift_on_nnx_state(getkey):
  from flax import nnx
  model = nnx.Sequential(nnx.Linear(6, 5, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(5, 2, rngs=nnx.Rngs(1)))
  graphdef, state = nnx.split(model)
  new_state = metrics.shift_first_layer_bias(state, 0.5, layer="layers/0")
  shifted = nnx.merge(graphdef, new_state)
  x = jax.random.uniform(getkey(), (4, 6))
  np.testing.assert_allclose(shifted(x + 0.5), model(x), atol=1e-5)


# ------------------------------------------- model-parameter randomisation
def test_model_parameter_randomisation(getkey):
  params = init_mlp(getkey())
  params["unused"] = {"kernel": jnp.ones((2, 2))}
  xs = jax.random.uniform(getkey(), (8, 12))
  explain = jax.jit(lambda p: gradient_maps(p, xs))
  key = getkey()
  for mode in ("cascading", "independent"):
    res = metrics.model_parameter_randomisation(
        key, explain, params, ["unused", "fc2", "fc1"], mode=mode, scaling=None)
    assert list(res) == ["unused", "fc2", "fc1"]
    # Randomising a parameter the explanation does not use changes nothing.
    assert float(res["unused"]) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= float(res["fc2"]) < 0.9 and 0.0 <= float(res["fc1"]) < 0.9
  # Independent step k equals randomising that layer alone with key k.
  keys = jax.random.split(key, 3)
  res = metrics.model_parameter_randomisation(
      key, explain, params, ["unused", "fc2", "fc1"], mode="independent",
      scaling=None, reduce=None)
  alone = metrics.randomise_layer(keys[2], params, "fc1")
  np.testing.assert_allclose(alone["fc2"]["kernel"], params["fc2"]["kernel"])
  expected = jax.vmap(metrics.rank_correlation)(explain(params), explain(alone))
  np.testing.assert_allclose(res["fc1"], expected, atol=1e-6)
  # Cascading step k has every earlier layer randomised too.
  res = metrics.model_parameter_randomisation(
      key, explain, params, ["unused", "fc2", "fc1"], scaling=None, reduce=None)
  both = metrics.randomise_layer(
      keys[2], metrics.randomise_layer(keys[1], params, "fc2"), "fc1")
  expected = jax.vmap(metrics.rank_correlation)(explain(params), explain(both))
  np.testing.assert_allclose(res["fc1"], expected, atol=1e-6)


def test_model_parameter_randomisation_errors(getkey):
  params = init_mlp(getkey())
  with pytest.raises(ValueError, match="'fc3' matches no parameter"):
    metrics.model_parameter_randomisation(getkey(), lambda p: None, params, ["fc3"])
  with pytest.raises(ValueError, match="mode='random'"):
    metrics.model_parameter_randomisation(getkey(), lambda p: None, params, ["fc1"],
                                          mode="random")
  with pytest.raises(ValueError, match="non-empty sequence"):
    metrics.model_parameter_randomisation(getkey(), lambda p: None, params, [])


# ------------------------------------------------------- deletion/insertion
def linear_predict(w):
  return lambda b: jnp.stack([b.reshape(b.shape[0], -1) @ w.ravel(),
                              -(b.reshape(b.shape[0], -1) @ w.ravel())], axis=1)


@pytest.mark.parametrize("jit", [False, True])
def test_deletion_insertion_hand_computed(jit):
  w = jnp.array([4.0, 3.0, 2.0, 1.0])
  f = linear_predict(w)
  dele = maybe_jit_predict(metrics.deletion, jit, f, target=0, num_steps=4)
  ins = maybe_jit_predict(metrics.insertion, jit, f, target=0, num_steps=4)
  x = jnp.ones(4)
  r = dele(x, w)
  np.testing.assert_allclose(r.scores, [10, 6, 3, 1, 0])
  np.testing.assert_allclose(r.fractions, [0, 0.25, 0.5, 0.75, 1])
  assert float(r.auc) == pytest.approx(3.75)
  assert float(ins(x, w).auc) == pytest.approx(6.25)
  # The reversed (worst) ordering: scores 10, 9, 7, 4, 0 -> AUC 6.25.
  assert float(dele(x, -w).auc) == pytest.approx(6.25)
  assert float(ins(x, -w).auc) == pytest.approx(3.75)


def test_deletion_per_pixel_and_batching(getkey):
  w = jax.random.normal(getkey(), (6, 6, 3))
  x = jax.random.uniform(getkey(), (6, 6, 3))
  f = linear_predict(w)
  a = w * x  # exact contributions; summed over channels = pixel contributions
  r = metrics.deletion(f, x, a, target=0, num_steps=36)
  # Removing pixels in order of their summed contribution: each step removes
  # one pixel, so the score drops by exactly that pixel's contribution.
  contrib = np.sort(np.asarray((w * x).sum(-1)).ravel())[::-1]
  expected = float((w * x).sum()) - np.concatenate([[0], np.cumsum(contrib)])
  np.testing.assert_allclose(r.scores, expected, rtol=1e-4, atol=1e-4)
  r2 = metrics.deletion(f, x, a.sum(-1), target=0, num_steps=36, batch_size=5)
  np.testing.assert_allclose(r2.scores, r.scores, rtol=1e-5, atol=1e-5)
  # Default target is the predicted class.
  r3 = metrics.insertion(f, x, a, num_steps=9)
  t = int(jnp.argmax(f(x[None])[0]))
  np.testing.assert_allclose(metrics.insertion(f, x, a, num_steps=9, target=t).auc, r3.auc)
  with pytest.raises(ValueError, match=r"attribution has shape \(5, 6\)"):
    metrics.deletion(f, x, a[:5, :, 0])


def test_faithfulness_correlation(getkey):
  w = jax.random.normal(getkey(), (32,))
  x = jax.random.uniform(getkey(), (32,))
  f = lambda b: (b @ w)[:, None]
  key = getkey()
  exact = metrics.faithfulness_correlation(key, f, x, w * x, target=0, num_runs=30,
                                           subset_size=8)
  assert float(exact) == pytest.approx(1.0, abs=1e-5)
  anti = metrics.faithfulness_correlation(key, f, x, -w * x, target=0, num_runs=30,
                                          subset_size=8)
  assert float(anti) == pytest.approx(-1.0, abs=1e-5)
  again = jax.jit(lambda k: metrics.faithfulness_correlation(
      k, f, x, w * x, target=0, num_runs=30, subset_size=8))(key)
  assert float(again) == pytest.approx(float(exact), abs=1e-6)
  with pytest.raises(ValueError, match="subset_size=33"):
    metrics.faithfulness_correlation(key, f, x, w, subset_size=33)


# ---------------------------------------------------------------- localisation
def test_pointing_game_hit_miss_ties_tolerance():
  a = jnp.zeros((10, 10)).at[2, 3].set(1.0)
  assert bool(metrics.pointing_game(a, box=(0, 0, 4, 4)))
  assert not bool(metrics.pointing_game(a, box=(4, 4, 10, 10)))
  mask = jnp.zeros((10, 10), bool).at[5, 5].set(True)
  assert not bool(metrics.pointing_game(a, mask=mask))
  # Tie: a second maximum inside the region counts as a hit.
  assert bool(metrics.pointing_game(a.at[5, 5].set(1.0), mask=mask))
  # Tolerance: (2, 3) is sqrt(5) from (3, 4)... box starts at row 3, col 4.
  assert not bool(metrics.pointing_game(a, box=(3, 4, 10, 10), tolerance=1))
  assert bool(metrics.pointing_game(a, box=(3, 4, 10, 10), tolerance=1.5))
  # abs: a large negative value is the maximum magnitude.
  b = a.at[8, 8].set(-5.0)
  assert bool(metrics.pointing_game(b, box=(0, 0, 4, 4)))
  assert not bool(metrics.pointing_game(b, box=(0, 0, 4, 4), abs=True))
  # Channels summed by default.
  c = jnp.zeros((10, 10, 3)).at[9, 9, 0].set(1.0).at[0, 0, :].set(0.5)
  assert bool(metrics.pointing_game(c, box=(0, 0, 1, 1)))


def test_energy_localisation_hand_computed():
  a = jnp.array([[1.0, 1.0, 0.0], [2.0, -4.0, 0.0]])
  assert float(metrics.energy_localisation(a, box=(0, 0, 1, 3))) == pytest.approx(2 / 8)
  assert float(metrics.energy_localisation(a, box=(1, 1, 2, 2))) == pytest.approx(4 / 8)
  # Positive part only: energies 1, 1, 2 -> the box (1, 1) holds none.
  assert float(metrics.energy_localisation(a, box=(1, 0, 2, 3), abs=False)) == pytest.approx(2 / 4)
  mask = jnp.array([[True, False, False], [False, True, True]])
  assert float(metrics.energy_localisation(a, mask=mask)) == pytest.approx(5 / 8)


def test_localisation_bad_regions():
  a = jnp.ones((4, 4))
  with pytest.raises(ValueError, match="mask is empty"):
    metrics.pointing_game(a, mask=jnp.zeros((4, 4), bool))
  with pytest.raises(ValueError, match="mask is empty"):
    metrics.energy_localisation(a, mask=jnp.zeros((4, 4), bool))
  with pytest.raises(ValueError, match=r"box=\(0, 0, 5, 2\) is empty or outside"):
    metrics.energy_localisation(a, box=(0, 0, 5, 2))
  with pytest.raises(ValueError, match=r"box=\(2, 0, 2, 2\) is empty"):
    metrics.pointing_game(a, box=(2, 0, 2, 2))
  with pytest.raises(ValueError, match="exactly one of mask= .* got both"):
    metrics.pointing_game(a, mask=jnp.ones((4, 4), bool), box=(0, 0, 1, 1))
  with pytest.raises(ValueError, match="got neither"):
    metrics.pointing_game(a)
  with pytest.raises(ValueError, match=r"mask has shape \(3, 4\)"):
    metrics.pointing_game(a, mask=jnp.ones((3, 4), bool))
  with pytest.raises(ValueError, match="attribution holds 1 non-finite"):
    metrics.pointing_game(a.at[0, 0].set(jnp.nan), box=(0, 0, 1, 1))


# -------------------------------------------------------------------- PIC
def test_blurred_image_interpolates_linear_ramp_exactly(getkey):
  ii, jj = np.mgrid[0:20, 0:24]
  ramp = (2.0 * ii + 3.0 * jj).astype(np.float64)
  mask = metrics.random_pixel_mask(getkey(), 20, 24, fraction=0.05)
  assert mask.sum() == int(20 * 24 * 0.05)
  np.testing.assert_allclose(metrics.blurred_image(ramp, mask), ramp, atol=1e-9)
  full = np.ones((20, 24), bool)
  np.testing.assert_array_equal(metrics.blurred_image(ramp, full), ramp)


@pytest.mark.parametrize("method", ["webp", "png", "zlib"])
def test_entropy_estimators_order(method, rng):
  flat = np.full((32, 32), 128, np.uint8)
  noise = rng.integers(0, 256, size=(32, 32)).astype(np.uint8)
  assert metrics.estimate_image_entropy(flat, method) < metrics.estimate_image_entropy(noise, method)


def test_pic_curve_from_points_hand_computed():
  # Only the thresholds' points are passed; the anchors (0, 0), (1, 1) are added.
  res = _information._curve_from_points([(0.5, 1.0)], 1000)
  assert res.auc == pytest.approx(0.75, abs=1e-9)
  res = _information._curve_from_points([], 10)
  assert res.auc == pytest.approx(0.5, abs=1e-9)


def test_pic_curve_repeated_x_takes_pairs_anchor_order():
  # Three thresholds whose entropy is clipped to 1 (x = 1, y = 0.7): PAIR
  # appends (0, 0), (1, 1) after them, so on [0, 1) the curve is the line
  # from (0, 0) to (1, 0.7) and only the last point jumps to 1:
  # AUC = 0.7 / 2 * (1 - 1/n) + trapezoid of the last step.
  n = 1000
  res = _information._curve_from_points([(1.0, 0.7)] * 3, n)
  last_y = 0.7 * (n - 1) / n
  expected = 0.7 / 2 * ((n - 1) / n) ** 2 + (last_y + 1.0) / 2 / n
  assert res.auc == pytest.approx(expected, abs=1e-12)
  assert res.auc == pytest.approx(0.35015, abs=1e-9)
  # Repeated x = 0: the anchor (0, 0) wins at x = 0, as in PAIR.
  res = _information._curve_from_points([(0.0, 0.5), (0.0, 0.6), (0.5, 0.8)], n)
  assert res.curve_y[0] == 0.0


def test_blurred_image_rounds_like_float32_reference(rng):
  # PAIR stores the interpolated values into a float32 copy before rounding
  # a uint8 image; compute that reference here with scipy directly.
  from scipy import interpolate
  img = rng.integers(0, 256, size=(12, 10, 3)).astype(np.uint8)
  mask = rng.random((12, 10)) < 0.2
  got = metrics.blurred_image(img, mask)
  m = mask.copy()
  m[[0, 0, 11, 11], [0, 9, 0, 9]] = True
  want = img.astype(np.float32) * m[..., None]
  for c in range(3):
    vals = interpolate.griddata(np.argwhere(m), img[..., c][m].astype(np.float64),
                                np.argwhere(~m), method="linear")
    want[..., c][~m] = vals.astype(np.float32)
  np.testing.assert_array_equal(got, np.round(want).astype(np.uint8))
  assert got.dtype == np.uint8


def region_toy(key, size=16):
  """Images with random texture; class 0 is confident only if the 4x4 patch
  at rows 2..6, columns 9..13 is intact."""
  xs = jax.random.uniform(key, (3, size, size))
  region = np.zeros((size, size), bool)
  region[2:6, 9:13] = True

  def predict(batch):
    err = jnp.abs(batch - xs[:1])[:, 2:6, 9:13].mean(axis=(1, 2))
    p0 = 0.05 + 0.9 * jnp.exp(-60.0 * err)
    return jnp.stack([p0, 1 - p0], axis=1)

  return xs, region, predict


@pytest.mark.parametrize("kind", ["softmax", "accuracy"])
def test_pic_on_toy_classifier(kind, getkey):
  xs, region, predict = region_toy(getkey())
  x = np.asarray(xs[0])
  noise = np.asarray(jax.random.uniform(getkey(), region.shape)) * 1e-3
  good = region + noise  # the known relevant region first
  bad = ~region + noise  # everything else first
  mask = metrics.random_pixel_mask(getkey(), *region.shape)
  thresholds = (0.03, 0.0625, 0.1, 0.3, 0.6, 0.9)
  r_good = metrics.performance_information_curve(
      x, good, predict, random_mask=mask, kind=kind, thresholds=thresholds,
      entropy="webp")
  r_bad = metrics.performance_information_curve(
      x, bad, predict, random_mask=mask, kind=kind, thresholds=thresholds,
      entropy="webp")
  assert 0.0 <= r_bad.auc < r_good.auc <= 1.0
  assert r_good.curve_x[0] == 0.0 and r_good.curve_x[-1] == 1.0
  assert np.all(np.diff(r_good.curve_y) >= -1e-12)  # keep_monotonous
  # Revealing 1/16 of the pixels (the whole region) restores the prediction:
  # from that information level on, the normalised prediction is 1.
  assert r_good.curve_y.max() == 1.0
  assert r_good.auc > r_bad.auc + 0.3


def test_information_level_aggregate_and_skips(getkey):
  xs, region, predict = region_toy(getkey())
  maps = np.broadcast_to(region, xs.shape).astype(np.float32)
  # Images 1 and 2 are not the class-0 image: the model is unsure on them
  # only if p0 of the original < min_pred_value. p0(original 0) = 0.95.
  res = metrics.information_level(getkey(), xs, maps, predict, entropy="zlib",
                                  min_pred_value=0.9, masks_per_image=2,
                                  thresholds=(0.0625, 0.2, 0.5))
  assert res.num_images + res.num_skipped == 6 and res.num_images >= 2
  assert 0.0 <= res.auc <= 1.0 and res.curve_y.shape == (1001,)
  with pytest.raises(ValueError, match="every one of the 3 image/mask pairs"):
    metrics.information_level(getkey(), xs, maps, predict, entropy="zlib",
                              min_pred_value=0.99)


def test_pic_bad_input(getkey):
  xs, region, predict = region_toy(getkey())
  mask = metrics.random_pixel_mask(getkey(), 16, 16)
  x = np.asarray(xs[0])
  with pytest.raises(metrics.PicSkipped, match="min_pred_value=0.99"):
    metrics.performance_information_curve(x, region, predict, random_mask=mask,
                                          min_pred_value=0.99)
  with pytest.raises(ValueError, match=r"saliency \(after channel reduction\) \(15, 16\)"):
    metrics.performance_information_curve(x, region[1:], predict, random_mask=mask)
  with pytest.raises(ValueError, match="saliency holds 1 non-finite"):
    nan_map = region.astype(np.float32)
    nan_map[0, 0] = np.nan
    metrics.performance_information_curve(x, nan_map, predict, random_mask=mask)
  with pytest.raises(ValueError, match="thresholds="):
    metrics.performance_information_curve(x, region, predict, random_mask=mask,
                                          thresholds=(0.5, 0.1))
  with pytest.raises(ValueError, match="entropy='jpeg'"):
    metrics.performance_information_curve(x, region, predict, random_mask=mask,
                                          entropy="jpeg")


# Bootstrap and permutation counts: drawn in bounded blocks, absurd counts refused (issue 26's audit).


def test_bootstrap_in_blocks_equals_the_blocks_indices(monkeypatch):
  from adaptgrad_jax.metrics import _statistics
  v = np.random.default_rng(0).normal(size=50)
  key = jax.random.key(2)
  monkeypatch.setattr(_statistics, "BLOCK", 120)  # 2 rows of 50 per block: 500 resamples in 250 blocks
  ci = metrics.bootstrap_ci(key, v, confidence=0.9, num_resamples=500)
  blocks = [np.asarray(jax.random.randint(jax.random.fold_in(key, j), (2, 50), 0, 50)) for j in range(250)]
  idx = metrics.bootstrap_indices(key, 50, 500)
  np.testing.assert_array_equal(idx, np.concatenate(blocks))
  lo, hi = np.percentile(v[idx].mean(axis=1), [5, 95])
  assert (ci.low, ci.high) == (pytest.approx(lo), pytest.approx(hi))
  sizes = [rows * 50 for _, rows in _statistics._blocks(key, 999, 50)]
  assert max(sizes) <= 120 and sum(sizes) == 50 * 999  # never more than BLOCK indices at once


def test_paired_test_in_blocks_and_counts_refused(monkeypatch):
  from adaptgrad_jax.metrics import _statistics
  rng = np.random.default_rng(1)
  a = rng.normal(size=14)
  b = a - 0.3 + rng.normal(scale=0.6, size=14)
  exact = metrics.paired_test(jax.random.key(0), a, b, num_resamples=10)
  monkeypatch.setattr(_statistics, "BLOCK", 4000)  # 285 sign patterns of 14 per block: 71 blocks
  mc = metrics.paired_test(jax.random.key(0), a, b, num_permutations=20000, num_resamples=10, exact_max_n=4)
  assert mc.method == "monte carlo" and abs(mc.p_value - exact.p_value) < 0.015
  for call, name in [(lambda: metrics.bootstrap_ci(jax.random.key(0), a, num_resamples=10**8), "num_resamples"),
                     (lambda: metrics.paired_test(jax.random.key(0), a, b, num_permutations=10**12), "num_permutations"),
                     (lambda: metrics.bootstrap_indices(jax.random.key(0), 20, 10**8), "num_resamples")]:
    with pytest.raises(ValueError, match=rf"{name}=\d+ is more than this library draws \(10,000,000\)"):
      call()
