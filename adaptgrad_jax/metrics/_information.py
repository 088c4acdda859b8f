"""Information level: XRAI's Performance Information Curves (SIC and AIC)."""

from __future__ import annotations

import io
import zlib
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from adaptgrad_jax.metrics import _common
from adaptgrad_jax._extras import install_hint

# XRAI's example thresholds (fractions of the most salient pixels revealed).
XRAI_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21,
                   0.34, 0.5, 0.75)
# The thresholds of the AdaptGrad code (experiments/get_if.py).
PAPER_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
ENTROPY_ESTIMATORS = ("webp", "png", "zlib")


class PicSkipped(ValueError):
  """Raised when an image cannot give a Performance Information Curve.

  XRAI skips such images: the model is not confident enough on the original,
  or the fully blurred image is not less informative or less predicted than
  the original. :func:`information_level` counts and skips them.
  """


class PicResult(NamedTuple):
  """A Performance Information Curve and its area.

  Attributes:
    auc: area under the curve, in [0, 1].
    curve_x: normalised information (entropy) levels, from 0 to 1.
    curve_y: normalised predictions at those levels.
    num_images: images that contributed (1 for a single image).
    num_skipped: images skipped as in XRAI (0 for a single image).
  """
  auc: float
  curve_x: np.ndarray
  curve_y: np.ndarray
  num_images: int = 1
  num_skipped: int = 0


def estimate_image_entropy(image_uint8: np.ndarray, method: str = "webp") -> int:
  """Information content of a uint8 image, estimated by its compressed size.

  ``"webp"`` is XRAI's estimator (lossless WebP through Pillow); ``"png"``
  uses Pillow's PNG encoder; ``"zlib"`` compresses the raw bytes with the
  standard library (no Pillow needed; a coarser proxy that ignores 2-D
  structure). Sizes are in bytes; only differences matter after PIC's
  normalisation.
  """
  _common.check_choice(method, "entropy", ENTROPY_ESTIMATORS)
  image_uint8 = np.ascontiguousarray(image_uint8, dtype=np.uint8)
  if method == "zlib":
    return len(zlib.compress(image_uint8.tobytes(), 9))
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"entropy={method!r} needs Pillow: {install_hint('plot')}, or pass"
        " entropy='zlib' for a dependency-free estimate.") from e
  if image_uint8.ndim == 3 and image_uint8.shape[-1] == 1:
    image_uint8 = image_uint8[..., 0]
  buffer = io.BytesIO()
  if method == "webp":
    Image.fromarray(image_uint8).save(buffer, format="webp", lossless=True,
                                      quality=100)
  else:
    Image.fromarray(image_uint8).save(buffer, format="png", optimize=True)
  return buffer.tell()


def random_pixel_mask(
    key: jax.Array, height: int, width: int, fraction: float = 0.01
) -> np.ndarray:
  """A boolean (H, W) mask with ``int(H * W * fraction)`` pixels set (XRAI)."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction={fraction!r} must lie in [0, 1]; XRAI uses 0.01.")
  n = int(height * width * fraction)
  idx = np.asarray(jax.random.permutation(key, height * width)[:n])
  mask = np.zeros(height * width, dtype=bool)
  mask[idx] = True
  return mask.reshape(height, width)


def blurred_image(image: np.ndarray, pixel_mask: np.ndarray) -> np.ndarray:
  """XRAI's bokeh: keep the masked pixels, linearly interpolate the others.

  The four corners are always kept; the result has the dtype of ``image``
  (rounded for integer images). ``image`` is (H, W) or (H, W, C).

  The arithmetic is PAIR saliency's ``create_blurred_image`` (0.2.1) step
  for step, so that the bytes (and hence the entropy estimates) agree: the
  working copy is ``image * mask`` with a float32 mask (float32 for a uint8
  image), the interpolated values are stored into it (rounded to float32),
  and integer images are rounded in that precision before the cast back.
  """
  from scipy import interpolate  # pylint: disable=import-outside-toplevel
  image = np.asarray(image)
  dtype = image.dtype
  img = image[..., None] if image.ndim == 2 else image
  h, w = pixel_mask.shape
  mask = np.array(pixel_mask, dtype=bool, copy=True)
  mask[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
  if np.all(mask):
    return image.copy()
  mean_color = np.mean(img, axis=(0, 1))
  out = img * mask[..., None].astype(np.float32)
  known = np.argwhere(mask)
  unknown = np.argwhere(~mask)
  # One triangulation for all channels: PAIR calls griddata per channel, which
  # triangulates the same points each time; the interpolated values are the same.
  interpolator = interpolate.LinearNDInterpolator(known, img[tuple(known.T)], fill_value=np.nan)
  values = interpolator(unknown)  # (num_unknown, C)
  values = np.where(np.isnan(values), mean_color, values)  # outside the hull: the channel's mean colour
  out[tuple(unknown.T)] = values
  if image.ndim == 2:
    out = out[..., 0]
  if np.issubdtype(dtype, np.integer):
    out = np.round(out)
  return out.astype(dtype)


def _to_uint8(x: np.ndarray, bounds) -> np.ndarray:
  lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds)
  return np.round(np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)


def _from_uint8(u: np.ndarray, bounds) -> np.ndarray:
  lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds)
  return (lo + u.astype(np.float64) / 255.0 * (hi - lo)).astype(np.float32)


def performance_information_curve(
    image: ArrayLike,
    saliency: ArrayLike,
    predict_fn: Callable[[jax.Array], jax.Array],
    *,
    random_mask: np.ndarray,
    kind: str = "softmax",
    bounds: tuple = (0.0, 1.0),
    thresholds: Sequence[float] = XRAI_THRESHOLDS,
    entropy: str = "webp",
    min_pred_value: float = 0.8,
    keep_monotonous: bool = True,
    num_data_points: int = 1000,
    reduce_channels: str | None = "sum",
) -> PicResult:
  """Softmax or Accuracy Information Curve of one image (XRAI).

  Starting from a "fully blurred" image (only ``random_mask`` pixels kept,
  the rest linearly interpolated), the most salient pixels are revealed for
  each fraction in ``thresholds``, the bokeh image is re-interpolated, and
  the model's prediction is plotted against the image's information content
  (estimated by its compressed size), both normalised to [0, 1] between the
  fully blurred and the original image. The curve is the prediction as a
  function of information; its AUC is the information level: higher means the
  explanation finds the informative pixels first.

  * ``kind="softmax"`` (SIC): the prediction is the probability of the class
    the model predicts on the original image.
  * ``kind="accuracy"`` (AIC): the prediction is 1 if the model still
    predicts that class, else 0.

  The image is quantised to uint8 between ``bounds`` (entropy is measured on
  those bytes, blurring happens on them, as in XRAI), then mapped back to
  ``bounds`` for ``predict_fn``. The saliency is used as given (XRAI leaves
  abs to the caller); an (H, W, C) saliency is channel-reduced.

  Args:
    image: one image, (H, W) or (H, W, C), values within ``bounds``.
    saliency: its explanation, (H, W) or (H, W, C).
    predict_fn: maps a batch (B, H, W[, C]) to class probabilities (B, K).
    random_mask: boolean (H, W) seed mask (see :func:`random_pixel_mask`).
    kind: ``"softmax"`` (SIC) or ``"accuracy"`` (AIC).
    bounds: (low, high) of the input range; arrays broadcast per channel.
    thresholds: ascending fractions of most salient pixels to reveal.
    entropy: ``"webp"`` (XRAI), ``"png"`` or ``"zlib"`` (no Pillow).
    min_pred_value: SIC only: skip images predicted with less confidence.
    keep_monotonous: keep the curve non-decreasing (XRAI's choice).
    num_data_points: points of the interpolated curve (plus x = 1).
    reduce_channels: reduction of an (H, W, C) saliency.

  Returns:
    A :class:`PicResult`.

  Raises:
    PicSkipped: the image fails XRAI's filters (see :class:`PicSkipped`).
    ValueError: shapes that do not match, NaN in the saliency, bad options.

  References:
    Kapishnikov et al., "XRAI: Better attributions through regions", ICCV
    2019, Sec. 4.1 (and the PAIR saliency library's ``pic_metrics``).
  """
  _common.check_choice(kind, "kind", ("softmax", "accuracy"))
  _common.check_choice(entropy, "entropy", ENTROPY_ESTIMATORS)
  thresholds = [float(t) for t in thresholds]
  if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds) or any(
      b <= a for a, b in zip(thresholds, thresholds[1:])):
    raise ValueError(
        f"thresholds={thresholds!r} must be a non-empty, strictly increasing "
        f"sequence of fractions in (0, 1]; XRAI uses {XRAI_THRESHOLDS}.")
  img = np.asarray(image, dtype=np.float64)
  sal = _common.as_float_array(saliency, "saliency")
  _common.check_finite(sal, "saliency")
  sal = np.asarray(_common.reduce_channels(sal, reduce_channels), np.float64)
  if img.ndim not in (2, 3) or sal.shape != img.shape[:2]:
    raise ValueError(
        f"image has shape {img.shape} and saliency (after channel reduction) "
        f"{sal.shape}; pass one (H, W) or (H, W, C) image and an (H, W) or "
        f"(H, W, C) map of the same height and width.")
  random_mask = np.asarray(random_mask, dtype=bool)
  if random_mask.shape != sal.shape:
    raise ValueError(
        f"random_mask has shape {random_mask.shape}; it must be (H, W) = "
        f"{sal.shape}; make it with random_pixel_mask(key, H, W).")

  u8 = _to_uint8(img, bounds)
  masks = []
  for t in thresholds:
    q = np.quantile(sal, 1.0 - t)
    masks.append(np.logical_or(sal >= q, random_mask))
  bokeh = [blurred_image(u8, random_mask)] + [blurred_image(u8, m) for m in masks]
  batch = np.stack([u8] + bokeh)
  probs = np.asarray(predict_fn(jnp.asarray(_from_uint8(batch, bounds))))
  if probs.ndim != 2 or probs.shape[0] != batch.shape[0]:
    raise ValueError(
        f"predict_fn returned shape {probs.shape} for a batch of "
        f"{batch.shape[0]} images; it must return class probabilities of "
        f"shape (B, num_classes).")
  label = int(np.argmax(probs[0]))
  if kind == "softmax":
    preds = probs[:, label]
  else:
    preds = (np.argmax(probs, axis=1) == label).astype(np.float64)
  original_pred, blurred_pred = float(preds[0]), float(preds[1])
  entropies = [estimate_image_entropy(b, entropy) for b in batch]
  original_entropy, blurred_entropy = entropies[0], entropies[1]

  if original_pred < min_pred_value:
    raise PicSkipped(
        f"the model's prediction on the original image is {original_pred:.4f} "
        f"< min_pred_value={min_pred_value}; skip this image or lower "
        f"min_pred_value.")
  if blurred_entropy >= original_entropy:
    raise PicSkipped(
        f"the fully blurred image ({blurred_entropy} bytes) is not less "
        f"informative than the original ({original_entropy} bytes).")
  if blurred_pred >= original_pred:
    raise PicSkipped(
        f"the prediction on the fully blurred image ({blurred_pred:.4f}) is "
        f"not lower than on the original ({original_pred:.4f}).")

  points = []
  best = 0.0
  for ent, pred in zip(entropies[2:], preds[2:]):
    x = np.clip((ent - blurred_entropy) / (original_entropy - blurred_entropy),
                0.0, 1.0)
    y = np.clip((pred - blurred_pred) / (original_pred - blurred_pred), 0.0, 1.0)
    best = max(best, float(y))
    points.append((float(x), best if keep_monotonous else float(y)))
  return _curve_from_points(points, num_data_points)


def _curve_from_points(points, num_data_points: int) -> PicResult:
  """The PIC curve through the thresholds' ``points`` (x, y), as PAIR 0.2.1.

  The anchors (0, 0) and (1, 1) are appended AFTER the thresholds' points and
  the list goes to ``scipy.interpolate.interp1d`` unsorted: interp1d sorts by
  x with a stable sort, so among points that share an x value (an entropy
  clipped to 0 or 1) the anchor comes last, exactly as in PAIR's
  ``compute_pic_metric``. Which of the tied points the interpolation then
  uses is scipy's choice; keeping PAIR's order keeps PAIR's value (putting
  the anchors first gives e.g. 0.5 instead of 0.35 for three points at
  (1, 0.7)).
  """
  from scipy import interpolate  # pylint: disable=import-outside-toplevel
  xs, ys = zip(*(list(points) + [(0.0, 0.0), (1.0, 1.0)]))
  f = interpolate.interp1d(np.asarray(xs), np.asarray(ys))
  curve_x = np.linspace(0.0, 1.0, num_data_points, endpoint=False)
  curve_y = np.asarray(f(curve_x), dtype=np.float64)
  curve_x = np.append(curve_x, 1.0)
  curve_y = np.append(curve_y, 1.0)
  return PicResult(float(np.trapezoid(curve_y, curve_x)), curve_x, curve_y)


def information_level(
    key: jax.Array,
    images: ArrayLike,
    saliency_maps: ArrayLike,
    predict_fn: Callable[[jax.Array], jax.Array],
    *,
    kind: str = "softmax",
    aggregate: str = "median",
    masks_per_image: int = 1,
    mask_fraction: float = 0.01,
    **pic_kwargs,
) -> PicResult:
  """Aggregated Performance Information Curve (SIC or AIC) over a batch.

  For each image, ``masks_per_image`` random seed masks (``mask_fraction`` of
  the pixels, XRAI: 0.01; the AdaptGrad code draws 10 per image) give one
  curve each via :func:`performance_information_curve`; images that fail
  XRAI's filters are skipped and counted. The curves are aggregated point by
  point with the median (XRAI) or mean, and the AUC of that curve is the
  information level reported in the AdaptGrad paper's Table 2 (IL column).

  Args:
    key: PRNG key for the random seed masks.
    images: (B, H, W) or (B, H, W, C) images within ``bounds``.
    saliency_maps: their explanations, (B, H, W) or (B, H, W, C).
    predict_fn: batch of images -> class probabilities (B, K).
    kind: ``"softmax"`` (SIC) or ``"accuracy"`` (AIC).
    aggregate: ``"median"`` (XRAI) or ``"mean"``.
    masks_per_image: random seed masks per image.
    mask_fraction: fraction of pixels kept in a seed mask.
    **pic_kwargs: options of :func:`performance_information_curve`
      (``bounds``, ``thresholds``, ``entropy``, ``min_pred_value``, ...).

  Returns:
    A :class:`PicResult` with the aggregated curve, its AUC and counts.

  Raises:
    ValueError: mismatched batch sizes, bad options, or every image skipped
      (the message gives the first reason).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from adaptgrad_jax.metrics import information_level
    >>> xs = jnp.zeros((2, 16, 16)).at[:, 4:12, 4:12].set(
    ...     jax.random.uniform(jax.random.key(1), (2, 8, 8)))
    >>> def probs(b):  # confident when the central patch is intact
    ...   s = 40 * jnp.abs(b - xs[:1]).mean((1, 2))
    ...   return jnp.stack([1 - jnp.tanh(s) / 2, jnp.tanh(s) / 2], axis=1)
    >>> res = information_level(jax.random.key(0), xs, xs, probs, entropy="zlib",
    ...                         min_pred_value=0.5)
    >>> 0.0 <= res.auc <= 1.0
    True

  References:
    Kapishnikov et al., "XRAI: Better attributions through regions", ICCV 2019.
    Zhou et al., "AdaptGrad", NeurIPS 2025, Table 2.
  """
  _common.check_choice(aggregate, "aggregate", ("median", "mean"))
  if masks_per_image < 1:
    raise ValueError(f"masks_per_image={masks_per_image!r} must be >= 1.")
  images = np.asarray(images)
  saliency_maps = np.asarray(saliency_maps)
  if images.shape[0] != saliency_maps.shape[0]:
    raise ValueError(
        f"images has {images.shape[0]} examples but saliency_maps has "
        f"{saliency_maps.shape[0]}; pass one map per image.")
  h, w = images.shape[1:3]
  curves, skipped, reason = [], 0, None
  keys = jax.random.split(key, images.shape[0] * masks_per_image)
  for i in range(images.shape[0]):
    for j in range(masks_per_image):
      mask = random_pixel_mask(keys[i * masks_per_image + j], h, w, mask_fraction)
      try:
        curves.append(performance_information_curve(
            images[i], saliency_maps[i], predict_fn, random_mask=mask,
            kind=kind, **pic_kwargs))
      except PicSkipped as e:
        skipped += 1
        reason = reason or str(e)
  if not curves:
    raise ValueError(
        f"every one of the {skipped} image/mask pairs was skipped by XRAI's "
        f"filters; first reason: {reason}")
  ys = np.stack([c.curve_y for c in curves])
  y = np.median(ys, axis=0) if aggregate == "median" else np.mean(ys, axis=0)
  x = curves[0].curve_x
  return PicResult(float(np.trapezoid(y, x)), x, y, len(curves), skipped)
