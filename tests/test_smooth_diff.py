"""Tests of smooth_diff and moment_smooth against closed forms, quadrature and Monte Carlo."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.scipy.stats import norm

import adaptgrad_jax as ag
from adaptgrad_jax import models

BOUNDS = (0.0, 1.0)
X = jnp.array([0.3, 0.5, 0.2, 0.7, 0.6, 0.45])
W1 = jax.random.normal(jax.random.key(1), (12, 6))
B1 = 0.3 * jax.random.normal(jax.random.key(2), (12,))
W2 = jax.random.normal(jax.random.key(3), (12,))
V = jax.random.normal(jax.random.key(4), (6, 12)) / np.sqrt(12)


def one_layer(activation):
  return lambda x: jnp.dot(W2, activation(W1 @ x + B1))


relu_net = one_layer(jax.nn.relu)


def two_layers(x):
  h = jax.nn.relu(W1 @ x + B1)
  return jnp.sum(jnp.tanh(V @ h - 0.5))


def relu_closed_form(x, sigma):
  """``W1^T (w2 * Phi(mu / tau))``: the Gaussian-smoothed gradient of ``w2 . relu(W1 x + b1)``."""
  mu = W1 @ x + B1
  tau = jnp.sqrt(jnp.square(W1) @ jnp.square(sigma))
  return W1.T @ (W2 * norm.cdf(mu / tau))


@functools.partial(jax.jit, static_argnums=0)  # one program per activation, not one per eager operation
def expected_derivative(activation, mean, std):
  """``E[g'(u)]``, u ~ N(mean, std^2), by a fine trapezoid grid (independent of the library's rules)."""
  z = jnp.linspace(-9.0, 9.0, 36001)
  u = mean[:, None] + std[:, None] * z[None]
  slopes = jax.vmap(jax.vmap(jax.grad(activation)))(u)
  return jnp.trapezoid(slopes * norm.pdf(z)[None], z, axis=1)


SIGMA = ag.adaptive_sigma(X, 0.95, bounds=BOUNDS)


# ----------------------------------------------------------------------------
# The closed form of the issue: one hidden ReLU layer.


def test_moment_smooth_is_exact_for_one_relu_layer():
  explain = jax.jit(ag.moment_smooth(relu_net, c=0.95, bounds=BOUNDS))
  np.testing.assert_allclose(explain(X), relu_closed_form(X, SIGMA), rtol=2e-5, atol=1e-6)


def test_smooth_diff_is_unbiased_for_one_relu_layer_and_its_stderr_is_right():
  keys = jax.random.split(jax.random.key(0), 16)
  explain = jax.jit(ag.smooth_diff(relu_net, 64, c=0.95, bounds=BOUNDS, return_stderr=True))
  est = jax.vmap(explain, (0, None))(keys, X)
  mean, spread = jnp.mean(est.value, 0), jnp.std(est.value, 0, ddof=1)
  # Unbiased: the mean over 16 keys is within 5 standard errors of the closed form.
  assert np.all(np.abs(mean - relu_closed_form(X, SIGMA)) <= 5 * spread / 4 + 1e-6)
  # The jackknife standard error of one map agrees with the spread over keys (within 2x).
  ratio = jnp.mean(est.stderr, 0) / spread
  assert np.all((ratio > 0.4) & (ratio < 2.5)) and 0.6 < float(jnp.mean(ratio)) < 1.6, ratio


def test_sigma_rules_equal_their_absolute_sigma():
  run = lambda **kw: jax.jit(ag.moment_smooth(two_layers, **kw))(X)
  np.testing.assert_allclose(run(c=0.95, bounds=BOUNDS), run(sigma=SIGMA), rtol=1e-6)
  np.testing.assert_allclose(run(alpha=0.2, bounds=BOUNDS), run(sigma=0.2), rtol=1e-6)


# ----------------------------------------------------------------------------
# Activation chains and smooth functions.


ACTIVATIONS = (jax.nn.relu6, jax.nn.gelu, jax.nn.hard_swish, jax.nn.leaky_relu)


def test_activation_chains_moments_against_quadrature_and_smooth_diff_unbiased():
  # f = sum_g w2_g . g(W1 x + b1) over ReLU6 (a clamp: closed form), tanh GELU (quadrature of a smooth
  # chain), hardswish = x relu6(x + 3) / 6 and leaky ReLU (quadrature of kinked chains, Stein's lemma):
  # still one nonlinear layer, so the smoothed gradient is W1^T sum_g (w2_g * E[g'(u)]).
  w2 = jax.random.normal(jax.random.key(7), (len(ACTIVATIONS), 12))
  f = lambda x: sum(jnp.dot(w, g(W1 @ x + B1)) for w, g in zip(w2, ACTIVATIONS))
  mu = W1 @ X + B1
  tau = jnp.sqrt(jnp.square(W1) @ jnp.full(6, 0.3**2))
  expected = W1.T @ sum(w * expected_derivative(g, mu, tau) for w, g in zip(w2, ACTIVATIONS))
  got = jax.jit(ag.moment_smooth(f, sigma=0.3))(X)
  assert float(jnp.linalg.norm(got - expected) / jnp.linalg.norm(expected)) < 2e-3
  keys = jax.random.split(jax.random.key(0), 8)
  maps = jax.vmap(jax.jit(ag.smooth_diff(f, 128, sigma=0.3)), (0, None))(keys, X)
  spread = jnp.std(maps, 0, ddof=1)
  assert np.all(np.abs(jnp.mean(maps, 0) - expected) <= 5 * spread / np.sqrt(8) + 1e-5)


def test_sin_closed_form():
  # E[cos(x + sigma z)] = cos(x) exp(-sigma^2 / 2).
  f = lambda x: jnp.sum(jnp.sin(3 * x))
  expected = 3 * jnp.cos(3 * X) * jnp.exp(-9 * 0.2**2 / 2)
  np.testing.assert_allclose(jax.jit(ag.moment_smooth(f, sigma=0.2))(X), expected, rtol=1e-5, atol=1e-6)
  est = jax.jit(ag.smooth_diff(f, 2048, sigma=0.2, return_stderr=True))(jax.random.key(0), X)
  assert np.all(np.abs(est.value - expected) <= 5 * est.stderr)


def test_max_pool_selection_frequencies():
  # One max-pool of pairs: the smoothed gradient is each element's probability of being the max.
  f = lambda x: jnp.sum(jnp.array([1.0, 2.0, -1.0]) * jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (2,), (2,), "VALID"))
  p = norm.cdf((X[0::2] - X[1::2]) / (0.3 * np.sqrt(2)))
  expected = jnp.stack([p, 1 - p], 1).reshape(-1) * jnp.repeat(jnp.array([1.0, 2.0, -1.0]), 2)
  np.testing.assert_allclose(jax.jit(ag.moment_smooth(f, sigma=0.3))(X), expected, rtol=1e-5, atol=1e-6)  # Clark: exact
  est = jax.jit(ag.smooth_diff(f, 1024, sigma=0.3, return_stderr=True))(jax.random.key(0), X)
  assert np.all(np.abs(est.value - expected) <= 5 * est.stderr + 1e-6)


def test_max_ties_go_where_jax_grad_sends_them():
  # Structural ties (sigma ~ 0): max-pooling gives a tie to the window's first maximum, reduce_max splits
  # it, as jax.grad does. The selection is read by one argmax, not by comparing the input with the pooled
  # output: XLA may round two fused copies of the input's producer differently (without XLA's optimisation
  # passes a quarter of the selections were lost so, and the frequencies above no longer summed to 1).
  t = jnp.array([1.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0, 1.0])
  h = lambda x: (jax.lax.reduce_window(x.reshape(2, 4), -jnp.inf, jax.lax.max, (2, 2), (1, 2), "VALID").sum()
                 + jnp.max(x[4:7]) + jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (3,), (1,), "SAME").sum()
                 - jnp.min(x[:3]))
  np.testing.assert_allclose(jax.jit(ag.smooth_diff(h, 4, sigma=1e-30))(jax.random.key(0), t), jax.grad(h)(t),
                             rtol=1e-6)
  # Disjoint 2 x 2 windows (read by reshaping, not by patches) over an odd-sized map: ties to the first,
  # nothing to the last row and column, which no window covers; a min-pool likewise.
  u = jnp.round(jax.random.normal(jax.random.key(1), (1, 5, 7, 2))) + 4  # no zeros: sigma 1e-30 would split those
  pool = lambda x, op, init: jax.lax.reduce_window(x, init, op, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  g = lambda x: jnp.sum(pool(x, jax.lax.max, -jnp.inf) * jnp.arange(1.0, 25.0).reshape(1, 2, 3, 4)[..., :2]
                        ) - jnp.sum(pool(x, jax.lax.min, jnp.inf))
  want = jax.grad(g)(u)
  assert float(jnp.sum(want[:, 4]) + jnp.sum(want[:, :, 6])) == 0 and float(jnp.sum(want != 0)) > 12
  np.testing.assert_allclose(jax.jit(ag.smooth_diff(g, 4, sigma=1e-30))(jax.random.key(0), u), want, rtol=1e-6)


def test_deeper_net_is_close_to_monte_carlo():
  # Two nonlinear layers: both estimators are biased (the mean of a product of Jacobians is not the
  # product of their means; moments also assume independent Gaussian units): a few percent here.
  reference = jax.jit(ag.smooth_grad(jax.grad(two_layers), n=20000, sigma=0.3, batch_size=5000))(jax.random.key(9), X)
  rel = lambda m: float(jnp.linalg.norm(m - reference) / jnp.linalg.norm(reference))
  assert rel(jax.jit(ag.smooth_diff(two_layers, 2048, sigma=0.3))(jax.random.key(1), X)) < 0.1
  assert rel(jax.jit(ag.moment_smooth(two_layers, sigma=0.3))(X)) < 0.15  # measured 0.04, 0.08; plain gradient 0.51


# ----------------------------------------------------------------------------
# Invariants and composition.


def test_batch_size_invariance_and_keys():
  explain = lambda b: jax.jit(ag.smooth_diff(two_layers, 10, sigma=0.3, batch_size=b))
  key = jax.random.key(4)
  full = explain(None)(key, X)
  for b in (3, 4):
    np.testing.assert_allclose(explain(b)(key, X), full, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(explain(None)(key, X), full)
  assert not np.allclose(explain(None)(jax.random.key(5), X), full)


def test_jit_vmap_and_attribution_transforms_compose():
  raw = ag.smooth_diff(two_layers, 8, sigma=0.3)
  explain = jax.jit(raw)
  key = jax.random.key(0)
  keys, xs = jax.random.split(key, 3), jnp.stack([X, X * 0.5, X + 0.1])
  batched = jax.jit(jax.vmap(raw))(keys, xs)
  for i in range(3):
    np.testing.assert_allclose(batched[i], explain(keys[i], xs[i]), rtol=1e-5, atol=1e-7)
  assert ag.is_stochastic(explain) and not ag.is_stochastic(ag.moment_smooth(two_layers, sigma=0.3))
  np.testing.assert_allclose(jax.jit(ag.gradient_x_input(raw))(key, X), explain(key, X) * X, rtol=1e-6)
  ig = jax.jit(ag.integrated_gradients(raw, baseline=0.0, n_steps=4, method="riemann_middle"))(key, X)
  manual = sum(explain(jax.random.fold_in(key, k), (k + 0.5) / 4 * X) for k in range(4)) / 4 * X
  np.testing.assert_allclose(ig, manual, rtol=1e-5, atol=1e-7)
  moments = ag.moment_smooth(two_layers, sigma=0.3)
  np.testing.assert_allclose(jax.jit(ag.gradient_x_input(moments))(X), jax.jit(moments)(X) * X, rtol=1e-6)
  assert jax.jit(ag.integrated_gradients(moments, baseline=0.0, n_steps=3))(X).shape == X.shape
  np.testing.assert_allclose(jax.jit(jax.vmap(moments))(xs)[1], jax.jit(moments)(xs[1]), rtol=1e-5)


def test_linear_function_is_the_plain_gradient():
  w = jnp.arange(6.0)
  f = lambda x: jnp.dot(w, 2 * x + 1) - jnp.sum(x[::2])
  np.testing.assert_allclose(jax.jit(ag.smooth_diff(f, 4, sigma=0.5))(jax.random.key(0), X), jax.grad(f)(X))
  np.testing.assert_allclose(jax.jit(ag.moment_smooth(f, sigma=0.5))(X), jax.grad(f)(X))
  est = jax.jit(ag.smooth_diff(f, 4, sigma=0.5, return_stderr=True))(jax.random.key(0), X)
  np.testing.assert_array_equal(est.stderr, jnp.zeros(6))


def test_other_arguments_and_argnums():
  f = lambda w, x: jnp.dot(W2, jax.nn.relu(w @ x + B1))
  got = jax.jit(ag.moment_smooth(f, sigma=SIGMA, argnums=1))(W1, X)
  np.testing.assert_allclose(got, relu_closed_form(X, SIGMA), rtol=2e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Bad input.


@jax.custom_vjp
def _clipped(x):
  return jnp.tanh(x)


_clipped.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g,))


@pytest.mark.parametrize("fn, primitive", [
    (lambda x: jnp.sum(_clipped(x)), "custom_vjp_call"),
    (lambda x: jnp.sum(jax.pure_callback(np.sin, jax.ShapeDtypeStruct((6,), jnp.float32), x)), "pure_callback"),
    (lambda x: jax.lax.while_loop(lambda v: v < 10.0, lambda v: 2 * v, jnp.sum(x)), "while"),
    (lambda x: x[jnp.argmax(x)] ** 2, "dynamic_slice"),
], ids=["custom_vjp", "callback", "while_loop", "input_dependent_index"])
def test_refused_at_trace_time_naming_the_primitive(fn, primitive):
  for explain, call in ((ag.smooth_diff(fn, 4, sigma=0.1), lambda e: e(jax.random.key(0), X)),
                        (ag.moment_smooth(fn, sigma=0.1), lambda e: e(X))):
    with pytest.raises(TypeError, match=f"'{primitive}'.*adapt_smooth"):
      jax.eval_shape(lambda call=call, explain=explain: call(explain))


@pytest.mark.parametrize("kwargs, error, match", [
    ({}, ValueError, "exactly one noise scale, got none"),
    ({"c": 0.95, "sigma": 0.1}, ValueError, "got c, sigma"),
    ({"c": 1.5, "bounds": BOUNDS}, ValueError, "c=1.5 is a confidence level"),
    ({"c": 0.95}, TypeError, "needs bounds"),
    ({"alpha": 0.2}, TypeError, "needs bounds"),
    ({"alpha": -1.0, "bounds": BOUNDS}, ValueError, "alpha=-1.0"),
    ({"sigma": -0.1}, ValueError, "standard deviation"),
    ({"sigma": 0.1, "bounds": BOUNDS}, ValueError, "not both"),
    ({"c": 0.95, "bounds": (1.0, 0.0)}, ValueError, "lower < upper"),
], ids=["none", "two", "c", "c_bounds", "alpha_bounds", "alpha", "sigma", "sigma_bounds", "bounds"])
def test_validation_as_adapt_smooth(kwargs, error, match):
  with pytest.raises(error, match=match):
    ag.smooth_diff(relu_net, 4, **kwargs)
  with pytest.raises(error, match=match):
    ag.moment_smooth(relu_net, **kwargs)


def test_validation_of_n_batch_size_and_output():
  with pytest.raises(ValueError, match="n=0"):
    ag.smooth_diff(relu_net, 0, sigma=0.1)
  with pytest.raises(TypeError, match="n=2.0"):
    ag.smooth_diff(relu_net, 2.0, sigma=0.1)
  with pytest.raises(ValueError, match="batch_size=0"):
    ag.smooth_diff(relu_net, 4, sigma=0.1, batch_size=0)
  with pytest.raises(TypeError, match="scalar-output"):
    ag.moment_smooth(lambda x: jax.nn.relu(x), sigma=0.1)(X)
  with pytest.raises(TypeError, match="not a PRNG key"):
    ag.smooth_diff(relu_net, 4, sigma=0.1)(0, X)
  # The input where the key goes (a forgotten key) and a key given to the deterministic transform: each
  # message says how to call it, and describes an array by dtype and shape, not by its values.
  with pytest.raises(TypeError, match=r"not a PRNG key but a float32 array of shape \(6,\).*fn\(key, x, \.\.\.\)") as err:
    ag.smooth_diff(relu_net, 4, sigma=0.1)(X)
  assert str(float(X[0]))[:4] not in str(err.value)
  with pytest.raises(TypeError, match="deterministic and takes no key"):
    ag.moment_smooth(relu_net, sigma=0.1)(jax.random.key(0), X)
  with pytest.raises(TypeError, match="deterministic and takes no key"):
    ag.gradient_x_input(jax.grad(relu_net))(jax.random.key(0), X)


# ----------------------------------------------------------------------------
# Model ports: every primitive of a transformer (attention, softmax, GELU, layer norm) and of a
# CNN with max-pooling, batch norm and ReLU is smoothed; finite maps.


def _random_model(make):
  """The preset's graph with random weights (positive running variances), without its slow initialisation.

  The weights are drawn by NumPy: one `jax.random.normal` per parameter shape compiled a program each.
  """
  abstract = nnx.eval_shape(make)
  abstract.eval()
  graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  rng = np.random.default_rng(0)
  normal = lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype)
  params = jax.tree.map(normal, params)
  stats = jax.tree.map(lambda a: 0.5 + jnp.abs(normal(a)), stats)
  return graphdef, (params, stats)


# One block of each kind holds every primitive the presets have (a second block repeats them and doubled
# moment_smooth's compile time, dominated by its unrolled 32-node quadrature of GELU / rsqrt / exp chains):
# the ViT's patch convolution, attention, softmax, GELU and layer norm; the DenseNet's stem max-pool, batch
# norm, ReLU, a dense layer's concatenation and a transition's average pool.
@pytest.mark.parametrize("make, size", [
    (lambda: models.vit_micro(num_layers=1, rngs=nnx.Rngs(0)), 32),
    (lambda: models.DenseNet(4, (1, 1), 8, 2, num_classes=10, rngs=nnx.Rngs(0)), 36),
], ids=["vit_micro_1_block", "densenet_1_1_blocks"])
def test_model_ports_give_finite_maps(make, size):
  graphdef, state = _random_model(make)
  f = lambda x, state: nnx.merge(graphdef, *state)(x[None])[0, 1]
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(size, size, 3)), jnp.float32)
  sd = jax.jit(ag.smooth_diff(f, 2, c=0.95, bounds=BOUNDS))(jax.random.key(0), x, state)
  ms = jax.jit(ag.moment_smooth(f, c=0.95, bounds=BOUNDS))(x, state)
  for m in (sd, ms):
    assert m.shape == x.shape and bool(jnp.all(jnp.isfinite(m))) and float(jnp.max(jnp.abs(m))) > 0


def test_mobilenet_v3_traces():
  abstract = nnx.eval_shape(lambda: models.mobilenet_v3_micro(rngs=nnx.Rngs(0)))
  abstract.eval()
  graphdef, state = nnx.split(abstract)
  f = lambda x, state: nnx.merge(graphdef, state)(x[None])[0, 1]
  x = jax.ShapeDtypeStruct((36, 36, 3), jnp.float32)
  assert jax.eval_shape(ag.smooth_diff(f, 2, sigma=0.1), jax.random.key(0), x, state).shape == x.shape
  assert jax.eval_shape(ag.moment_smooth(f, sigma=0.1), x, state).shape == x.shape


def test_cpu_rewrite_keeps_both_estimators_values():
  # Depthwise and pointwise convolutions with ReLU6 (EfficientNet-Lite's block), which the CPU rewrite
  # computes another way, in the forward passes of smooth_diff and the moment propagation of moment_smooth.
  k = jax.random.split(jax.random.key(5), 3)
  dw = 0.5 * jax.random.normal(k[0], (3, 3, 1, 4))
  pw = 0.5 * jax.random.normal(k[1], (1, 1, 4, 6))
  head = jax.random.normal(k[2], (6,))
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                           dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def f(x):
    h = jax.nn.relu6(conv(x[None], dw, feature_group_count=4) * 3.0)
    h = jax.nn.relu6(conv(h, pw) * 2.0 + 0.5)
    return jnp.mean(h, axis=(1, 2))[0] @ head

  x = jnp.asarray(np.random.default_rng(3).uniform(size=(8, 8, 4)), jnp.float32)
  for make, call in ((lambda r: ag.moment_smooth(f, c=0.95, bounds=BOUNDS, cpu_rewrite=r), lambda e: e(x)),
                     (lambda r: ag.smooth_diff(f, 8, c=0.95, bounds=BOUNDS, cpu_rewrite=r),
                      lambda e: e(jax.random.key(1), x))):
    on, off = (np.asarray(call(jax.jit(make(r)))) for r in (True, False))
    assert np.abs(off).max() > 0
    np.testing.assert_allclose(on, off, rtol=1e-4, atol=1e-6 * np.abs(off).max())
