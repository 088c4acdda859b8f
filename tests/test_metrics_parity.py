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
      pred_func = lambda b, p=probs64, t=label: list(p(to_model(b))[:, t])
    else:
      pred_func = lambda b, p=probs64, t=label: list(
          (np.argmax(p(to_model(b)), 1) == t).astype(np.float64))
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


# ------------------------------------------- Captum and Quantus: shared setup
B, S = 3, 6  # examples, perturbations per example


@pytest.fixture
def peer_problem(x64):
  """A float32 torch MLP (Quantus feeds float32 tensors), its float64 twin for
  Captum, the same model in JAX (float64) and a batch of channel-first inputs."""
  torch = pytest.importorskip("torch")
  import copy
  torch.manual_seed(0)
  model = torch.nn.Sequential(
      torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh(),
      torch.nn.Linear(16, 3)).eval()
  model64 = copy.deepcopy(model).double()

  def params_of(m):
    sd = {k: jnp.asarray(v.detach().double().numpy()) for k, v in m.state_dict().items()}
    return {"l1": {"w": sd["1.weight"].T, "b": sd["1.bias"]},
            "l2": {"w": sd["3.weight"].T, "b": sd["3.bias"]}}

  def f(x, p):
    h = jnp.tanh(x.reshape(-1) @ p["l1"]["w"] + p["l1"]["b"])
    return h @ p["l2"]["w"] + p["l2"]["b"]

  params = params_of(model)
  grad = jax.jit(lambda x, p, t: jax.grad(lambda v: f(v, p)[t])(x))
  predict = lambda b: jax.vmap(lambda v: f(v, params))(b)
  rng = np.random.default_rng(0)
  xb = rng.uniform(0.2, 0.8, size=(B, 1, 8, 8))
  yb = np.asarray(jnp.argmax(predict(jnp.asarray(xb)), 1))

  def explain_np(model, inputs, targets, **kwargs):  # Quantus' explain_func
    p = params_of(model) if isinstance(model, torch.nn.Module) else params
    xs = jnp.asarray(np.asarray(inputs, np.float64))
    return np.asarray(jax.vmap(lambda x, t: grad(x, p, t))(xs, jnp.asarray(targets)))

  keys = jax.random.split(jax.random.key(3), B)

  def noise_table(perturb_fn):
    """The noise our metrics draw for each example and sample (documented keys)."""
    out = np.zeros((B, S) + xb.shape[1:])
    for b in range(B):
      k_noise, _ = jax.random.split(keys[b])
      for s, k in enumerate(jax.random.split(k_noise, S)):
        out[b, s] = np.asarray(perturb_fn(k, jnp.zeros(xb.shape[1:])))
    return out

  def quantus_perturb(noise):
    """A Quantus perturb_func adding sample s of our noise at its s-th call."""
    step = {"i": 0}

    def perturb(arr, indices, **kwargs):
      s = step["i"]
      step["i"] += 1
      return arr + noise[:, s].reshape(B, -1)
    return perturb

  from types import SimpleNamespace
  return SimpleNamespace(
      torch=torch, model=model, model64=model64, params=params, params_of=params_of,
      grad=grad, predict=predict, xb=xb, yb=yb, X=jnp.asarray(xb), Y=jnp.asarray(yb),
      explain_np=explain_np, keys=keys, noise_table=noise_table,
      quantus_perturb=quantus_perturb,
      explain=lambda k, x, t: grad(x, params, t))


def _quantus_call(p, metric, a_batch=None, **kwargs):
  if a_batch is None:
    a_batch = p.explain_np(p.model, p.xb, p.yb)
  return np.asarray(metric(
      model=p.model, x_batch=p.xb, y_batch=p.yb, a_batch=a_batch,
      explain_func=p.explain_np, channel_first=True, device="cpu", **kwargs))


def _vmapped(p, fn):
  return np.asarray(jax.vmap(fn)(p.keys, p.X, p.Y))


@pytest.mark.filterwarnings("ignore")
def test_sensitivity_equals_captum_and_quantus(peer_problem):
  captum_metrics = pytest.importorskip("captum.metrics")
  quantus = pytest.importorskip("quantus")
  p, torch = peer_problem, peer_problem.torch
  noise = p.noise_table(metrics.uniform_noise(0.2))
  ours_max = _vmapped(p, lambda k, x, t: metrics.max_sensitivity(
      k, p.explain, x, t, num_samples=S, radius=0.2))
  ours_avg = _vmapped(p, lambda k, x, t: metrics.avg_sensitivity(
      k, p.explain, x, t, num_samples=S, radius=0.2))

  def captum_perturb(inputs, radius):  # Captum repeats each example S times
    return inputs + torch.as_tensor(noise.reshape((B * S,) + p.xb.shape[1:]))

  def captum_explain(inputs, target):
    inputs = inputs[0] if isinstance(inputs, tuple) else inputs
    return (torch.as_tensor(p.explain_np(None, inputs.numpy(), target.numpy())),)

  cap = captum_metrics.sensitivity_max(
      captum_explain, torch.as_tensor(p.xb), perturb_func=captum_perturb,
      n_perturb_samples=S, target=torch.as_tensor(p.yb))
  np.testing.assert_allclose(ours_max, cap.numpy(), rtol=1e-10)
  q_max = _quantus_call(p, quantus.MaxSensitivity(
      nr_samples=S, perturb_func=p.quantus_perturb(noise), disable_warnings=True))
  q_avg = _quantus_call(p, quantus.AvgSensitivity(
      nr_samples=S, perturb_func=p.quantus_perturb(noise), disable_warnings=True))
  np.testing.assert_allclose(ours_max, q_max, rtol=1e-10)
  np.testing.assert_allclose(ours_avg, q_avg, rtol=1e-10)
  assert np.all(ours_avg < ours_max)


@pytest.mark.filterwarnings("ignore")
def test_local_lipschitz_and_relative_stability_equal_quantus(peer_problem):
  quantus = pytest.importorskip("quantus")
  p = peer_problem
  noise = p.noise_table(metrics.gaussian_noise(0.1))
  ours = _vmapped(p, lambda k, x, t: metrics.local_lipschitz_estimate(
      k, p.explain, x, t, num_samples=S, normalise=False))
  q = _quantus_call(p, quantus.LocalLipschitzEstimate(
      nr_samples=S, perturb_func=p.quantus_perturb(noise), normalise=False,
      disable_warnings=True), softmax=False)
  np.testing.assert_allclose(ours, q, rtol=1e-10)
  # normalise=True: Quantus divides a whole batch by one maximum, so compare
  # one example at a time (a batch of one).
  ours = _vmapped(p, lambda k, x, t: metrics.local_lipschitz_estimate(
      k, p.explain, x, t, num_samples=S))
  table = p.noise_table(metrics.gaussian_noise(0.1))
  for b in (0, B - 1):
    one = table[b:b + 1]
    step = {"i": 0}

    def perturb(arr, indices, one=one, step=step, **kwargs):
      step["i"] += 1
      return arr + one[:, step["i"] - 1].reshape(1, -1)
    m = quantus.LocalLipschitzEstimate(nr_samples=S, perturb_func=perturb,
                                       disable_warnings=True)
    q = m(model=p.model, x_batch=p.xb[b:b + 1], y_batch=p.yb[b:b + 1],
          a_batch=p.explain_np(p.model, p.xb[b:b + 1], p.yb[b:b + 1]),
          explain_func=p.explain_np, channel_first=True, device="cpu")
    assert ours[b] == pytest.approx(q[0], rel=1e-10)
  noise = p.noise_table(metrics.uniform_noise(0.02, 0.2))  # Quantus' default
  ris = _vmapped(p, lambda k, x, t: metrics.relative_input_stability(
      k, p.explain, p.predict, x, t, num_samples=S))
  ros = _vmapped(p, lambda k, x, t: metrics.relative_output_stability(
      k, p.explain, p.predict, x, t, num_samples=S))
  q_ris = _quantus_call(p, quantus.RelativeInputStability(
      nr_samples=S, perturb_func=p.quantus_perturb(noise), disable_warnings=True),
      softmax=False)
  q_ros = _quantus_call(p, quantus.RelativeOutputStability(
      nr_samples=S, perturb_func=p.quantus_perturb(noise), disable_warnings=True),
      softmax=False)
  assert np.all(np.isfinite(q_ris))  # no perturbation changed a prediction
  np.testing.assert_allclose(ris, q_ris, rtol=1e-10)
  # Quantus computes the logits in float32 (torch.Tensor(x)), we in float64.
  np.testing.assert_allclose(ros, q_ros, rtol=1e-5)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("normalise", [False, True])
def test_infidelity_equals_captum(normalise, peer_problem):
  captum_metrics = pytest.importorskip("captum.metrics")
  p, torch = peer_problem, peer_problem.torch
  noise = p.noise_table(metrics.gaussian_noise(0.2))
  ours = _vmapped(p, lambda k, x, t: metrics.infidelity(
      k, p.explain, p.predict, x, t, target=t, num_samples=S, std=0.2,
      normalise=normalise))

  def captum_perturb(inputs):  # (I, x - I) with x - I = x + noise
    n = torch.as_tensor(noise.reshape((B * S,) + p.xb.shape[1:]))
    return -n, inputs + n

  attributions = torch.as_tensor(p.explain_np(p.model, p.xb, p.yb))
  cap = captum_metrics.infidelity(
      p.model64, captum_perturb, torch.as_tensor(p.xb), attributions,
      target=torch.as_tensor(p.yb), n_perturb_samples=S, normalize=normalise)
  assert np.all(ours > 1e-6)
  np.testing.assert_allclose(ours, cap.numpy(), rtol=1e-9)


@pytest.mark.filterwarnings("ignore")
def test_complexity_sparseness_completeness_equal_quantus(peer_problem):
  quantus = pytest.importorskip("quantus")
  p = peer_problem
  a = p.explain_np(p.model, p.xb, p.yb)
  q = _quantus_call(p, quantus.Complexity(disable_warnings=True), a_batch=a.copy())
  np.testing.assert_allclose(jax.vmap(metrics.complexity)(jnp.asarray(a)), q,
                             rtol=1e-10)
  q = _quantus_call(p, quantus.Sparseness(disable_warnings=True), a_batch=a.copy())
  ours = jax.vmap(lambda m: metrics.sparseness(m, reduce_channels=None,
                                               normalise=True))(jnp.asarray(a))
  np.testing.assert_allclose(ours, q, rtol=1e-6)  # Quantus: float32 maps
  # Quantus' Completeness returns sum(a) == f(x) - f(0) (a boolean); catch
  # the output change it compares with and check our gap against it.
  changes = []
  q = _quantus_call(p, quantus.Completeness(
      disable_warnings=True, normalise=False, perturb_baseline=0.0,
      output_func=lambda d: changes.append(d) or d), a_batch=a.copy())
  ours = _vmapped(p, lambda k, x, t: metrics.completeness(
      k, p.explain, p.predict, x, t, target=t))
  np.testing.assert_allclose(ours, a.reshape(B, -1).sum(1) - changes[0], rtol=1e-5)
  assert list(q) == [False] * B and np.all(np.abs(ours) > 1e-3)


@pytest.mark.filterwarnings("ignore")
def test_random_logit_equals_quantus(peer_problem):
  quantus = pytest.importorskip("quantus")
  p, k_classes = peer_problem, 3
  # Quantus re-seeds NumPy with 42 at every call: one example per call gives
  # each the first draw. Our class comes from the key: pick keys that draw
  # the same classes (the metric is then computed on the same maps).
  np.random.seed(42)
  first = np.random.randint(0, k_classes - 1, 1)[0]
  off = [np.delete(np.arange(k_classes), y)[first] for y in p.yb]

  def key_for(t, o):
    for i in range(200):
      k = jax.random.fold_in(jax.random.key(9), i)
      d = int(jax.random.randint(jax.random.split(k, 3)[0], (), 0, k_classes - 1))
      if d + (d >= t) == o:
        return k
  keys = jnp.stack([key_for(int(t), int(o)) for t, o in zip(p.yb, off)])
  ours = np.asarray(jax.vmap(lambda k, x, t: metrics.random_logit(
      k, p.explain, x, t, num_classes=k_classes))(keys, p.X, p.Y))
  a = p.explain_np(p.model, p.xb, p.yb)
  q = []
  for b in range(B):
    q += quantus.RandomLogit(num_classes=k_classes, disable_warnings=True)(
        model=p.model, x_batch=p.xb[b:b + 1], y_batch=p.yb[b:b + 1],
        a_batch=a[b:b + 1].copy(), explain_func=p.explain_np, channel_first=True,
        device="cpu")
  np.testing.assert_allclose(ours, q, rtol=1e-8)


def test_ssim_equals_scikit_image(rng):
  skimage_metrics = pytest.importorskip("skimage.metrics")
  for n in (7, 8, 50, 301):
    a, b = rng.normal(size=n), rng.normal(size=n) + 0.5 * rng.normal(size=n)
    r = float(np.abs(max(a.max(), b.max()) - min(a.min(), b.min())))
    want = skimage_metrics.structural_similarity(a, b, data_range=r)
    assert float(metrics.ssim_1d(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(
        want, rel=1e-5, abs=1e-6)


@pytest.mark.filterwarnings("ignore")
def test_efficient_and_smooth_mprt_equal_quantus(peer_problem):
  quantus = pytest.importorskip("quantus")
  from quantus.helpers.model.pytorch_model import PyTorchModel
  p = peer_problem
  # Quantus re-initialises each torch layer (reset_parameters, seed 42,
  # bottom-up, cascading); hand those very weights to our `init`.
  generator = PyTorchModel(p.model, channel_first=True, softmax=False,
                           device="cpu").get_random_layer_generator(
                               order="bottom_up", seed=42)
  names, models = zip(*generator)
  assert names == ("1", "3")
  randomised = p.params_of(models[-1])
  by_shape = {v.shape: v for v in jax.tree_util.tree_leaves(randomised)}
  init = lambda key, leaf: by_shape[leaf.shape]
  g = lambda k, x, params, t: p.grad(x, params, t)
  ours = metrics.efficient_mprt(jax.random.key(0), g, p.X, p.params, p.Y, init=init)
  q = quantus.EfficientMPRT(disable_warnings=True)(
      model=p.model, x_batch=p.xb, y_batch=p.yb, a_batch=None,
      explain_func=p.explain_np, channel_first=True, device="cpu")
  np.testing.assert_allclose(ours, q, rtol=1e-6)
  # sMPRT with one sample (the clean map): Quantus' noise comes from NumPy's
  # global generator, ours from the key, so the denoising samples differ.
  q = quantus.SmoothMPRT(nr_samples=1, disable_warnings=True)(
      model=p.model, x_batch=p.xb, y_batch=p.yb, a_batch=None,
      explain_func=p.explain_np, channel_first=True, device="cpu")
  ours = metrics.smooth_mprt(jax.random.key(0), g, p.X, p.params, p.Y,
                             layers=["l1", "l2"], num_samples=1, init=init)
  np.testing.assert_allclose(ours["l1"], q["1"], rtol=1e-8)
  np.testing.assert_allclose(ours["l2"], q["3"], rtol=1e-8)
