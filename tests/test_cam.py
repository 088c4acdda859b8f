"""Tests of adaptgrad_jax.flax_cam against Captum's LayerGradCam and GuidedBackprop, in float64."""

from unittest import mock

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adaptgrad_jax as ag
from adaptgrad_jax import flax_cam, models

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
ref_lib = pytest.importorskip("tests.torch_reference")

CONFIG = [4, "M", 6, "M", 8, 8, "M"]  # a tiny VGG-11-like stack: features.0 .. features.10
SIZE = 16


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def _pair(seed=0):
  # build_model loads the weights into the traced model: no random initialisation to compile (seconds per shape).
  ref = ref_lib.randomize(ref_lib.TorchVGG(CONFIG, num_classes=5, hidden=8), seed=seed).double()
  model = models.build_model(lambda rngs: models.VGG(CONFIG, num_classes=5, hidden=8, rngs=rngs),
                             ref_lib.numpy_state_dict(ref), nnx.Rngs(0))
  model.eval()
  x = np.random.default_rng(seed).normal(size=(SIZE, SIZE, 3))
  return ref, model, x


def _as64(model):
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, ref_lib.as_float64(state))  # cast on the host: no conversion compiled per shape


@pytest.mark.parametrize("layer", ["features.7", "features.9"])
def test_grad_cam_matches_captum(x64, layer):
  ref, model, x = _pair()
  model = _as64(model)
  idx = int(layer.split(".")[1])
  x_t = torch.from_numpy(np.moveaxis(x, -1, 0)[None].copy())
  with ref_lib.single_threaded_torch():
    expected = captum_attr.LayerGradCam(ref, ref.features[idx]).attribute(x_t, target=2).detach().numpy()[0, 0]
    expected_relu = captum_attr.LayerGradCam(ref, ref.features[idx]).attribute(
        x_t, target=2, relu_attributions=True).detach().numpy()[0, 0]
  ours = jax.jit(flax_cam.grad_cam(model, layer, relu=False))(jnp.asarray(x), 2)
  ours_relu = jax.jit(flax_cam.grad_cam(model, layer))(jnp.asarray(x), 2)
  assert np.abs(expected).max() > 0
  np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(ours_relu, expected_relu, rtol=1e-9, atol=1e-12)


def test_guided_backprop_matches_captum(x64):
  ref, model, x = _pair(1)
  model = _as64(model)
  x_t = torch.from_numpy(np.moveaxis(x, -1, 0)[None].copy())
  with ref_lib.single_threaded_torch():
    expected = captum_attr.GuidedBackprop(ref).attribute(x_t, target=3).detach().numpy()[0]
  ours = jax.jit(flax_cam.guided_backprop(model))(jnp.asarray(x), 3)
  np.testing.assert_allclose(ours, np.moveaxis(expected, 0, -1), rtol=1e-9, atol=1e-12)
  plain = jax.jit(jax.grad(lambda x: model(x[None])[0, 3]))(jnp.asarray(x))
  assert not np.allclose(ours, plain)  # the guided ReLUs changed the backward pass
  assert jax.nn.relu is not flax_cam.guided_relu  # the patch is undone


def test_guided_grad_cam_matches_captum(x64):
  ref, model, x = _pair(5)
  model = _as64(model)
  x_t = torch.from_numpy(np.moveaxis(x, -1, 0)[None].copy())
  with ref_lib.single_threaded_torch():
    expected = captum_attr.GuidedGradCam(ref, ref.features[7]).attribute(x_t, target=4).detach().numpy()[0]
  ours = jax.jit(flax_cam.guided_grad_cam(model, "features.7"))(jnp.asarray(x), 4)
  assert np.abs(expected).max() > 0
  np.testing.assert_allclose(ours, np.moveaxis(expected, 0, -1), rtol=1e-9, atol=1e-12)


def test_grad_cam_pp_against_formula(x64):
  _, model, x = _pair(2)
  model = _as64(model)
  layer = "features.9"
  act = jax.jit(flax_cam.layer_activation(model, layer))(jnp.asarray(x))
  g = np.asarray(jax.jit(flax_cam.layer_gradient(model, layer))(jnp.asarray(x), 1))
  a = np.asarray(act)
  denom = 2 * g ** 2 + a.sum(axis=(0, 1)) * g ** 3
  alpha = np.divide(g ** 2, denom, out=np.zeros_like(g), where=denom != 0)
  w = (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
  expected = np.maximum((a * w).sum(-1), 0)
  ours = jax.jit(flax_cam.grad_cam_pp(model, layer))(jnp.asarray(x), 1)
  np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)


def test_smoothed_cams_are_one_liners_under_jit_and_vmap():
  _, model, x = _pair(3)
  layer = "features.9"
  b = (-3.0, 3.0)
  a_cam = flax_cam.grad_cam(model, layer, grad_fn=ag.adapt_smooth(flax_cam.layer_gradient(model, layer), 0.95, 4,
                                                                  bounds=b))
  sg_cam_pp = flax_cam.grad_cam_pp(model, layer, grad_fn=ag.smooth_grad(flax_cam.layer_gradient_powers(model, layer),
                                                                        0.2, 4, bounds=b))
  xs = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, size=(2, SIZE, SIZE, 3)), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 2)
  for fn in (a_cam, sg_cam_pp):
    assert ag.is_stochastic(fn)
    one = jax.jit(fn)(keys[1], xs[1], 2)
    assert one.shape == (4, 4) and np.all(np.isfinite(one))
    np.testing.assert_allclose(jax.jit(jax.vmap(fn))(keys, xs, jnp.array([0, 2]))[1], one, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(jax.jit(fn)(keys[1], xs[1], 2), one)


def test_bad_layers_are_named():
  _, model, _ = _pair()
  with pytest.raises(ValueError, match=r"layer='layer4' does not exist.*features\.0"):
    flax_cam.grad_cam(model, "layer4")
  with pytest.raises(ValueError, match="features.99"):
    flax_cam.grad_cam(model, "features.99")
  with pytest.raises(ValueError, match="feature map"):  # raised while tracing: abstract evaluation suffices
    jax.eval_shape(flax_cam.grad_cam(model, "classifier.1"), jnp.zeros((SIZE, SIZE, 3)), 0)
  assert "features.9" in flax_cam.available_layers(model)


def test_resnet_layer4_grad_cam_and_guided_backprop_match_captum(x64):
  # ResNet blocks call jax.nn.relu inline: guided backprop reaches them through guided_relus(). The torch
  # reference calls torch.relu, which Captum's GuidedBackprop (it hooks nn.ReLU modules) does not see, so the
  # guided reference is torch autograd with torch.relu patched to a guided ReLU Function.
  ref = ref_lib.randomize(ref_lib.TorchResNet(ref_lib.TorchBasicBlock, [1, 1, 1, 1], num_classes=5), seed=6).double()
  model = models.build_model(lambda rngs: models.ResNet(models.BasicBlock, (1, 1, 1, 1), num_classes=5, rngs=rngs),
                             ref_lib.numpy_state_dict(ref), nnx.Rngs(0))
  model.eval()
  model = _as64(model)
  x = np.random.default_rng(6).normal(size=(32, 32, 3))
  x_t = torch.from_numpy(np.moveaxis(x, -1, 0)[None].copy())
  with ref_lib.single_threaded_torch():
    cam_ref = captum_attr.LayerGradCam(ref, ref.layer4).attribute(x_t, target=1).detach().numpy()[0, 0]
    class GuidedReLU(torch.autograd.Function):
      @staticmethod
      def forward(ctx, z):
        ctx.save_for_backward(z)
        return z.clamp(min=0)

      @staticmethod
      def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g.clamp(min=0) * (z > 0)

    x_g = x_t.clone().requires_grad_(True)
    with mock.patch.object(torch, "relu", GuidedReLU.apply):
      ref(x_g)[0, 1].backward()
    gbp_ref = x_g.grad.numpy()[0]
  # Jitted: eager, each of the ResNet's operations compiles a program of its own.
  np.testing.assert_allclose(jax.jit(flax_cam.grad_cam(model, "layer4", relu=False))(jnp.asarray(x), 1), cam_ref,
                             rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(jax.jit(flax_cam.guided_backprop(model))(jnp.asarray(x), 1),
                             np.moveaxis(gbp_ref, 0, -1), rtol=1e-9, atol=1e-12)


def test_deterministic_maps_go_through_the_cpu_rewrite_and_agree_without_it(x64):
  _, model, x = _pair(6)
  model = _as64(model)
  x = jnp.asarray(x)
  makers = {
      "grad_cam": lambda **kw: flax_cam.grad_cam(model, "features.7", **kw),
      "grad_cam_pp": lambda **kw: flax_cam.grad_cam_pp(model, "features.9", **kw),
      "guided_backprop": lambda **kw: flax_cam.guided_backprop(model, **kw),
      "guided_grad_cam": lambda **kw: flax_cam.guided_grad_cam(model, "features.7", **kw),
  }
  for name, make in makers.items():
    with mock.patch.object(flax_cam.cpu, "rewrite", wraps=flax_cam.cpu.rewrite) as spy:
      on = jax.jit(make(cpu_rewrite=True))(x, 2)
      assert spy.call_count == 1, name  # once, for the whole map (guided Grad-CAM's parts are not rewritten twice)
      off = jax.jit(make(cpu_rewrite=False))(x, 2)
      assert spy.call_count == 1, name
      make(cpu_rewrite=True)(x, 2)  # eager calls run as written
      assert spy.call_count == 1, name
    np.testing.assert_allclose(on, off, rtol=1e-9, atol=1e-12, err_msg=name)
  with pytest.raises(TypeError, match="cpu_rewrite='yes'"):
    flax_cam.grad_cam(model, "features.7", cpu_rewrite="yes")
