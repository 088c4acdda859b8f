"""Sparseness (Gini index): the integer-key sort against independent references."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptgrad_jax import metrics
from adaptgrad_jax.metrics import _sparseness


@contextlib.contextmanager
def _x64():
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", False)


def _gini_reference(a, eps=1e-7, normalise=False):
  """Chalasani et al.'s Gini index in float64 NumPy (np.sort, written out)."""
  a = np.abs(np.asarray(a, np.float64)).reshape(-1)
  if normalise and a.max() > 0:
    a = a / a.max()
  a = np.sort(a + eps)
  n = a.size
  i = np.arange(1, n + 1)
  return np.sum((2 * i - n - 1) * a) / (n * np.sum(a))


def _gini_jnp_sort(a, eps=1e-7, normalise=False):
  """The previous definition, step for step, with jnp.sort of the floats."""
  a = jnp.abs(jnp.asarray(a, jnp.float32)).reshape(-1)
  if normalise:
    m = jnp.max(a)
    a = a / jnp.where(m > 0, m, 1.0)
  a = jnp.sort(a + eps)
  n = a.shape[0]
  index = jnp.arange(1, n + 1, dtype=a.dtype)
  return jnp.clip(jnp.sum((2 * index - n - 1) * a) / (n * jnp.sum(a)), 0.0, 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_integer_key_sort_equals_jnp_sort(dtype):
  rng = np.random.default_rng(0)
  # Every sign, zeros of both signs, the smallest normals, infinities, NaN.
  # (Not subnormals: XLA:CPU flushes them to zero, so jnp.sort ties them with
  # 0.0 in input order while their keys order them as exact values.)
  special = [0.0, -0.0, 1.2e-38, -1.2e-38, np.inf, -np.inf, np.nan, 1.0, -1.0]
  with _x64() if dtype == "float64" else contextlib.nullcontext():
    x = np.concatenate([rng.normal(size=500) * 10.0 ** rng.integers(-30, 30, 500),
                        special, rng.choice([0.5, -2.0, 3.0], 50)]).astype(dtype)
    rng.shuffle(x)
    got = jax.jit(_sparseness._sort_as_integers)(jnp.asarray(x))
    want = jnp.sort(jnp.asarray(x))
    assert got.dtype == want.dtype == np.dtype(dtype)
    # The same values in the same order, NaN last (jnp.sort ties -0.0 with
    # 0.0 where the keys put -0.0 first: equal as values, as compared here).
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert np.isnan(np.asarray(got)[-1])


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("normalise", [False, True])
def test_equals_previous_definition_and_float64_reference(jit, normalise):
  rng = np.random.default_rng(1)
  maps = rng.normal(size=(6, 28, 28)).astype(np.float32)
  maps[1] = 0.0                                  # all zero: eps makes it 0
  maps[2] = 3.0                                  # constant
  maps[3] = np.round(maps[3])                    # many ties
  maps[4] = 0.0
  maps[4, 5, 7] = 2.0                            # one-hot
  maps[5] *= 1e-6                                # eps matters
  fn = lambda m: metrics.sparseness(m, normalise=normalise)
  fn = jax.jit(fn) if jit else fn
  got = np.array([fn(jnp.asarray(m)) for m in maps])
  previous = np.array([_gini_jnp_sort(m, normalise=normalise) for m in maps])
  np.testing.assert_array_equal(got, previous)   # the same sorted values, bit for bit
  reference = np.array([_gini_reference(m, normalise=normalise) for m in maps])
  np.testing.assert_allclose(got, reference, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(got[1:3], 0.0, atol=1e-6)  # 0 up to float32 sums
  n = 28 * 28
  one_hot = (n - 1) / (n * (1 + n * 1e-7 / (1.0 if normalise else 2.0)))
  np.testing.assert_allclose(got[4], one_hot, rtol=1e-6)
  assert 0.0 < got[0] < got[4] < 1.0


def test_vmap_equals_loop_and_channels_are_summed_first():
  rng = np.random.default_rng(2)
  maps = rng.normal(size=(5, 8, 8, 3)).astype(np.float32)
  batched = jax.jit(jax.vmap(metrics.sparseness))(jnp.asarray(maps))
  looped = np.array([metrics.sparseness(jnp.asarray(m)) for m in maps])
  np.testing.assert_array_equal(batched, looped)
  reference = [_gini_reference(m.sum(-1)) for m in maps]  # signed channel sum, then abs
  np.testing.assert_allclose(batched, reference, rtol=2e-5)


def test_float64_maps_keep_float64():
  rng = np.random.default_rng(3)
  with _x64():
    m = rng.normal(size=(20, 20))
    got = metrics.sparseness(jnp.asarray(m, jnp.float64))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), _gini_reference(m), rtol=1e-12)


def test_negative_eps_and_clipping_keep_the_order():
  # abs=False clips negatives to 0; a negative eps then makes values negative,
  # which the integer keys must still order as floats.
  a = jnp.array([-1.0, 0.0, 0.5, 2.0, 1.0])
  got = metrics.sparseness(a, abs=False, eps=-1e-3)
  x = np.sort(np.maximum(np.asarray(a, np.float64), 0.0) - 1e-3)
  i = np.arange(1, 6)
  want = np.clip(np.sum((2 * i - 6) * x) / (5 * np.sum(x)), 0.0, 1.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
