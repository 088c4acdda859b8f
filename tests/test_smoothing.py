"""Tests of adapt_smooth, smooth_grad and gaussian_smooth."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag

sum_sin = lambda x: jnp.sum(jnp.sin(x))
X = jnp.array([0.1, 0.3, 0.5, 0.72, 0.95])


def maybe_jit(fn, jit):
  return jax.jit(fn) if jit else fn


@pytest.fixture(params=[True, False], ids=["jit", "nojit"])
def jit(request):
  return request.param


@pytest.mark.parametrize("rule", ["two_sided", "eq13", "exact"])
def test_adapt_smooth_closed_form_sin(rule, jit, getkey):
  # The Gaussian convolution of cos is cos(x) exp(-sigma^2 / 2).
  smoothed = maybe_jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 20000, sigma_rule=rule, bounds=(0.0, 1.0)), jit)
  sigma = ag.adaptive_sigma(X, 0.95, bounds=(0.0, 1.0), rule=rule)
  expected = jnp.cos(X) * jnp.exp(-(sigma**2) / 2)
  np.testing.assert_allclose(smoothed(getkey(), X), expected, atol=4e-3)


def test_smooth_grad_closed_form_and_absolute_sigma(jit, getkey):
  smoothed = maybe_jit(ag.smooth_grad(jax.grad(sum_sin), 0.2, 20000, bounds=(-1.0, 1.0)), jit)
  expected = jnp.cos(X) * jnp.exp(-(0.4**2) / 2)
  np.testing.assert_allclose(smoothed(getkey(), X), expected, atol=5e-3)
  absolute = maybe_jit(ag.smooth_grad(jax.grad(sum_sin), n=20000, sigma=0.4), jit)
  np.testing.assert_allclose(absolute(getkey(), X), expected, atol=5e-3)


@pytest.mark.parametrize("aggregate", ["mean_sq", "var"])
def test_aggregates_closed_form(aggregate, getkey):
  sigma = 0.3
  smoothed = ag.smooth_grad(jax.grad(sum_sin), n=40000, sigma=sigma, aggregate=aggregate)
  mean_sq = (1 + jnp.cos(2 * X) * jnp.exp(-2 * sigma**2)) / 2
  mean = jnp.cos(X) * jnp.exp(-(sigma**2) / 2)
  expected = mean_sq if aggregate == "mean_sq" else mean_sq - mean**2
  np.testing.assert_allclose(smoothed(getkey(), X), expected, atol=5e-3)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 16, 50])
def test_batch_size_invariance(batch_size, getkey):
  key = getkey()
  f = lambda x: jnp.sum(jnp.tanh(3 * x) ** 2)
  def both(batch):
    mean = ag.adapt_smooth(jax.grad(f), 0.95, 50, batch_size=batch, bounds=(0.0, 1.0))
    var = ag.adapt_smooth(jax.grad(f), 0.95, 50, aggregate="var", batch_size=batch, bounds=(0.0, 1.0))
    return jax.jit(lambda k, x: (mean(k, x), var(k, x)))(key, X)

  (mean_ref, var_ref), (mean, var) = both(None), both(batch_size)
  np.testing.assert_allclose(mean, mean_ref, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(var, var_ref, rtol=1e-5, atol=1e-7)


def test_same_key_same_result_different_key_different(getkey):
  smoothed = jax.jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 8, bounds=(0.0, 1.0)))
  key = getkey()
  np.testing.assert_array_equal(smoothed(key, X), smoothed(key, X))
  assert not np.allclose(smoothed(key, X), smoothed(getkey(), X))


def test_noise_is_per_sample_key():
  # Sample j's noise is sigma * normal(split(key, n)[j]): independent of n's
  # chunking, documented, and shared with out_of_range_rate.
  key = jax.random.key(3)
  x = jnp.full((4,), 0.5)
  identity_grad = lambda v: v  # returns the noisy input itself
  sigma = ag.adaptive_sigma(x, 0.9, bounds=(0.0, 1.0))
  keys = jax.random.split(key, 5)
  noisy = jnp.stack([x + sigma * jax.random.normal(k, x.shape) for k in keys])
  out = ag.adapt_smooth(identity_grad, 0.9, 5, aggregate="mean", bounds=(0.0, 1.0))(key, x)
  np.testing.assert_allclose(out, noisy.mean(0), rtol=1e-6)


def test_vmap_over_batch_equals_loop(getkey):
  xs = jax.random.uniform(getkey(), (4, 6))
  keys = jax.random.split(getkey(), 4)
  smoothed = jax.jit(ag.adapt_smooth(jax.grad(lambda x: jnp.sum(x**3)), 0.95, 10, bounds=(0.0, 1.0)))
  batched = jax.jit(jax.vmap(smoothed))(keys, xs)
  looped = jnp.stack([smoothed(k, x) for k, x in zip(keys, xs)])
  np.testing.assert_allclose(batched, looped, rtol=1e-5)


def test_nesting_in_scan_and_vmap_of_jit(getkey):
  smoothed = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 6, batch_size=4, bounds=(0.0, 1.0))
  xs = jax.random.uniform(getkey(), (3, 5))
  keys = jax.random.split(getkey(), 3)
  scan = jax.jit(lambda ks, vs: jax.lax.scan(lambda c, kx: (c, smoothed(*kx)), None, (ks, vs))[1])
  scanned = scan(keys, xs)
  vmapped = jax.vmap(jax.jit(smoothed))(keys, xs)
  np.testing.assert_allclose(scanned, vmapped, rtol=1e-6)


@pytest.mark.parametrize("rule", ["two_sided", "exact"])
def test_grad_through_matches_finite_differences(rule):
  # Second order: the smoothed gradient is a deterministic function of x for a
  # fixed key, including sigma's dependence on x.
  key = jax.random.key(7)
  smoothed = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 16, sigma_rule=rule, bounds=(0.0, 1.0))
  with jax.enable_x64(True):
    x = X.astype(jnp.float64)
    loss = lambda v: jnp.sum(smoothed(key, v) ** 2)
    g = jax.jit(jax.grad(loss))(x)
    eps = 1e-6
    shifts = eps * jnp.eye(x.size, dtype=x.dtype)
    losses = jax.jit(jax.vmap(loss))
    fd = (losses(x + shifts) - losses(x - shifts)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64])
def test_dtypes(dtype, getkey):
  with jax.enable_x64(dtype == jnp.float64):
    x = X.astype(dtype)
    smoothed = jax.jit(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 2000, bounds=(0.0, 1.0)))
    out = smoothed(getkey(), x)
    assert out.dtype == dtype
    sigma = ag.adaptive_sigma(X, 0.95, bounds=(0.0, 1.0))
    expected = jnp.cos(X) * jnp.exp(-(sigma**2) / 2)
    tol = 3e-2 if dtype in (jnp.float16, jnp.bfloat16) else 1e-2
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=tol)


def test_pytree_argument_and_bounds(getkey):
  f = lambda p: jnp.sum(jnp.sin(p["a"])) + jnp.sum(jnp.sin(p["b"]))
  x = {"a": jnp.array([0.5, 0.2]), "b": jnp.array([3.0, 2.5])}
  bounds = ({"a": 0.0, "b": 2.0}, {"a": 1.0, "b": 4.0})
  out = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 20000, bounds=bounds))(getkey(), x)
  sigma = ag.adaptive_sigma(x, 0.95, bounds=bounds)
  for name in x:
    expected = jnp.cos(x[name]) * jnp.exp(-(sigma[name] ** 2) / 2)
    np.testing.assert_allclose(out[name], expected, atol=5e-3)


def test_per_channel_bounds_nhwc(getkey):
  x = jax.random.uniform(getkey(), (4, 4, 3))
  lo, hi = jnp.array([0.0, -1.0, 0.0]), jnp.array([1.0, 1.0, 2.0])
  smoothed = ag.adapt_smooth(jax.grad(lambda v: jnp.sum(v**2)), 0.95, 4, bounds=(lo, hi))
  out = jax.jit(smoothed)(getkey(), x)
  assert out.shape == x.shape and jnp.all(jnp.isfinite(out))


def test_sigma_zero_on_bounds_is_finite_and_clean(getkey):
  # MNIST-like: background exactly 0 and strokes exactly 1 get no noise.
  x = jnp.array([0.0, 0.0, 1.0, 0.4])
  out = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 30, bounds=(0.0, 1.0))(getkey(), x)
  assert jnp.all(jnp.isfinite(out))
  np.testing.assert_allclose(out[:3], jnp.cos(x[:3]), rtol=1e-6)
  assert not np.isclose(out[3], jnp.cos(x[3]), rtol=1e-6)


def test_out_of_bounds_elements_get_no_noise(getkey):
  x = jnp.array([-0.3, 1.7, 0.5])
  out = ag.adapt_smooth(jax.grad(sum_sin), 0.95, 30, bounds=(0.0, 1.0))(getkey(), x)
  np.testing.assert_allclose(out[:2], jnp.cos(x[:2]), rtol=1e-6)


def test_include_clean(getkey):
  key = getkey()
  f = lambda x: jnp.sum(x**3)
  noisy = ag.adapt_smooth(jax.grad(f), 0.95, 10, bounds=(0.0, 1.0))(key, X)
  with_clean = ag.adapt_smooth(jax.grad(f), 0.95, 10, include_clean=True, bounds=(0.0, 1.0))(key, X)
  np.testing.assert_allclose(with_clean, (10 * noisy + jax.grad(f)(X)) / 11, rtol=1e-5)


def test_has_aux(getkey):
  f = lambda x: (jnp.sum(x**2), jnp.max(x))
  smoothed = ag.adapt_smooth(jax.grad(f, has_aux=True), 0.95, 12, has_aux=True, batch_size=5, include_clean=True, bounds=(0.0, 1.0))
  grad, aux = jax.jit(smoothed)(getkey(), X)
  assert grad.shape == X.shape
  assert aux.shape == (13,)
  assert float(aux[-1]) == float(jnp.max(X))  # the clean sample comes last


def test_argnums_and_kwargs(getkey):
  def f(w, x, *, scale):
    return scale * jnp.sum(jnp.sin(w * x))

  g = jax.grad(f, argnums=1)
  smoothed = ag.adapt_smooth(g, 0.95, 20000, argnums=1, bounds=(0.0, 1.0))
  out = smoothed(getkey(), 2.0, X, scale=3.0)
  sigma = ag.adaptive_sigma(X, 0.95, bounds=(0.0, 1.0))
  expected = 6.0 * jnp.cos(2 * X) * jnp.exp(-((2 * sigma) ** 2) / 2)
  np.testing.assert_allclose(out, expected, atol=8e-2)  # 4 standard errors


def test_signature_and_name():
  def my_grad(x, params):
    return x

  smoothed = ag.adapt_smooth(my_grad, 0.9, 3, bounds=(0.0, 1.0))
  assert list(inspect.signature(smoothed).parameters) == ["key", "x", "params"]
  assert smoothed.__name__ == "adapt_smooth(my_grad)"
  assert not hasattr(smoothed, "__wrapped__")
  jitted = jax.jit(smoothed, static_argnames="params")
  assert jitted(jax.random.key(0), X, params=None).shape == X.shape


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(c=1.0), ValueError, r"c=1.0 is a confidence level"),
        (dict(c=-0.2), ValueError, r"c=-0.2"),
        (dict(n=0), ValueError, r"n=0 must be >= 1"),
        (dict(n=2.5), TypeError, r"n=2.5"),
        (dict(batch_size=0), ValueError, r"batch_size=0 must be >= 1"),
        (dict(bounds=(1.0, 1.0)), ValueError, r"lower < upper"),
        (dict(bounds=(jnp.zeros(3), jnp.array([1.0, 0.0, 1.0]))), ValueError, r"1 element"),
        (dict(argnums=1), ValueError, r"argnums=1 is out of range"),
        (dict(argnums=-1), ValueError, r"argnums=-1"),
        (dict(sigma_rule="wide"), ValueError, r"sigma_rule='wide'"),
        (dict(aggregate="median"), ValueError, r"aggregate='median'"),
    ],
)
def test_adapt_smooth_build_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    ag.adapt_smooth(jax.grad(sum_sin), **{"bounds": (0.0, 1.0), **kwargs})


def test_other_errors():
  with pytest.raises(TypeError, match="not callable"):
    ag.adapt_smooth("grad", bounds=(0.0, 1.0))
  with pytest.raises(ValueError, match="alpha=-1"):
    ag.smooth_grad(jax.grad(sum_sin), -1, bounds=(0.0, 1.0))
  with pytest.raises(ValueError, match="sigma=-0.1"):
    ag.smooth_grad(jax.grad(sum_sin), sigma=-0.1)
  smoothed = ag.adapt_smooth(lambda *a: a[0], 0.95, 2, bounds=(0.0, 1.0))
  with pytest.raises(TypeError, match="called with 0 such"):
    smoothed(jax.random.key(0))
  with pytest.raises(TypeError, match="floating point"):
    ag.adapt_smooth(lambda x: x, 0.95, 2, bounds=(0.0, 1.0))(jax.random.key(0), jnp.arange(3))


# Issue 26's audit: scales that overflow or vanish in the compute dtype, empty inputs, clear misuse errors.


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # alpha=1e300 as a float32 array
def test_noise_scales_are_checked_in_the_compute_dtype(getkey):
  g = jax.grad(sum_sin)
  cases = [
      (ag.smooth_grad(g, sigma=1e39, n=2), r"sigma=1e\+39 overflows float32.*at most 5\.3\de\+36"),
      (ag.smooth_grad(g, 1e300, 2, bounds=(0.0, 1.0)), r"alpha=1e\+300 \(sigma = alpha \* \(x_max - x_min\)\) overflows"),
      (ag.smooth_grad(g, sigma=1e-40, n=2), r"sigma=1e-40 vanishes in float32.*pass 0 for no noise"),
      (ag.smooth_grad(g, sigma=jnp.array([0.1, 0.1, 1e-39, 0.1, 0.1]), n=2), r"array of shape \(5,\) vanishes"),
  ]
  for fn, message in cases:
    with pytest.raises(ValueError, match=message):
      jax.jit(fn)(getkey(), X)
  # AdaptGrad's sigma is tiny next to a bound by design: no error, eager or traced (x is concrete eagerly).
  near = jnp.array([1e-39, 0.5, 1e-30], jnp.float32)
  adapt = ag.adapt_smooth(g, 0.95, 2, bounds=(0.0, 1.0))
  key = getkey()
  np.testing.assert_allclose(adapt(key, near), jax.jit(adapt)(key, near), rtol=1e-6)
  # sigma = 0 is legal (the plain gradient), and so is a scale float32 holds.
  np.testing.assert_allclose(ag.smooth_grad(g, sigma=0.0, n=2)(getkey(), X), jnp.cos(X), rtol=1e-6)
  assert np.all(np.isfinite(ag.smooth_grad(g, sigma=1e30, n=2)(getkey(), X)))
  with jax.enable_x64(True):  # 1e39 is an ordinary float64
    out = ag.smooth_grad(lambda x: jnp.ones_like(x), sigma=1e39, n=2)(getkey(), X.astype(jnp.float64))
    np.testing.assert_array_equal(out, np.ones(5))


def test_empty_input_and_gradient_without_arrays_are_named(getkey):
  with pytest.raises(ValueError, match=r"adapt_smooth: the input \(positional argument argnums=0\) is \{\}, which holds no"):
    ag.adapt_smooth(lambda x: x, 0.95, 4, bounds=(0.0, 1.0))(getkey(), {})
  for returned in (None, {}, ()):
    with pytest.raises(ValueError, match=r"gradient function returned PyTreeDef\(.*\), which holds no arrays"):
      ag.adapt_smooth(lambda x, r=returned: r, 0.95, 4, bounds=(0.0, 1.0))(getkey(), X)


def test_relative_error_of_a_plain_map_says_to_ask_for_an_estimate(getkey):
  with pytest.raises(TypeError, match=r"takes an Estimate.*not ArrayImpl of shape \(5,\).*return_stderr=True"):
    ag.relative_error(ag.adapt_smooth(jax.grad(sum_sin), 0.95, 4, bounds=(0.0, 1.0))(getkey(), X))


def test_per_channel_sigma_for_a_channels_first_input_names_the_layout(getkey):
  g = jax.grad(lambda x: jnp.sum(x ** 2))
  x = jnp.full((3, 4, 4), 0.5)  # CHW
  with pytest.raises(ValueError, match=r"sigma has shape \(3,\).*channels last.*shape \(3, 1, 1\)"):
    ag.smooth_grad(g, 0.2, 2, bounds=(jnp.zeros(3), jnp.ones(3)))(getkey(), x)
  with pytest.raises(ValueError, match=r"bounds: the lower bound has shape \(3,\).*\(3, 1, 1\)"):
    ag.adapt_smooth(g, 0.95, 2, bounds=(jnp.zeros(3), jnp.ones(3)))(getkey(), x)
  ok = ag.adapt_smooth(g, 0.95, 2, bounds=(jnp.zeros((3, 1, 1)), jnp.ones((3, 1, 1))))(getkey(), x)
  assert ok.shape == x.shape
