"""The unrolled Threefry of `cpu._threefry` gives JAX's bits exactly, and the CPU rewrite uses it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import _monte_carlo
from adaptgrad_jax import cpu
from adaptgrad_jax.cpu import _threefry

SHAPES = [(), (1,), (3,), (5, 4), (28, 28, 1), (2, 3, 4)]


def _same(a, b):
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert a.dtype == b.dtype and a.shape == b.shape


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1])
@pytest.mark.parametrize("shape", SHAPES)
def test_random_bits_match_jax(seed, shape):
  key = jax.random.key(seed)
  keys = jax.random.split(key, 7)
  for dtype, width in [(jnp.uint32, 32), (jnp.uint16, 16), (jnp.uint8, 8)]:
    _same(_threefry.random_bits(key, width, shape), jax.random.bits(key, shape, dtype))
    _same(_threefry.random_bits(keys, width, shape), jax.vmap(lambda k, d=dtype: jax.random.bits(k, shape, d))(keys))


@pytest.mark.parametrize("shape", [(1,), (2,), (10,), (2, 3)])
def test_split_matches_jax(shape):
  key = jax.random.key(42)
  keys = jax.random.split(key, 3)
  _same(jax.random.key_data(_threefry.split(key, shape)), jax.random.key_data(jax.random.split(key, shape)))
  _same(
    jax.random.key_data(_threefry.split(keys, shape)),
    jax.random.key_data(jax.vmap(lambda k: jax.random.split(k, shape))(keys)),
  )


def test_applies_only_where_the_bits_are_jaxs():
  assert _threefry.applies(jax.random.key(0))
  assert not _threefry.applies(jax.random.key(0, impl="rbg"))
  assert not _threefry.applies(jax.random.PRNGKey(0))  # raw uint32 keys are left to jax.random
  assert not _threefry.applies(jax.random.key(0), (2**16, 2**16))  # counters would need the high word
  with jax.threefry_partitionable(False):
    assert not _threefry.applies(jax.random.key(0))
  # split_keys gives jax.random's keys, typed and raw.
  for key in (jax.random.key(3), jax.random.PRNGKey(3)):
    _same(jax.random.key_data(jax.jit(lambda k: _monte_carlo.sample_keys(k, 4, True))(key)), jax.random.key_data(jax.random.split(key, 4)))


def test_rewrite_for_cpu_draws_the_same_noise_without_loops():
  def draw(keys):
    def one(k):
      a, b = jax.random.split(k)
      return jax.random.normal(a, (6, 16)) + jax.random.uniform(b, (6, 16))

    return jax.vmap(one)(keys)

  keys = jax.random.split(jax.random.key(7), 4)
  rewritten = cpu.rewrite(draw)
  _same(jax.jit(rewritten)(keys), jax.jit(draw)(keys))
  if jax.default_backend() == "cpu":  # JAX's own CPU lowering is a loop over the rounds; the rewrite has none
    assert " while(" in jax.jit(draw).lower(keys).compile().as_text()
    assert " while(" not in jax.jit(rewritten).lower(keys).compile().as_text()


def test_unroll_bits_only_where_measured_faster():
  assert _threefry.unroll_bits((28, 28, 1)) and _threefry.unroll_bits((784,)) and _threefry.unroll_bits(())
  assert _threefry.unroll_bits((14, 14, 48))
  assert not _threefry.unroll_bits((64, 64, 3))  # RGB images keep JAX's loop
  keys = jax.random.split(jax.random.key(1), 3)
  image = jax.vmap(lambda k: jax.random.normal(k, (8, 8, 3)))
  _same(jax.jit(cpu.rewrite(image))(keys), jax.jit(image)(keys))


def test_adapt_smooth_noise_is_jaxs(getkey):
  """On CPU sample j still gets the noise of jax.random.split(key, n)[j] (bit-identical sums)."""
  x = jax.random.uniform(getkey(), (9,), minval=0.05, maxval=0.95)
  n = 6

  def identity_grad(z):  # "gradient" = the noisy input itself: the mean of the noisy inputs comes back
    return z

  key = getkey()
  smoothed = jax.jit(ag.adapt_smooth(identity_grad, 0.95, n, bounds=(0.0, 1.0)))(key, x)
  sigma = ag.adaptive_sigma(x, 0.95, bounds=(0.0, 1.0))
  noisy = jax.vmap(lambda k: x + sigma * jax.random.normal(k, x.shape))(jax.random.split(key, n))
  np.testing.assert_allclose(smoothed, noisy.mean(0), rtol=1e-6, atol=1e-7)
