"""Tests for adaptgrad_jax.training, and a small-data Table 1 pipeline."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from adaptgrad_jax import datasets, metrics, models, training


@pytest.fixture(scope="module")
def digits():
  return datasets.mnist_embedded()


def test_train_reaches_85_percent(digits):
  model = models.mlp(hidden=64, rngs=nnx.Rngs(0))
  hist = training.train_classifier(
      model, digits.x_train, digits.y_train, epochs=3, learning_rate=0.1,
      key=jax.random.key(0), progress=False)
  assert hist.loss.shape == (3,) and np.all(np.diff(hist.loss) < 0)
  assert hist.input_shift == 0.0 and hist.bounds is None
  acc = training.evaluate(model, digits.x_test, digits.y_test)
  assert acc > 0.85


def test_training_is_deterministic_and_progress_bar_runs(digits, capsys):
  x, y = digits.x_train[:300], digits.y_train[:300]
  runs = []
  for progress in (True, False):
    model = models.mlp(hidden=8, rngs=nnx.Rngs(3))
    # 300 = 9 full batches of 32 + a remainder of 12.
    training.train_classifier(model, x, y, epochs=2, key=jax.random.key(7),
                              progress=progress)
    runs.append(np.asarray(model.fc1.kernel[...]))
  np.testing.assert_array_equal(runs[0], runs[1])
  captured = capsys.readouterr()
  assert "training" in captured.out + captured.err  # the bar's stream is the progress helper's choice


def test_one_sgd_step_matches_hand_computed_update():
  model = models.mlp(in_features=3, hidden=4, num_classes=2, rngs=nnx.Rngs(0))
  x = jnp.array([[0.2, 0.5, 0.1]])
  y = jnp.array([1])
  before = nnx.state(model, nnx.Param)

  def loss(params):
    m = nnx.merge(nnx.graphdef(model), params)
    return -jax.nn.log_softmax(m(x))[0, 1]

  grads = jax.jit(jax.grad(loss))(before)  # jitted: eagerly each op compiles on its own
  expected = jax.tree.map(lambda p, g: p - 0.5 * g, before, grads)
  training.train_classifier(model, x, y, epochs=1, batch_size=1, learning_rate=0.5,
                            key=jax.random.key(0), progress=False)
  after = nnx.state(model, nnx.Param)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), after, expected)


def test_an_optax_optimizer_is_used_as_given():
  # optax transformations are NamedTuples: one must not be mistaken for the ("sgd", lr) default.
  model = models.mlp(in_features=3, hidden=4, num_classes=2, rngs=nnx.Rngs(0))
  x, y = jnp.array([[0.2, 0.5, 0.1]]), jnp.array([1])
  before = nnx.state(model, nnx.Param)
  grads = jax.jit(jax.grad(lambda p: -jax.nn.log_softmax(nnx.merge(nnx.graphdef(model), p)(x))[0, 1]))(before)
  expected = jax.tree.map(lambda p, g: p - 0.1 * jnp.sign(g), before, grads)  # Adam's first step: lr * sign(g)
  training.train_classifier(model, x, y, epochs=1, batch_size=1, optimizer=optax.adam(0.1),
                            key=jax.random.key(0), progress=False)
  after = nnx.state(model, nnx.Param)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), after, expected)


def test_evaluate_hand_computed():
  model = models.mlp(in_features=2, hidden=2, num_classes=2, rngs=nnx.Rngs(0))
  # Identity network: logits = relu(x), so the class is the larger input.
  model.fc1.kernel[...] = jnp.eye(2)
  model.fc1.bias[...] = jnp.zeros(2)
  model.fc2.kernel[...] = jnp.eye(2)
  model.fc2.bias[...] = jnp.zeros(2)
  x = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [5.0, 4.0]])
  y = jnp.array([0, 1, 1, 1, 1])
  assert training.evaluate(model, x, y, batch_size=2) == pytest.approx(3 / 5)


def test_bad_training_input():
  model = models.mlp(hidden=4, rngs=nnx.Rngs(0))
  x = jnp.zeros((10, 784))
  with pytest.raises(ValueError, match="x holds 10 examples but y holds 9"):
    training.train_classifier(model, x, jnp.zeros(9, jnp.int32), key=jax.random.key(0))
  with pytest.raises(ValueError, match="not one-hot"):
    training.train_classifier(model, x, jnp.zeros((10, 10)), key=jax.random.key(0))
  with pytest.raises(ValueError, match="float inputs"):
    training.train_classifier(model, jnp.zeros((10, 784), jnp.uint8),
                              jnp.zeros(10, jnp.int32), key=jax.random.key(0))
  with pytest.raises(ValueError, match="epochs=0"):
    training.train_classifier(model, x, jnp.zeros(10, jnp.int32), epochs=0,
                              key=jax.random.key(0))


def test_permute_labels_keeps_class_counts():
  y = jnp.arange(100) % 10
  p = training.permute_labels(jax.random.key(0), y)
  np.testing.assert_array_equal(np.bincount(p), np.bincount(y))
  assert np.mean(np.asarray(p) == np.asarray(y)) < 0.5


def test_save_load_round_trip_and_overwrite(tmp_path):
  model = models.mlp(hidden=8, rngs=nnx.Rngs(0))
  path = training.save_model(tmp_path / "ckpt", model)
  assert path.is_absolute() and path.exists()
  restored = training.load_model(path, models.mlp(hidden=8, rngs=nnx.Rngs(1)))
  x = jnp.ones((2, 784))
  np.testing.assert_array_equal(restored(x), model(x))
  with pytest.raises(FileExistsError, match="overwrite=True"):
    training.save_model(path, model)
  other = models.mlp(hidden=8, rngs=nnx.Rngs(5))
  training.save_model(path, other, overwrite=True)
  again = training.load_model(path, models.mlp(hidden=8, rngs=nnx.Rngs(1)))
  np.testing.assert_array_equal(again(x), other(x))
  with pytest.raises(FileNotFoundError, match="no checkpoint at"):
    training.load_model(tmp_path / "missing", model)
  # Refused from the checkpoint's metadata, naming each leaf, before anything is read.
  with pytest.raises(ValueError, match=r"does not match the structure.*fc1/bias/value: saved \(8,\) float32,"
                                       r" template \(16,\) float32"):
    training.load_model(path, models.mlp(hidden=16, rngs=nnx.Rngs(1)))


@functools.partial(jax.jit, static_argnums=0)
def _gradient_maps(graphdef, state, xs):
  f = lambda z: nnx.merge(graphdef, state)(z[None])[0]
  def one(x):
    target = jnp.argmax(f(x))
    return jax.grad(lambda z: f(z)[target])(x)
  return jax.vmap(one)(xs)


def gradient_maps(model, xs):
  """Plain gradient of each model's predicted class (the paper's MNIST setup).

  Compiled once per architecture, input shape and dtype (the graph is static).
  """
  return _gradient_maps(*nnx.split(model), xs)


def test_small_table1_pipeline(digits):
  """Table 1 on a few thousand digits: three MLPs, Consistency and Invariance."""
  x, y = digits.x_train[:2000], digits.y_train[:2000]
  kw = dict(epochs=3, learning_rate=0.02, progress=False)
  key = jax.random.key(0)
  normal = models.mlp(hidden=32, rngs=nnx.Rngs(0))
  training.train_classifier(normal, x, y, key=key, **kw)
  random_label = models.mlp(hidden=32, rngs=nnx.Rngs(1))
  training.train_random_label_classifier(random_label, x, y, key=key, **kw)
  shifted = models.mlp(hidden=32, rngs=nnx.Rngs(2))
  hist = training.train_shifted_classifier(shifted, x, y, key=key, **kw)
  assert hist.input_shift == 1.0 and hist.bounds == (1.0, 2.0)

  xt, yt = digits.x_test[:500], digits.y_test[:500]
  acc = training.evaluate(normal, xt, yt)
  assert acc > 0.6
  assert training.evaluate(random_label, xt, yt) < acc - 0.3
  assert training.evaluate(shifted, xt + 1.0, yt) > 0.3

  xe = digits.x_test[:48]
  g = gradient_maps(normal, xe)
  g_random = gradient_maps(random_label, xe)
  g_shifted = gradient_maps(shifted, xe + 1.0)
  for scaling in ("no_abs", "abs"):
    c = float(metrics.consistency(g, g_random, scaling=scaling))
    i = float(metrics.invariance(g, g_shifted, scaling=scaling))
    assert np.isfinite(c) and np.isfinite(i)
    assert 0.0 <= c <= 1.0 and 0.0 <= i <= 1.0
  mad = float(metrics.invariance(g, g_shifted, similarity="mean_abs_difference"))
  assert np.isfinite(mad) and mad > 0.0

  # The analytic variant: shifting the first-layer bias instead of retraining
  # leaves the plain gradient unchanged (the same ReLU pattern and target). In
  # float64: in float32, x @ W + b and (x + 1) @ W + (b - 1 @ W) differ by
  # rounding, and a pre-activation within it of 0 takes either sign, per CPU.
  with jax.enable_x64(True):
    graphdef, state = nnx.split(normal)
    state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    xe64 = jnp.asarray(xe, jnp.float64)
    g64 = _gradient_maps(graphdef, state, xe64)
    shifted_state = metrics.shift_first_layer_bias(state, 1.0, layer="fc1")
    g_analytic = _gradient_maps(graphdef, shifted_state, xe64 + 1.0)
    assert g64.dtype == g_analytic.dtype == jnp.float64
    mad = float(metrics.invariance(g64, g_analytic, similarity="mean_abs_difference"))
    assert mad <= 1e-12 * float(jnp.abs(g64).mean())
    assert float(metrics.invariance(g64, g_analytic)) == pytest.approx(1.0, abs=1e-9)
