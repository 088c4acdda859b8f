"""Statistics over examples: bootstrap confidence intervals and paired tests.

The evaluation runner (:func:`adaptgrad_jax.metrics.evaluate`) scores each
explainer on each example; these functions turn per-example scores into the
numbers a paper reports: a mean with a percentile bootstrap confidence
interval, and, for two explainers scored on the same examples, the mean
difference, its interval and a paired sign-flip permutation test. Keys are
explicit, as everywhere in the library: the same key gives the same interval.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

# Exact enumeration of the 2**n sign patterns up to this n (65536 patterns).
EXACT_MAX_N = 16

MAX_RESAMPLES = 10**7
"""The most bootstrap resamples drawn (their means take 80 MB; the Monte Carlo error of a 95% interval's
ends is far below the data's own long before)."""
MAX_PERMUTATIONS = 10**7
"""The most random sign patterns of the permutation test (p-values to about 1e-7)."""
BLOCK = 2**21
"""Resamples and sign patterns are drawn in blocks of at most this many indices (or one row, if longer),
so memory does not grow with their number."""


class ConfidenceInterval(NamedTuple):
  """A mean and its percentile bootstrap confidence interval.

  Attributes:
    mean: the sample mean.
    low: lower end of the interval.
    high: upper end of the interval.
    confidence: the confidence level, e.g. 0.95.
    num_resamples: bootstrap resamples drawn.
    n: number of values.
  """
  mean: float
  low: float
  high: float
  confidence: float
  num_resamples: int
  n: int


class PairedTest(NamedTuple):
  """A paired comparison of two sets of scores on the same examples.

  Attributes:
    mean_difference: mean of ``a - b``.
    low: lower end of the bootstrap interval of the mean difference.
    high: upper end.
    p_value: two-sided p-value of the sign-flip permutation test of
      "the differences are symmetric about 0" (statistic ``|mean(a - b)|``).
    n: number of pairs.
    method: ``"exact"`` (all ``2**n`` sign patterns) or ``"monte carlo"``.
    num_permutations: sign patterns evaluated (``2**n`` when exact).
    confidence: confidence level of the interval.
  """
  mean_difference: float
  low: float
  high: float
  p_value: float
  n: int
  method: str
  num_permutations: int
  confidence: float


def _values(values: ArrayLike, name: str) -> np.ndarray:
  v = np.asarray(values, dtype=np.float64)
  if v.ndim != 1:
    raise ValueError(f"{name} has shape {v.shape}; pass a 1-D array of "
                     "per-example scores")
  if v.size == 0:
    raise ValueError(f"{name} is empty; a confidence interval needs at "
                     "least one value")
  if not np.all(np.isfinite(v)):
    bad = int(np.flatnonzero(~np.isfinite(v))[0])
    raise ValueError(f"{name}[{bad}] = {v[bad]} is not finite; drop the "
                     "examples a metric could not score before summarising")
  return v


def _check_count(value, name: str, maximum: int, example: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}={value!r} must be a positive integer, e.g. {example}")
  if value > maximum:
    raise ValueError(
        f"{name}={value!r} is more than this library draws ({maximum:,}); the"
        f" Monte Carlo error is negligible long before (e.g. {example})")
  return int(value)


def _check_options(confidence, num_resamples) -> None:
  if (isinstance(confidence, bool) or not isinstance(confidence, (numbers.Real, np.floating))
      or not 0.0 < float(confidence) < 1.0):
    raise ValueError(f"confidence={confidence!r} must lie in (0, 1), e.g. "
                     "0.95 for a 95% interval")
  _check_count(num_resamples, "num_resamples", MAX_RESAMPLES, 2000)


def _blocks(key: jax.Array, rows: int, n: int):
  """``(block key, block rows)`` covering ``rows`` rows of ``n`` in blocks of at most ``BLOCK`` indices.

  One block is drawn with ``key`` itself; with more, block ``j`` with
  ``jax.random.fold_in(key, j)``.
  """
  per = max(1, BLOCK // max(n, 1))
  if rows <= per:
    yield key, rows
    return
  for j, start in enumerate(range(0, rows, per)):
    yield jax.random.fold_in(key, j), min(per, rows - start)


def bootstrap_indices(key: jax.Array, n: int, num_resamples: int) -> np.ndarray:
  """The resampling indices of :func:`bootstrap_ci`: ``(num_resamples, n)`` ints in [0, n).

  Drawn with ``jax.random.randint(key, (num_resamples, n), 0, n)`` when
  ``num_resamples * n <= BLOCK`` (2**21); above, in blocks of
  ``BLOCK // n`` rows, block ``j`` with ``jax.random.fold_in(key, j)``. The
  same key resamples the same examples whatever the values are (a paired
  comparison of two explainers resamples the same examples for both).
  :func:`bootstrap_ci` draws the same blocks one at a time, never holding
  them all.
  """
  num_resamples = _check_count(num_resamples, "num_resamples", MAX_RESAMPLES, 2000)
  return np.concatenate([np.asarray(jax.random.randint(k, (rows, n), 0, n))
                         for k, rows in _blocks(key, num_resamples, n)])


def bootstrap_ci(
    key: jax.Array,
    values: ArrayLike,
    *,
    confidence: float = 0.95,
    num_resamples: int = 2000,
) -> ConfidenceInterval:
  """Mean of per-example values with a percentile bootstrap confidence interval.

  Draws ``num_resamples`` resamples of the ``n`` values with replacement
  (:func:`bootstrap_indices`), takes the mean of each, and returns the
  ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those
  means (numpy's default linear interpolation): Efron's percentile interval.
  With one value the interval is that value.

  Args:
    key: PRNG key for the resamples.
    values: 1-D per-example scores, all finite.
    confidence: the confidence level, in (0, 1).
    num_resamples: bootstrap resamples, at most ``MAX_RESAMPLES`` (10**7);
      drawn in blocks, so memory does not grow with them beyond their means.

  Returns:
    A :class:`ConfidenceInterval`.

  Raises:
    ValueError: empty, non-1-D or non-finite `values`; bad options.

  Example:
    >>> import jax, numpy as np
    >>> from adaptgrad_jax.metrics import bootstrap_ci
    >>> ci = bootstrap_ci(jax.random.key(0), np.arange(20.0))
    >>> ci.mean, bool(ci.low < 9.5 < ci.high)
    (9.5, True)

  References:
    Efron and Tibshirani, "An Introduction to the Bootstrap", 1993, Ch. 13.
  """
  _check_options(confidence, num_resamples)
  v = _values(values, "values")
  means = np.concatenate([v[np.asarray(jax.random.randint(k, (rows, v.size), 0, v.size))].mean(axis=1)
                          for k, rows in _blocks(key, int(num_resamples), v.size)])
  lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
  return ConfidenceInterval(float(v.mean()), float(lo), float(hi),
                            float(confidence), int(num_resamples), int(v.size))


def _sign_patterns(n: int) -> np.ndarray:
  """All ``2**n`` sign patterns, ``(2**n, n)``, the first all +1 (bit j of row i: element j's sign)."""
  bits = (np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)) & 1
  return 1.0 - 2.0 * bits


def paired_test(
    key: jax.Array,
    a: ArrayLike,
    b: ArrayLike,
    *,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    num_permutations: int = 10000,
    exact_max_n: int = EXACT_MAX_N,
) -> PairedTest:
  """Paired comparison of scores ``a`` and ``b`` on the same examples.

  The differences ``d = a - b`` give the mean difference, its percentile
  bootstrap interval (:func:`bootstrap_ci` with ``key``'s first half), and a
  two-sided sign-flip permutation test of "``d`` is symmetric about 0" (no
  difference between the two explainers): the statistic is ``|mean(d)|``,
  and the p-value the share of sign patterns ``s`` with
  ``|mean(s * d)| >= |mean(d)|``. For ``n <= exact_max_n`` every one of the
  ``2**n`` patterns is enumerated (exact test; the smallest possible p-value
  is ``2 / 2**n``); above, ``num_permutations`` random patterns are drawn
  (with ``key``'s second half) and ``p = (1 + count) / (1 + num_permutations)``,
  which never gives 0. Ties are counted with a relative tolerance of 1e-12.

  Args:
    key: PRNG key (bootstrap and, for large n, the random sign patterns).
    a: 1-D scores of the first explainer, one per example.
    b: 1-D scores of the second, on the same examples in the same order.
    confidence: the confidence level of the interval.
    num_resamples: bootstrap resamples.
    num_permutations: random sign patterns when ``n > exact_max_n``, at most
      ``MAX_PERMUTATIONS`` (10**7), drawn in blocks as the resamples.
    exact_max_n: the largest n enumerated exactly.

  Returns:
    A :class:`PairedTest`.

  Raises:
    ValueError: `a` and `b` of different lengths, empty or non-finite, bad
      options.

  Example:
    >>> import jax, numpy as np
    >>> from adaptgrad_jax.metrics import paired_test
    >>> a = np.array([0.61, 0.58, 0.66, 0.70, 0.64, 0.59])
    >>> t = paired_test(jax.random.key(0), a, a - 0.02)
    >>> round(t.mean_difference, 6), t.p_value, t.method
    (0.02, 0.03125, 'exact')

  References:
    Good, "Permutation, Parametric and Bootstrap Tests of Hypotheses", 2005,
    Sec. 3.1 (the one-sample / paired permutation test).
  """
  _check_options(confidence, num_resamples)
  num_permutations = _check_count(num_permutations, "num_permutations", MAX_PERMUTATIONS, 10000)
  if (isinstance(exact_max_n, bool) or not isinstance(exact_max_n, (int, np.integer))
      or not 0 <= exact_max_n <= 20):
    raise ValueError(f"exact_max_n={exact_max_n!r} must be an integer in "
                     "[0, 20]: 2**n sign patterns are enumerated (n = 20 holds "
                     "about 170 MB); above it the test draws num_permutations")
  va, vb = _values(a, "a"), _values(b, "b")
  if va.shape != vb.shape:
    raise ValueError(f"a has {va.size} scores and b {vb.size}; a paired test "
                     "needs the two explainers' scores on the same examples")
  d = va - vb
  n = d.size
  k_boot, k_perm = jax.random.split(key)
  ci = bootstrap_ci(k_boot, d, confidence=confidence,
                    num_resamples=num_resamples)
  observed = abs(d.mean())
  tol = 1e-12 * max(1.0, float(np.abs(d).max()))
  if n <= exact_max_n:
    signs = _sign_patterns(n)
    stats = np.abs(signs @ d / n)
    p = float(np.mean(stats >= observed - tol))
    method, count = "exact", 2**n
  else:
    hits = 0
    for k, rows in _blocks(k_perm, num_permutations, n):
      signs = np.where(np.asarray(jax.random.bernoulli(k, 0.5, (rows, n))), 1.0, -1.0)
      hits += int(np.sum(np.abs(signs @ d / n) >= observed - tol))
    p = float((1 + hits) / (1 + num_permutations))
    method, count = "monte carlo", int(num_permutations)
  return PairedTest(float(d.mean()), ci.low, ci.high, min(p, 1.0), n, method,
                    count, float(confidence))
