"""Monte Carlo precision: standard errors, noise schemes unbiased for Eq. 5, sampling to a tolerance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax._attribution import quadrature

B01 = (0.0, 1.0)
SCHEMES = ("iid", "antithetic", "orthogonal", "lhs")
X = jnp.linspace(0.05, 0.95, 16)
sum_sin = lambda x: jnp.sum(jnp.sin(3.0 * x))


def _truth(x, sigma):
  """The Gaussian convolution of grad sum(sin(3x)) = 3 cos(3x): 3 cos(3x) exp(-9 sigma^2 / 2)."""
  return 3.0 * jnp.cos(3.0 * x) * jnp.exp(-4.5 * sigma**2)


def _over_keys(fn, count, x=X):
  keys = jax.random.split(jax.random.key(123), count)
  return jax.jit(jax.vmap(fn, in_axes=(0, None)))(keys, x)


@pytest.mark.parametrize("noise", SCHEMES)
def test_schemes_unbiased_for_the_gaussian_convolution(noise):
  # AdaptGrad's per-element sigma: the closed form holds element by element.
  sigma = ag.adaptive_sigma(X, 0.95, bounds=B01)
  est = _over_keys(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 16, bounds=B01, noise=noise, return_stderr=True), 400)
  mean = est.value.mean(0)
  # The mean over 400 keys has standard error stderr / 20.
  tolerance = 4 * est.stderr.mean(0) / np.sqrt(400) + 1e-6
  assert np.all(np.abs(mean - _truth(X, sigma)) <= tolerance), noise


@pytest.mark.parametrize("noise", SCHEMES)
@pytest.mark.parametrize("aggregate", ["mean", "mean_sq", "var"])
def test_stderr_is_calibrated(noise, aggregate):
  # The spread of the estimate over keys matches the reported standard error within 15%.
  fn = ag.smooth_grad(jax.grad(sum_sin), n=32, sigma=0.4, noise=noise, aggregate=aggregate, return_stderr=True)
  est = _over_keys(fn, 600)
  spread = np.asarray(est.value).std(0, ddof=1)
  reported = np.sqrt(np.mean(np.square(np.asarray(est.stderr)), 0))
  ratio = np.median(spread / reported)
  assert 0.85 <= ratio <= 1.15, (noise, aggregate, ratio)


def test_antithetic_is_exact_for_a_linear_gradient():
  a = jnp.linspace(-2.0, 2.0, 16)
  quadratic = lambda x: 0.5 * jnp.sum(a * x * x)  # gradient a x: odd in the noise
  key = jax.random.key(0)
  iid = jax.jit(ag.smooth_grad(jax.grad(quadratic), n=16, sigma=0.3, return_stderr=True))(key, X)
  anti = jax.jit(ag.smooth_grad(jax.grad(quadratic), n=16, sigma=0.3, noise="antithetic", return_stderr=True))(key, X)
  np.testing.assert_allclose(anti.value, a * X, atol=1e-6)
  assert float(jnp.max(anti.stderr)) < 1e-6
  # i.i.d.: Var = a^2 sigma^2 / n, so stderr ~ |a| 0.3 / 4.
  np.testing.assert_allclose(np.median(iid.stderr / (jnp.abs(a) * 0.3 / 4)), 1.0, atol=0.35)


def test_lhs_stderr_for_a_linear_gradient_matches_the_within_stratum_variance():
  # For g = a x, the mean of a replicate of m stratified normals has variance (a sigma)^2 W / m, where
  # W = mean over the m equiprobable strata of Var(Z | stratum) (i.i.d.: W = 1).
  from scipy.stats import norm  # pylint: disable=import-outside-toplevel
  m = 8
  edges = norm.ppf(np.linspace(0.0, 1.0, m + 1))
  finite = np.isfinite(edges)
  pdf, edges_pdf = np.zeros(m + 1), np.zeros(m + 1)  # phi(z) and z phi(z) vanish at +-inf
  pdf[finite] = norm.pdf(edges[finite])
  edges_pdf[finite] = edges[finite] * pdf[finite]
  mean = m * (pdf[:-1] - pdf[1:])
  second = 1 + m * (edges_pdf[:-1] - edges_pdf[1:])
  within = float(np.mean(second - mean**2))  # about 0.05: 20x less variance than i.i.d.
  a = jnp.linspace(-2.0, 2.0, 16)
  quadratic = lambda x: 0.5 * jnp.sum(a * x * x)
  est = jax.jit(ag.smooth_grad(jax.grad(quadratic), n=128, sigma=0.3, noise="lhs", return_stderr=True))(
      jax.random.key(0), X)
  np.testing.assert_allclose(est.value, a * X, atol=4 * float(jnp.max(est.stderr)) + 1e-6)
  expected = jnp.abs(a) * 0.3 * np.sqrt(within / 128)
  np.testing.assert_allclose(np.median(est.stderr / expected), 1.0, atol=0.3)


def test_lhs_replicate_is_stratified_with_gaussian_marginals():
  from scipy.stats import norm  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import _noise  # pylint: disable=import-outside-toplevel
  z = np.asarray(jax.jit(jax.vmap(lambda k: _noise.unit_noise(k, jnp.zeros(64), 1.0, "lhs")))(
      jax.random.split(jax.random.key(0), 500)), np.float64)  # (500, 8, 64)
  strata = np.sort(np.floor(norm.cdf(z) * 8), axis=1)
  np.testing.assert_array_equal(strata, np.broadcast_to(np.arange(8.0)[None, :, None], strata.shape))
  flat = z.reshape(-1)
  assert np.all(np.isfinite(flat)) and abs(flat.mean()) < 0.01 and abs(flat.std() - 1.0) < 0.01
  # The fourth moment of N(0, 1) is 3; the tails are not truncated.
  assert abs(np.mean(flat**4) - 3.0) < 0.1


@pytest.mark.parametrize("noise", SCHEMES)
def test_schemes_keep_batch_size_invariance_and_key_determinism(noise):
  build = lambda b: jax.jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 32, bounds=B01, noise=noise,
                                            batch_size=b, return_stderr=True))
  key = jax.random.key(3)
  full_fn = build(None)
  full, chunked = full_fn(key, X), build(8)(key, X)
  np.testing.assert_allclose(chunked.value, full.value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(chunked.stderr, full.stderr, rtol=1e-3, atol=1e-6)
  np.testing.assert_array_equal(build(None)(key, X).value, full.value)  # a new build: no hidden state
  assert not np.allclose(full_fn(jax.random.key(4), X).value, full.value)


@pytest.mark.parametrize("noise", SCHEMES)
def test_schemes_compose_with_grad(noise):
  smoothed = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 16, bounds=B01, noise=noise)
  loss = lambda x: jnp.sum(smoothed(jax.random.key(0), x) ** 2)
  g = jax.jit(jax.grad(loss))(X)
  assert g.shape == X.shape and np.all(np.isfinite(g))


def test_iid_default_is_unchanged_and_stderr_adds_nothing_to_the_map():
  key = jax.random.key(0)
  plain = jax.jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 20, bounds=B01))(key, X)
  est = jax.jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 20, bounds=B01, return_stderr=True))(key, X)
  np.testing.assert_allclose(est.value, plain, rtol=1e-6, atol=1e-7)
  assert int(est.num_samples) == 20
  # Sample j is drawn from split(key, n)[j], as before.
  keys = jax.random.split(key, 20)
  sigma = ag.adaptive_sigma(X, 0.95, bounds=B01)
  manual = jnp.mean(jax.jit(jax.vmap(lambda k: jax.grad(sum_sin)(X + sigma * jax.random.normal(k, X.shape))))(keys), 0)
  np.testing.assert_allclose(plain, manual, rtol=1e-5, atol=1e-6)


def test_include_clean_scales_the_stderr():
  key = jax.random.key(0)
  fn = lambda clean: ag.smooth_grad(jax.grad(sum_sin), n=20, sigma=0.3, include_clean=clean, return_stderr=True)
  without, with_clean = jax.jit(fn(False))(key, X), jax.jit(fn(True))(key, X)
  np.testing.assert_allclose(with_clean.stderr, without.stderr * 20 / 21, rtol=1e-5)
  np.testing.assert_allclose(with_clean.value, (20 * without.value + jax.grad(sum_sin)(X)) / 21, rtol=1e-5, atol=1e-6)
  assert int(with_clean.num_samples) == 21


def test_rtol_stops_when_precise_enough_and_not_later():
  chunk = 16
  fn = jax.jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 4096, bounds=B01, rtol=0.02, batch_size=chunk))
  key = jax.random.key(5)
  est = fn(key, X)
  used = int(est.num_samples)
  assert chunk * 2 <= used < 4096 and used % chunk == 0
  assert float(ag.relative_error(est)) <= 0.02
  # One chunk fewer was not precise enough: the rule costs at most the chunk it stopped on.
  fewer = jax.jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, used - chunk, bounds=B01, return_stderr=True))(key, X)
  assert used - chunk < 2 * chunk or float(ag.relative_error(fewer)) > 0.02
  np.testing.assert_allclose(
      est.value, jax.jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, used, bounds=B01))(key, X), rtol=1e-5, atol=1e-6)


def test_rtol_under_vmap_each_example_stops_on_its_own():
  fn = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 2048, bounds=B01, rtol=0.02, batch_size=16)
  xs = jnp.stack([X, jnp.full(16, 0.01), jnp.full(16, 0.5)])
  keys = jax.random.split(jax.random.key(9), 3)
  batched = jax.jit(jax.vmap(fn))(keys, xs)
  for i in range(3):
    single = jax.jit(fn)(keys[i], xs[i])
    assert int(batched.num_samples[i]) == int(single.num_samples)
    np.testing.assert_allclose(batched.value[i], single.value, rtol=1e-6, atol=1e-7)
  assert len(set(np.asarray(batched.num_samples).tolist())) > 1


def test_noise_grad_stderr():
  f = lambda x, p: jnp.sum(jnp.sin(p * x))
  ng = ag.noise_grad(jax.grad(f), 64, sigma=0.3, return_stderr=True)
  est = jax.jit(ng)(jax.random.key(0), X, jnp.ones(16))
  assert est.stderr.shape == X.shape and np.all(est.stderr > 0) and int(est.num_samples) == 64


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rtol=0.0, batch_size=8), ValueError, r"rtol=0.0 is a relative standard error"),
    (dict(rtol=1.5, batch_size=8), ValueError, r"rtol=1.5"),
    (dict(rtol=0.05), ValueError, r"needs an int batch_size"),
    (dict(rtol=0.05, batch_size="auto"), ValueError, r"needs an int batch_size"),
    (dict(noise="sobol"), ValueError, r"noise='sobol' is not supported"),
    (dict(noise="antithetic", n=25), ValueError, r"n=25 is not a multiple of 2.*n=26"),
    (dict(noise="orthogonal", n=20), ValueError, r"n=20 is not a multiple of 8"),
    (dict(noise="antithetic", rtol=0.05, batch_size=7), ValueError, r"batch_size=7 must be a multiple of 2"),
    (dict(rtol=0.05, batch_size=8, has_aux=True), ValueError, r"has_aux=False"),
    (dict(return_stderr="yes"), TypeError, r"return_stderr='yes'"),
])
def test_bad_precision_options_refused_at_build_time(kwargs, error, match):
  with pytest.raises(error, match=match):
    ag.adapt_smooth(jax.grad(sum_sin), **{"bounds": B01, **kwargs})


def test_orthogonal_needs_enough_elements():
  fn = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 16, bounds=B01, noise="orthogonal")
  with pytest.raises(ValueError, match="only 3 element"):
    fn(jax.random.key(0), jnp.full(3, 0.5))


def test_orthogonal_block_is_orthogonal_with_gaussian_marginals():
  from adaptgrad_jax import _noise  # pylint: disable=import-outside-toplevel
  z = jax.vmap(lambda k: _noise.unit_noise(k, jnp.zeros(64), 1.0, "orthogonal"))(
      jax.random.split(jax.random.key(0), 500))  # (500, 8, 64)
  gram = jnp.einsum("bid,bjd->bij", z, z)
  off = gram * (1 - jnp.eye(8))
  assert float(jnp.max(jnp.abs(off))) < 1e-3
  flat = np.asarray(z).reshape(-1)
  assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1.0) < 0.01
  norms = np.sqrt(np.asarray(jnp.diagonal(gram, axis1=1, axis2=2))).reshape(-1)
  assert abs(np.mean(norms**2) - 64) < 1.0  # chi^2 with 64 degrees of freedom


# ----------------------------------------------------------------------------
# Standard errors through the transforms that compose the stochastic ones.


def _calibration(fn, *extra, count=400, x=X):
  """Median over elements of (spread of the value over keys) / (RMS reported stderr), and the estimates."""
  keys = jax.random.split(jax.random.key(77), count)
  est = jax.jit(jax.vmap(fn, in_axes=(0, None) + (None,) * len(extra)))(keys, x, *extra)
  spread = np.asarray(est.value).std(0, ddof=1)
  reported = np.sqrt(np.mean(np.square(np.asarray(est.stderr)), 0))
  live = reported > 0  # an element with no noise (x = 0 in Gradient x Input) has neither spread nor stderr
  return float(np.median(spread[live] / reported[live])), est


@pytest.mark.parametrize("noise, aggregate, batch_size, method", [
    ("iid", "mean", None, "riemann_trapezoid"),
    ("antithetic", "mean", 3, "gauss_legendre"),
    ("orthogonal", "var", None, "riemann_middle"),
    ("lhs", "mean_sq", 2, "riemann_left"),
])
def test_integrated_gradients_stderr_is_calibrated(noise, aggregate, batch_size, method):
  # A-IG: the quadrature is deterministic, each point's smoothed gradient an independent estimate.
  inner = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 16, bounds=B01, noise=noise, aggregate=aggregate,
                          batch_size=8, return_stderr=True)
  a_ig = ag.integrated_gradients(inner, 4, baseline="black", bounds=B01, method=method, batch_size=batch_size)
  ratio, est = _calibration(a_ig)
  assert 0.85 <= ratio <= 1.15, ratio
  assert int(est.num_samples[0]) == 4 * 16


def test_integrated_gradients_stderr_is_the_weighted_sum_of_the_points_variances():
  key, x = jax.random.key(4), X
  inner = ag.smooth_grad(jax.grad(sum_sin), n=8, sigma=0.3, return_stderr=True)
  base = jnp.full_like(x, 0.5)  # x == baseline at no element; the element at 0.5 below gets 0
  x = x.at[3].set(0.5)
  alphas, weights = quadrature("gauss_legendre", 5)
  jitted = jax.jit(inner)
  points = [jitted(jax.random.fold_in(key, k), base + a * (x - base)) for k, a in enumerate(alphas)]
  value = (x - base) * sum(w * p.value for w, p in zip(weights, points))
  stderr = jnp.abs(x - base) * jnp.sqrt(sum(w**2 * p.stderr**2 for w, p in zip(weights, points)))
  for batch_size in (None, 2):
    est = jax.jit(ag.integrated_gradients(inner, 5, baseline=base, method="gauss_legendre",
                                          batch_size=batch_size))(key, x)
    np.testing.assert_allclose(est.value, value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.stderr, stderr, rtol=1e-5, atol=1e-7)
    assert float(est.stderr[3]) == 0.0 and int(est.num_samples) == 40
  plain = jax.jit(ag.integrated_gradients(ag.smooth_grad(jax.grad(sum_sin), n=8, sigma=0.3), 5, baseline=base,
                                          method="gauss_legendre", batch_size=2))(key, x)
  np.testing.assert_allclose(est.value, plain, rtol=1e-6, atol=1e-7)  # the map is unchanged
  dropped = ag.integrated_gradients(inner, 5, baseline=base, method="gauss_legendre", return_stderr=False)
  assert isinstance(jax.eval_shape(dropped, key, x), jax.ShapeDtypeStruct)


def test_integrated_gradients_stderr_of_too_few_units_is_inf_not_nan():
  inner = ag.smooth_grad(jax.grad(sum_sin), n=1, sigma=0.3, return_stderr=True)
  x = X.at[0].set(0.0)
  est = ag.integrated_gradients(inner, 4, batch_size=2)(jax.random.key(0), x)
  assert float(est.stderr[0]) == 0.0 and np.all(np.isinf(est.stderr[1:]))


def test_gradient_x_input_scales_the_stderr_by_the_input():
  key = jax.random.key(1)
  inner = ag.smooth_grad(jax.grad(sum_sin), n=16, sigma=0.3, return_stderr=True)
  x = (X - 0.5).at[2].set(0.0)
  est, ref = ag.gradient_x_input(inner)(key, x), inner(key, x)
  np.testing.assert_allclose(est.value, ref.value * x, rtol=1e-6)
  np.testing.assert_allclose(est.stderr, ref.stderr * jnp.abs(x), rtol=1e-6)
  assert float(est.stderr[2]) == 0.0 and int(est.num_samples) == 16
  ratio, _ = _calibration(ag.gradient_x_input(inner), x=x)
  assert 0.85 <= ratio <= 1.15, ratio


@pytest.mark.parametrize("inner_stochastic", [False, True])
def test_expected_gradients_stderr_from_its_own_samples(inner_stochastic):
  data = jax.random.uniform(jax.random.key(5), (10, 16))
  grad = jax.grad(sum_sin)
  inner = ag.smooth_grad(grad, n=4, sigma=0.3, return_stderr=True) if inner_stochastic else grad
  eg = ag.expected_gradients(inner, 32, baselines=data, return_stderr=True if not inner_stochastic else None)
  ratio, est = _calibration(eg)
  assert 0.85 <= ratio <= 1.15, ratio
  assert int(est.num_samples[0]) == (32 * 4 if inner_stochastic else 32)
  plain = ag.expected_gradients(ag.smooth_grad(grad, n=4, sigma=0.3) if inner_stochastic else grad, 32,
                                baselines=data, batch_size=8)
  key = jax.random.key(0)
  np.testing.assert_allclose(jax.jit(eg)(key, X).value, jax.jit(plain)(key, X), rtol=1e-5, atol=1e-6)


def test_blur_integrated_gradients_stderr_is_calibrated():
  x = jax.random.uniform(jax.random.key(3), (6, 6, 1))
  inner = ag.smooth_grad(jax.grad(sum_sin), n=8, sigma=0.3, return_stderr=True)
  ratio, est = _calibration(ag.blur_integrated_gradients(inner, 6, max_sigma=2.0, batch_size=4), x=x)
  assert 0.85 <= ratio <= 1.15, ratio
  assert est.value.shape == (400,) + x.shape and int(est.num_samples[0]) == 48


def test_nested_noise_grad_stderr_is_calibrated():
  # S-NG: the outer units (parameter samples, each with its own inner noise) carry both sources of noise.
  f = lambda x, p: jnp.sum(jnp.sin(3.0 * p * x))
  inner = ag.smooth_grad(jax.grad(f), n=4, sigma=0.2, return_stderr=True)
  ratio, est = _calibration(ag.noise_grad(inner, 32, sigma=0.3, batch_size=8), jnp.ones(16))
  assert 0.85 <= ratio <= 1.15, ratio
  assert int(est.num_samples[0]) == 32 * 4


def test_stderr_options_refused_where_there_is_no_error():
  g = jax.grad(sum_sin)
  with pytest.raises(ValueError, match="return_stderr=True needs a stochastic grad_fn"):
    ag.integrated_gradients(g, 4, return_stderr=True)
  with pytest.raises(ValueError, match="return_stderr=True needs a stochastic grad_fn"):
    ag.gradient_x_input(g, return_stderr=True)
  with pytest.raises(TypeError, match="return_stderr='yes'"):
    ag.integrated_gradients(g, 4, return_stderr="yes")
  plain_inner = ag.smooth_grad(g, n=4, sigma=0.3)
  with pytest.raises(TypeError, match="grad_fn returned a plain gradient"):
    ag.integrated_gradients(plain_inner, 4, return_stderr=True)(jax.random.key(0), X)
  with pytest.raises(TypeError, match="not linear in the gradient"):
    ag.idgi(ag.smooth_grad(g, n=4, sigma=0.3, return_stderr=True), sum_sin, 4)(jax.random.key(0), X)


def test_lhs_endpoint_uniform_gives_finite_noise(monkeypatch):
  # jax.random.uniform returns exactly 0 once in 2**23 draws (float32); ndtri(0) is -inf. Force it everywhere.
  from adaptgrad_jax import _noise
  monkeypatch.setattr(_noise.jax.random, "uniform", lambda key, shape, dtype=jnp.float32, **kw: jnp.zeros(shape, dtype))
  z = _noise._latin_hypercube_normals(jax.random.key(0), 8, 5, jnp.float32)
  assert bool(jnp.all(jnp.isfinite(z)))
  eps = float(jnp.finfo(jnp.float32).eps)
  expected = float(jax.scipy.special.ndtri(jnp.float32(eps / 2 / 8)))  # the lowest stratum's lowest point
  np.testing.assert_allclose(float(z.min()), expected, rtol=1e-5)
