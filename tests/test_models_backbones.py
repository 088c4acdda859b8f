"""ViT, ConvNeXt, MobileNetV3 and DenseNet against independent PyTorch references (tests/torch_backbones.py).

The references are written by hand with torchvision's parameter names. Logits
and input gradients are compared in float64 (JAX with x64, torch ``.double()``)
on random weights and batch statistics, at a tiny size per family; the full
presets are only traced (`nnx.eval_shape`) for their parameter counts.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import adaptgrad_jax as ag
from adaptgrad_jax import flax_adapters
from adaptgrad_jax import models
from adaptgrad_jax.models import _convnext
from adaptgrad_jax.models import _mobilenetv3


@pytest.fixture(scope="module")
def tb():
  """The torch reference module (skips without torch)."""
  pytest.importorskip("torch")
  import torch_backbones  # pylint: disable=import-outside-toplevel

  return torch_backbones


# name -> (JAX preset, torch reference builder, input size). The sizes give odd maps where pooling floors.
FAMILIES = {
  "vit": (
    models.vit_micro,
    lambda tb: tb.VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10),
    32,
  ),
  "convnext": (models.convnext_micro, lambda tb: tb.ConvNeXt(_convnext._MICRO, num_classes=10), 32),
  "mobilenet_v3": (
    models.mobilenet_v3_micro,
    lambda tb: tb.MobileNetV3(_mobilenetv3._MICRO, last_channel=32, num_classes=10),
    36,
  ),
  "densenet": (models.densenet_micro, lambda tb: tb.DenseNet(4, (2, 2, 2, 2), 8, bn_size=2, num_classes=10), 36),
}


def _float64_model(make, state_dict):
  """The preset with float64 variables holding a torch state dict's values exactly.

  Built from the weights (`build_model` skips the random initialisation, slow
  on CPU), then every variable is replaced by a float64 array and loaded again
  (`load_state_dict` casts to each variable's dtype).
  """
  model = make(weights=state_dict, rngs=nnx.Rngs(0))
  variables = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  nnx.update(model, jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, np.float64)), variables))
  models.load_state_dict(model, state_dict)
  model.eval()
  return model


def _torch_value_and_grad(torch, module, x_nhwc, weights):
  """Logits and the input gradient of ``sum(logits * weights)``, NHWC."""
  x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).requires_grad_()
  logits = module(x)
  (logits * torch.from_numpy(weights)).sum().backward()
  return logits.detach().numpy(), x.grad.numpy().transpose(0, 2, 3, 1)


def _rel_err(ours, ref):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_and_input_gradients_match_torch_in_float64(family, tb, rng):
  import torch  # pylint: disable=import-outside-toplevel

  make, torch_model, size = FAMILIES[family]
  ref = tb.randomize(torch_model(tb), seed=0)
  x = rng.normal(size=(2, size, size, 3))
  weights = rng.normal(size=(2, 10))
  ref_logits, ref_grad = _torch_value_and_grad(torch, ref, x, weights)
  with jax.enable_x64(True):
    model = _float64_model(make, ref.state_dict())

    @nnx.jit
    def logits_and_grad(model, x):
      def objective(x):
        logits = model(x)
        return jnp.sum(logits * weights), logits

      (_, logits), grad = jax.value_and_grad(objective, has_aux=True)(x)
      return logits, grad

    logits, grad = logits_and_grad(model, jnp.asarray(x))
    assert logits.dtype == grad.dtype == jnp.float64
    assert _rel_err(logits, ref_logits) < 1e-9
    assert _rel_err(grad, ref_grad) < 1e-9


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_state_dict_names_shapes_and_round_trip(family, tb):
  """Our export has exactly the reference's names and shapes, and loads back into torch strictly."""
  import torch  # pylint: disable=import-outside-toplevel

  make, torch_model, _ = FAMILIES[family]
  ref = torch_model(tb)
  ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
  model = make(weights=ref.state_dict(), rngs=nnx.Rngs(0))  # through build_model (no random init)
  exported = models.state_dict_from_model(model)
  assert {k: v.shape for k, v in exported.items()} == ref_shapes
  other = torch_model(tb)
  missing, unexpected = other.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=False)
  assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
  for key, value in other.state_dict().items():
    if not key.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(value.numpy(), ref.state_dict()[key].numpy())


# torchvision's published parameter counts (the model pages of torchvision.models).
FULL_SIZE = {
  "vit_b_16": (models.vit_b_16, 86_567_656),
  "convnext_tiny": (models.convnext_tiny, 28_589_128),
  "mobilenet_v3_large": (models.mobilenet_v3_large, 5_483_032),
  "densenet121": (models.densenet121, 7_978_856),
}


def test_full_size_parameter_counts_match_torchvision():
  for name, (make, published) in FULL_SIZE.items():
    abstract = nnx.eval_shape(lambda make=make: make(rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    count = sum(math.prod(v.shape) for v in jax.tree.leaves(params))
    assert count == published, name


def test_legacy_torchvision_names_load(tb):
  """torchvision's pretrained DenseNet (``norm.1``) and pre-0.14 ViT (``mlp.linear_1``) names are renamed."""
  for make, torch_model, rename in [
    (
      models.densenet_micro,
      FAMILIES["densenet"][1],
      lambda k: k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."),
    ),
    (
      models.vit_micro,
      FAMILIES["vit"][1],
      lambda k: k.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."),
    ),
  ]:
    state = torch_model(tb).state_dict()
    legacy = {rename(k): v for k, v in state.items()}
    assert legacy.keys() != state.keys()
    model = make(weights=legacy, rngs=nnx.Rngs(0))
    ours = models.state_dict_from_model(model)
    for key, value in ours.items():
      np.testing.assert_array_equal(value, state[key].numpy())


def test_vit_rejects_other_image_sizes():
  model = nnx.eval_shape(lambda: models.vit_micro(rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\).*resize or crop to 32 x 32"):
    model(jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match="not even a multiple of the patch size 8"):
    model(jnp.zeros((1, 30, 30, 3)))
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((1, 3, 32, 32)))
  with pytest.raises(ValueError, match="image_size=30 must be a multiple of patch_size=8; use image_size=24 or 32"):
    models.vit_micro(image_size=30, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("image_size", [48, 16])
def test_vit_position_embeddings_interpolate_as_torch(image_size, tb):
  """torchvision's interpolate_embeddings: bicubic with aligned corners on the patch grid, class token kept."""
  import torch  # pylint: disable=import-outside-toplevel

  state = tb.randomize(FAMILIES["vit"][1](tb), seed=1).state_dict()  # 4 x 4 grid of 8 x 8 patches, float64
  resized = models.interpolate_pos_embedding(state, image_size, patch_size=8)
  pos = state["encoder.pos_embedding"]
  grid, new = 4, image_size // 8
  image = pos[:, 1:].permute(0, 2, 1).reshape(1, -1, grid, grid)
  want = torch.nn.functional.interpolate(image, size=new, mode="bicubic", align_corners=True)
  want = torch.cat([pos[:, :1], want.reshape(1, -1, new * new).permute(0, 2, 1)], dim=1).numpy()
  got = resized["encoder.pos_embedding"]
  assert got.shape == want.shape == (1, 1 + new * new, 16)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
  assert resized["conv_proj.weight"] is state["conv_proj.weight"]  # everything else is passed through
  model = models.vit_micro(image_size=image_size, weights=resized, rngs=nnx.Rngs(0))
  assert jax.eval_shape(model, jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)).shape == (1, 10)
  with pytest.raises(ValueError, match="multiple of patch_size=8"):
    models.interpolate_pos_embedding(state, 50, patch_size=8)


def test_bad_configurations_are_named():
  with pytest.raises(ValueError, match="out_channels None for the last stage"):
    nnx.eval_shape(lambda: models.ConvNeXt([(8, 16, 1)], rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"activation must be 'RE' \(ReLU\) or 'HS'"):
    nnx.eval_shape(lambda: models.MobileNetV3([(8, 3, 8, 8, False, "GELU", 1)], 32, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="block_config"):
    nnx.eval_shape(lambda: models.DenseNet(block_config=(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="divisible by num_heads"):
    nnx.eval_shape(lambda: models.vit_micro(num_heads=3, rngs=nnx.Rngs(0)))


def test_vit_smoothing_happens_in_pixel_space():
  """AdaptGrad on a ViT: a per-pixel map with the input's shape, under IMAGENET_BOUNDS.

  The noise is drawn per pixel before the patching, so two keys give two
  different maps (with n = 2 samples), both finite.
  """
  abstract = nnx.eval_shape(lambda: models.vit_micro(rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  random_weights = {
    k: rng.normal(scale=0.3, size=v.shape).astype(np.float32) for k, v in models.state_dict_from_model(abstract).items()
  }
  model = models.vit_micro(weights=random_weights, rngs=nnx.Rngs(0))  # no slow random initialisation
  model.eval()
  f = flax_adapters.nnx_target_fn(model, target=3)
  x = jnp.asarray(rng.uniform(-1.0, 1.0, (32, 32, 3)), jnp.float32)
  explain = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 2, bounds=models.IMAGENET_BOUNDS))
  first, second = explain(jax.random.key(0), x), explain(jax.random.key(1), x)
  assert first.shape == x.shape == (32, 32, 3)
  assert bool(jnp.all(jnp.isfinite(first)) & jnp.all(jnp.isfinite(second)))
  assert float(jnp.max(jnp.abs(first - second))) > 1e-3 * float(jnp.max(jnp.abs(first)))
