"""MLP, VGG and ResNet against reference PyTorch modules with torchvision's names, and the loader."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptgrad_jax import models

torch = pytest.importorskip("torch")
nn = torch.nn

import torch_reference as ref_lib  # noqa: E402  (tests/, after the torch check)  pylint: disable=wrong-import-position

# ---------------------------------------------------------------------------
# Helpers (the reference models are in tests/torch_reference.py).


def _random_weights(build, seed=0, **kwargs):
  """Random torch-named weights for a model, from its abstract shapes (no random init to compile)."""
  abstract = nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0), **kwargs))
  gen = np.random.default_rng(seed)
  return {
    k: (gen.uniform(0.5, 1.5, v.shape) if "running_var" in k else gen.normal(size=v.shape) * 0.1).astype(np.float32)
    for k, v in models.state_dict_from_model(abstract).items()
  }


_state_dict = ref_lib.numpy_state_dict


def _assert_close(actual, expected, rtol=1e-4):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = np.abs(expected).max()
  assert scale > 0
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------------------
# Models against torch.


# Each compares float32 logits and float64 input gradients (`torch_reference.assert_matches_torch`).


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 28, 28, 1), (3, 784)])
def test_mlp_matches_torch(shape, rng):
  ref = ref_lib.randomize(ref_lib.TorchMLP())
  model = models.mlp(weights=_state_dict(ref), rngs=nnx.Rngs(0))
  x = rng.uniform(size=shape).astype(np.float32)
  ref_lib.assert_matches_torch(model, ref, x)


def test_mlp_rejects_wrong_input_size():
  model = models.mlp(weights=_random_weights(models.mlp), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="expects 784"):
    model(jnp.zeros((2, 32, 32, 3)))


@pytest.mark.parametrize("name,batch_norm,size", [("vgg11", False, 36), ("vgg16", True, 64)])
def test_vgg_matches_torch(name, batch_norm, size, rng):
  # Full conv widths, narrow classifier (hidden=64) to keep the test fast; 36 x 36 exercises
  # torch's floor mode (9 -> 4) and the 1 x 1 map, 64 x 64 batch norm, a 2 x 2 -> 7 x 7 adaptive pool and the
  # flatten permutation. The presets differ only in their configuration lists, whose layouts
  # test_full_size_names_and_shapes_match_torchvision checks; each code path runs once (vgg11_bn at 64 and
  # vgg16 at 32 compiled the same layers again: 8 s).
  name += "_bn" if batch_norm else ""
  ref = ref_lib.randomize(ref_lib.torch_vgg(name, num_classes=10, hidden=64))
  model = getattr(models, name)(weights=_state_dict(ref), num_classes=10, hidden=64, rngs=nnx.Rngs(0))
  ref_lib.assert_matches_torch(model, ref, rng.uniform(size=(2, size, size, 3)).astype(np.float32))


def test_resnet18_matches_torch(rng):
  ref = ref_lib.randomize(ref_lib.torch_resnet("resnet18", num_classes=10))
  model = models.resnet18(weights=_state_dict(ref), num_classes=10, rngs=nnx.Rngs(0))
  # 33 x 33: every strided layer gets an odd map (33, 17, 9, 5, 3; then 2 x 2 at layer4), at a third of
  # 57 x 57's float64 work.
  ref_lib.assert_matches_torch(model, ref, rng.uniform(size=(2, 33, 33, 3)).astype(np.float32))


def test_bottleneck_resnet_matches_torch(rng):
  # ResNet-50's blocks at full width, one stage of two: a strided bottleneck with its projection shortcut
  # (layer2.0, stride on conv2 as torchvision's v1.5) and an identity one (layer2.1). The preset's
  # (3, 4, 6, 3) layout is test_full_size_names_and_shapes_match_torchvision's; 16 blocks here would only
  # compile longer. At 32 x 32 layer2.0 strides an 8 x 8 map to 4 x 4 (and layer4 reaches 1 x 1); 64 x 64 took
  # twice as long (float64 convolutions at full width) through the same layers.
  ref = ref_lib.randomize(ref_lib.TorchResNet(ref_lib.TorchBottleneck, (1, 2, 1, 1), num_classes=10))
  model = models.build_model(
    lambda rngs: models.ResNet(models.Bottleneck, (1, 2, 1, 1), num_classes=10, rngs=rngs), _state_dict(ref),
    nnx.Rngs(0),
  )
  ref_lib.assert_matches_torch(model, ref, rng.uniform(size=(2, 32, 32, 3)).astype(np.float32))


def _torch_full_size(name):
  with torch.device("meta"):
    return ref_lib.torch_vgg(name) if name.startswith("vgg") else ref_lib.torch_resnet(name)


@pytest.mark.parametrize(
  "name", ["vgg11", "vgg16_bn", "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2"]
)
def test_full_size_names_and_shapes_match_torchvision(name):
  abstract = nnx.eval_shape(lambda: getattr(models, name)(rngs=nnx.Rngs(0)))
  ours = {k: tuple(v.shape) for k, v in models.state_dict_from_model(abstract).items()}
  theirs = {
    k: tuple(v.shape) for k, v in _torch_full_size(name).state_dict().items() if not k.endswith("num_batches_tracked")
  }
  assert ours == theirs


@pytest.mark.parametrize("size,out", [(1, 7), (2, 7), (5, 7), (9, 7), (7, 7), (13, 3), (10, 1), (6, (2, 5))])
def test_adaptive_avg_pool_matches_torch(size, out, rng):
  x = rng.normal(size=(2, size, size + 1, 3)).astype(np.float32)
  expected = nn.functional.adaptive_avg_pool2d(torch.tensor(x).permute(0, 3, 1, 2), out).permute(0, 2, 3, 1)
  _assert_close(models.adaptive_avg_pool(jnp.asarray(x), out), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("size", [8, 9, 15])
@pytest.mark.parametrize("window,stride,padding", [(2, 2, 0), (3, 3, 0), (3, 2, 1), (3, 2, 0)])
def test_max_pool_matches_torch_with_gradients(size, window, stride, padding, rng):
  x = rng.normal(size=(2, size, size + 2, 4)).astype(np.float32)
  x_t = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
  y_t = nn.functional.max_pool2d(x_t, window, stride, padding).permute(0, 2, 3, 1)
  w = rng.normal(size=y_t.shape).astype(np.float32)
  (y_t * torch.tensor(w)).sum().backward()

  def f(x):
    return (models.max_pool(x, window, stride, padding) * w).sum()

  # One jitted program for the values and the gradient (eager, every operation compiles on its own).
  y, grad = jax.jit(lambda x: (models.max_pool(x, window, stride, padding), jax.grad(f)(x)))(jnp.asarray(x))
  np.testing.assert_array_equal(y, y_t.detach().numpy())
  np.testing.assert_allclose(grad, x_t.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-6)


@pytest.mark.parametrize(
  "window,expected",
  [
    ([[2.0, 2.0], [0.0, 1.0]], [[0.5, 0.5], [0.0, 0.0]]),  # two tie: halves
    ([[3.0, 3.0], [3.0, 3.0]], [[0.25, 0.25], [0.25, 0.25]]),  # all four: quarters
    ([[0.0, 4.0], [1.0, 2.0]], [[0.0, 1.0], [0.0, 0.0]]),  # no tie: all to the max, as torch
  ],
)
def test_max_pool_shares_the_gradient_among_ties(window, expected):
  x = jnp.asarray(window, jnp.float32)[None, :, :, None]
  grad = jax.grad(lambda x: models.max_pool(x, 2).sum())(x)
  np.testing.assert_array_equal(grad[0, :, :, 0], expected)


# ---------------------------------------------------------------------------
# Modes, the loader and its errors (torch only as the reference above).


def test_eval_mode_turns_off_dropout_and_uses_running_stats(rng):
  def make(*, rngs):
    return models.VGG([8, "M", 16, "M"], batch_norm=True, num_classes=5, hidden=16, rngs=rngs)

  weights = _random_weights(make)
  model = models.build_model(lambda rngs: make(rngs=rngs), weights, nnx.Rngs(0))
  x = jnp.asarray(rng.uniform(size=(2, 32, 32, 3)).astype(np.float32))
  forward = nnx.jit(lambda model, x: model(x))  # eager, every layer's operations compile one by one
  model.eval()
  assert model.features[1].use_running_average and model.classifier[2].deterministic
  np.testing.assert_array_equal(forward(model, x), forward(model, x))
  model.train()
  a, b = forward(model, x), forward(model, x)
  assert not np.allclose(a, b)  # dropout draws fresh masks (from rngs) in train mode


def test_load_then_export_is_the_identity():
  weights = _random_weights(models.resnet18, num_classes=7)
  model = models.resnet18(weights=weights, num_classes=7, rngs=nnx.Rngs(0))
  exported = models.state_dict_from_model(model)
  assert exported.keys() == weights.keys()
  for k in weights:
    np.testing.assert_array_equal(exported[k], weights[k], err_msg=k)
  assert exported["conv1.weight"].shape == (64, 3, 7, 7) and exported["fc.weight"].shape == (7, 512)


def test_vgg_flatten_permutation_round_trips():
  state = _random_weights(models.vgg11, num_classes=3, hidden=8)
  model = models.vgg11(num_classes=3, hidden=8, weights=state, rngs=nnx.Rngs(1))
  exported = models.state_dict_from_model(model)["classifier.0.weight"]
  np.testing.assert_array_equal(exported, state["classifier.0.weight"])
  # torch's input index c * 49 + h * 7 + w is our row (h * 7 + w) * 512 + c.
  kernel = np.asarray(model.classifier[0].kernel[...])
  np.testing.assert_array_equal(state["classifier.0.weight"][:, 5 * 49 + 2 * 7 + 3], kernel[(2 * 7 + 3) * 512 + 5])


@pytest.mark.parametrize("map_shape", [(1, 1), (2, 2), (3, 5), (6, 6), (1, 9)])
def test_vgg_folds_the_adaptive_pool_into_classifier0(map_shape, rng):
  # On maps smaller than 7 x 7 the pool is folded into classifier.0's kernel: same values and
  # gradients (input and kernel) as pooling first, up to float rounding.
  from adaptgrad_jax.models._vgg import _pooled_linear

  # Random kernel and bias from NumPy (nnx.Linear's initialiser compiles a program of its own).
  graphdef, params = nnx.split(nnx.eval_shape(lambda: nnx.Linear(7 * 7 * 4, 6, rngs=nnx.Rngs(0))))
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32)), params)
  x = jnp.asarray(rng.normal(size=(3, *map_shape, 4)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(3, 6)).astype(np.float32))

  def pooled_first(params, x):
    return (nnx.merge(graphdef, params)(models.adaptive_avg_pool(x, 7).reshape(3, -1)) * w).sum()

  def folded(params, x):
    return (_pooled_linear(nnx.merge(graphdef, params), x, 7) * w).sum()

  actual = jax.jit(jax.value_and_grad(folded, (0, 1)))(params, x)
  expected = jax.jit(jax.value_and_grad(pooled_first, (0, 1)))(params, x)
  assert len(jax.tree.leaves(actual)) == 4  # the value, the kernel's, the bias's and the input's gradients
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    _assert_close(a, e, rtol=1e-5)


@pytest.mark.parametrize("size", [10, 16])  # 5 x 5 and 8 x 8 maps
def test_vgg_pools_first_on_maps_over_16_cells(size, rng):
  def make(*, rngs):
    return models.VGG([4, "M"], num_classes=3, hidden=6, rngs=rngs)

  model = models.build_model(lambda rngs: make(rngs=rngs), _random_weights(make), nnx.Rngs(0))
  model.eval()
  x = jnp.asarray(rng.uniform(size=(2, size, size, 3)).astype(np.float32))
  feats = model.features[2](model.features[1](model.features[0](x)))
  logits = models.adaptive_avg_pool(feats, 7).reshape(2, -1)
  for layer in model.classifier:
    logits = layer(logits)
  np.testing.assert_array_equal(model(x), logits)


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_grouped_and_depthwise_conv_layout(groups, rng):
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(8, 16, (3, 5), feature_group_count=groups, padding=((1, 1), (2, 2)), rngs=rngs)

  ref = nn.Conv2d(8, 16, (3, 5), padding=(1, 2), groups=groups)
  net = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))  # load_state_dict fills an abstract model too
  models.load_state_dict(net, {"conv." + k: v for k, v in _state_dict(ref).items()})
  x = rng.normal(size=(2, 6, 7, 8)).astype(np.float32)
  expected = ref(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  _assert_close(net.conv(jnp.asarray(x)), expected)


def test_weights_from_path(tmp_path, rng):
  weights = _random_weights(models.mlp)
  np.savez(tmp_path / "mlp.npz", **weights)
  a = models.mlp(weights=weights, rngs=nnx.Rngs(0))
  b = models.mlp(weights=str(tmp_path / "mlp.npz"), rngs=nnx.Rngs(1))
  x = jnp.asarray(rng.uniform(size=(2, 784)).astype(np.float32))
  np.testing.assert_array_equal(a(x), b(x))


def test_loader_lists_missing_unexpected_and_misshaped_together():
  before = _random_weights(models.resnet18, num_classes=4)
  model = models.resnet18(weights=before, num_classes=4, rngs=nnx.Rngs(0))
  state = dict(before)
  del state["layer2.0.downsample.1.running_var"], state["fc.bias"]
  state["layer1.0.conv3.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  state["fc.weight"] = np.zeros((1000, 512), np.float32)
  state["bn1.weight"] = np.zeros((65,), np.float32)
  state["bn1.num_batches_tracked"] = np.array(3)  # ignored, as torch's counter
  with pytest.raises(ValueError) as info:
    models.load_state_dict(model, state)
  message = str(info.value)
  for expected in [
    "missing keys (2)", "layer2.0.downsample.1.running_var", "fc.bias",
    "unexpected keys (1): layer1.0.conv3.weight",
    "mis-shaped keys (2)", "fc.weight: checkpoint (1000, 512), model expects (4, 512)", "bn1.weight",
  ]:
    assert expected in message
  assert "num_batches_tracked" not in message
  after = models.state_dict_from_model(model)  # nothing was copied
  assert all(np.array_equal(before[k], after[k]) for k in before)


def test_loader_non_strict_returns_missing_and_unexpected():
  model = models.mlp(weights=_random_weights(models.mlp, seed=0), rngs=nnx.Rngs(0))
  state = _random_weights(models.mlp, seed=1)
  del state["fc2.bias"]
  state["head.weight"] = np.zeros(3)
  result = models.load_state_dict(model, state, strict=False)
  assert result == models.LoadResult(["fc2.bias"], ["head.weight"])
  np.testing.assert_array_equal(model.fc1.kernel[...], state["fc1.weight"].T)
  with pytest.raises(ValueError, match="mis-shaped"):
    models.load_state_dict(model, {"fc1.weight": np.zeros((3, 3))}, strict=False)


def test_loader_hints_at_a_prefix():
  state = _random_weights(models.mlp)
  model = models.mlp(weights=state, rngs=nnx.Rngs(0))
  state = {"module." + k: v for k, v in state.items()}
  with pytest.raises(ValueError, match="prefixed by 'module.'"):
    models.load_state_dict(model, state)


def test_weights_argument_type_is_checked():
  with pytest.raises(TypeError, match="weights=list"):
    models.mlp(weights=[1, 2], rngs=nnx.Rngs(0))
