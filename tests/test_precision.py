"""Monte Carlo precision: standard errors, noise schemes unbiased for Eq. 5, sampling to a tolerance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag

B01 = (0.0, 1.0)
SCHEMES = ("iid", "antithetic", "orthogonal")
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
  iid = ag.smooth_grad(jax.grad(quadratic), n=16, sigma=0.3, return_stderr=True)(key, X)
  anti = ag.smooth_grad(jax.grad(quadratic), n=16, sigma=0.3, noise="antithetic", return_stderr=True)(key, X)
  np.testing.assert_allclose(anti.value, a * X, atol=1e-6)
  assert float(jnp.max(anti.stderr)) < 1e-6
  # i.i.d.: Var = a^2 sigma^2 / n, so stderr ~ |a| 0.3 / 4.
  np.testing.assert_allclose(np.median(iid.stderr / (jnp.abs(a) * 0.3 / 4)), 1.0, atol=0.35)


@pytest.mark.parametrize("noise", SCHEMES)
def test_schemes_keep_batch_size_invariance_and_key_determinism(noise):
  build = lambda b: jax.jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 32, bounds=B01, noise=noise,
                                            batch_size=b, return_stderr=True))
  key = jax.random.key(3)
  full, chunked = build(None)(key, X), build(8)(key, X)
  np.testing.assert_allclose(chunked.value, full.value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(chunked.stderr, full.stderr, rtol=1e-3, atol=1e-6)
  np.testing.assert_array_equal(build(None)(key, X).value, full.value)
  assert not np.allclose(build(None)(jax.random.key(4), X).value, full.value)


@pytest.mark.parametrize("noise", SCHEMES)
def test_schemes_compose_with_grad(noise):
  smoothed = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 16, bounds=B01, noise=noise)
  loss = lambda x: jnp.sum(smoothed(jax.random.key(0), x) ** 2)
  g = jax.jit(jax.grad(loss))(X)
  assert g.shape == X.shape and np.all(np.isfinite(g))


def test_iid_default_is_unchanged_and_stderr_adds_nothing_to_the_map():
  key = jax.random.key(0)
  plain = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 20, bounds=B01)(key, X)
  est = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 20, bounds=B01, return_stderr=True)(key, X)
  np.testing.assert_allclose(est.value, plain, rtol=1e-6, atol=1e-7)
  assert int(est.num_samples) == 20
  # Sample j is drawn from split(key, n)[j], as before.
  keys = jax.random.split(key, 20)
  sigma = ag.adaptive_sigma(X, 0.95, bounds=B01)
  manual = jnp.mean(jax.vmap(lambda k: jax.grad(sum_sin)(X + sigma * jax.random.normal(k, X.shape)))(keys), 0)
  np.testing.assert_allclose(plain, manual, rtol=1e-5, atol=1e-6)


def test_include_clean_scales_the_stderr():
  key = jax.random.key(0)
  fn = lambda clean: ag.smooth_grad(jax.grad(sum_sin), n=20, sigma=0.3, include_clean=clean, return_stderr=True)
  without, with_clean = fn(False)(key, X), fn(True)(key, X)
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
  fewer = ag.adapt_smooth(jax.grad(sum_sin), 0.95, used - chunk, bounds=B01, return_stderr=True)(key, X)
  assert used - chunk < 2 * chunk or float(ag.relative_error(fewer)) > 0.02
  np.testing.assert_allclose(
      est.value, ag.adapt_smooth(jax.grad(sum_sin), 0.95, used, bounds=B01)(key, X), rtol=1e-5, atol=1e-6)


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
