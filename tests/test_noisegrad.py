"""Tests of NoiseGrad (parameter noise) and FusionGrad (parameter and input noise)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag


def model(x, params):
  h = jnp.tanh(params["dense"]["w"] @ x + params["dense"]["b"])
  return jnp.dot(params["head"]["w"], h)


def make_params(key):
  k1, k2 = jax.random.split(key)
  return {
      "dense": {"w": jax.random.normal(k1, (4, 3)), "b": jnp.full((4,), 0.1)},
      "head": {"w": jax.random.normal(k2, (4,))},
  }


def returns_params(x, params):
  """A 'gradient function' returning its (noisy) parameters."""
  return params


X = jnp.array([0.3, -0.2, 0.8])


def test_sigma_zero_is_plain_gradient(getkey):
  params = make_params(getkey())
  g = jax.grad(model)
  ng = jax.jit(ag.noise_grad(g, 5, sigma=0.0))
  np.testing.assert_allclose(ng(getkey(), X, params), g(X, params), rtol=1e-6)


def test_multiplicative_noise_statistics(getkey):
  params = make_params(getkey())
  n, sigma = 4000, 0.3
  var = jax.jit(ag.noise_grad(returns_params, n, sigma=sigma, aggregate="var"))(
      getkey(), X, params)
  for v, p in zip(jax.tree.leaves(var), jax.tree.leaves(params)):
    # theta * eta with eta ~ N(1, sigma^2) has variance sigma^2 theta^2.
    np.testing.assert_allclose(v, sigma ** 2 * np.asarray(p) ** 2, rtol=0.15, atol=1e-7)


@pytest.mark.parametrize(
    "mask",
    [
        {"dense": True, "head": False},                       # prefix tree
        {"dense": {"w": True, "b": True}, "head": {"w": False}},  # full tree
        lambda path: path[0] != "head",                       # predicate
    ],
)
def test_mask_leaves_masked_parameters_alone(getkey, mask):
  params = make_params(getkey())
  noisy = jax.jit(ag.noise_grad(returns_params, 1, sigma=0.5, mask=mask))(getkey(), X, params)
  np.testing.assert_array_equal(noisy["head"]["w"], params["head"]["w"])
  assert not np.allclose(noisy["dense"]["w"], params["dense"]["w"])
  assert not np.allclose(noisy["dense"]["b"], params["dense"]["b"])


def test_mask_on_nnx_state_paths(getkey):
  nnx = pytest.importorskip("flax.nnx")
  layer = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  _, state = nnx.split(layer, nnx.Param)
  seen = []

  def only_kernel(path):
    seen.append(path)
    return path[0] == "kernel"

  noisy = jax.jit(ag.noise_grad(returns_params, 1, mask=only_kernel))(getkey(), X, state)
  assert ("kernel", "value") in seen and ("bias", "value") in seen
  np.testing.assert_array_equal(noisy["bias"][...], state["bias"][...])
  assert not np.allclose(noisy["kernel"][...], state["kernel"][...])
  # A nested-dict mask fits the state too.
  noisy = jax.jit(ag.noise_grad(returns_params, 1, mask={"kernel": False, "bias": True}))(
      getkey(), X, state)
  np.testing.assert_array_equal(noisy["kernel"][...], state["kernel"][...])


def test_mask_mismatch_names_paths(getkey):
  params = make_params(getkey())
  ng = ag.noise_grad(returns_params, 2, mask={"dense": True, "classifier": False})
  with pytest.raises(ValueError, match=r"no mask entry: head/w.*matching no parameter: classifier"):
    ng(getkey(), X, params)
  ng = ag.noise_grad(returns_params, 2, mask=lambda path: "yes")
  with pytest.raises(TypeError, match="must return a Python bool"):
    ng(getkey(), X, params)
  with pytest.raises(TypeError, match="mask="):
    ag.noise_grad(returns_params, 2, mask={"dense": 1.0})


def test_integer_leaves_are_not_perturbed(getkey):
  params = {"w": jnp.ones(3), "step": jnp.array(7)}
  fn = lambda x, p: {"w": p["w"], "step": p["step"].astype(jnp.float32)}
  out = jax.jit(ag.noise_grad(fn, 3))(getkey(), X, params)
  assert out["step"] == 7 and not np.allclose(out["w"], 1.0)
  with pytest.raises(TypeError, match="step.*set its mask entry to False"):
    ag.noise_grad(fn, 3, mask={"w": True, "step": True})(getkey(), X, params)


def test_batch_size_invariance_and_determinism(getkey):
  params = make_params(getkey())
  g = jax.grad(model)
  key = getkey()
  full = jax.jit(ag.noise_grad(g, 7))
  chunked = jax.jit(ag.noise_grad(g, 7, batch_size=3))
  np.testing.assert_allclose(chunked(key, X, params), full(key, X, params), rtol=1e-5)
  np.testing.assert_array_equal(full(key, X, params), full(key, X, params))
  assert not np.allclose(full(key, X, params), full(getkey(), X, params))


def test_stochastic_grad_fn_gets_fresh_key_per_parameter_sample(getkey):
  # Inner noise only (sigma = 0): if every parameter sample reused one inner
  # key, all samples would agree and their variance would be 0.
  inner = ag.stochastic(lambda key, x, params: jax.random.uniform(key, x.shape))
  ng = ag.noise_grad(inner, 16, sigma=0.0, aggregate="var")
  assert ag.is_stochastic(ng)
  var = jax.jit(ng)(getkey(), X, make_params(getkey()))
  assert np.all(np.asarray(var) > 0.02)  # uniform variance is 1/12


def test_bad_arguments():
  g = jax.grad(model)
  with pytest.raises(ValueError, match="sigma=-0.1 must be a finite number >= 0"):
    ag.noise_grad(g, sigma=-0.1)
  with pytest.raises(ValueError, match="n=0 must be >= 1"):
    ag.noise_grad(g, 0)
  with pytest.raises(ValueError, match="argnums=2 is out of range"):
    ag.noise_grad(g, argnums=2)
  with pytest.raises(ValueError, match="aggregate"):
    ag.noise_grad(g, aggregate="max")
  with pytest.raises(TypeError, match="sigma='0.2' must be a number"):
    ag.noise_grad(g, sigma="0.2")
  with pytest.raises(TypeError, match="called with 1"):
    ag.noise_grad(g)(jax.random.key(0), X)


def test_sigma_that_overflows_or_vanishes_in_float32_is_refused():
  params = make_params(jax.random.key(0))
  x = jnp.array([0.2, -0.1, 0.4])
  grad_fn = jax.grad(model)
  with pytest.raises(ValueError, match=r"sigma=1e\+39 overflows float32.*NoiseGrad's default is 0\.2"):
    ag.noise_grad(grad_fn, 2, sigma=1e39, argnums=1)(jax.random.key(0), x, params)
  with pytest.raises(ValueError, match=r"sigma=1e-40 vanishes in float32"):
    jax.jit(ag.noise_grad(grad_fn, 2, sigma=1e-40, argnums=1))(jax.random.key(0), x, params)
  with pytest.raises(ValueError, match=r"gradient function returned PyTreeDef\(None\)"):
    ag.noise_grad(lambda x, p: None, 2)(jax.random.key(0), x, params)
  # Nothing to perturb would silently be the plain gradient.
  with pytest.raises(ValueError, match=r"no parameter gets noise: the parameters \(positional argument argnums=1\) are \{\}"):
    ag.noise_grad(grad_fn, 2)(jax.random.key(0), x, {})
  with pytest.raises(ValueError, match=r"none of them a floating-point array selected by mask"):
    ag.noise_grad(grad_fn, 2, mask={"dense": False, "head": False})(jax.random.key(0), x, params)
