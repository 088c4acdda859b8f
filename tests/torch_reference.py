"""PyTorch references for the model ports, shared by the tests and the benchmarks (not shipped).

* Models, written from torchvision's definitions (MLP, VGG, ResNet,
  Inception v3) and EfficientNet-Lite-PyTorch's (EfficientNet-Lite0) with the
  same parameter names, so `adaptgrad_jax.models.state_dict_from_model` loads
  into them unchanged. torchvision is not a dependency, and nothing here reads
  the ports' own tables: a reference that copied them would test nothing.
* `assert_matches_torch`: the equivalence check of a Flax port against one of
  them. Logits are compared in float32 (they are continuous in every
  rounding error, so a float32 tolerance holds on any CPU); input gradients
  in float64 on both sides, at 1e-10. A float32 gradient comparison through
  ReLU or max-pool kinks is a coin flip per CPU: a pre-activation at a
  fraction of float32's epsilon takes either sign depending on the
  convolution kernels (YNNPACK or Eigen, AVX-512 or not), and the gradient
  jumps by percents across it (issue 15).
* `torch_loop_smooth`, `torch_batched_smooth`: the two ways PyTorch users
  smooth gradients, the benchmarks' baselines (the released AdaptGrad code's
  per-sample loop; Captum ``NoiseTunnel(Saliency)``'s batches).

The tests import this module as ``torch_reference`` (pytest puts ``tests/``
on ``sys.path``, as for ``_attribute_worker``); ``benchmarks/_harness.py``
adds ``tests/`` to ``sys.path`` to import it under the same name.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn
from torch.nn import functional as F

# ---------------------------------------------------------------------------
# MLP, VGG, ResNet (torchvision's names).


class TorchMLP(nn.Module):
  """``in_features``-``hidden``-``num_classes`` with ReLU, parameters ``fc1.*`` and ``fc2.*``."""

  def __init__(self, in_features: int = 784, hidden: int = 200, num_classes: int = 10):
    super().__init__()
    self.fc1 = nn.Linear(in_features, hidden)
    self.fc2 = nn.Linear(hidden, num_classes)

  def forward(self, x):
    return self.fc2(torch.relu(self.fc1(x.flatten(1))))


VGG_CONFIGS = {
  "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
  "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class TorchVGG(nn.Module):
  """torchvision's VGG for a config list (ints are 3x3 convs, "M" a 2x2 max pool)."""

  def __init__(
    self, config: Sequence[Any], batch_norm: bool = False, num_classes: int = 1000, hidden: int = 4096,
    in_channels: int = 3,
  ):
    super().__init__()
    layers: list[nn.Module] = []
    cin = in_channels
    for v in config:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(cin, int(v), 3, padding=1)] + ([nn.BatchNorm2d(int(v))] if batch_norm else [])
        layers.append(nn.ReLU())
        cin = int(v)
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
      nn.Linear(cin * 49, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(),
      nn.Linear(hidden, num_classes),
    )

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def torch_vgg(name: str, **kwargs) -> TorchVGG:
  """``"vgg11"``, ``"vgg16"``, or either with ``"_bn"``; ``kwargs`` go to `TorchVGG`."""
  return TorchVGG(VGG_CONFIGS[name.removesuffix("_bn")], name.endswith("_bn"), **kwargs)


def _shortcut(cin, cout, stride):
  if stride == 1 and cin == cout:
    return None
  return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, groups=1, base_width=64):
    super().__init__()
    del groups, base_width  # torchvision refuses them for basic blocks
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = _shortcut(cin, planes, stride)

  def forward(self, x):
    out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, groups=1, base_width=64):
    super().__init__()
    width = int(planes * base_width / 64) * groups
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = _shortcut(cin, planes * 4, stride)

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
  """torchvision's ResNet for a block class and the blocks per stage."""

  def __init__(self, block, layers: Sequence[int], num_classes: int = 1000, groups: int = 1, base_width: int = 64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
      blocks = []
      for j in range(count):
        blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1, groups, base_width))
        cin = planes * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


RESNETS = {
  "resnet18": (TorchBasicBlock, (2, 2, 2, 2), {}),
  "resnet34": (TorchBasicBlock, (3, 4, 6, 3), {}),
  "resnet50": (TorchBottleneck, (3, 4, 6, 3), {}),
  "resnext50_32x4d": (TorchBottleneck, (3, 4, 6, 3), {"groups": 32, "base_width": 4}),
  "wide_resnet50_2": (TorchBottleneck, (3, 4, 6, 3), {"base_width": 128}),
}


def torch_resnet(name: str, **kwargs) -> TorchResNet:
  """One of `RESNETS` by torchvision's name; ``kwargs`` (e.g. ``num_classes``) go to `TorchResNet`."""
  block, layers, preset = RESNETS[name]
  return TorchResNet(block, layers, **preset, **kwargs)


# ---------------------------------------------------------------------------
# Inception v3 (torchvision's Inception3, without the aux head unless asked).


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


class TorchInceptionAux(nn.Module):

  def __init__(self, cin, num_classes):
    super().__init__()
    self.conv0 = BasicConv2d(cin, 128, kernel_size=1)
    self.conv1 = BasicConv2d(128, 768, kernel_size=5)
    self.fc = nn.Linear(768, num_classes)

  def forward(self, x):
    x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class TorchInception3(nn.Module):
  """torchvision's Inception3 (``init_weights`` aside)."""

  def __init__(self, num_classes: int = 1000, aux_logits: bool = False, transform_input: bool = False):
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
    self.AuxLogits = TorchInceptionAux(768, num_classes) if aux_logits else None
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


# ---------------------------------------------------------------------------
# EfficientNet-Lite0 (EfficientNet-Lite-PyTorch's names and static "same" padding).

# (repeats, kernel, stride, expansion, in, out) per stage: EfficientNet-B0's blocks, which Lite0 keeps.
LITE0_BLOCKS = (
  (1, 3, 1, 1, 32, 16),
  (2, 3, 2, 6, 16, 24),
  (2, 5, 2, 6, 24, 40),
  (3, 3, 2, 6, 40, 80),
  (3, 5, 1, 6, 80, 112),
  (4, 5, 2, 6, 112, 192),
  (1, 3, 1, 6, 192, 320),
)


class _SamePadConv2d(nn.Conv2d):
  """EfficientNet-PyTorch's ``Conv2dStaticSamePadding`` for a fixed image size."""

  def __init__(self, cin, cout, kernel_size, stride=1, groups=1, *, image_size):
    super().__init__(cin, cout, kernel_size, stride, 0, 1, groups, bias=False)
    out = math.ceil(image_size / stride)
    pad = max((out - 1) * stride + kernel_size - image_size, 0)
    self.pads = (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)

  def forward(self, x):
    return F.conv2d(F.pad(x, self.pads), self.weight, None, self.stride, 0, 1, self.groups)


def _bn(c):
  return nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)


class _MBConvBlock(nn.Module):

  def __init__(self, cin, cout, k, stride, expand, image_size):
    super().__init__()
    mid = cin * expand
    self.expand, self.skip = expand, stride == 1 and cin == cout
    if expand != 1:
      self._expand_conv = _SamePadConv2d(cin, mid, 1, image_size=image_size)
      self._bn0 = _bn(mid)
    self._depthwise_conv = _SamePadConv2d(mid, mid, k, stride, groups=mid, image_size=image_size)
    self._bn1 = _bn(mid)
    self._project_conv = _SamePadConv2d(mid, cout, 1, image_size=math.ceil(image_size / stride))
    self._bn2 = _bn(cout)

  def forward(self, inputs):
    x = inputs
    if self.expand != 1:
      x = F.relu6(self._bn0(self._expand_conv(x)))
    x = F.relu6(self._bn1(self._depthwise_conv(x)))
    x = self._bn2(self._project_conv(x))
    return x + inputs if self.skip else x


class TorchEfficientNetLite0(nn.Module):
  """EfficientNet-Lite0 with EfficientNet-Lite-PyTorch's names, padded for ``image_size``."""

  def __init__(self, num_classes: int = 1000, image_size: int = 224):
    super().__init__()
    self._conv_stem = _SamePadConv2d(3, 32, 3, 2, image_size=image_size)
    self._bn0 = _bn(32)
    size = math.ceil(image_size / 2)
    blocks = []
    for repeats, k, stride, expand, cin, cout in LITE0_BLOCKS:
      for i in range(repeats):
        blocks.append(_MBConvBlock(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, expand, size))
        size = math.ceil(size / (stride if i == 0 else 1))
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = _SamePadConv2d(320, 1280, 1, image_size=size)
    self._bn1 = _bn(1280)
    self._avg_pooling = nn.AdaptiveAvgPool2d(1)
    self._dropout = nn.Dropout(0.2)
    self._fc = nn.Linear(1280, num_classes)

  def forward(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    x = F.relu6(self._bn1(self._conv_head(x)))
    return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))


# ---------------------------------------------------------------------------
# Weights.


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights at a stable scale and non-trivial batch-norm statistics; eval mode.

  Convolution, linear and attention weights are He-scaled on their fan-in
  (activations stay O(1) through any depth); batch- and layer-norm scales,
  running variances and ConvNeXt's ``layer_scale`` (torchvision starts it at
  1e-6; O(1) exercises the block) lie in [0.5, 1.5]; biases and running means
  are N(0, 0.1^2); ViT's ``class_token`` and ``pos_embedding`` N(0, 0.5^2).
  The references of tests/torch_backbones.py use it too.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      leaf = name.rsplit(".", 1)[-1]
      if name.endswith("running_var") or (name.endswith("weight") and tensor.ndim == 1) or leaf == "layer_scale":
        tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
      elif leaf in ("class_token", "pos_embedding"):
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
      elif tensor.ndim == 1:  # biases (in_proj_bias too), batch-norm shifts, running means
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
      else:
        fan_in = tensor[0].numel()
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
  return module.eval()


def numpy_state_dict(module: nn.Module) -> dict[str, np.ndarray]:
  """The module's state dict as NumPy arrays (what `adaptgrad_jax.models` loaders take)."""
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def load_numpy_state_dict(module: nn.Module, state_dict: dict[str, np.ndarray]) -> nn.Module:
  """Copies torch-named NumPy arrays into ``module``; eval mode, parameters frozen."""
  tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state_dict.items()}
  missing, unexpected = module.load_state_dict(tensors, strict=False)
  missing = [k for k in missing if not k.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
  module.eval()
  for p in module.parameters():
    p.requires_grad_(False)
  return module


# ---------------------------------------------------------------------------
# Equivalence of a Flax port with its reference.


def _to_torch_layout(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.moveaxis(x, -1, 1) if x.ndim == 4 else x)


def _from_torch_layout(x: np.ndarray) -> np.ndarray:
  return np.moveaxis(x, 1, -1) if x.ndim == 4 else x


@contextlib.contextmanager
def single_threaded_torch():
  """Runs torch on one thread inside the block, then restores its thread count.

  The references are small; on a busy machine (pytest-xdist workers on every
  core) torch's spinning worker threads cost 10-20x the CPU time of one
  thread (EfficientNet-Lite0's float64 gradient at 36 x 36: 0.24 s on one
  thread, 4.8 s on two).
  """
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield
  finally:
    torch.set_num_threads(threads)


def torch_logits(module: nn.Module, x: np.ndarray) -> np.ndarray:
  """Float64 logits of ``module`` (cast to float64 in place) at ``x`` (NHWC when 4-D)."""
  module = module.double().eval()
  with torch.no_grad(), single_threaded_torch():
    return module(torch.tensor(_to_torch_layout(x), dtype=torch.float64)).numpy()


def torch_logits_and_input_grad(
  module: nn.Module, x: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Float64 logits of ``module`` at ``x``, random weights ``w`` and the input gradient of ``sum(logits * w)``.

  ``x`` is NHWC when 4-D (the gradient comes back NHWC); ``w`` is standard
  normal from ``seed``, shaped like the logits. The module is cast to float64
  in place.

  Returns:
    ``(logits, w, grad)``, float64 NumPy arrays.
  """
  module = module.double().eval()
  x_t = torch.tensor(_to_torch_layout(x), dtype=torch.float64, requires_grad=True)
  with single_threaded_torch():
    logits = module(x_t)
    w = np.random.default_rng(seed).normal(size=tuple(logits.shape))
    (logits * torch.from_numpy(w)).sum().backward()
  return logits.detach().numpy(), w, _from_torch_layout(x_t.grad.numpy())


def as_float64(tree: Any) -> Any:
  """Casts every floating leaf to float64 (call with `jax.enable_x64` on, or it stays float32).

  The cast is done by NumPy and the result put on the device: an eager
  ``astype`` compiles one conversion program per leaf shape (31 for a
  ResNet-50, about a second each on a busy 2-core machine).
  """
  return jax.tree.map(
    lambda a: jax.device_put(np.asarray(a, np.float64)) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
  )


def assert_close(actual: Any, expected: Any, rel: float) -> None:
  """``max |actual - expected| <= rel * max |expected|``, with equal shapes and a nonzero scale."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  scale = np.abs(expected).max()
  assert scale > 0
  err = np.abs(actual.astype(np.float64) - expected).max() / scale
  assert err <= rel, f"max error {err:.2e} of the largest magnitude {scale:.3g}, more than {rel:.0e}"


def assert_matches_torch(
  model: nnx.Module, module: nn.Module, x: np.ndarray, *, seed: int = 0, logits_rel: float = 1e-4,
  grad_rel: float | None = 1e-10,
) -> None:
  """The Flax port ``model`` computes what the reference ``module`` does, both in eval mode.

  * float32 logits (the dtype users run) against the float64 reference, to
    ``logits_rel`` of their largest magnitude;
  * with ``grad_rel`` (None skips it): the port cast to float64, under
    `jax.enable_x64`, against the reference in float64: the logits and the
    input gradient of a random projection of the logits, to ``grad_rel``.
    Gradients are compared in float64 only: through ReLU and max-pool kinks
    a float32 gradient depends on the CPU's rounding (see the module
    docstring), while in float64 the two implementations agree to ~1e-15.

  Args:
    model: the Flax model; put in eval mode here.
    module: the torch reference holding the same weights; cast to float64.
    x: a float32 input, NHWC when 4-D (it is converted for torch).
    seed: the seed of the projection weights.
    logits_rel: the float32 logits' tolerance.
    grad_rel: the float64 tolerance of logits and gradient.
  """
  model.eval()
  graphdef, state = nnx.split(model)
  if grad_rel is None:
    logits_t = torch_logits(module, x)
  else:
    logits_t, w, grad_t = torch_logits_and_input_grad(module, x, seed)

  logits32 = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, jnp.asarray(x, jnp.float32))
  assert logits32.dtype == jnp.float32
  assert_close(logits32, logits_t, logits_rel)
  if grad_rel is None:
    return

  with jax.enable_x64(True):

    @jax.jit
    def grad_and_logits(state, x):
      def projected(x):
        logits = nnx.merge(graphdef, state)(x)
        return (logits * w).sum(), logits

      return jax.grad(projected, has_aux=True)(x)

    grad, logits = grad_and_logits(as_float64(state), jnp.asarray(x, jnp.float64))
    assert grad.dtype == logits.dtype == jnp.float64
    assert_close(logits, logits_t, grad_rel)
    assert_close(grad, grad_t, grad_rel)


# ---------------------------------------------------------------------------
# Smoothing, as PyTorch users write it (the benchmarks' baselines).


def torch_loop_smooth(
  model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, target: int, n: int, *, include_clean: bool = False
) -> torch.Tensor:
  """The released code's loop: ``n`` forward/backward passes of one noisy copy each.

  Args:
    model: a module in eval mode mapping ``(1, ...)`` to logits.
    x: one input with a batch axis of 1, e.g. ``(1, C, H, W)``.
    sigma: the noise scale, broadcastable to ``x``.
    target: the logit to explain.
    n: the number of noise samples.
    include_clean: start the sum from the clean gradient (the released code
      does; off by default to match `adaptgrad_jax.adapt_smooth`).

  Returns:
    The mean input gradient, shaped like ``x``.
  """
  total = torch.zeros_like(x)
  count = 0
  if include_clean:
    xi = x.clone().requires_grad_(True)
    model(xi)[0, target].backward()
    total += xi.grad
    count += 1
  for _ in range(n):
    noise = torch.randn_like(x) * sigma
    xi = (x + noise).requires_grad_(True)
    out = model(xi)
    out[0, target].backward()
    total += xi.grad
    count += 1
  return total / count


def torch_batched_smooth(
  model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, target: int, n: int, *, batch_size: int | None = None
) -> torch.Tensor:
  """Captum ``NoiseTunnel(Saliency)``-style: noisy copies in batches, one backward per batch.

  Args:
    model: a module in eval mode.
    x: one input with a batch axis of 1.
    sigma: the noise scale, broadcastable to ``x``.
    target: the logit to explain.
    n: the number of noise samples.
    batch_size: copies per forward/backward (None: all ``n`` at once; Captum's
      ``nt_samples_batch_size``).

  Returns:
    The mean input gradient, shaped like ``x``.
  """
  batch_size = n if batch_size is None else batch_size
  total = torch.zeros_like(x[0])
  done = 0
  while done < n:
    k = min(batch_size, n - done)
    noisy = (x + torch.randn((k,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device) * sigma).requires_grad_(True)
    out = model(noisy)
    (grad,) = torch.autograd.grad(out[:, target].sum(), noisy)
    total += grad.sum(0)
    done += k
  return (total / n)[None]
