"""The CLI's IG-family and CAM methods: every name runs via ``main``; the A- variants equal the library's compositions.

Fast by construction: the MNIST MLP for the gradient methods, and for CAM a tiny
VGG-like stack (conv 4, conv 8) registered under the name efficientnet_lite0 at
16 x 16 pixels (the efficientnet preprocessing resizes to the spec's size).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from _cli_errors import error_line as _error_line
import adaptgrad_jax as ag
from adaptgrad_jax import flax_adapters, flax_cam, models
from adaptgrad_jax.cli import _methods, _models, _shared, main

IG_FAMILY = ("eg", "blur-ig", "guided-ig", "idgi")
CAM_FAMILY = ("grad-cam", "grad-cam-pp", "guided-backprop", "guided-grad-cam")
N, STEPS, SEED, TARGET = 2, 3, 4, 1  # target 1: the tiny CNN's predicted class (its Grad-CAM is not all zero)


def _tiny_vgg(rngs, **kwargs):
  del kwargs
  return models.VGG([4, "M", 8, "M"], num_classes=5, hidden=8, rngs=rngs)


@pytest.fixture(autouse=True)
def no_cpu_rewrite(monkeypatch):
  """The CPU rewrite only costs trace time on these tiny programs (it is tested in test_cpu_*); off here."""
  monkeypatch.setenv(ag.cpu.REWRITE_ENV, "0")


@pytest.fixture
def tiny_cnn(monkeypatch):
  """``--model efficientnet_lite0 --weights random`` builds the tiny VGG at 16 x 16 (features.4 is its last ReLU)."""
  constructor = _models._constructor
  monkeypatch.setattr(_models, "_constructor", lambda n: _tiny_vgg if n == "efficientnet_lite0" else constructor(n))
  monkeypatch.setitem(_models.MODELS, "efficientnet_lite0",
                      dataclasses.replace(_models.MODELS["efficientnet_lite0"], size=16))
  return "efficientnet_lite0"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """A real MNIST digit (a 7) and a small RGB picture, as PNG files."""
  from PIL import Image

  from adaptgrad_jax import datasets

  folder = tmp_path_factory.mktemp("images")
  Image.fromarray(datasets.mnist_embedded(dtype="uint8").x_test[0, :, :, 0]).save(folder / "seven.png")
  yy, xx = np.mgrid[0:40, 0:40]
  rgb = np.stack([(yy * 6) % 256, (xx * 6) % 256, ((yy + xx) * 3) % 256], -1).astype(np.uint8)
  Image.fromarray(rgb).save(folder / "pattern.png")
  return {"digit": folder / "seven.png", "rgb": folder / "pattern.png"}


def _argv(method, images, out, model):
  image = images["rgb"] if model == "efficientnet_lite0" else images["digit"]
  return ["explain", str(image), "--model", model, "--weights", "random", "--method", method, "--n", str(N),
          "--ig-steps", str(STEPS), "--blur-sigma", "4", "--seed", str(SEED), "--target", str(TARGET),
          "--out", str(out)]


def _run(method, images, tmp_path, model):
  out = tmp_path / method
  assert main(_argv(method, images, out, model)) == 0
  npy = np.load(next(out.glob("*.npy")))
  record = json.loads((out / "explain.json").read_text())
  assert record["label"] == _methods.label(method)
  return npy


def _input(images, model):
  spec = _models.spec_for(model)
  path = images["rgb"] if model == "efficientnet_lite0" else images["digit"]
  return jnp.asarray(_models.preprocess(spec, _shared.read_image(path, grayscale=spec.grayscale)))


@pytest.mark.parametrize("method", [p + m for m in IG_FAMILY + CAM_FAMILY for p in ("", "s-")])
def test_plain_and_s_variants_run_via_main(method, images, tmp_path, tiny_cnn, capsys):
  model = tiny_cnn if method.removeprefix("s-") in CAM_FAMILY else "mlp"
  npy = _run(method, images, tmp_path, model)
  expected_shape = {"mlp": (28, 28, 1), tiny_cnn: (16, 16, 3)}[model]
  if "grad-cam" in method and "guided" not in method:
    expected_shape = (16, 16, 1)  # the layer's map, upsampled to the input
  assert npy.shape == expected_shape and np.all(np.isfinite(npy)) and np.abs(npy).max() > 0
  cost = _methods.cost(method, _methods.Options(n=N, ig_steps=STEPS))
  assert f"{cost} gradient evaluation(s) each" in " ".join(capsys.readouterr().err.split())


def _adapt(g, bounds):
  return ag.adapt_smooth(g, 0.95, N, bounds=bounds)


def _library(method, model, x, key, target):
  """The A- composition written out with the library (docs/transforms.md), for one input."""
  if method in IG_FAMILY:
    f = flax_adapters.nnx_target_fn(model)
    a = _adapt(jax.grad(f), (0.0, 1.0))
    if method == "eg":
      uniform = lambda k: jax.random.uniform(k, x.shape, x.dtype, minval=0.0, maxval=1.0)  # noqa: E731
      return ag.expected_gradients(a, STEPS, baselines=uniform)(key, x, target)
    if method == "blur-ig":
      return ag.blur_integrated_gradients(a, STEPS, max_sigma=4.0)(key, x, target)
    if method == "guided-ig":
      return ag.guided_integrated_gradients(a, STEPS, baseline="black", bounds=(0.0, 1.0))(key, x, target)
    return ag.idgi(a, f, STEPS, baseline="black", bounds=(0.0, 1.0))(key, x, target)
  bounds = tuple(float(b) for b in models.EFFICIENTNET_LITE_BOUNDS)
  layer = "features.4"
  if method == "guided-backprop":
    return _adapt(flax_cam.guided_backprop(model), bounds)(key, x, target)
  if method == "guided-grad-cam":
    return _adapt(flax_cam.guided_grad_cam(model, layer), bounds)(key, x, target)
  if method == "grad-cam":
    cam = flax_cam.grad_cam(model, layer, grad_fn=_adapt(flax_cam.layer_gradient(model, layer), bounds))
  else:
    cam = flax_cam.grad_cam_pp(model, layer, grad_fn=_adapt(flax_cam.layer_gradient_powers(model, layer), bounds))
  return jax.image.resize(cam(key, x, target), x.shape[:2], method="bilinear")[..., None]


@pytest.mark.parametrize("method", IG_FAMILY + CAM_FAMILY)
def test_a_variant_via_main_equals_the_library_composition(method, images, tmp_path, tiny_cnn):
  model_name = tiny_cnn if method in CAM_FAMILY else "mlp"
  npy = _run("a-" + method, images, tmp_path, model_name)
  model = _models.load(model_name, "random").module  # the CLI's model: same constructor, same init key
  x = _input(images, model_name)
  key = jax.random.fold_in(jax.random.key(SEED), 0)  # the CLI's key of the first image
  expected = np.asarray(jax.jit(lambda k, x: _library(method, model, x, k, TARGET))(key, x))
  assert np.abs(expected).max() > 0
  np.testing.assert_allclose(npy, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_unknown_layer_lists_the_layers(images, tmp_path, tiny_cnn, capsys):
  assert main(_argv("grad-cam", images, tmp_path / "o", tiny_cnn) + ["--layer", "features.49"]) == 2
  line = _error_line(capsys)
  assert "--layer 'features.49' does not exist in VGG" in line and "features.4" in line and "classifier" in line


def test_cam_on_a_model_without_convolutions_is_refused(images, tmp_path, capsys):
  assert main(_argv("a-grad-cam", images, tmp_path / "o", "mlp")) == 2
  line = _error_line(capsys)
  assert "needs a convolutional feature map" in line and "fc1, fc2" in line and "--layer" in line
  assert main(_argv("grad-cam", images, tmp_path / "o", "mlp") + ["--layer", "fc1"]) == 2
  line = _error_line(capsys)
  assert "--layer fc1 outputs shape (200,)" in line and "(h, w, c) feature map" in line
  assert not (tmp_path / "o" / "seven_grad-cam.npy").exists()


def test_guided_backprop_on_a_model_without_relus_is_refused():
  class TanhNet(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
      self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
      return self.head(jnp.tanh(self.conv(x)).mean(axis=(1, 2)))

  model = TanhNet(nnx.Rngs(0))
  with pytest.raises(_methods.UsageError, match="TanhNet has none.*would be the plain gradient"):
    _methods.check_model("s-guided-backprop", _methods.Options(), (8, 8, 3), model=model)
  vgg = _tiny_vgg(nnx.Rngs(0))
  vgg.eval()
  _methods.check_model("guided-backprop", _methods.Options(), (8, 8, 3), model=vgg)  # ReLUs: fine


def test_eg_baselines_of_the_wrong_shape_are_refused(images, tmp_path, capsys):
  bad = tmp_path / "baselines.npy"
  np.save(bad, np.zeros((3, 32, 32, 3), np.float32))
  assert main(_argv("eg", images, tmp_path / "o", "mlp") + ["--eg-baselines", str(bad)]) == 2
  line = _error_line(capsys)
  assert "holds shape (3, 32, 32, 3)" in line and "(m, 28, 28, 1)" in line
  assert main(_argv("eg", images, tmp_path / "o", "mlp") + ["--eg-baselines", "nowhere.npy"]) == 2
  assert "'uniform' or an existing .npy" in _error_line(capsys)


def test_eg_baselines_from_a_file_are_the_library_dataset(images, tmp_path):
  data = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
  np.save(tmp_path / "b.npy", data)
  model = models.mlp(rngs=nnx.Rngs(0))
  model.eval()
  f = flax_adapters.nnx_target_fn(model)
  explain = _methods.build("eg", f, (0.0, 1.0), _methods.Options(ig_steps=STEPS, eg_baselines=str(tmp_path / "b.npy")))
  x, key = _input(images, "mlp"), jax.random.key(1)
  library = ag.expected_gradients(jax.grad(f), STEPS, baselines=data)
  ours, expected = jax.jit(lambda k, x: (explain(k, x, 3), library(k, x, 3)))(key, x)  # one compilation
  assert np.abs(expected).max() > 0
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)


def test_layer_only_with_cam_and_names_aliases_and_costs():
  with pytest.raises(_methods.UsageError, match="--layer features.4 names the layer of a CAM method"):
    _methods.check_options("eg", _methods.Options(layer="features.4"))
  assert [_methods.canonical(a) for a in ("GradientSHAP", "grad-cam++", "gbp", "smoothgrad-cam++", "blur_ig")] == [
    "eg", "grad-cam-pp", "guided-backprop", "s-grad-cam-pp", "blur-ig"]
  o = _methods.Options(n=7, ig_steps=5)
  assert [_methods.cost(m, o) for m in ("eg", "a-blur-ig", "grad-cam", "s-grad-cam-pp", "guided-grad-cam",
                                        "a-guided-grad-cam")] == [5, 35, 1, 7, 2, 14]


def test_efficientnet_lite_has_layers_and_a_default():
  """flax_cam lists private submodules (EfficientNet-Lite keeps its layers as _blocks, _conv_head, ...)."""
  model = nnx.eval_shape(lambda: models.efficientnet_lite0(rngs=nnx.Rngs(0)))
  layers = flax_cam.available_layers(model, max_depth=1)
  assert {"_blocks", "_conv_head", "_bn1", "_fc"} <= set(layers) and not any("pytree" in n for n in layers)
  assert _methods.default_layer(model) == "_blocks"
  assert _methods.default_layer(nnx.eval_shape(lambda: _tiny_vgg(nnx.Rngs(0)))) == "features.4"
