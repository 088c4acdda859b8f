"""Equinox adapters: inference mode, state, targets, parameters, and composition with the transforms."""

import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import equinox_adapters


@pytest.fixture(scope="module")
def eqx():
  return pytest.importorskip("equinox")


def _net(eqx):
  """A conv -> ReLU -> BatchNorm (EMA statistics) -> dropout -> mean -> linear net on one (3, H, W) image."""

  class Net(eqx.Module):
    conv: eqx.nn.Conv2d
    norm: eqx.nn.BatchNorm
    dropout: eqx.nn.Dropout
    head: eqx.nn.Linear

    def __init__(self, key):
      k1, k2 = jax.random.split(key)
      self.conv = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k1)
      self.norm = eqx.nn.BatchNorm(4, axis_name="batch", mode="ema")
      self.dropout = eqx.nn.Dropout(0.5)
      self.head = eqx.nn.Linear(4, 5, key=k2)

    def __call__(self, x, state, *, key=None):
      h, state = self.norm(jax.nn.relu(self.conv(x)), state)
      return self.head(self.dropout(h, key=key).mean(axis=(1, 2))), state

  model, state = eqx.nn.make_with_state(Net)(jax.random.key(0))
  # Running statistics far from the identity, so that a training-mode call would differ.
  mean = jnp.array([0.3, -0.2, 0.5, 0.1])
  var = jnp.array([2.0, 0.5, 1.5, 3.0])
  return model, state.set(model.norm.ema_state_index, (mean, var)), (mean, var)


def _reference_logits(model, stats, x):
  """The eval-mode network written out with lax and the running statistics (no Equinox call)."""
  mean, var = stats
  h = jax.lax.conv_general_dilated(x[None], model.conv.weight, (1, 1), ((1, 1), (1, 1)))[0] + model.conv.bias
  h = jax.nn.relu(h)
  h = (h - mean[:, None, None]) / jnp.sqrt(var[:, None, None] + model.norm.eps)
  h = h * model.norm.weight[:, None, None] + model.norm.bias[:, None, None]
  return model.head.weight @ h.mean(axis=(1, 2)) + model.head.bias


@pytest.mark.parametrize("output", ["logit", "log_softmax", "softmax"])
def test_target_fn_equals_the_written_out_eval_network(eqx, output):
  model, state, stats = _net(eqx)
  x = jax.random.uniform(jax.random.key(1), (3, 6, 6))
  f = equinox_adapters.eqx_target_fn(model, 2, output=output, state=state)
  post = {"logit": lambda z: z, "log_softmax": jax.nn.log_softmax, "softmax": jax.nn.softmax}[output]
  ref = lambda x: post(_reference_logits(model, stats, x))[2]
  np.testing.assert_allclose(jax.jit(f)(x), ref(x), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(x), jax.grad(ref)(x), rtol=1e-4, atol=1e-7)
  assert model.dropout.inference is False and model.norm.inference is False  # the caller's model is untouched


def test_adapt_smooth_composes_under_jit_and_vmap_with_targets(eqx):
  model, state, stats = _net(eqx)
  xs = jax.random.uniform(jax.random.key(2), (4, 3, 6, 6))
  targets = equinox_adapters.resolve_targets(model, xs, "predicted", state=state)
  ref_logits = jax.vmap(lambda x: _reference_logits(model, stats, x))(xs)
  np.testing.assert_array_equal(targets, jnp.argmax(ref_logits, axis=1))
  f = equinox_adapters.eqx_target_fn(model, state=state)  # f(x, target)
  explain = ag.adapt_smooth(jax.grad(f), 0.95, 8, bounds=(0.0, 1.0))
  keys = jax.random.split(jax.random.key(3), len(xs))
  batched = jax.jit(jax.vmap(explain))(keys, xs, targets)
  assert batched.shape == xs.shape
  # Example 1 alone, smoothing the written-out network: the adapter adds nothing but the model call.
  ref = ag.adapt_smooth(jax.grad(lambda x, t: _reference_logits(model, stats, x)[t]), 0.95, 8, bounds=(0.0, 1.0))
  np.testing.assert_allclose(batched[1], jax.jit(ref)(keys[1], xs[1], targets[1]), rtol=1e-4, atol=1e-6)


def test_param_fn_for_noise_grad(eqx):
  model, state, _ = _net(eqx)
  x = jax.random.uniform(jax.random.key(4), (3, 6, 6))
  f, params = equinox_adapters.eqx_param_fn(model, 1, state=state)
  g = equinox_adapters.eqx_target_fn(model, 1, state=state)
  np.testing.assert_allclose(f(x, params), g(x), rtol=1e-6)
  shifted = jax.tree.map(lambda p: p + 0.1, params)
  assert abs(float(f(x, shifted)) - float(f(x, params))) > 1e-4  # the argument is used
  assert jax.tree.structure(jax.grad(f, argnums=1)(x, params)) == jax.tree.structure(params)
  ng = jax.jit(ag.noise_grad(jax.grad(f), 3, sigma=0.2, argnums=1))
  assert ng(jax.random.key(0), x, params).shape == x.shape


def test_stateless_batched_models_and_errors(eqx):
  mlp = eqx.nn.MLP(4, 3, 8, 1, key=jax.random.key(0))
  x = jnp.linspace(-1.0, 1.0, 4)
  f = equinox_adapters.eqx_target_fn(mlp, 0)
  np.testing.assert_allclose(f(x), mlp(x)[0], rtol=1e-6)
  batched_model = lambda xs: jax.vmap(mlp)(xs)  # noqa: E731
  wrapped = equinox_adapters.eqx_target_fn(mlp, 0, batch_axis=True, call=lambda m, xs: jax.vmap(m)(xs))
  np.testing.assert_allclose(wrapped(x), batched_model(x[None])[0, 0], rtol=1e-6)
  with pytest.raises(ValueError, match="batch_axis=True"):
    equinox_adapters.eqx_target_fn(mlp, 0, call=lambda m, x: jax.vmap(m)(x[None]))(x)
  with pytest.raises(ValueError, match=r"shape \(5, 3\) for an input of shape \(5, 4\).*ONE example.*jax\.vmap"):
    equinox_adapters.eqx_target_fn(mlp, 0, call=lambda m, xs: jax.vmap(m)(xs))(jnp.ones((5, 4)))  # a batch
  with pytest.raises(ValueError, match="out of range for 3 classes"):
    equinox_adapters.eqx_target_fn(mlp, 3)(x)
  with pytest.raises(ValueError, match="resolve_targets"):
    equinox_adapters.eqx_target_fn(mlp, "predicted")
  with pytest.raises(ValueError, match="output='probability'"):
    equinox_adapters.eqx_target_fn(mlp, 0, output="probability")
  with pytest.raises(TypeError, match="not an eqx.Module"):
    equinox_adapters.eqx_target_fn(lambda x: x, 0)
  class Stateless(eqx.Module):
    def __call__(self, x, state=None):
      return x

  model, state, _ = _net(eqx)
  with pytest.raises(ValueError, match=r"must return \(logits, state\)"):
    equinox_adapters.eqx_target_fn(Stateless(), 0, state=state)(x)
  with pytest.raises(ValueError, match=r"shape \(2,\)"):
    equinox_adapters.resolve_targets(model, jnp.zeros((3, 3, 6, 6)), jnp.array([0, 1]))


def test_imports_without_equinox(monkeypatch):
  """The module imports with equinox missing, and says how to install it when used."""
  monkeypatch.setitem(sys.modules, "equinox", None)  # as if not installed
  module = importlib.reload(equinox_adapters)
  try:
    with pytest.raises(ImportError, match=r'pip install "equinox>=0.13" .*pip install -e "\.\[equinox\]"'):
      module.eqx_target_fn(object(), 0)
  finally:
    monkeypatch.undo()
    importlib.reload(equinox_adapters)
