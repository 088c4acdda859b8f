"""Tests of the Flax adapters: the same gradients as hand-written functions, in eval mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

import adaptgrad_jax as ag
from adaptgrad_jax import flax_adapters as fa

EPS = 1e-5


class Net(nnx.Module):
  """Linear -> BatchNorm -> ReLU -> Dropout -> Linear."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(4, 6, rngs=rngs)
    self.bn = nnx.BatchNorm(6, epsilon=EPS, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.fc2 = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.drop(jax.nn.relu(self.bn(self.fc1(x)))))


def hand_written(x, fc1_w, fc1_b, mean, var, scale, bias, fc2_w, fc2_b):
  """The eval-mode network on ONE example, written out."""
  h = x @ fc1_w + fc1_b
  h = (h - mean) / jnp.sqrt(var + EPS) * scale + bias
  return jax.nn.relu(h) @ fc2_w + fc2_b


@pytest.fixture(scope="module")
def net():
  model = Net(rngs=nnx.Rngs(0))
  # One training-mode pass so the running statistics are not the identity.
  model(jax.random.normal(jax.random.key(1), (16, 4)) * 2.0 + 1.0)
  return model


def _weights(model):
  return (model.fc1.kernel[...], model.fc1.bias[...], model.bn.mean[...],
          model.bn.var[...], model.bn.scale[...], model.bn.bias[...],
          model.fc2.kernel[...], model.fc2.bias[...])


X = jnp.array([0.3, -0.7, 1.2, 0.05])


def test_nnx_target_fn_matches_hand_written_eval_mode(net):
  weights = _weights(net)
  posts = {"logit": lambda z: z, "log_softmax": jax.nn.log_softmax,
           "softmax": jax.nn.softmax}
  fns = {name: fa.nnx_target_fn(net, 2, output=name) for name in posts}
  refs = {name: (lambda x, p=p: p(hand_written(x, *weights))[2]) for name, p in posts.items()}
  got = jax.jit(lambda x: {n: (f(x), jax.grad(f)(x)) for n, f in fns.items()})(X)
  for name, ref in refs.items():
    np.testing.assert_allclose(got[name][0], ref(X), rtol=1e-5)
    np.testing.assert_allclose(got[name][1], jax.grad(ref)(X), rtol=1e-5, atol=1e-7)
  # The model itself is untouched: still in training mode.
  assert net.drop.deterministic is False and net.bn.use_running_average is False


def test_train_mode_would_differ(net):
  # Guards the test above: the training-mode output is not the eval one.
  copy = nnx.clone(net)  # a training-mode call updates the statistics
  train_logits = copy(X[None])[0]  # batch statistics of one example + dropout
  assert not np.allclose(train_logits, hand_written(X, *_weights(net)), atol=1e-3)


def test_nnx_target_as_argument_and_batches(net, getkey):
  f = fa.nnx_target_fn(net)
  xs = jax.random.normal(getkey(), (5, 4))
  weights = _weights(net)
  eval_logits = jax.vmap(lambda x: hand_written(x, *weights))(xs)
  targets = fa.resolve_targets(net, xs, "predicted")
  np.testing.assert_array_equal(targets, jnp.argmax(eval_logits, -1))
  grads = jax.jit(jax.vmap(jax.grad(f)))(xs, targets)
  ref = jax.vmap(lambda x, t: jax.grad(lambda x: hand_written(x, *weights)[t])(x))(xs, targets)
  np.testing.assert_allclose(grads, ref, rtol=1e-5, atol=1e-7)
  # A batch explained with the targets resolved once on the clean batch
  # equals the per-example explanation with that fixed int target.
  maps = jax.jit(jax.vmap(ag.gradient_x_input(jax.grad(f))))(xs, targets)
  fixed = jax.grad(fa.nnx_target_fn(net, int(targets[3])))
  np.testing.assert_allclose(maps[3], fixed(xs[3]) * xs[3], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(fa.resolve_targets(net, xs, 1), jnp.ones(5, jnp.int32))


def test_nnx_param_fn_for_noise_grad(net, getkey):
  f, params = fa.nnx_param_fn(net, 1)
  g0 = jax.grad(fa.nnx_target_fn(net, 1))(X)
  np.testing.assert_allclose(jax.grad(f)(X, params), g0, rtol=1e-6)
  # sigma is traced here, so one compilation serves both noise levels.
  ng = jax.jit(lambda key, sigma: ag.noise_grad(
      jax.grad(f), 3, sigma=sigma, mask=lambda path: path[0] != "fc2")(key, X, params))
  np.testing.assert_allclose(ng(getkey(), 0.0), g0, rtol=1e-5)
  # Parameter noise changes the explanation; batch statistics are not
  # parameters, so they stay fixed.
  assert not np.allclose(ng(getkey(), 0.3), g0)
  assert "mean" not in jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(params)[0])


class LinenNet(linen.Module):

  @linen.compact
  def __call__(self, x, train: bool = False):
    x = linen.Dense(6)(x)
    x = linen.BatchNorm(use_running_average=not train, epsilon=EPS)(x)
    x = linen.Dropout(0.5, deterministic=not train)(jax.nn.relu(x))
    return linen.Dense(3)(x)


def test_linen_adapters_match_hand_written(getkey):
  module = LinenNet()
  variables = module.init(getkey(), jnp.ones((1, 4)))
  _, updates = module.apply(variables, jax.random.normal(getkey(), (16, 4)) + 1.0, train=True,
                            rngs={"dropout": getkey()}, mutable=["batch_stats"])
  variables = {**variables, **updates}
  p, s = variables["params"], variables["batch_stats"]
  weights = (p["Dense_0"]["kernel"], p["Dense_0"]["bias"], s["BatchNorm_0"]["mean"],
             s["BatchNorm_0"]["var"], p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"],
             p["Dense_1"]["kernel"], p["Dense_1"]["bias"])
  ref = lambda x: jax.nn.log_softmax(hand_written(x, *weights))[0]
  f = fa.linen_target_fn(module.apply, variables, 0, output="log_softmax", train=False)
  np.testing.assert_allclose(jax.grad(f)(X), jax.grad(ref)(X), rtol=1e-5, atol=1e-7)
  fp, params = fa.linen_param_fn(module.apply, variables, output="log_softmax")
  np.testing.assert_allclose(jax.grad(fp)(X, params, 0), jax.grad(ref)(X), rtol=1e-5, atol=1e-7)
  logits_fn = lambda xs: module.apply(variables, xs)
  xs = jnp.stack([X, -X])
  np.testing.assert_array_equal(
      fa.resolve_targets(logits_fn, xs),
      jnp.argmax(jax.vmap(lambda x: hand_written(x, *weights))(xs), -1))
  # Training mode without mutable batch stats fails loudly, not silently.
  with pytest.raises(Exception):
    fa.linen_target_fn(module.apply, variables, 0, train=True)(X)


def test_bad_arguments(net):
  with pytest.raises(ValueError, match="resolve_targets"):
    fa.nnx_target_fn(net, "predicted")
  with pytest.raises(ValueError, match="output='prob'"):
    fa.nnx_target_fn(net, 0, output="prob")
  with pytest.raises(ValueError, match="target=5 is out of range for 3 classes"):
    fa.nnx_target_fn(net, 5)(X)
  with pytest.raises(ValueError, match=r"one target per example.*jax\.vmap"):
    fa.nnx_target_fn(net, jnp.array([0, 1]))
  with pytest.raises(TypeError, match="not an nnx.Module"):
    fa.nnx_target_fn(lambda x: x, 0)
  # A batch given to a function of one example: say so, and how to map over it (not "pass call=").
  with pytest.raises(ValueError, match=r"shape \(1, 5, 3\) for an input of shape \(5, 4\).*ONE example.*jax\.vmap"):
    fa.nnx_target_fn(net, 0)(jnp.ones((5, 4)))
  with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(2,\)"):
    fa.resolve_targets(net, jnp.ones((2, 4)), jnp.array([0, 1, 2]))
  with pytest.raises(ValueError, match="collection='weights'"):
    fa.linen_param_fn(lambda v, x: x, {"params": {}}, 0, collection="weights")
