"""Parity of adaptgrad_jax.metrics with the peer packages on the same inputs.

PAIR saliency 0.2.1 (``saliency.metrics``), Captum 0.9 and Quantus 0.6 are
test-time dependencies; a test skips when its peer is not installed. PAIR and
Quantus call ``np.trapz``, which NumPy 2.4 removed: the ``np_trapz`` fixture
restores it as ``np.trapezoid`` for the duration of a test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptgrad_jax import metrics


@pytest.fixture
def np_trapz(monkeypatch):
  if not hasattr(np, "trapz"):
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", False)


# ------------------------------------------------------------ PAIR: PIC
def _pic_problem(rng, structured, size=20, channels=3):
  """An image, a saliency map, a seed mask and a row-independent float64 model."""
  if structured:
    ii, jj = np.mgrid[0:size, 0:size]
    img = np.stack([(ii * 9) % 256, (jj * 7) % 256, ((ii + jj) * 5) % 256], -1)
    img[size // 4:size // 2, size // 2:3 * size // 4] = rng.integers(
        0, 256, size=(size // 4, size // 4, 3))
    img = img.astype(np.uint8)
    sal = np.zeros((size, size))
    sal[size // 4:size // 2, size // 2:3 * size // 4] = 1.0
    sal += rng.random((size, size)) * 0.5
    sal[::5] = 0.0  # ties, so that np.quantile's thresholds catch many pixels
  else:
    img = rng.integers(0, 256, size=(size, size, 3)).astype(np.uint8)
    sal = rng.normal(size=(size, size))
  img = img[..., 0] if channels == 1 else img
  mask = rng.random((size, size)) < 0.01
  ref = img.astype(np.float64) / 255.0
  w = rng.normal(size=(3,))

  def probs64(batch):  # numpy float64, one row at a time: batching-invariant
    batch = np.asarray(batch, np.float64).reshape(len(batch), -1)
    err = np.abs(batch - ref.reshape(1, -1)).mean(axis=1)
    logits = np.stack([4.0 - 30.0 * err, w[0] + 0 * err, w[1] + 0 * err], 1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

  return img, sal, mask, probs64


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("kind", ["softmax", "accuracy"])
@pytest.mark.parametrize("channels", [1, 3])
def test_pic_equals_pair_saliency(structured, kind, channels, np_trapz, rng):
  pic = pytest.importorskip("saliency.metrics.pic")
  # (no threshold 1.0: PAIR returns an (H, W, 1) image for a full mask of a
  # grey image, which its own WebP estimator cannot encode)
  thresholds = [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.34, 0.5, 0.75]
  results_ours, results_pair = [], []
  for _ in range(2):
    img, sal, mask, probs64 = _pic_problem(rng, structured, channels=channels)
    label = int(np.argmax(probs64(img[None] / 255.0)[0]))

    def to_model(b):  # what our PIC hands predict_fn: float32(u8 / 255)
      return (np.asarray(b, np.float64) / 255.0).astype(np.float32)

    if kind == "softmax":
      pred_func = lambda b: list(probs64(to_model(b))[:, label])
    else:
      pred_func = lambda b: list(
          (np.argmax(probs64(to_model(b)), 1) == label).astype(np.float64))
    try:
      want = pic.compute_pic_metric(img, sal, mask, pred_func, thresholds,
                                    min_pred_value=0.0)
    except pic.ComputePicMetricError:
      with pytest.raises(metrics.PicSkipped):
        metrics.performance_information_curve(
            img / 255.0, sal, probs64, random_mask=mask, kind=kind,
            thresholds=thresholds, min_pred_value=0.0)
      continue
    got = metrics.performance_information_curve(
        img / 255.0, sal, probs64, random_mask=mask, kind=kind,
        thresholds=thresholds, min_pred_value=0.0)
    # The bokeh images are bit-identical, so the curves are the same floats.
    for ours, theirs in zip([metrics.blurred_image(img, mask)], want.blurred_images):
      np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))
    np.testing.assert_array_equal(got.curve_x, want.curve_x)
    np.testing.assert_allclose(got.curve_y, want.curve_y, rtol=0, atol=1e-12)
    assert got.auc == pytest.approx(float(want.auc), abs=1e-12)
    results_ours.append(got)
    results_pair.append(want)
  if results_pair:
    agg = pic.aggregate_individual_pic_results(results_pair, method="median")
    y = np.median(np.stack([r.curve_y for r in results_ours]), axis=0)
    assert float(np.trapezoid(y, results_ours[0].curve_x)) == pytest.approx(
        float(agg.auc), abs=1e-12)


def test_pic_repeated_x_three_points_equals_pair(np_trapz):
  """The 3-point case of issue 17: PAIR 0.35, the old anchor order 0.50."""
  pytest.importorskip("saliency.metrics.pic")
  from scipy import interpolate
  from adaptgrad_jax.metrics import _information
  points = [(1.0, 0.7)] * 3
  # PAIR's code path (compute_pic_metric's tail), verbatim.
  tuples = list(points) + [(0.0, 0.0), (1.0, 1.0)]
  entropy_data, pred_data = zip(*tuples)
  f = interpolate.interp1d(x=entropy_data, y=pred_data)
  curve_x = np.linspace(start=0.0, stop=1.0, num=1000, endpoint=False)
  curve_y = np.append(np.asarray([f(x) for x in curve_x]), 1.0)
  want = np.trapz(curve_y, np.append(curve_x, 1.0))
  got = _information._curve_from_points(points, 1000)
  assert got.auc == pytest.approx(want, abs=1e-12)
  assert got.auc == pytest.approx(0.35, abs=1e-3)
