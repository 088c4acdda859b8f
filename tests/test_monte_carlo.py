"""The Monte Carlo engine: one trace, chunking, bounded keys, and the checks every transform shares."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import _monte_carlo

B01 = (0.0, 1.0)


def _counting(f):
  """``f`` and a list that grows by one each time ``f``'s Python body runs (each trace)."""
  calls = []

  def counted(*args, **kwargs):
    calls.append(1)
    return f(*args, **kwargs)

  return counted, calls


def _traces(transform_of, *args):
  grad, calls = _counting(jax.grad(lambda x: jnp.sum(jnp.sin(x) * x)))
  fn = transform_of(grad)
  jax.jit(fn).lower(*args)
  return len(calls)


@pytest.mark.parametrize("batch_size", [None, 4, 7, "auto", ag.auto_batch_size("1MiB", max_batch_size=3)])
@pytest.mark.parametrize("cpu_rewrite", [True, False])
def test_grad_fn_traced_once_per_jit_trace(batch_size, cpu_rewrite):
  key, x = jax.random.key(0), jnp.full((5,), 0.5)
  smooth = lambda g: ag.adapt_smooth(g, 0.95, 20, bounds=B01, batch_size=batch_size, cpu_rewrite=cpu_rewrite)
  assert _traces(smooth, key, x) == 1
  clean = lambda g: ag.smooth_grad(g, 0.2, 20, bounds=B01, batch_size=batch_size, include_clean=True,
                                   cpu_rewrite=cpu_rewrite)
  assert _traces(clean, key, x) == 2  # the noisy samples once, the clean gradient once
  ig = lambda g: ag.integrated_gradients(g, 9, batch_size=batch_size, cpu_rewrite=cpu_rewrite)
  assert _traces(ig, x) == 1
  ng = lambda g: ag.noise_grad(lambda x, p: g(x * p), 9, batch_size=batch_size, cpu_rewrite=cpu_rewrite)
  assert _traces(ng, key, x, jnp.ones(5)) == 1


@pytest.mark.parametrize("n, batch_size", [(10, 3), (50, 16), (50, 49), (7, 1), (12, 5)])
def test_chunks_give_the_same_result_and_aux(n, batch_size):
  f = lambda x: (jnp.sum(jnp.sin(3 * x)), x[0])
  grad = jax.grad(f, has_aux=True)
  key, x = jax.random.key(1), jnp.linspace(0.1, 0.9, 6)
  full, aux_full = jax.jit(ag.adapt_smooth(grad, 0.95, n, bounds=B01, has_aux=True))(key, x)
  chunked, aux = jax.jit(ag.adapt_smooth(grad, 0.95, n, bounds=B01, has_aux=True, batch_size=batch_size))(key, x)
  np.testing.assert_allclose(chunked, full, rtol=1e-6, atol=1e-7)
  assert aux.shape == (n,)
  np.testing.assert_allclose(aux, aux_full, rtol=1e-6)  # sample j sees noise j, whatever the chunking


def test_chunk_memory_is_bounded_by_batch_size():
  f = lambda x: jnp.sum(jnp.tanh(x @ x.T))
  x = jnp.full((32, 32), 0.5)

  def temp_bytes(n, batch_size):
    fn = jax.jit(ag.smooth_grad(jax.grad(f), 0.1, n, bounds=B01, batch_size=batch_size))
    return fn.lower(jax.random.key(0), x).compile().memory_analysis().temp_size_in_bytes

  assert temp_bytes(400, 8) <= 1.2 * temp_bytes(40, 8)
  assert temp_bytes(400, 8) < 0.2 * temp_bytes(400, None)


def test_huge_n_refused_at_build_time():
  with pytest.raises(ValueError, match=r"n=1000000000 is more than"):
    ag.adapt_smooth(jax.grad(jnp.sum), 0.95, 10**9, bounds=B01, batch_size=8)
  with pytest.raises(ValueError, match=r"n=1000000000 is more than"):
    ag.noise_grad(jax.grad(lambda x, p: jnp.sum(x * p)), 10**9)


@pytest.mark.parametrize("bad, error, match", [
    (dict(n=True), TypeError, r"n=True must be an int"),
    (dict(c="0.95"), TypeError, r"c='0.95' must be a number"),
    (dict(c=True), TypeError, r"c=True must be a number"),
    (dict(has_aux=1), TypeError, r"has_aux=1 must be True or False"),
    (dict(cpu_rewrite="yes"), TypeError, r"cpu_rewrite='yes'"),
])
def test_bad_hyper_parameters_name_the_argument(bad, error, match):
  with pytest.raises(error, match=match):
    ag.adapt_smooth(jax.grad(jnp.sum), **{"bounds": B01, **bad})


def test_missing_bounds_explains_the_convention():
  for build in (lambda: ag.adapt_smooth(jax.grad(jnp.sum)), lambda: ag.smooth_grad(jax.grad(jnp.sum)),
                lambda: ag.integrated_gradients(jax.grad(jnp.sum), baseline="black"),
                lambda: ag.adaptive_sigma(jnp.ones(2), 0.95, bounds=None)):
    with pytest.raises(TypeError, match=r"needs bounds=\(x_min, x_max\).*IMAGENET_BOUNDS"):
      build()
  with pytest.raises(ValueError, match="not both"):
    ag.smooth_grad(jax.grad(jnp.sum), bounds=B01, sigma=0.1)


@pytest.mark.parametrize("sigma", [np.inf, np.nan, -1.0, "0.2", jnp.array([0.1, -0.1])])
def test_bad_absolute_sigma_refused(sigma):
  with pytest.raises((ValueError, TypeError), match="sigma="):
    ag.smooth_grad(jax.grad(jnp.sum), sigma=sigma)


def test_smooth_grad_with_sigma_built_inside_jit():
  @jax.jit
  def explain(key, x):
    return ag.smooth_grad(jax.grad(lambda x: jnp.sum(jnp.sin(x))), sigma=0.2, n=8)(key, x)

  assert explain(jax.random.key(0), jnp.ones(3)).shape == (3,)


def test_shapes_are_checked_not_broadcast():
  x = jnp.ones(4)
  wrong_grad = lambda x: jnp.ones((4, 1))
  with pytest.raises(ValueError, match=r"shape \(4, 1\).*\(4,\)"):
    ag.gradient_x_input(wrong_grad)(x)
  with pytest.raises(ValueError, match=r"shape \(4, 1\).*\(4,\)"):
    ag.integrated_gradients(wrong_grad, 4)(x)
  with pytest.raises(ValueError, match=r"sigma has shape \(4, 1\)"):
    ag.smooth_grad(jax.grad(jnp.sum), sigma=jnp.ones((4, 1)), n=4)(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"lower bound"):
    ag.adapt_smooth(jax.grad(jnp.sum), bounds=((0.0, 0.0), (1.0, 1.0)), n=4)(jax.random.key(0), x)


@pytest.mark.parametrize("n, batch_size", [(2, None), (4, 2), (6, 2)])
def test_has_aux_without_aux_is_an_error(n, batch_size):
  # A gradient of leading size 2 used to be unpacked as (gradient, aux) silently.
  smoothed = ag.smooth_grad(jax.grad(jnp.sum), 0.2, n, bounds=B01, has_aux=True, batch_size=batch_size)
  with pytest.raises(TypeError, match="has_aux=True but grad_fn returned"):
    smoothed(jax.random.key(0), jnp.ones(2))


@pytest.mark.parametrize("key", [0, np.uint32(3), jnp.zeros(3, jnp.uint32)])
def test_a_non_key_is_refused(key):
  with pytest.raises(TypeError, match="not a PRNG key"):
    ag.adapt_smooth(jax.grad(jnp.sum), bounds=B01, n=2)(key, jnp.ones(2))


# ----------------------------------------------------------------------------
# The stochastic rule: marks, never names.


def test_stochastic_rule_reads_marks_not_names():
  g = jax.grad(jnp.sum)
  assert not ag.is_stochastic(lambda key, x: x)  # a parameter named key is not a declaration
  assert ag.is_stochastic(ag.stochastic(lambda rng, x: x))  # Flax's usual name, declared
  smoothed = ag.smooth_grad(g, bounds=B01)
  assert ag.is_stochastic(smoothed) and ag.is_stochastic(jax.jit(smoothed))
  assert ag.is_stochastic(functools.partial(smoothed, extra=None))  # keywords only: the key stays first
  assert not ag.is_stochastic(ag.gradient_x_input(g))
  assert ag.is_stochastic(ag.gradient_x_input(smoothed))
  assert ag.is_stochastic(ag.integrated_gradients(smoothed, 4))
  assert ag.is_stochastic(ag.noise_grad(lambda x, p: g(x * p)))
  with pytest.raises(ValueError, match="cannot be known"):
    ag.is_stochastic(functools.partial(smoothed, jax.random.key(0)))
  with pytest.raises(TypeError, match="stochastic='yes'"):
    ag.gradient_x_input(g, stochastic="yes")


def test_declared_stochastic_function_composes():
  noisy = lambda rng, x: jax.grad(jnp.sum)(x) + 0.1 * jax.random.normal(rng, x.shape)
  gi = jax.jit(ag.gradient_x_input(noisy, stochastic=True))
  x = jnp.arange(3.0)
  out1, out2 = gi(jax.random.key(0), x), gi(jax.random.key(1), x)
  assert out1.shape == (3,) and not np.allclose(out1, out2)
  np.testing.assert_allclose(gi(jax.random.key(0), x), out1)


def test_sample_keys_are_jax_random_split():
  key = jax.random.key(5)
  for rewrite in (True, False):
    keys = jax.jit(lambda k, r=rewrite: _monte_carlo.sample_keys(k, 6, r))(key)
    np.testing.assert_array_equal(jax.random.key_data(keys), jax.random.key_data(jax.random.split(key, 6)))


@pytest.mark.parametrize("batch_size", [None, 6])
def test_stderr_one_pass_sums_do_not_cancel(batch_size):
  # A gradient of 1000 + a small noisy part: raw sums of squares in float32 would lose the spread;
  # the shifted one-pass sums must match numpy's float64 statistics of the same samples (read from aux).
  f = lambda x: jnp.sum(1000.0 * x + 0.1 * jnp.sin(5.0 * x))
  both = lambda x: (lambda g: (g, g))(jax.grad(f)(x))
  x = jnp.linspace(0.1, 0.9, 5)
  est, samples = jax.jit(ag.smooth_grad(both, n=20, sigma=0.3, has_aux=True, return_stderr=True,
                                        batch_size=batch_size))(jax.random.key(2), x)
  s = np.asarray(samples, np.float64)
  np.testing.assert_allclose(est.value, s.mean(0), rtol=1e-6)
  np.testing.assert_allclose(est.stderr, s.std(0, ddof=1) / np.sqrt(20), rtol=1e-2)


def test_composed_grad_fn_traced_once_whether_or_not_it_returns_an_estimate():
  # expected_gradients and noise_grad learn from the one trace whether the inner function returns an Estimate.
  key, x = jax.random.key(0), jnp.full((5,), 0.5)
  for stderr in (False, True):
    inner = lambda g, s=stderr: ag.smooth_grad(g, n=4, sigma=0.1, return_stderr=s)
    eg = lambda g, inner=inner: ag.expected_gradients(inner(g), 6, baselines=jnp.zeros((2, 5)))
    assert _traces(eg, key, x) == 1
    ng = lambda g, inner=inner: ag.noise_grad(inner(lambda x, p: g(x * p)), 6)
    assert _traces(ng, key, x, jnp.ones(5)) == 1


@pytest.mark.parametrize("noise, batch_size, clean", [("iid", None, False), ("antithetic", 6, True),
                                                      ("orthogonal", 8, False)])
def test_var_aggregate_does_not_cancel_at_a_large_mean(noise, batch_size, clean):
  # VarGrad of a gradient of 1000 + a small noisy part: E[g^2] - E[g]^2 in float32 loses it entirely.
  f = lambda x: jnp.sum(1000.0 * x + 0.1 * jnp.sin(5.0 * x))
  both = lambda x: (lambda g: (g, g))(jax.grad(f)(x))
  x = jnp.linspace(0.1, 0.9, 16)
  fn = ag.smooth_grad(both, n=32, sigma=0.3, has_aux=True, aggregate="var", noise=noise, batch_size=batch_size,
                      include_clean=clean)
  value, samples = jax.jit(fn)(jax.random.key(2), x)
  np.testing.assert_allclose(value, np.asarray(samples, np.float64).var(0), rtol=1e-3)


def test_sample_sums_names_a_function_that_returns_no_arrays():
  for values in (None, {}, [None]):
    with pytest.raises(ValueError, match=r"returned PyTreeDef\(.*\), which holds no arrays.*jax\.grad\(f\)"):
      _monte_carlo.sample_sums(lambda u, v=values: (v, None), jnp.arange(4), batch_size=None, names=("m1",),
                               cpu_rewrite=False)
