"""Tests of Gradient x Input, Integrated Gradients and the completeness gap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import _attribution

METHODS = (
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
    "gauss_legendre",
)


def _maybe_jit(fn, jit):
  return jax.jit(fn) if jit else fn


def smooth_f(x):
  return jnp.sum(jnp.sin(3 * x)) + 0.5 * jnp.sum(x ** 2)


def _gap(method, n, x):
  ig = ag.integrated_gradients(jax.grad(smooth_f), n, method=method)
  return jax.jit(lambda x: ag.completeness_gap(smooth_f, ig, x))(x)


# ----------------------------------------------------------------------------
# Gradient x Input.


@pytest.mark.parametrize("jit", [False, True])
def test_gradient_x_input_exact_on_linear_model(jit):
  w = jnp.array([1.5, -2.0, 0.25, 3.0])
  f = lambda x: jnp.dot(w, x) + 0.7
  gi = _maybe_jit(ag.gradient_x_input(jax.grad(f)), jit)
  x = jnp.array([0.2, -1.0, 4.0, 0.5])
  np.testing.assert_allclose(gi(x), np.asarray(w) * np.asarray(x), rtol=1e-6)
  # Completeness holds exactly for a linear model with a zero baseline.
  np.testing.assert_allclose(jnp.sum(gi(x)), f(x) - f(jnp.zeros(4)), rtol=1e-6)


def test_gradient_x_input_pytree_and_argnums():
  f = lambda a, x: jnp.sum(x["u"] * 2.0) + jnp.sum(x["v"] ** 2) * a
  x = {"u": jnp.array([1.0, 2.0]), "v": jnp.array([3.0])}
  gi = ag.gradient_x_input(jax.grad(f, argnums=1), argnums=1)
  out = gi(2.0, x)
  np.testing.assert_allclose(out["u"], [2.0, 4.0])
  np.testing.assert_allclose(out["v"], [2 * 2.0 * 3.0 * 3.0])


def test_gradient_x_input_of_stochastic_is_smoothed_gradient_times_input(getkey):
  g = jax.grad(smooth_f)
  sg = ag.smooth_grad(g, 0.2, 8, bounds=(0.0, 1.0))
  s_gi = ag.gradient_x_input(sg)
  assert ag.is_stochastic(s_gi) and not ag.is_stochastic(ag.gradient_x_input(g))
  key, x = getkey(), jnp.linspace(0.1, 0.9, 5)
  got, want = jax.jit(lambda k, x: (s_gi(k, x), sg(k, x) * x))(key, x)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_gradient_x_input_structure_mismatch():
  gi = ag.gradient_x_input(lambda x: (x, x))
  with pytest.raises(ValueError, match="tree structure"):
    gi(jnp.ones(3))


# ----------------------------------------------------------------------------
# Integrated Gradients: quadrature and completeness.


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [2, 7, 50])
def test_quadrature_weights_sum_to_one(method, n):
  alphas, weights = _attribution.quadrature(method, n)
  assert alphas.shape == weights.shape == (n,)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)
  assert np.all((alphas >= 0) & (alphas <= 1))


@pytest.mark.parametrize("method", METHODS)
def test_completeness_gap_shrinks_with_n_steps(method):
  x = jnp.linspace(0.1, 0.9, 6)
  gaps = [abs(float(_gap(method, n, x))) for n in (2, 4, 8, 16)]
  if method == "gauss_legendre":
    assert gaps[0] > 1e-3 and max(gaps[1:]) < 1e-5
  else:
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.35 * gaps[0]


def test_gauss_legendre_beats_riemann_on_smooth_f():
  x = jnp.linspace(0.1, 0.9, 6)
  gl8 = abs(float(_gap("gauss_legendre", 8, x)))
  for method in METHODS[:-1]:
    assert gl8 < abs(float(_gap(method, 64, x))) / 10, method


def test_ig_matches_closed_form():
  # f = sum(exp(x)): IG_i = exp(x_i) - exp(b_i) for any baseline b.
  f = lambda x: jnp.sum(jnp.exp(x))
  x, b = jnp.array([0.3, -0.5, 1.2]), jnp.array([0.1, 0.2, -0.4])
  ig = ag.integrated_gradients(jax.grad(f), 16, baseline=b, method="gauss_legendre")
  np.testing.assert_allclose(ig(x), jnp.exp(x) - jnp.exp(b), rtol=1e-5)


def test_ig_batch_size_invariance():
  g = jax.grad(smooth_f)
  x = jnp.linspace(0.1, 0.9, 4)
  full = jax.jit(ag.integrated_gradients(g, 10))(x)
  chunked = jax.jit(ag.integrated_gradients(g, 10, batch_size=3))(x)
  np.testing.assert_allclose(chunked, full, rtol=1e-6)


def test_named_and_callable_baselines():
  f = lambda x: jnp.sum(x ** 2)
  g = jax.grad(f)
  x = jnp.array([[0.2, 0.4, 0.9], [0.1, 0.5, 0.3]])  # 2 pixels x 3 channels
  lo, hi = jnp.array([-1.0, -2.0, -0.5]), jnp.array([1.0, 2.0, 1.5])
  ig = lambda **kw: ag.integrated_gradients(g, 8, method="gauss_legendre", **kw)(x)
  black, white, default_white, half = jax.jit(lambda: (
      ig(baseline="black", bounds=(lo, hi)),
      ig(baseline="white", bounds=(lo, hi)),
      ig(baseline="white", bounds=(0.0, 1.0)),  # white is the upper bound, 1
      ig(baseline=lambda x: x / 2),
  ))()
  # Completeness, exact for a quadratic: IG = x^2 - b^2.
  np.testing.assert_allclose(black, x ** 2 - jnp.broadcast_to(lo, x.shape) ** 2, atol=1e-5)
  np.testing.assert_allclose(white, x ** 2 - jnp.broadcast_to(hi, x.shape) ** 2, atol=1e-5)
  np.testing.assert_allclose(default_white, x ** 2 - 1, atol=1e-5)
  np.testing.assert_allclose(half, 0.75 * x ** 2, atol=1e-5)


def test_pytree_input_and_pytree_baseline():
  f = lambda x: jnp.sum(x["a"] ** 2) + jnp.sum(3.0 * x["b"])
  x = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[0.5]])}
  base = {"a": jnp.array([0.5, 0.5]), "b": jnp.zeros((1, 1))}
  ig = ag.integrated_gradients(jax.grad(f), 4, baseline=base, method="gauss_legendre")
  out = jax.jit(ig)(x)
  np.testing.assert_allclose(out["a"], [0.75, 3.75], rtol=1e-5)
  np.testing.assert_allclose(out["b"], [[1.5]], rtol=1e-5)
  gap = ag.completeness_gap(f, out, x, base)
  assert abs(float(gap)) < 1e-5


def test_ig_keeps_gradient_dtype():
  f = lambda x: jnp.sum(jnp.sin(x.astype(jnp.float32)))
  x = jnp.linspace(0.1, 0.9, 4).astype(jnp.bfloat16)
  out = ag.integrated_gradients(jax.grad(f), 8)(x)
  assert out.dtype == jnp.bfloat16


# ----------------------------------------------------------------------------
# Stochastic gradient functions: keys.


@ag.stochastic
def noise_grad_fn(key, x):
  """A 'gradient' that is pure noise: shows which key each step gets."""
  return jax.random.uniform(key, x.shape)


def test_each_step_gets_its_own_key(getkey):
  n = 7
  ig = ag.integrated_gradients(noise_grad_fn, n, method="riemann_left")
  chunked = ag.integrated_gradients(noise_grad_fn, n, method="riemann_left", batch_size=3)
  assert ag.is_stochastic(ig) and ag.is_stochastic(chunked)
  key, x = getkey(), jnp.ones(5)

  @jax.jit
  def run(key):
    # The reference: step k gets fold_in(key, k), weights 1/n, baseline 0.
    steps = jax.vmap(lambda k: noise_grad_fn(jax.random.fold_in(key, k), x))(jnp.arange(n))
    return ig(key, x), chunked(key, x), steps

  out, out_chunked, per_step = run(key)
  np.testing.assert_allclose(out, per_step.mean(0), rtol=1e-6)
  np.testing.assert_allclose(out_chunked, out, rtol=1e-6)
  # Not the same noise at every step (then the mean would equal one sample).
  assert not np.allclose(out, per_step[0])


def test_stochastic_ig_deterministic_per_key(getkey):
  ig = jax.jit(ag.integrated_gradients(noise_grad_fn, 6))
  x = jnp.linspace(0.1, 0.9, 5)
  k1, k2 = getkey(), getkey()
  np.testing.assert_array_equal(ig(k1, x), ig(k1, x))
  assert not np.allclose(ig(k1, x), ig(k2, x))


def test_stochastic_override():
  g = lambda rng, x: x * jax.random.uniform(rng)
  assert not ag.is_stochastic(g)
  ig = ag.integrated_gradients(g, 4, stochastic=True)
  assert ag.is_stochastic(ig)
  assert ig(jax.random.key(0), jnp.ones(2)).shape == (2,)
  with pytest.raises(TypeError, match="stochastic"):
    ag.integrated_gradients(g, 4, stochastic="yes")


def test_completeness_gap_needs_key_for_stochastic_fn(getkey):
  keyed_grad = ag.stochastic(lambda key, x: jax.grad(smooth_f)(x))  # takes a key, ignores it
  ig = ag.integrated_gradients(keyed_grad, 16, method="gauss_legendre")
  x = jnp.linspace(0.1, 0.9, 5)
  with pytest.raises(TypeError, match="key"):
    ag.completeness_gap(smooth_f, ig, x)
  gap = jax.jit(lambda k, x: ag.completeness_gap(smooth_f, ig, x, key=k))(getkey(), x)
  assert abs(float(gap)) < 1e-4


# ----------------------------------------------------------------------------
# Batches.


def test_bad_arguments_have_clear_errors():
  g = jax.grad(smooth_f)
  with pytest.raises(ValueError, match="method='simpson'.*gauss_legendre"):
    ag.integrated_gradients(g, method="simpson")
  with pytest.raises(ValueError, match="n_steps=0 must be >= 1"):
    ag.integrated_gradients(g, 0)
  with pytest.raises(TypeError, match="n_steps"):
    ag.integrated_gradients(g, 2.5)
  with pytest.raises(ValueError, match="riemann_trapezoid.*n_steps >= 2"):
    ag.integrated_gradients(g, 1)
  ag.integrated_gradients(g, 1, method="riemann_middle")  # fine
  with pytest.raises(ValueError, match="baseline='grey'.*'black'"):
    ag.integrated_gradients(g, baseline="grey")
  with pytest.raises(TypeError, match="baseline"):
    ag.integrated_gradients(g, baseline=object())
  with pytest.raises(ValueError, match="bounds"):
    ag.integrated_gradients(g, baseline="black", bounds=(1.0, 0.0))
  with pytest.raises(TypeError, match="not callable"):
    ag.integrated_gradients(3.0)
  with pytest.raises(ValueError, match="argnums=2 is out of range"):
    ag.integrated_gradients(g, argnums=2)
  with pytest.raises(ValueError, match="batch_size"):
    ag.integrated_gradients(g, batch_size=0)
  with pytest.raises(ValueError, match="argnums=-1"):
    ag.gradient_x_input(g, argnums=-1)


def test_baseline_of_wrong_shape():
  ig = ag.integrated_gradients(jax.grad(smooth_f), 4, baseline=jnp.zeros(3))
  with pytest.raises(ValueError, match=r"baseline has shape \(3,\).*\(5,\)"):
    ig(jnp.ones(5))
  with pytest.raises(ValueError, match=r"baseline\(x\) has shape"):
    ag.integrated_gradients(jax.grad(smooth_f), 4, baseline=lambda x: x[:2])(jnp.ones(5))


def test_missing_input_argument():
  ig = ag.integrated_gradients(ag.smooth_grad(jax.grad(smooth_f), 0.1, 2, bounds=(0.0, 1.0)), 4)
  with pytest.raises(TypeError, match="fn\\(key, x"):
    ig(jax.random.key(0))


def test_baseline_that_overflows_the_input_dtype_or_misses_its_layout_is_named():
  g = jax.grad(lambda x: jnp.sum(x ** 2))
  x = jnp.full((3, 4, 4), 0.5, jnp.float32)  # CHW
  with pytest.raises(ValueError, match=r"baseline holds values that overflow the input's float32 \(e\.g\. 1e\+39\)"):
    ag.integrated_gradients(g, 4, baseline=1e39)(x)
  with pytest.raises(ValueError, match=r"bounds: the lower bound has shape \(3,\).*channels last.*\(3, 1, 1\)"):
    ag.integrated_gradients(g, 4, baseline="black", bounds=(jnp.zeros(3), jnp.ones(3)))(x)
  # The shape the message suggests works, and equals IG from the explicit black image (closed form: x^2 - b^2).
  ig = ag.integrated_gradients(g, 4, baseline="black", bounds=(jnp.full((3, 1, 1), 0.25), jnp.ones((3, 1, 1))))(x)
  np.testing.assert_allclose(ig, jnp.full(x.shape, 0.5 ** 2 - 0.25 ** 2), rtol=1e-5)


def test_empty_input_is_named():
  for make, name in [(lambda: ag.integrated_gradients(lambda x: x, 4), "integrated_gradients"),
                     (lambda: ag.gradient_x_input(lambda x: x), "gradient_x_input")]:
    with pytest.raises(ValueError, match=rf"{name}: the input \(positional argument argnums=0\) is \{{\}}, which holds no"):
      make()({})
