"""Tests for the explainer-based metrics: robustness, infidelity, completeness,
complexity and the randomisation tests; and bad input for every metric."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import metrics


def schedule(key, num_samples):
  """The documented key schedule: (noise keys, explanation keys)."""
  k_noise, k_explain = jax.random.split(key)
  return (jax.random.split(k_noise, num_samples),
          jax.random.split(k_explain, num_samples + 1))


def linear(c):
  return lambda key, x: c * x


# ----------------------------------------------------------- sensitivity
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_sensitivity_of_linear_explainer_is_relative_noise(jit, reduce, getkey):
  key, x = getkey(), jnp.linspace(0.5, 1.5, 6)
  fn = lambda k, v: metrics.sensitivity(k, linear(2.0), v, num_samples=7,
                                        radius=0.1, reduce=reduce)
  got = (jax.jit(fn) if jit else fn)(key, x)
  nkeys, _ = schedule(key, 7)
  noise = np.stack([np.asarray(jax.random.uniform(k, (6,), minval=-0.1, maxval=0.1))
                    for k in nkeys])
  ratios = np.linalg.norm(noise, axis=1) / np.linalg.norm(np.asarray(x))
  want = ratios.max() if reduce == "max" else ratios.mean()
  assert float(got) == pytest.approx(want, rel=1e-5)
  wrapper = metrics.max_sensitivity if reduce == "max" else metrics.avg_sensitivity
  assert float(wrapper(key, linear(2.0), x, num_samples=7, radius=0.1)) == \
      pytest.approx(want, rel=1e-5)


def test_sensitivity_vmap_and_batch_size_and_stochastic_explainer(getkey):
  w = jnp.array([1.0, -2.0, 0.5])
  f = lambda x, w, t: jnp.tanh(x * w)[t]
  sg = ag.adapt_smooth(jax.grad(f), 0.95, 4, bounds=(0.0, 1.0))
  xs = jax.random.uniform(getkey(), (3, 3), minval=0.2, maxval=0.8)
  ts = jnp.array([0, 1, 2])
  keys = jax.random.split(getkey(), 3)
  batched = jax.vmap(lambda k, x, t: metrics.max_sensitivity(
      k, sg, x, w, t, num_samples=5))(keys, xs, ts)
  single = [metrics.max_sensitivity(k, sg, x, w, int(t), num_samples=5)
            for k, x, t in zip(keys, xs, ts)]
  np.testing.assert_allclose(batched, single, rtol=1e-5)
  chunked = metrics.max_sensitivity(keys[0], sg, xs[0], w, 0, num_samples=5,
                                    batch_size=2)
  np.testing.assert_allclose(chunked, single[0], rtol=1e-5)
  # The explainer is stochastic: a different key gives a different value.
  other = metrics.max_sensitivity(keys[1], sg, xs[0], w, 0, num_samples=5)
  assert float(other) != float(single[0])


def test_sensitivity_of_zero_map_is_finite(getkey):
  zero = lambda key, x: jnp.zeros_like(x)
  assert float(metrics.max_sensitivity(getkey(), zero, jnp.ones(4))) == 0.0
  # An all-zero map at x but not nearby: divided by 1 (Captum), not by 0.
  bump = lambda key, x: jnp.where(x[0] > 1.0, x, 0.0)
  s = metrics.max_sensitivity(getkey(), bump, jnp.ones(4), radius=0.2)
  assert np.isfinite(float(s)) and float(s) > 0


# ------------------------------------------------------------ Lipschitz
def test_local_lipschitz_estimate(getkey):
  x = jnp.linspace(-1, 1, 8)
  got = metrics.local_lipschitz_estimate(getkey(), linear(3.0), x, normalise=False,
                                         num_samples=20)
  assert float(got) == pytest.approx(3.0, rel=1e-5)
  # Normalised by the maximum: 3 x / max|3 x| moves by |d| / max|x'| ...
  key = getkey()
  got = metrics.local_lipschitz_estimate(key, linear(3.0), x, num_samples=20)
  nkeys, _ = schedule(key, 20)
  xn = np.asarray(x, np.float64)
  best = 0.0
  for k in nkeys:
    xp = xn + 0.1 * np.asarray(jax.random.normal(k, (8,)), np.float64)
    num = np.linalg.norm(xp / np.abs(xp).max() - xn / np.abs(xn).max())
    best = max(best, num / (np.linalg.norm(xp - xn) + 1e-10))
  assert float(got) == pytest.approx(best, rel=1e-4)


# ------------------------------------------------------- relative stability
def test_relative_input_and_output_stability_closed_forms(getkey):
  key = getkey()
  x = jnp.linspace(0.5, 1.5, 5)
  predict = lambda b: jnp.stack([b.sum(1), -b.sum(1)], axis=1)
  sq = lambda key, v: v ** 2
  ris = metrics.relative_input_stability(key, sq, predict, x, num_samples=9)
  ros = metrics.relative_output_stability(key, sq, predict, x, num_samples=9)
  nkeys, _ = schedule(key, 9)
  xn = np.asarray(x, np.float64)
  r_in, r_out = [], []
  for k in nkeys:
    xp = xn + np.asarray(jax.random.uniform(k, (5,), minval=0.02, maxval=0.2))
    num = np.linalg.norm((xn ** 2 - xp ** 2) / xn ** 2)
    r_in.append(num / np.linalg.norm((xn - xp) / xn))
    h, hp = np.array([xn.sum(), -xn.sum()]), np.array([xp.sum(), -xp.sum()])
    r_out.append(num / np.linalg.norm(h - hp))
  assert float(ris) == pytest.approx(max(r_in), rel=1e-4)
  assert float(ros) == pytest.approx(max(r_out), rel=1e-4)


def test_relative_stability_skips_changed_predictions(getkey):
  # Class 0 iff sum < 2.1: x sums to 2, every positive shift of >= 0.1 in
  # total flips it. All flipped: NaN (the documented empty maximum).
  predict = lambda b: jnp.stack([2.1 - b.sum(1), b.sum(1) - 2.1], axis=1)
  x = jnp.full(5, 0.4)
  got = metrics.relative_input_stability(getkey(), linear(1.0), predict, x,
                                         num_samples=5)
  assert np.isnan(float(got))
  kept = metrics.relative_input_stability(
      getkey(), linear(1.0), predict, x, num_samples=5,
      exclude_changed_predictions=False)
  assert float(kept) == pytest.approx(1.0, rel=1e-4)


# ------------------------------------------------------------ infidelity
def test_infidelity_linear_model_and_normalisation(getkey):
  w = jnp.array([1.0, -2.0, 3.0, 0.5])
  predict = lambda b: jnp.stack([b @ w, -(b @ w)], axis=1)
  x = jnp.ones(4)
  assert float(metrics.infidelity(getkey(), lambda k, v: w, predict, x,
                                  target=0)) == pytest.approx(0.0, abs=1e-10)
  key = getkey()
  doubled = lambda k, v: 2.0 * w
  raw = metrics.infidelity(key, doubled, predict, x, target=0, std=0.5)
  nkeys, _ = schedule(key, 10)
  dots = np.array([float(-(0.5 * jax.random.normal(k, (4,))) @ w) for k in nkeys])
  # (2 I.w - I.w)^2 averaged
  assert float(raw) == pytest.approx(np.mean(dots ** 2), rel=1e-4)
  norm = metrics.infidelity(key, doubled, predict, x, target=0, std=0.5,
                            normalise=True)
  assert float(norm) == pytest.approx(0.0, abs=1e-6)
  # Per-pixel maps of (H, W, C) inputs broadcast over channels.
  img = jnp.ones((3, 3, 2))
  pred2 = lambda b: b.sum((1, 2, 3))[:, None]
  per_pixel = lambda k, v: jnp.ones(v.shape[:-1])
  assert float(metrics.infidelity(getkey(), per_pixel, pred2, img, target=0)) == \
      pytest.approx(0.0, abs=1e-10)


# ------------------------------------------------------------ completeness
def test_completeness_of_integrated_gradients(getkey):
  w = jnp.array([[1.0, -1.0], [2.0, 0.5], [-0.5, 1.0]])
  f = lambda x, t: jnp.sum(jnp.tanh(x @ w) ** 2 * jnp.array([1.0, 2.0])[t])
  predict = lambda b: jnp.stack([jax.vmap(lambda v: f(v, 0))(b),
                                 jax.vmap(lambda v: f(v, 1))(b)], axis=1)
  ig = ag.integrated_gradients(jax.grad(f), 256, baseline=0.0)
  ig_key = lambda key, x, t: ig(x, t)
  x = jnp.array([0.3, -0.7, 0.9])
  gap = metrics.completeness(getkey(), ig_key, predict, x, 1, target=1)
  assert abs(float(gap)) < 1e-3
  gxi = lambda key, x, t: jax.grad(f)(x, t) * x  # not complete for tanh^2
  gap = metrics.completeness(getkey(), gxi, predict, x, 1, target=1)
  want = float(jnp.sum(jax.grad(f)(x, 1) * x) - (f(x, 1) - f(jnp.zeros(3), 1)))
  assert float(gap) == pytest.approx(want, rel=1e-5)
  rel = metrics.completeness(getkey(), gxi, predict, x, 1, target=1, relative=True)
  assert float(rel) == pytest.approx(want / abs(float(f(x, 1) - f(jnp.zeros(3), 1))),
                                     rel=1e-5)


# ------------------------------------------------------------- complexity
def test_complexity_closed_forms_and_degenerate_maps():
  assert float(metrics.complexity(jnp.zeros(8).at[3].set(-2.0))) == 0.0
  for m in (jnp.ones(8), jnp.zeros(8), jnp.full(8, -3.0)):
    assert float(metrics.complexity(m)) == pytest.approx(np.log(8), abs=1e-6)
  a = np.random.default_rng(0).normal(size=(6, 5, 3))
  p = np.abs(a).ravel() / np.abs(a).sum()
  assert float(metrics.complexity(a)) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)
  h = metrics.complexity(jnp.asarray(a, jnp.float16))
  assert np.isfinite(float(h))
  batch = jax.vmap(metrics.complexity)(jnp.stack([jnp.ones(8), jnp.zeros(8).at[0].set(1)]))
  np.testing.assert_allclose(batch, [np.log(8), 0.0], atol=1e-6)


# ------------------------------------------------------------ random logit
def test_random_logit(getkey):
  w = jax.random.normal(getkey(), (32, 4))
  g = lambda key, x, t: w[:, t] * x
  x = jnp.ones(32)
  s = metrics.random_logit(getkey(), g, x, 2, num_classes=4, similarity="pearson")
  others = [float(jnp.corrcoef(w[:, 2] / jnp.abs(w[:, 2]).max(),
                               w[:, c] / jnp.abs(w[:, c]).max())[0, 1])
            for c in (0, 1, 3)]
  assert min(abs(float(s) - o) for o in others) < 1e-5
  # The other class is never the target: a class-blind explainer gives 1.
  blind = lambda key, x, t: x * jnp.arange(32.0)
  for k in jax.random.split(getkey(), 5):
    assert float(metrics.random_logit(k, blind, x, 0, num_classes=2)) == \
        pytest.approx(1.0, abs=1e-6)
  drawn = {int(jax.random.randint(jax.random.split(k, 3)[0], (), 0, 3))
           for k in jax.random.split(getkey(), 40)}
  assert drawn == {0, 1, 2}


# ------------------------------------------------------------------ MPRT
def _mlp():
  params = {"l1": {"w": jnp.linspace(-1, 1, 12).reshape(4, 3)},
            "l2": {"w": jnp.array([1.0, -0.5, 2.0])}}
  f = lambda x, p: jnp.tanh(x @ p["l1"]["w"]) @ p["l2"]["w"]
  return params, f


def test_efficient_and_smooth_mprt(getkey):
  params, f = _mlp()
  g = lambda key, x, p: jax.grad(f)(x, p)
  xs = jax.random.uniform(getkey(), (3, 4))
  e = metrics.efficient_mprt(getkey(), g, xs, params, num_bins=4)
  assert e.shape == (3,) and np.all(np.isfinite(e))
  blind = lambda key, x, p: x * jnp.arange(4.0)
  np.testing.assert_allclose(metrics.efficient_mprt(getkey(), blind, xs, params), 0.0)
  r = metrics.smooth_mprt(getkey(), blind, xs, params, layers=["l1", "l2"],
                          num_samples=3, noise_magnitude=0.0)
  np.testing.assert_allclose(r["l1"], 1.0, atol=1e-6)
  r = metrics.smooth_mprt(getkey(), g, xs, params, layers=["l2", "l1"],
                          num_samples=3)
  assert list(r) == ["l2", "l1"] and r["l1"].shape == (3,)
  # With targets, passed last.
  gt = lambda key, x, p, t: jax.grad(f)(x, p) * (t + 1)
  e2 = metrics.efficient_mprt(getkey(), gt, xs, params, jnp.array([0, 1, 2]))
  assert e2.shape == (3,)


def test_efficient_mprt_entropy_equals_numpy_histogram(getkey):
  from adaptgrad_jax.metrics import _randomisation
  import scipy.stats
  maps = np.random.default_rng(1).normal(size=(3, 50))
  maps[1] = 2.0  # a constant map: one bin, entropy 0
  got = _randomisation._discrete_entropy(jnp.asarray(maps), num_bins=100)
  want = [scipy.stats.entropy(np.histogram(m, bins=100)[0]) for m in maps]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------- bad input
def deterministic(x, w):
  return x * w


def test_explainer_without_key_is_refused_by_name(getkey):
  w = jnp.ones(3)
  for call in (
      lambda: metrics.max_sensitivity(getkey(), deterministic, jnp.ones(3), w),
      lambda: metrics.local_lipschitz_estimate(getkey(), deterministic, jnp.ones(3), w),
      lambda: metrics.infidelity(getkey(), deterministic, lambda b: b, jnp.ones(3), w),
      lambda: metrics.completeness(getkey(), deterministic, lambda b: b, jnp.ones(3), w),
  ):
    with pytest.raises(TypeError, match=r"explain_fn\(x, w\) cannot be called as "
                       r"explain_fn\(key, x, arg0\).*lambda key, x"):
      call()
  with pytest.raises(TypeError, match="explain_fn"):
    metrics.random_logit(getkey(), lambda x, t: x, jnp.ones(8), 0, num_classes=2)


def test_wrong_shape_and_non_finite_maps_are_refused(getkey):
  x = jnp.ones((4, 4, 3))
  wrong = lambda key, v: jnp.ones((4, 3))
  with pytest.raises(ValueError, match=r"explain_fn returned a map of shape \(4, 3\) "
                     r"for an input of shape \(4, 4, 3\)"):
    metrics.max_sensitivity(getkey(), wrong, x)
  nan = lambda key, v: v / 0.0 * 0.0
  with pytest.raises(ValueError, match="explain_fn returned a map holding NaN"):
    metrics.avg_sensitivity(getkey(), nan, x)
  with pytest.raises(ValueError, match="explain_fn returned a map holding NaN"):
    metrics.completeness(getkey(), nan, lambda b: b.reshape(len(b), -1), x)
  with pytest.raises(ValueError, match="x holds 1 non-finite"):
    metrics.max_sensitivity(getkey(), linear(1.0), jnp.ones(3).at[0].set(jnp.inf))
  with pytest.raises(TypeError, match="key must be a PRNG key"):
    metrics.max_sensitivity(0, linear(1.0), jnp.ones(3))
  with pytest.raises(ValueError, match="num_samples=0"):
    metrics.max_sensitivity(getkey(), linear(1.0), jnp.ones(3), num_samples=0)
  with pytest.raises(ValueError, match="reduce='median'"):
    metrics.sensitivity(getkey(), linear(1.0), jnp.ones(3), reduce="median")


@pytest.mark.parametrize("target", [2, 7, -1])
def test_target_out_of_range_is_refused_not_clamped(target, getkey):
  predict = lambda b: jnp.stack([b.sum(1), -b.sum(1)], axis=1)  # 2 classes
  x = jnp.ones(4)
  match = rf"target={target} is out of range: the model has 2 classes"
  with pytest.raises(ValueError, match=match):
    metrics.deletion(predict, x, x, target=target)
  with pytest.raises(ValueError, match=match):
    metrics.insertion(predict, x, x, target=target)
  with pytest.raises(ValueError, match=match):
    metrics.faithfulness_correlation(getkey(), predict, x, x, target=target,
                                     subset_size=2, num_runs=4)
  with pytest.raises(ValueError, match=match):
    metrics.infidelity(getkey(), linear(1.0), predict, x, target=target)
  with pytest.raises(ValueError, match=match):
    metrics.completeness(getkey(), linear(1.0), predict, x, target=target)
  with pytest.raises(ValueError, match=match):
    metrics.random_logit(getkey(), lambda k, v, t: v, jnp.ones(8), target,
                         num_classes=2)
  # Traced (vmap): NaN, never the score of a clamped class.
  out = jax.vmap(lambda t: metrics.deletion(predict, x, x, target=t).auc)(
      jnp.array([0, target]))
  assert np.isfinite(float(out[0])) and np.isnan(float(out[1]))


def test_sparseness_float16_and_degenerate_maps():
  a = np.random.default_rng(0).normal(size=(28, 28, 3))
  g16 = float(metrics.sparseness(jnp.asarray(a, jnp.float16)))
  g32 = float(metrics.sparseness(jnp.asarray(a, jnp.float32)))
  assert np.isfinite(g16) and g16 == pytest.approx(g32, abs=2e-3)
  for m in (jnp.zeros((28, 28), jnp.float16), jnp.full((28, 28), 3.0, jnp.float16)):
    assert float(metrics.sparseness(m)) == pytest.approx(0.0, abs=1e-6)
  one_hot = jnp.zeros(1000, jnp.float16).at[3].set(1.0)
  assert float(metrics.sparseness(one_hot)) == pytest.approx(0.999, abs=1e-3)


# ------------------------------------------------ faithfulness subsets
@pytest.mark.parametrize("n,k", [(10, 3), (784, 224), (1000, 1), (37, 37)])
def test_random_subsets_exact_size_and_uniform(n, k, getkey):
  from adaptgrad_jax.metrics import _faithfulness
  runs = 400
  m = np.asarray(jax.jit(_faithfulness.random_subsets, static_argnums=(1, 2, 3))(
      getkey(), runs, n, k))
  assert m.shape == (runs, n) and np.all(m.sum(1) == k)
  # Every item is chosen with probability k / n: binomial counts per item.
  freq = m.sum(0)
  p = k / n
  sd = np.sqrt(runs * p * (1 - p)) + 1e-9
  assert np.all(np.abs(freq - runs * p) <= 5.5 * sd)
  if 1 < k < n:
    if n >= 100:  # (C(10, 3) = 120 subsets only)
      assert len({r.tobytes() for r in m}) == runs  # distinct subsets
    # Pairs: P(i and j both chosen) = k (k - 1) / (n (n - 1)).
    both = (m[:, :n // 2].astype(float).T @ m[:, n // 2:].astype(float)).mean() / runs
    assert both == pytest.approx(k * (k - 1) / (n * (n - 1)), rel=0.1)
