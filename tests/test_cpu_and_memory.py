"""Tests of the CPU rewrite (convolutions, compiler options), the chunked scan and batch_size="auto"."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import _memory
from adaptgrad_jax import cpu


def _conv_net(x, w1, w2):
  """A tiny NHWC convnet with HWIO kernels; x is one image (no batch axis)."""
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(x[None], w1, (1, 1), "SAME", dimension_numbers=dn)
  y = jax.nn.relu(y)
  y = jax.lax.conv_general_dilated(y, w2, (2, 2), "SAME", dimension_numbers=dn)
  return jnp.sum(jnp.tanh(y))


def _normal(rng, shape, dtype=jnp.float32):
  """Standard normal test inputs from NumPy: an eager jax.random draw compiles a Threefry program per shape."""
  return jnp.asarray(rng.normal(size=shape).astype(np.float32), dtype)


def _uniform(rng, shape):
  return jnp.asarray(rng.uniform(size=shape).astype(np.float32))


@pytest.fixture
def conv_params(rng):
  return (0.3 * _normal(rng, (3, 3, 2, 4)), 0.3 * _normal(rng, (3, 3, 4, 3)))


# ----------------------------------------------------------------------------
# Budgets.


@pytest.mark.parametrize(
    "text, expected",
    [("2GiB", 2 * 2**30), ("500MB", 500 * 10**6), ("1.5g", int(1.5 * 2**30)), ("64 KiB", 65536), (4096, 4096), ("10", 10)],
)
def test_parse_bytes(text, expected):
  assert _memory.parse_bytes(text) == expected


@pytest.mark.parametrize("bad, error", [("lots", ValueError), ("2 parsecs", ValueError), (0, ValueError), (True, TypeError)])
def test_parse_bytes_errors(bad, error):
  with pytest.raises(error, match="budget="):
    _memory.parse_bytes(bad)


def test_default_budget_reads_environment(monkeypatch):
  monkeypatch.setenv(_memory.MEMORY_BUDGET_ENV, "3MiB")
  assert _memory.default_memory_budget() == 3 * 2**20
  monkeypatch.delenv(_memory.MEMORY_BUDGET_ENV)
  assert _memory.default_memory_budget("cpu") > 2**20


def test_auto_batch_size_validation():
  assert _memory.auto_batch_size("1MiB", max_batch_size=4) == (2**20, 4)
  with pytest.raises(ValueError, match="max_batch_size=0"):
    _memory.auto_batch_size(max_batch_size=0)
  with pytest.raises(ValueError, match="batch_size='fast'"):
    ag.adapt_smooth(jax.grad(jnp.sum), 0.95, 8, batch_size="fast", bounds=(0.0, 1.0))


# ----------------------------------------------------------------------------
# Plans and batch-size choice.


def test_choose_batch_size_fits_budget():
  estimate = _memory.MemoryEstimate(fixed=1000, per_sample=100, source="xla")
  assert _memory.choose_batch_size(50, estimate, 1000 + 7 * 100 + 50) == 7
  assert _memory.choose_batch_size(50, estimate, 10) == 1  # nothing fits: one at a time
  assert _memory.choose_batch_size(5, estimate, 10**9) == 5  # never above n
  assert _memory.choose_batch_size(50, estimate, 10**9, max_batch_size=3) == 3


def test_estimate_memory_grows_with_the_chunk(conv_params):
  x = jnp.full((8, 8, 2), 0.5)
  grad = jax.grad(_conv_net)
  fn = lambda k: grad(x + 0.1 * jax.random.normal(k, x.shape), *conv_params)
  keys = jax.random.split(jax.random.key(0), 10)
  estimate = _memory.estimate_memory(fn, keys)
  assert estimate.source in ("xla", "jaxpr")
  # At least the noisy input and its gradient per sample.
  assert estimate.per_sample >= 2 * x.size * 4
  small = _memory.choose_batch_size(10, estimate, estimate.fixed + 3 * estimate.per_sample)
  assert small == 3


# ----------------------------------------------------------------------------
# Convolution rewrites.


def _kernel_labels(hlo_text):
  return set(re.findall(r"dim_labels=\w+_(\w+)->", hlo_text))


def test_rewrite_convolutions_same_values_and_canonical_kernels(conv_params, rng):
  x = _uniform(rng, (8, 8, 2))
  grad = jax.grad(_conv_net)
  # The input gradient of a convolution comes from JAX with swapped kernel features ("01oi").
  assert "01oi" in _kernel_labels(jax.jit(grad).lower(x, *conv_params).as_text(dialect="hlo"))
  rewritten = cpu.rewrite(grad)
  np.testing.assert_allclose(rewritten(x, *conv_params), grad(x, *conv_params), rtol=1e-6, atol=1e-7)
  assert _kernel_labels(jax.jit(rewritten).lower(x, *conv_params).as_text(dialect="hlo")) == {"01io"}


# (lhs, rhs, out layouts), input shape, kernel shape, strides, padding, lhs dilation, rhs dilation, groups.
_CONV_CASES = {
    # Output smaller than the kernel: patches and a dot.
    "small_output": (("NHWC", "HWIO", "NHWC"), (3, 2, 2, 8), (3, 3, 8, 5), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 1),
    "small_output_nchw": (("NCHW", "OIHW", "NCHW"), (3, 8, 2, 3), (5, 8, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 1),
    "small_output_strided": (("NHWC", "HWIO", "NHWC"), (3, 4, 5, 8), (5, 3, 8, 5), (2, 1), ((2, 1), (0, 2)), (1, 1), (1, 1), 1),
    "small_output_negative_pad": (("NHWC", "HWIO", "NHWC"), (3, 6, 6, 8), (7, 7, 8, 5), (1, 1), ((3, 3), (-1, 3)), (1, 1), (1, 1), 1),
    "small_output_1d": (("NWC", "WIO", "NWC"), (3, 2, 8), (3, 8, 5), (1,), ((1, 1),), (1,), (1,), 1),
    "small_output_3d": (("NDHWC", "DHWIO", "NDHWC"), (2, 2, 3, 2, 4), (3, 3, 3, 4, 5), (1, 1, 1), ((1, 1),) * 3, (1, 1, 1), (1, 1, 1), 1),
    "small_output_permuted_out": (("NHWC", "OIHW", "CNHW"), (3, 2, 2, 8), (5, 8, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 1),
    # Input gradient of a strided convolution with a cotangent smaller than the kernel.
    "dilated_small_input": (("NHWC", "HWIO", "NHWC"), (3, 2, 2, 8), (3, 3, 8, 5), (1, 1), ((1, 2), (1, 2)), (2, 2), (1, 1), 1),
    # 1 x 1: one dot.
    "pointwise": (("NHWC", "HWIO", "NHWC"), (3, 4, 4, 8), (1, 1, 8, 5), (1, 1), ((0, 0), (0, 0)), (1, 1), (1, 1), 1),
    "pointwise_strided_padded": (("NCHW", "OIHW", "NCHW"), (3, 8, 5, 4), (5, 8, 1, 1), (2, 1), ((1, 0), (0, 2)), (1, 1), (1, 1), 1),
    "pointwise_dilated_oi": (("NHWC", "HWOI", "NHWC"), (3, 4, 4, 8), (1, 1, 5, 8), (1, 1), ((0, 1), (0, 1)), (2, 2), (1, 1), 1),
    "pointwise_cropped": (("NHWC", "HWIO", "NHWC"), (3, 5, 5, 8), (1, 1, 8, 5), (1, 1), ((-1, 0), (0, -1)), (1, 1), (1, 1), 1),
    # Depthwise: a sum of shifted slices.
    "depthwise": (("NHWC", "HWIO", "NHWC"), (3, 6, 6, 8), (3, 3, 1, 8), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 8),
    "depthwise_strided_5x5": (("NHWC", "HWIO", "NHWC"), (3, 7, 7, 8), (5, 5, 1, 8), (2, 2), ((2, 2), (2, 2)), (1, 1), (1, 1), 8),
    "depthwise_nchw_rhs_dilation": (("NCHW", "OIHW", "NCHW"), (3, 4, 7, 6), (12, 1, 3, 3), (1, 2), ((1, 0), (2, 1)), (1, 1), (2, 1), 4),
    "depthwise_multiplier": (("NHWC", "HWIO", "NHWC"), (3, 7, 7, 8), (3, 3, 1, 16), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 8),
    "depthwise_lhs_dilation": (("NHWC", "HWIO", "NHWC"), (3, 4, 4, 8), (3, 3, 1, 8), (1, 1), ((1, 2), (1, 2)), (2, 2), (1, 1), 8),
    # Left to XLA (kernel transposed only).
    "regular": (("NHWC", "HWIO", "NHWC"), (3, 6, 6, 8), (3, 3, 8, 5), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 1),
    "grouped": (("NHWC", "HWIO", "NHWC"), (3, 6, 6, 8), (3, 3, 4, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1), 2),
}


@pytest.mark.parametrize("case", sorted(_CONV_CASES))
def test_rewrite_convolutions_values_and_gradients(case, rng):
  layouts, x_shape, w_shape, strides, padding, lhs_dilation, rhs_dilation, groups = _CONV_CASES[case]
  x, w = _normal(rng, x_shape), _normal(rng, w_shape)
  dn = jax.lax.conv_dimension_numbers(x_shape, w_shape, layouts)

  def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dn, feature_group_count=groups)

  def conv_and_grads(x, w):
    grads = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))(x, w)
    return (conv(x, w),) + grads

  got = jax.jit(cpu.rewrite(conv_and_grads))(x, w)
  for got_part, want_part in zip(got, jax.jit(conv_and_grads)(x, w)):
    np.testing.assert_allclose(got_part, want_part, rtol=1e-4, atol=1e-4)
  # The forward convolution is really replaced (kept: regular, grouped, and a plain one after writing out dilation).
  hlo = jax.jit(cpu.rewrite(conv)).lower(x, w).as_text(dialect="hlo")
  assert ("convolution(" in hlo) == (case in ("regular", "grouped", "dilated_small_input"))


def test_rewrite_convolutions_keeps_dtype_and_preferred_element_type(rng):
  x = _normal(rng, (2, 2, 2, 4), jnp.bfloat16)
  w = _normal(rng, (3, 3, 4, 3), jnp.bfloat16)
  dn = ("NHWC", "HWIO", "NHWC")
  for kwargs in ({}, {"preferred_element_type": jnp.float32}):
    conv = lambda x, w, kw=kwargs: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, **kw)
    got, want = cpu.rewrite(conv)(x, w), conv(x, w)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=5e-2, atol=5e-2)


def test_cpu_compiler_options(conv_params, rng):
  assert cpu.compiler_options("gpu") == {}
  options = cpu.compiler_options("cpu")
  assert options == cpu.COMPILER_OPTIONS  # jaxlib 0.10 accepts them
  x = _uniform(rng, (8, 8, 2))
  grad = jax.grad(_conv_net)
  compiled = jax.jit(grad).lower(x, *conv_params).compile(compiler_options=options)
  np.testing.assert_allclose(compiled(x, *conv_params), grad(x, *conv_params), rtol=1e-5, atol=1e-6)
  assert cpu._rewrite._options_accepted((("xla_cpu_no_such_option", "1"),)) is False


def test_scan_strategy_matches_vmap_and_compiles_canonical_kernels(conv_params, getkey, rng):
  x = _uniform(rng, (8, 8, 2))
  key = getkey()
  grad = jax.grad(_conv_net)
  reference = jax.jit(ag.adapt_smooth(grad, 0.95, 24, bounds=(0.0, 1.0)))(key, x, *conv_params)
  chunked = jax.jit(ag.adapt_smooth(grad, 0.95, 24, batch_size=4, bounds=(0.0, 1.0)))  # 6 chunks: a scan
  np.testing.assert_allclose(chunked(key, x, *conv_params), reference, rtol=2e-5, atol=1e-7)
  hlo = chunked.lower(key, x, *conv_params).compile().as_text()
  if jax.default_backend() == "cpu":
    assert "01oi" not in _kernel_labels(hlo)


def test_second_order_through_rewritten_scan(conv_params, getkey, rng):
  x = _uniform(rng, (4, 4, 2))
  key = getkey()
  grad = jax.grad(_conv_net)

  def loss(x, batch_size):
    smoothed = ag.adapt_smooth(grad, 0.95, 6, batch_size=batch_size, bounds=(0.0, 1.0))
    return jnp.sum(smoothed(key, x, *conv_params) ** 2)

  second = jax.jit(jax.grad(loss), static_argnums=1)
  np.testing.assert_allclose(second(x, 2), second(x, None), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("batch_size", ["auto", _memory.auto_batch_size("40KiB", max_batch_size=3)])
def test_auto_batch_size_gives_the_same_result(batch_size, conv_params, getkey, rng):
  x = _uniform(rng, (6, 6, 2))
  key = getkey()
  grad = jax.grad(_conv_net)
  reference = ag.adapt_smooth(grad, 0.95, 10, bounds=(0.0, 1.0))(key, x, *conv_params)
  auto = jax.jit(ag.adapt_smooth(grad, 0.95, 10, batch_size=batch_size, bounds=(0.0, 1.0)))
  np.testing.assert_allclose(auto(key, x, *conv_params), reference, rtol=2e-5, atol=1e-7)


def test_auto_batch_size_bounds_memory(getkey, monkeypatch, rng):
  # With a budget that fits about a dozen samples, XLA's memory no longer grows with n.
  budget = 100 * 2**10
  monkeypatch.setenv(_memory.MEMORY_BUDGET_ENV, str(budget))
  f = lambda x: jnp.sum(jnp.tanh(x @ x.T))
  x = _uniform(rng, (24, 24))

  def temp_bytes(n, batch_size):
    smoothed = jax.jit(ag.smooth_grad(jax.grad(f), 0.1, n, batch_size=batch_size, bounds=(0.0, 1.0)))
    return smoothed.lower(getkey(), x).compile().memory_analysis().temp_size_in_bytes

  auto_48, auto_192 = temp_bytes(48, "auto"), temp_bytes(192, "auto")
  assert auto_48 < 0.5 * temp_bytes(48, None)
  assert auto_192 <= 1.1 * auto_48
  assert auto_192 <= 1.5 * budget
