"""Tests of the IG family: Expected Gradients (Captum's GradientShap), Blur IG and Guided IG (PAIR saliency), IDGI."""

import contextlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag

BOUNDS = (0.0, 1.0)


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def _model(seed=0, shape=(6, 6, 2), hidden=5):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(hidden, int(np.prod(shape))))
  v = rng.normal(size=hidden)
  f = lambda x: jnp.dot(jnp.asarray(v, x.dtype), jnp.tanh(jnp.asarray(w, x.dtype) @ x.reshape(-1)))
  return f, w, v, rng.uniform(size=shape)


@contextlib.contextmanager
def _pair_saliency():
  """PAIR saliency 0.2.1 with the two NumPy 2 names it still uses (np.trapz; quantile's interpolation=)."""
  sal = pytest.importorskip("saliency.core")
  quantile = np.quantile

  def old_quantile(a, q, *args, interpolation=None, **kwargs):
    if interpolation is not None:
      kwargs["method"] = interpolation
    return quantile(a, q, *args, **kwargs)

  with mock.patch.object(np, "trapz", np.trapezoid, create=True), mock.patch.object(np, "quantile", old_quantile):
    yield sal


def _call_model(sal, grad):
  def call_model_function(batch, call_model_args=None, expected_keys=None):
    return {sal.INPUT_OUTPUT_GRADIENTS: np.stack([np.asarray(grad(jnp.asarray(b))) for b in batch])}
  return call_model_function


# ----------------------------------------------------------------------------
# Against PAIR saliency.


@pytest.mark.parametrize("max_dist", [0.02, 0.1, 1.0])
def test_guided_ig_matches_pair(x64, max_dist):
  f, _, _, x = _model()
  grad = jax.grad(f)
  with _pair_saliency() as sal:
    ref = sal.GuidedIG().GetMask(x, _call_model(sal, grad), x_steps=16, fraction=0.25, max_dist=max_dist)
  ours = jax.jit(ag.guided_integrated_gradients(grad, 16, max_dist=max_dist))(jnp.asarray(x))
  np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("sqrt", [False, True])
def test_blur_ig_matches_pair(x64, sqrt):
  f, _, _, x = _model(1)
  grad = jax.grad(f)
  with _pair_saliency() as sal:
    ref = sal.BlurIG().GetMask(x, _call_model(sal, grad), max_sigma=3.0, steps=12, sqrt=sqrt)
  ours = jax.jit(ag.blur_integrated_gradients(grad, 12, max_sigma=3.0, sqrt=sqrt))(jnp.asarray(x))
  np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-11)


def test_gaussian_blur_matches_scipy(x64):
  ndimage = pytest.importorskip("scipy.ndimage")
  x = np.random.default_rng(2).normal(size=(7, 5, 3))
  for sigma in (0.0, 0.3, 1.7, 6.0):
    ref = ndimage.gaussian_filter(x, sigma=[sigma, sigma, 0], mode="constant")
    np.testing.assert_allclose(ag.gaussian_blur(jnp.asarray(x), sigma), ref, atol=1e-12)


# ----------------------------------------------------------------------------
# Expected Gradients against Captum's GradientShap, with the same draws fed in.


def _draws(key, j, m, shape, stdevs):
  """The documented key scheme of sample j."""
  k_base, k_alpha, k_noise, _ = jax.random.split(jax.random.fold_in(key, j), 4)
  index = int(jax.random.randint(k_base, (), 0, m))
  alpha = float(jax.random.uniform(k_alpha, (), jnp.float64))
  noise = stdevs * np.asarray(jax.random.normal(k_noise, shape, jnp.float64))
  return index, alpha, noise


@pytest.mark.parametrize("stdevs", [0.0, 0.3])
def test_expected_gradients_matches_captum_gradient_shap(x64, stdevs):
  torch = pytest.importorskip("torch")
  captum_attr = pytest.importorskip("captum.attr")
  f, w, v, _ = _model(3, shape=(4,), hidden=3)
  rng = np.random.default_rng(4)
  x, data = rng.normal(size=4), rng.normal(size=(5, 4))
  n, key = 7, jax.random.key(11)
  draws = [_draws(key, j, len(data), (4,), stdevs) for j in range(n)]

  net = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.Tanh(), torch.nn.Linear(3, 1, bias=False))
  net = net.double()
  with torch.no_grad():
    net[0].weight.copy_(torch.from_numpy(w))
    net[2].weight.copy_(torch.from_numpy(v[None]))
  noises = torch.from_numpy(np.stack([d[2] for d in draws]))
  with mock.patch("numpy.random.choice", lambda *a, **k: np.array([d[0] for d in draws])), \
       mock.patch("numpy.random.uniform", lambda *a, **k: np.array([d[1] for d in draws])), \
       mock.patch("torch.normal", lambda *a, **k: noises):
    ref = captum_attr.GradientShap(net).attribute(torch.from_numpy(x[None]), baselines=torch.from_numpy(data),
                                                  target=0, n_samples=n, stdevs=stdevs)
  ours = jax.jit(ag.expected_gradients(jax.grad(f), n, baselines=jnp.asarray(data), stdevs=stdevs))(
      key, jnp.asarray(x))
  np.testing.assert_allclose(ours, ref.numpy()[0], rtol=1e-10, atol=1e-12)


def test_expected_gradients_distribution_completeness_in_expectation():
  # For a linear f, every sample gives (x - b) * w exactly, so EG = (x - E[b]) * w.
  w = jnp.array([1.0, -2.0, 0.5])
  grad = jax.grad(lambda x: jnp.dot(w, x))
  mean = jnp.array([0.2, 0.4, 0.6])
  sample = lambda k: mean + 0.1 * jax.random.normal(k, (3,))
  x = jnp.array([1.0, 1.0, 1.0])
  eg = jax.jit(ag.expected_gradients(grad, 4000, baselines=sample, batch_size=1000))
  np.testing.assert_allclose(eg(jax.random.key(0), x), (x - mean) * w, atol=0.01)


def test_expected_gradients_batch_size_and_keys():
  f, _, _, x = _model(5, shape=(3, 3, 1))
  data = jnp.asarray(np.random.default_rng(6).uniform(size=(4, 3, 3, 1)), jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  full = ag.expected_gradients(jax.grad(f), 10, baselines=data, stdevs=0.1)
  chunked = ag.expected_gradients(jax.grad(f), 10, baselines=data, stdevs=0.1, batch_size=3)
  key = jax.random.key(1)
  np.testing.assert_allclose(jax.jit(full)(key, x), jax.jit(chunked)(key, x), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(jax.jit(full)(key, x), jax.jit(full)(key, x))
  assert not np.allclose(jax.jit(full)(key, x), jax.jit(full)(jax.random.key(2), x))


# ----------------------------------------------------------------------------
# IDGI: its defining computation, independently, and completeness.


def test_idgi_matches_independent_loop_and_is_complete(x64):
  f, _, _, x = _model(7, shape=(4, 4, 1))
  grad = jax.grad(f)
  base = np.full(x.shape, 0.2)
  n = 9
  attr = jax.jit(ag.idgi(grad, f, n, baseline=jnp.asarray(base)))(jnp.asarray(x))
  # Yang et al.'s Algorithm 1, written out: gradients and values on the Riemann path.
  points = [base + (k / n) * (x - base) for k in range(n + 1)]
  values = [float(f(jnp.asarray(p))) for p in points]
  ref = np.zeros_like(x)
  for k in range(n):
    g = np.asarray(grad(jnp.asarray(points[k])))
    ref += g ** 2 / np.sum(g ** 2) * (values[k + 1] - values[k])
  np.testing.assert_allclose(attr, ref, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(attr.sum(), f(jnp.asarray(x)) - f(jnp.asarray(base)), rtol=1e-10)
  chunked = jax.jit(ag.idgi(grad, f, n, baseline=jnp.asarray(base), batch_size=4))(jnp.asarray(x))
  np.testing.assert_allclose(chunked, attr, rtol=1e-6)  # chunk means merge with float32 counts


def test_blur_ig_batch_size_invariant():
  f, _, _, x = _model(8, shape=(5, 5, 1))
  x = jnp.asarray(x, jnp.float32)
  a = jax.jit(ag.blur_integrated_gradients(jax.grad(f), 10, max_sigma=2.0))(x)
  b = jax.jit(ag.blur_integrated_gradients(jax.grad(f), 10, max_sigma=2.0, batch_size=3))(x)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Composition with smoothing: A- and S- variants are one-liners, under jit and vmap.


def _smoothed_methods(f):
  g = jax.grad(f)
  a = ag.adapt_smooth(g, 0.95, 4, bounds=BOUNDS)
  s = ag.smooth_grad(g, 0.2, 4, bounds=BOUNDS)
  data = jnp.full((3, 4, 4, 1), 0.5)
  return {
      "A-EG": ag.expected_gradients(a, 5, baselines=data),
      "S-EG": ag.expected_gradients(s, 5, baselines=data, batch_size=2),
      "A-BlurIG": ag.blur_integrated_gradients(a, 5, max_sigma=2.0),
      "S-GuidedIG": ag.guided_integrated_gradients(s, 5),
      "A-IDGI": ag.idgi(a, f, 5),
  }


@pytest.mark.parametrize("method", ["A-EG", "S-EG", "A-BlurIG", "S-GuidedIG", "A-IDGI"])
def test_smoothed_variants_jit_vmap_same_key(method):
  f, _, _, _ = _model(9, shape=(4, 4, 1))
  fn = _smoothed_methods(f)[method]
  assert ag.is_stochastic(fn)
  xs = jnp.asarray(np.random.default_rng(10).uniform(size=(2, 4, 4, 1)), jnp.float32)
  keys = jax.random.split(jax.random.key(3), 2)
  batched = jax.jit(jax.vmap(fn))(keys, xs)
  one = jax.jit(fn)(keys[1], xs[1])
  np.testing.assert_allclose(batched[1], one, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(jax.jit(fn)(keys[1], xs[1]), one)
  assert np.all(np.isfinite(batched)) and np.any(batched != 0)
  assert not np.allclose(jax.jit(fn)(keys[0], xs[1]), one)
  if method == "A-IDGI":  # completeness holds for the smoothed directions too
    np.testing.assert_allclose(one.sum(), f(xs[1]) - f(jnp.zeros_like(xs[1])), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Bad input.


def test_bad_baselines_are_named():
  g = jax.grad(lambda x: jnp.sum(x ** 2))
  x = jnp.ones((3, 2))
  with pytest.raises(ValueError, match=r"baselines is a dataset of shape \(4, 2, 3\)"):
    jax.jit(ag.expected_gradients(g, 4, baselines=jnp.zeros((4, 2, 3))))(jax.random.key(0), x)
  with pytest.raises(ValueError, match="baselines is a distribution"):
    jax.jit(ag.expected_gradients(g, 4, baselines=lambda k: jnp.zeros((3,))))(jax.random.key(0), x)
  with pytest.raises(TypeError, match="baselines="):
    ag.expected_gradients(g, 4, baselines="black")
  with pytest.raises(TypeError, match="baselines="):
    ag.expected_gradients(g, 4, baselines=jnp.zeros((0, 3, 2)))
  with pytest.raises(ValueError, match="stdevs"):
    ag.expected_gradients(g, 4, baselines=jnp.zeros((1, 3, 2)), stdevs=-1.0)
  with pytest.raises(ValueError, match="max_sigma"):
    ag.blur_integrated_gradients(g, 4, max_sigma=0.0)
  with pytest.raises(ValueError, match="fraction"):
    ag.guided_integrated_gradients(g, 4, fraction=0.0)
  with pytest.raises(TypeError, match="bounds"):
    ag.guided_integrated_gradients(g, 4, baseline="black")
  with pytest.raises(TypeError, match="f="):
    ag.idgi(g, None, 4)
  with pytest.raises(TypeError, match="one array input"):
    ag.idgi(g, lambda x: 0.0, 4)({"a": x})


def test_scales_that_overflow_or_vanish_in_float32_are_refused(x64):
  # Validated in float64 at build time, used in the input's dtype: checked when the dtype is known (the trace).
  g = jax.grad(lambda x: jnp.sum(x ** 2))
  x = jnp.full((4, 4, 1), 0.5, jnp.float32)
  eg = ag.expected_gradients(g, 2, baselines=jnp.zeros((1, 4, 4, 1)), stdevs=1e39)
  with pytest.raises(ValueError, match=r"stdevs=1e\+39 overflows float32"):
    eg(jax.random.key(0), x)
  assert np.all(np.isfinite(jax.jit(eg)(jax.random.key(0), x.astype(jnp.float64))))  # fine in float64
  with pytest.raises(ValueError, match=r"grad_step=1e-09 is too small for float32 at max_sigma=50\.0.*grad_step >= 0\.00024"):
    ag.blur_integrated_gradients(g, 4, grad_step=1e-9)(x)
  blur64 = jax.jit(ag.blur_integrated_gradients(g, 4, grad_step=1e-9))(x.astype(jnp.float64))
  assert np.all(np.isfinite(blur64)) and np.any(blur64 != 0)
  with pytest.raises(ValueError, match=r"max_sigma=1e\+39 is more blur than this library evaluates \(10,000 pixels"):
    ag.blur_integrated_gradients(g, 4, max_sigma=1e39)
  with pytest.raises(ValueError, match=r"sigma=1000000000000\.0 is more blur"):
    ag.gaussian_blur(x, 1e12)
