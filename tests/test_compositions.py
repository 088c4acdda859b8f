"""Every method of the paper's Section 5.1.3 as a composition of transforms.

Grad, SG, AG, GI, S-GI, A-GI, IG(B), S-IG(B), A-IG(B), IG(W), S-IG(W),
A-IG(W), NG, S-NG, A-NG, and further pairwise compositions, each under
``jax.jit`` and ``jax.vmap`` over a batch (one key per example), are
deterministic per key, and match an independent reference where one is cheap.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag

BOUNDS = (jnp.array(-1.0), jnp.array(2.0))
N, STEPS, M = 3, 4, 2


def f(x, params, target):
  """A two-layer tanh network's logit for `target`, one example."""
  h = jnp.tanh(params["w1"] @ x + params["b1"])
  return (params["w2"] @ h)[target]


g = jax.grad(f)


def make_table():
  sg = lambda: ag.smooth_grad(g, 0.2, N, bounds=BOUNDS)
  ad = lambda: ag.adapt_smooth(g, 0.95, N, bounds=BOUNDS)
  ig = lambda fn, which: ag.integrated_gradients(fn, STEPS, baseline=which, bounds=BOUNDS)
  return {
      "Grad": g,
      "SG": sg(),
      "AG": ad(),
      "GI": ag.gradient_x_input(g),
      "S-GI": ag.gradient_x_input(sg()),
      "A-GI": ag.gradient_x_input(ad()),
      "IG(B)": ig(g, "black"),
      "S-IG(B)": ig(sg(), "black"),
      "A-IG(B)": ig(ad(), "black"),
      "IG(W)": ig(g, "white"),
      "S-IG(W)": ig(sg(), "white"),
      "A-IG(W)": ig(ad(), "white"),
      "NG": ag.noise_grad(g, M),
      "S-NG": ag.noise_grad(sg(), M),
      "A-NG": ag.noise_grad(ad(), M),
          # Further pairs: NG inside GI / IG, a NoiseTunnel-style SG of GI.
      "GI-NG": ag.gradient_x_input(ag.noise_grad(g, M)),
      "IG-NG": ig(ag.noise_grad(g, M), "black"),
      "SG-GI": ag.smooth_grad(ag.gradient_x_input(g), 0.2, N, bounds=BOUNDS),
  }


TABLE = make_table()
DETERMINISTIC = {"Grad", "GI", "IG(B)", "IG(W)"}


@pytest.fixture(scope="module")
def setup():
  key = jax.random.key(42)
  k1, k2, k3 = jax.random.split(key, 3)
  params = {
      "w1": jax.random.normal(k1, (5, 4)),
      "b1": jnp.zeros(5),
      "w2": jax.random.normal(k2, (3, 5)),
  }
  xs = jax.random.uniform(k3, (3, 4), minval=-0.9, maxval=1.9)
  targets = jnp.array([0, 2, 1])
  return params, xs, targets


@pytest.fixture(scope="module")
def results(setup):
  """All methods, batched and jitted in ONE compilation, for two keys."""
  params, xs, targets = setup

  @jax.jit
  def run_all(key):
    keys = jax.random.split(key, len(xs))

    def batch(fn):
      if ag.is_stochastic(fn):
        return jax.vmap(lambda k, x, t: fn(k, x, params, t))(keys, xs, targets)
      return jax.vmap(lambda x, t: fn(x, params, t))(xs, targets)

    return {name: batch(fn) for name, fn in TABLE.items()}

  # rbg keys: the compositions are the same for any key implementation, and
  # XLA compiles rbg's generator much faster than threefry's on CPU (the
  # other test files use the default threefry keys).
  k1, k2 = jax.random.key(1, impl="rbg"), jax.random.key(2, impl="rbg")
  return run_all(k1), run_all(k1), run_all(k2)


@pytest.mark.parametrize("name", list(TABLE))
def test_method_jit_vmap_and_key_determinism(name, setup, results):
  _, xs, _ = setup
  fn = TABLE[name]
  first, again, other = (r[name] for r in results)
  assert first.shape == xs.shape and np.all(np.isfinite(first))
  np.testing.assert_array_equal(first, again)
  if name in DETERMINISTIC:
    assert not ag.is_stochastic(fn)
    np.testing.assert_array_equal(first, other)
  else:
    assert ag.is_stochastic(fn), name
    assert not np.allclose(first, other), name


def test_deterministic_methods_match_references(setup, results):
  params, xs, targets = setup
  out = results[0]
  grads = jax.vmap(g, (0, None, 0))(xs, params, targets)
  np.testing.assert_allclose(out["Grad"], grads, rtol=1e-5)
  np.testing.assert_allclose(out["GI"], grads * xs, rtol=1e-5)
  # IG completeness (4 trapezoid steps on a tanh network: loose).
  lo, hi = BOUNDS
  for name, b in (("IG(B)", lo), ("IG(W)", hi)):
    gap = out[name].sum(1) - (
        jax.vmap(f, (0, None, 0))(xs, params, targets)
        - jax.vmap(f, (0, None, 0))(jnp.full_like(xs, b), params, targets)
    )
    assert np.all(np.abs(gap) < 0.5), (name, gap)


def test_a_ig_matches_step_by_step_reference(setup):
  params, xs, targets = setup
  x, t, key, steps = xs[0], targets[0], jax.random.key(7), 3
  ad = ag.adapt_smooth(g, 0.95, N, bounds=BOUNDS)
  a_ig = ag.integrated_gradients(ad, steps, baseline="black", bounds=BOUNDS)

  @jax.jit
  def both(key):
    lo = jnp.full_like(x, BOUNDS[0])
    alphas, weights = np.linspace(0.0, 1.0, steps), np.array([0.25, 0.5, 0.25])  # trapezoid, 3 nodes
    total = sum(
        w * ad(jax.random.fold_in(key, k), lo + a * (x - lo), params, t)
        for k, (a, w) in enumerate(zip(alphas, weights))
    )
    return a_ig(key, x, params, t), total * (x - lo)

  got, want = both(key)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
