"""PyTorch baselines for the benchmarks: the models and the two ways PyTorch users smooth gradients.

* `torch_loop_smooth`: the released AdaptGrad code's style. One noisy copy at
  a time: ``noise = torch.randn_like(x) * sigma``, a forward pass, a
  ``backward()`` per sample, the input gradient added to a running sum.
* `torch_batched_smooth`: what Captum's ``NoiseTunnel(Saliency(model))`` does:
  all noisy copies (or chunks of ``batch_size`` of them) stacked into one batch,
  one forward and one ``backward()`` per chunk.

Both take the per-element ``sigma`` as a tensor (computed once by
`adaptgrad_jax.adaptive_sigma`, so every method perturbs with the same scale),
and both freeze the model's parameters (``requires_grad_(False)``), so autograd
computes input gradients only: the fastest PyTorch setting, and the same work
JAX does for ``jax.grad`` with respect to the input.

The modules are written from torchvision's and EfficientNet-Lite-PyTorch's
definitions with the same parameter names (torchvision is not a dependency), so
`adaptgrad_jax.models.state_dict_from_model` loads into them unchanged and JAX
and PyTorch run on the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# ---------------------------------------------------------------------------
# Models (NCHW, torchvision names).


class TorchMLP(nn.Module):
  """784-200-10 with ReLU, parameters ``fc1.*`` and ``fc2.*``."""

  def __init__(self, in_features: int = 784, hidden: int = 200, num_classes: int = 10):
    super().__init__()
    self.fc1 = nn.Linear(in_features, hidden)
    self.fc2 = nn.Linear(hidden, num_classes)

  def forward(self, x):
    return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class TorchVGG(nn.Module):
  """torchvision's VGG for a config list (ints are 3x3 convs, "M" a 2x2 max pool)."""

  def __init__(self, config: Sequence[Any], num_classes: int = 1000, hidden: int = 4096, in_channels: int = 3):
    super().__init__()
    layers: list[nn.Module] = []
    cin = in_channels
    for v in config:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
        cin = int(v)
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
      nn.Linear(cin * 49, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(),
      nn.Linear(hidden, num_classes),
    )

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _shortcut(cin, cout, stride):
  if stride == 1 and cin == cout:
    return None
  return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = _shortcut(cin, planes * 4, stride)

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet50(nn.Module):
  """torchvision's ResNet-50."""

  def __init__(self, num_classes: int = 1000, layers: Sequence[int] = (3, 4, 6, 3)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
      blocks = []
      for j in range(count):
        blocks.append(TorchBottleneck(cin, planes, 2 if i > 0 and j == 0 else 1))
        cin = planes * 4
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


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
    from adaptgrad_jax.models._efficientnet import LITE0_STAGES  # pylint: disable=import-outside-toplevel

    super().__init__()
    self._conv_stem = _SamePadConv2d(3, 32, 3, 2, image_size=image_size)
    self._bn0 = _bn(32)
    size = math.ceil(image_size / 2)
    blocks = []
    for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
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
# Smoothing.


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
  model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, target: int, n: int, *, batch_size: Optional[int] = None
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
