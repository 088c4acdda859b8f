"""Tests of the sigma rules, inherent noise and the out-of-range sampler."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import adaptgrad_jax as ag

LO, HI = -2.12, 2.64  # Figure 3 of the paper (ImageNet-normalised range).


def _uniform_grid(n=200001):
  return jnp.linspace(LO, HI, n, dtype=jnp.float32)


@pytest.mark.parametrize("c", [0.5, 0.9, 0.95, 0.99, 0.999])
def test_two_sided_symmetric_interval_probability_is_c(c):
  x = jnp.array([0.05, 0.3, 0.5, 0.8, 0.97])
  sigma = ag.adaptive_sigma(x, c, bounds=(0.0, 1.0))
  d = np.minimum(np.asarray(x), 1 - np.asarray(x))
  # P(|eps| <= d) = erf(d / (sqrt(2) sigma)) = c.
  np.testing.assert_allclose(special.erf(d / (np.sqrt(2) * sigma)), c, rtol=1e-5)


@pytest.mark.parametrize("c", [0.9, 0.95, 0.99])
def test_eq13_as_printed(c):
  x = jnp.array([0.1, 0.4, 0.75])
  sigma = ag.adaptive_sigma(x, c, bounds=(0.0, 1.0), rule="eq13")
  d = np.minimum(np.asarray(x), 1 - np.asarray(x))
  expected = d / (np.sqrt(2) * special.erfinv((1 + c) / 2))
  np.testing.assert_allclose(sigma, expected, rtol=1e-5)
  # Leaving x +/- d has probability (1 - c) / 2.
  np.testing.assert_allclose(
      2 * stats.norm.sf(d / np.asarray(sigma)), (1 - c) / 2, rtol=1e-4
  )


@pytest.mark.parametrize("c", [0.3, 0.8, 0.95, 0.999])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_exact_solves_eq14(c, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    x = jnp.array([1e-4, 0.02, 0.3, 0.5, 0.6, 0.9999], dtype)
    sigma = ag.adaptive_sigma(x, c, bounds=(0.0, 1.0), rule="exact")
    assert sigma.dtype == dtype
    inside = 1 - ag.inherent_noise(x, sigma, bounds=(0.0, 1.0))
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(inside, c, atol=tol)


def test_rules_order():
  x = jnp.linspace(0.01, 0.99, 17)
  s = {r: ag.adaptive_sigma(x, 0.95, bounds=(0.0, 1.0), rule=r) for r in ("eq13", "two_sided", "exact")}
  assert jnp.all(s["eq13"] < s["two_sided"])
  assert jnp.all(s["two_sided"] <= s["exact"] * (1 + 1e-6))
  # Symmetric case: the exact rule equals the two-sided rule in the middle.
  mid = ag.adaptive_sigma(jnp.array([0.5]), 0.95, bounds=(0.0, 1.0), rule="exact")
  np.testing.assert_allclose(mid, s["two_sided"][8:9], rtol=1e-5)


def test_exact_gradient_matches_finite_differences():
  x = jnp.array([0.1, 0.3, 0.7], jnp.float32)
  fn = lambda v: ag.adaptive_sigma(v, 0.95, bounds=(0.0, 1.0), rule="exact")
  jac = jax.jacfwd(fn)(x)
  eps = 1e-3
  fd = (fn(x + eps) - fn(x - eps)) / (2 * eps)
  np.testing.assert_allclose(jnp.diag(jac), fd, rtol=2e-3)
  np.testing.assert_allclose(jax.grad(lambda v: fn(v).sum())(x), fd, rtol=2e-3)


@pytest.mark.parametrize("rule", ["two_sided", "eq13", "exact"])
def test_on_bound_and_outside_get_zero_sigma(rule):
  x = jnp.array([0.0, 1.0, -0.5, 1.5, 0.5])
  sigma = ag.adaptive_sigma(x, 0.95, bounds=(0.0, 1.0), rule=rule)
  np.testing.assert_array_equal(sigma[:4], 0.0)
  assert sigma[4] > 0
  assert jnp.all(jnp.isfinite(jax.grad(lambda v: ag.adaptive_sigma(v, 0.95, bounds=(0.0, 1.0), rule=rule).sum())(x)))


def test_per_channel_and_pytree_bounds():
  x = jnp.full((2, 2, 3), 0.5)
  lo = jnp.array([0.0, 0.25, -1.0])
  hi = jnp.array([1.0, 0.75, 3.0])
  sigma = ag.adaptive_sigma(x, 0.95, bounds=(lo, hi))
  k = np.sqrt(2) * special.erfinv(0.95)
  np.testing.assert_allclose(sigma[0, 0], np.array([0.5, 0.25, 1.5]) / k, rtol=1e-5)
  tree = {"a": jnp.array([0.5]), "b": jnp.array([3.0])}
  s_tree = ag.adaptive_sigma(tree, 0.95, bounds=({"a": 0.0, "b": 2.0}, {"a": 1.0, "b": 6.0}))
  np.testing.assert_allclose(s_tree["a"], 0.5 / k, rtol=1e-5)
  np.testing.assert_allclose(s_tree["b"], 1.0 / k, rtol=1e-5)


def test_smoothgrad_sigma():
  np.testing.assert_allclose(ag.smoothgrad_sigma(0.2, bounds=(LO, HI)), 0.952, rtol=1e-6)
  per_channel = ag.smoothgrad_sigma(0.1, bounds=(jnp.zeros(3), jnp.array([1.0, 2.0, 4.0])))
  np.testing.assert_allclose(per_channel, [0.1, 0.2, 0.4], rtol=1e-6)


def test_figure3_smoothgrad_inherent_noise():
  # Figure 3: x uniform on [-2.12, 2.64], alpha = 0.2 -> expected area 0.1596.
  x = _uniform_grid()
  sigma = ag.smoothgrad_sigma(0.2, bounds=(LO, HI))
  area = float(jnp.mean(ag.inherent_noise(x, sigma, bounds=(LO, HI))))
  assert abs(area - 0.1596) < 5e-5


@pytest.mark.parametrize(
    "rule, expected", [("two_sided", 0.02707), ("eq13", 0.01335), ("exact", 0.05)]
)
def test_figure3_adaptgrad_inherent_noise(rule, expected):
  # The values the README states for Figure 3's setting at c = 0.95 (the
  # paper prints 0.01424); "exact" holds the probability at exactly 1 - c.
  x = _uniform_grid()
  sigma = ag.adaptive_sigma(x, 0.95, bounds=(LO, HI), rule=rule)
  area = float(jnp.mean(ag.inherent_noise(x, sigma, bounds=(LO, HI))))
  assert abs(area - expected) < 5e-5


def test_inherent_noise_matches_eq10_and_sigma_zero():
  x = jnp.array([0.1, 0.5, 0.9])
  sigma = 0.2
  eq10 = (
      1
      - 0.5 * special.erf((1 - np.asarray(x)) / (np.sqrt(2) * sigma))
      + 0.5 * special.erf((0 - np.asarray(x)) / (np.sqrt(2) * sigma))
  )
  np.testing.assert_allclose(ag.inherent_noise(x, sigma, bounds=(0.0, 1.0)), eq10, rtol=1e-5)
  zero = ag.inherent_noise(jnp.array([0.0, 0.5, 1.0, 1.5]), 0.0, bounds=(0.0, 1.0))
  np.testing.assert_array_equal(zero, [0.0, 0.0, 0.0, 1.0])


def test_out_of_range_rate_matches_eq9(getkey):
  x = jax.random.uniform(getkey(), (64, 64), minval=LO, maxval=HI)
  sigma = ag.smoothgrad_sigma(0.2, bounds=(LO, HI))
  rates = ag.out_of_range_rate(getkey(), x, sigma, 50, bounds=(LO, HI))
  expected = float(jnp.mean(ag.inherent_noise(x, sigma, bounds=(LO, HI))))
  assert abs(float(rates.per_element) - expected) < 3e-3
  assert float(rates.per_input) == 1.0
  adaptive = ag.adaptive_sigma(x, 0.95, bounds=(LO, HI), rule="exact")
  rates_ag = ag.out_of_range_rate(getkey(), x, adaptive, 50, bounds=(LO, HI))
  assert abs(float(rates_ag.per_element) - 0.05) < 3e-3


def test_check_bounds():
  ag.check_bounds(jnp.array([0.0, 1.0]), (0.0, 1.0))
  with pytest.raises(ValueError, match="2 input element"):
    ag.check_bounds(jnp.array([-0.1, 0.5, 1.2]), (0.0, 1.0))
  with pytest.raises(ValueError, match=r"1 input element.*spans \[0.5, 0.5\] and 1 NaN"):
    ag.check_bounds({"a": jnp.array([0.5]), "b": jnp.array([jnp.nan])}, (0.0, 1.0))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no "All-NaN slice" RuntimeWarning on the way
    with pytest.raises(ValueError, match="no number and 2 NaN"):
      ag.check_bounds(jnp.array([jnp.nan, jnp.nan]), (0.0, 1.0))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(c=1.5), ValueError, r"c=1.5 is a confidence level"),
        (dict(c=0.0), ValueError, r"c=0.0 is a confidence level"),
        (dict(c="high"), TypeError, r"c='high'"),
        (dict(rule="one_sided"), ValueError, r"sigma_rule='one_sided'"),
        (dict(bounds=(1.0, 0.0)), ValueError, r"lower < upper"),
        (dict(bounds=(0.0,)), TypeError, r"must be a pair"),
        (dict(bounds=(0.0, float("inf"))), ValueError, r"finite"),
    ],
)
def test_adaptive_sigma_errors(kwargs, error, match):
  args = dict(c=0.95, bounds=(0.0, 1.0))
  args.update(kwargs)
  with pytest.raises(error, match=match):
    ag.adaptive_sigma(jnp.ones(3) * 0.5, **args)


def test_smoothgrad_sigma_errors():
  with pytest.raises(ValueError, match="alpha=-0.1"):
    ag.smoothgrad_sigma(-0.1, bounds=(0.0, 1.0))


# Parameters validated in float64 but used in the input's compute dtype (issue 26's audit).


def test_confidence_is_checked_in_the_compute_dtype():
  x = jnp.array([0.25, 0.5], jnp.float32)
  largest = float(np.nextafter(np.float32(1), np.float32(0)))
  for c, rule, fragment in [(1 - 1e-9, "two_sided", "is 1 in float32"), (1 - 1e-9, "exact", "is 1 in float32"),
                            (largest, "eq13", r"is 1 in float32.*\(1 \+ c\) / 2"),
                            (1e-39, "two_sided", "vanishes in float32")]:
    with pytest.raises(ValueError, match=rf"c={c!r} {fragment}.*float64 input"):
      ag.adaptive_sigma(x, c, bounds=(0.0, 1.0), rule=rule)
  with pytest.raises(ValueError, match=r"c=1e-37 makes sigma overflow float32.*2\.03e\+39"):
    ag.adaptive_sigma(x, 1e-37, bounds=(0.0, 255.0))  # 255 / (sqrt(2) erfinv(1e-37)) = 2.03e39
  # The largest c that float32 holds below 1 gives the closed form d / (sqrt(2) erfinv(c)) (in float64: 0.0462 * d).
  sigma = ag.adaptive_sigma(x, largest, bounds=(0.0, 1.0))
  np.testing.assert_allclose(np.asarray(sigma), np.array([0.25, 0.5]) / (np.sqrt(2) * special.erfinv(largest)),
                             rtol=1e-3)
  with jax.enable_x64(True):  # in float64, c = 1 - 1e-9 is a confidence level like any other
    sigma64 = ag.adaptive_sigma(jnp.array([0.25, 0.5], jnp.float64), 1 - 1e-9, bounds=(0.0, 1.0))
    np.testing.assert_allclose(np.asarray(sigma64), np.array([0.25, 0.5]) / (np.sqrt(2) * special.erfinv(1 - 1e-9)),
                               rtol=1e-9)


def test_channels_first_bounds_say_the_layout_and_the_shape_that_fits():
  x = jnp.linspace(0.1, 0.9, 3 * 4 * 4).reshape(3, 4, 4)  # CHW
  lower, upper = jnp.array([0.0, -0.5, 0.0]), jnp.array([1.0, 1.0, 2.0])
  for call in (lambda b: ag.adaptive_sigma(x, bounds=b), lambda b: ag.check_bounds(x, b)):
    with pytest.raises(ValueError, match=r"shape \(3,\).*\(3, 4, 4\).*channels last \(NHWC.*shape \(3, 1, 1\)"):
      call((lower, upper))
  fitted = ag.adaptive_sigma(x, bounds=(lower.reshape(3, 1, 1), upper.reshape(3, 1, 1)))
  full = ag.adaptive_sigma(x, bounds=(jnp.broadcast_to(lower[:, None, None], x.shape),
                                      jnp.broadcast_to(upper[:, None, None], x.shape)))
  np.testing.assert_array_equal(np.asarray(fitted), np.asarray(full))
