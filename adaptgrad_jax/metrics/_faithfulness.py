"""Faithfulness: deletion / insertion curves and faithfulness correlation."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common
from adaptgrad_jax.metrics import _correlation


class CurveResult(NamedTuple):
  """A deletion or insertion curve.

  Attributes:
    auc: trapezoidal area under the curve over fractions in [0, 1].
    fractions: fraction of features removed (deletion) or inserted.
    scores: the target-class score after each step.
  """
  auc: jax.Array
  fractions: jax.Array
  scores: jax.Array


def _feature_map(image: jax.Array, attribution: jax.Array, reduce_channels):
  """Returns the attribution per feature and whether it is per pixel."""
  if attribution.shape == image.shape:
    if image.ndim == 3 and reduce_channels is not None:
      return _common.reduce_channels(attribution, reduce_channels), True
    return attribution, False
  if image.ndim == attribution.ndim + 1 and image.shape[:-1] == attribution.shape:
    return attribution, True
  raise ValueError(
      f"attribution has shape {attribution.shape} but image has shape "
      f"{image.shape}; pass a map of the image's shape, or of its shape "
      f"without the trailing channel axis (a per-pixel map).")


def _expand(mask: jax.Array, per_pixel: bool) -> jax.Array:
  return mask[..., None] if per_pixel else mask


def _target_score(predict_fn, batch, target):
  # No clamping: a traced out-of-range target gives NaN (concrete ones are
  # refused before tracing by _common.check_target).
  return _common.take_target(predict_fn(batch), target)


def _validate(image, attribution, num_steps):
  if int(num_steps) < 1:
    raise ValueError(f"num_steps={num_steps!r} must be a positive integer.")
  img = _common.as_float_array(image, "image")
  att = _common.as_float_array(attribution, "attribution")
  _common.check_finite(att, "attribution")
  return img, att


def _ordering_curve(predict_fn, image, attribution, target, baseline,
                    num_steps, reduce_channels, batch_size, deletion):
  img, att = _validate(image, attribution, num_steps)
  _feature_map(img, att, reduce_channels)  # validates shapes
  if reduce_channels is not None:
    _common.reduce_channels(jnp.zeros((1, 1, 1)), reduce_channels)
  _common.check_target(target, _common.num_outputs(predict_fn, img))
  use_pred = target is None
  target = jnp.asarray(0 if use_pred else target, jnp.int32)
  base = jnp.broadcast_to(jnp.asarray(baseline, img.dtype), img.shape)
  return _ordering_curve_jit(
      predict_fn, img, att, target, base, use_pred=use_pred,
      num_steps=int(num_steps), reduce_channels=reduce_channels,
      batch_size=batch_size, deletion=deletion)


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "use_pred", "num_steps", "reduce_channels", "batch_size", "deletion"))
def _ordering_curve_jit(predict_fn, img, att, target, base, *, use_pred,
                        num_steps, reduce_channels, batch_size, deletion):
  feat, per_pixel = _feature_map(img, att, reduce_channels)
  n = feat.size
  order = jnp.argsort(-feat.reshape(-1), stable=True)
  rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  rank = rank.reshape(feat.shape)
  if use_pred:
    target = jnp.argmax(predict_fn(img[None])[0])
  counts = jnp.round(jnp.linspace(0.0, n, num_steps + 1)).astype(jnp.int32)

  def step(k):
    chosen = _expand(rank < k, per_pixel)
    if deletion:
      return jnp.where(chosen, base, img)
    return jnp.where(chosen, img, base)

  if batch_size is None:
    scores = _target_score(predict_fn, jax.vmap(step)(counts), target)
  else:
    scores = jax.lax.map(
        lambda k: _target_score(predict_fn, step(k)[None], target)[0], counts,
        batch_size=batch_size)
  fractions = counts / n
  auc = jnp.trapezoid(scores, fractions)
  return CurveResult(auc, fractions, scores)


_COMMON_ARGS = """
  Args:
    predict_fn: maps a batch (B, ...) of images to scores (B, K); RISE uses
      class probabilities.
    image: one image without batch axis, e.g. (H, W, C) or (n,).
    attribution: its explanation, of the image's shape (per element, or per
      pixel after ``reduce_channels`` for an (H, W, C) image) or of the image's
      shape without the channel axis (per pixel).
    target: the class whose score is tracked; default the predicted class.
    baseline: the value of a removed feature (scalar or an array of the
      image's shape, e.g. a blurred copy).
    num_steps: number of steps from 0 to all features (RISE: one step per
      224 pixels); fractions are ``k / num_steps``.
    reduce_channels: channel reduction of an (H, W, C) attribution so that
      whole pixels are ranked (default ``"sum"``); None ranks every element.
    batch_size: evaluate the steps in chunks of this size with
      ``jax.lax.map`` (memory control); None evaluates all at once.

  Returns:
    A :class:`CurveResult` (auc, fractions, scores).

  Raises:
    ValueError: a map whose shape does not fit the image, NaN in the map,
      num_steps < 1.
"""


def deletion(
    predict_fn: Callable[[jax.Array], jax.Array],
    image: ArrayLike,
    attribution: ArrayLike,
    *,
    target: int | None = None,
    baseline: ArrayLike = 0.0,
    num_steps: int = 100,
    reduce_channels: str | None = "sum",
    batch_size: int | None = None,
) -> CurveResult:
  return _ordering_curve(predict_fn, image, attribution, target, baseline,
                         num_steps, reduce_channels, batch_size, deletion=True)


def insertion(
    predict_fn: Callable[[jax.Array], jax.Array],
    image: ArrayLike,
    attribution: ArrayLike,
    *,
    target: int | None = None,
    baseline: ArrayLike = 0.0,
    num_steps: int = 100,
    reduce_channels: str | None = "sum",
    batch_size: int | None = None,
) -> CurveResult:
  return _ordering_curve(predict_fn, image, attribution, target, baseline,
                         num_steps, reduce_channels, batch_size, deletion=False)


deletion.__doc__ = """Deletion curve: remove the most important features first.

  Features are ranked by attribution (descending, ties in index order); after
  removing the top ``k / num_steps`` fraction (replacing it by ``baseline``)
  the target score is recorded. A faithful explanation makes the score drop
  fast: LOWER AUC is better. Signed attributions are ranked as given (pass
  ``jnp.abs(a)`` to rank by magnitude).

  Quantus' ``PixelFlipping`` is the same ordering with two deliberate
  differences: it applies a softmax to the model's output by default
  (``softmax=True``; pass probabilities as ``predict_fn`` to match), and its
  curve starts after the first step (without the unperturbed image) and is
  integrated with ``np.trapz(scores, dx=1)`` over step indices, not over
  fractions in [0, 1]. Here the curve includes the unperturbed point
  (fraction 0), as RISE does.
""" + _COMMON_ARGS + """
  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import deletion
    >>> w = jnp.array([4.0, 3.0, 2.0, 1.0])
    >>> f = lambda b: jnp.stack([b @ w, -(b @ w)], axis=1)
    >>> float(deletion(f, jnp.ones(4), w, target=0, num_steps=4).auc)
    3.75

  References:
    Petsiuk et al., "RISE: Randomized input sampling for explanation of
    black-box models", BMVC 2018.
"""

insertion.__doc__ = """Insertion curve: reveal the most important features first.

  Starting from ``baseline`` (RISE uses a blurred copy of the image), the top
  ``k / num_steps`` fraction of features is copied from the image and the
  target score recorded. A faithful explanation makes the score rise fast:
  HIGHER AUC is better.
""" + _COMMON_ARGS + """
  Example:
    >>> import jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import insertion
    >>> w = jnp.array([4.0, 3.0, 2.0, 1.0])
    >>> f = lambda b: jnp.stack([b @ w, -(b @ w)], axis=1)
    >>> float(insertion(f, jnp.ones(4), w, target=0, num_steps=4).auc)
    6.25

  References:
    Petsiuk et al., "RISE: Randomized input sampling for explanation of
    black-box models", BMVC 2018.
"""


def faithfulness_correlation(
    key: jax.Array,
    predict_fn: Callable[[jax.Array], jax.Array],
    image: ArrayLike,
    attribution: ArrayLike,
    *,
    target: int | None = None,
    num_runs: int = 100,
    subset_size: int = 224,
    baseline: ArrayLike = 0.0,
    reduce_channels: str | None = "sum",
) -> jax.Array:
  """Faithfulness correlation (Bhatt et al. 2020), Quantus' convention.

  ``num_runs`` times, a random subset of ``subset_size`` features (drawn
  uniformly without replacement, see :func:`random_subsets`) is set to
  ``baseline``; the drop in the target score ``f(x)[t] - f(x_S)[t]`` is
  correlated (Pearson) with the sum of the attributions of the subset.
  HIGHER is better (1: the attributions predict every drop linearly).
  Quantus' defaults are 100 runs of 224 pixels with a black (0) baseline and
  the model's logits (Quantus draws its subsets with NumPy's global
  generator, so single values differ from ours; the distribution of the
  subsets, uniform without replacement, is the same); pass ``predict_fn`` returning logits or probabilities
  as you prefer.

  Args:
    key: PRNG key for the random subsets.
    predict_fn: batch of images -> scores (B, K).
    image: one image without batch axis.
    attribution: its explanation (see :func:`deletion` for the shapes).
    target: the class tracked; default the predicted class.
    num_runs: number of random subsets.
    subset_size: features per subset (pixels for a per-pixel map).
    baseline: replacement value (scalar or image-shaped array).
    reduce_channels: channel reduction of an (H, W, C) attribution.

  Returns:
    A scalar in [-1, 1] (NaN if every subset changes the score equally).

  Raises:
    ValueError: shape mismatch, NaN in the map, subset_size not in
      [1, number of features], num_runs < 2.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import faithfulness_correlation
    >>> w = jnp.arange(1.0, 17.0)
    >>> f = lambda b: (b @ w)[:, None]
    >>> r = faithfulness_correlation(jax.random.key(0), f, jnp.ones(16), w,
    ...                              target=0, num_runs=20, subset_size=4)
    >>> round(float(r), 4)
    1.0

  References:
    Bhatt, Weller and Moura, "Evaluating and aggregating feature-based model
    explanations", IJCAI 2020. Hedström et al., "Quantus", JMLR 2023.
  """
  img, att = _validate(image, attribution, 1)
  feat, per_pixel = _feature_map(img, att, reduce_channels)
  n = feat.size
  if not 1 <= int(subset_size) <= n:
    raise ValueError(
        f"subset_size={subset_size!r} must lie in [1, {n}] (the number of "
        f"features of this map); Quantus uses 224 for ImageNet images.")
  if int(num_runs) < 2:
    raise ValueError(f"num_runs={num_runs!r} must be >= 2 to correlate; "
                     f"Quantus uses 100.")
  base = jnp.broadcast_to(jnp.asarray(baseline, img.dtype), img.shape)
  _common.check_target(target, _common.num_outputs(predict_fn, img))
  use_pred = target is None
  target = jnp.asarray(0 if use_pred else target, jnp.int32)
  return _faithfulness_jit(predict_fn, key, img, att, target, base,
                           use_pred=use_pred, num_runs=int(num_runs),
                           subset_size=int(subset_size),
                           reduce_channels=reduce_channels)


def random_subsets(key: jax.Array, num_runs: int, n: int,
                   subset_size: int) -> jax.Array:
  """``num_runs`` uniformly random subsets of ``subset_size`` of ``n`` items, as masks.

  Each run draws n random 32-bit keys (one ``jax.random.bits`` call for all
  runs) whose lowest ``ceil(log2 n)`` bits are replaced by the item's index,
  so that the keys are distinct, and keeps the ``subset_size`` smallest: the
  threshold is found by a 32-step bisection on counts, which vectorises over
  runs and items (no sort, no sequential draw without replacement; about
  15x faster than ``jax.random.choice(..., replace=False)`` per run on CPU).
  Items whose random bits tie are ordered by index, a bias of order
  ``n / 2**(32 - log2 n)`` at the boundary only.

  Returns:
    A bool array (num_runs, n) with exactly ``subset_size`` True per row.
  """
  bits = jax.random.bits(key, (num_runs, n), jnp.uint32)
  shift = max(1, int(n - 1).bit_length())
  keys = ((bits >> shift) << shift) | jnp.arange(n, dtype=jnp.uint32)

  def bisect(_, bounds):  # smallest t with #(keys <= t) >= subset_size
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(keys <= mid[:, None], axis=1) >= subset_size
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  lo = jnp.zeros(num_runs, jnp.uint32)
  hi = jnp.full(num_runs, 0xFFFFFFFF, jnp.uint32)
  lo, _ = jax.lax.fori_loop(0, 32, bisect, (lo, hi))
  return keys <= lo[:, None]


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "use_pred", "num_runs", "subset_size", "reduce_channels"))
def _faithfulness_jit(predict_fn, key, img, att, target, base, *, use_pred,
                      num_runs, subset_size, reduce_channels):
  feat, per_pixel = _feature_map(img, att, reduce_channels)
  n = feat.size
  if use_pred:
    target = jnp.argmax(predict_fn(img[None])[0])
  flat = feat.reshape(-1)
  chosen = random_subsets(key, num_runs, n, subset_size)  # (runs, n) bool
  att_sums = jnp.dot(chosen.astype(flat.dtype), flat,
                     precision=jax.lax.Precision.HIGHEST)
  chosen = _expand(chosen.reshape((num_runs,) + feat.shape), per_pixel)
  perturbed = jnp.where(chosen, base[None], img[None])
  scores = _target_score(predict_fn, jnp.concatenate([img[None], perturbed]),
                         target)
  drops = scores[0] - scores[1:]
  return _correlation._pearson(att_sums, drops)  # pylint: disable=protected-access
