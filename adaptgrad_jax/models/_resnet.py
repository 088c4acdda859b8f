"""ResNet (torchvision v1.5 architecture) in Flax NNX."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from adaptgrad_jax.models._loading import build_model
from adaptgrad_jax.models._vgg import max_pool

__all__ = [
  "BasicBlock",
  "Bottleneck",
  "ResNet",
  "resnet18",
  "resnet34",
  "resnet50",
  "resnet101",
  "resnet152",
  "resnext50_32x4d",
  "wide_resnet50_2",
]


def _conv(cin: int, cout: int, size: int, stride: int = 1, groups: int = 1, *, rngs: nnx.Rngs) -> nnx.Conv:
  """A bias-free conv with torch's symmetric padding ``size // 2``."""
  pad = size // 2
  return nnx.Conv(
    cin,
    cout,
    (size, size),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    feature_group_count=groups,
    use_bias=False,
    rngs=rngs,
  )


def _bn(features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm with torch's defaults (eps 1e-5, momentum 0.1, i.e. Flax momentum 0.9)."""
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _downsample(cin: int, cout: int, stride: int, *, rngs: nnx.Rngs) -> nnx.List | None:
  """torchvision's shortcut projection ``Sequential(conv1x1, BatchNorm)``, or None."""
  if stride == 1 and cin == cout:
    return None
  return nnx.List([_conv(cin, cout, 1, stride, rngs=rngs), _bn(cout, rngs=rngs)])


class BasicBlock(nnx.Module):
  """Two 3x3 convs with a residual connection (ResNet-18/34); ``conv1`` carries the stride."""

  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64, *, rngs: nnx.Rngs):
    if groups != 1 or base_width != 64:
      raise ValueError(f"BasicBlock supports groups=1 and base_width=64 only, got {groups=}, {base_width=}")
    self.conv1 = _conv(cin, planes, 3, stride, rngs=rngs)
    self.bn1 = _bn(planes, rngs=rngs)
    self.conv2 = _conv(planes, planes, 3, rngs=rngs)
    self.bn2 = _bn(planes, rngs=rngs)
    self.downsample = _downsample(cin, planes, stride, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    identity = x
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
      for layer in self.downsample:
        identity = layer(identity)
    return jax.nn.relu(out + identity)


class Bottleneck(nnx.Module):
  """1x1, 3x3, 1x1 convs with a residual connection (ResNet-50 and deeper).

  As torchvision's v1.5, the stride sits on the 3x3 conv (``conv2``), which may
  be grouped (ResNeXt).
  """

  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64, *, rngs: nnx.Rngs):
    width = int(planes * (base_width / 64.0)) * groups
    self.conv1 = _conv(cin, width, 1, rngs=rngs)
    self.bn1 = _bn(width, rngs=rngs)
    self.conv2 = _conv(width, width, 3, stride, groups, rngs=rngs)
    self.bn2 = _bn(width, rngs=rngs)
    self.conv3 = _conv(width, planes * self.expansion, 1, rngs=rngs)
    self.bn3 = _bn(planes * self.expansion, rngs=rngs)
    self.downsample = _downsample(cin, planes * self.expansion, stride, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    identity = x
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.downsample is not None:
      for layer in self.downsample:
        identity = layer(identity)
    return jax.nn.relu(out + identity)


class ResNet(nnx.Module):
  """torchvision's ResNet: a 7x7 stride-2 stem (``conv1``, ``bn1``), a 3x3
  stride-2 max pool, four stages ``layer1`` .. ``layer4`` (`nnx.List`s of
  blocks), global average pooling and ``fc``.

  Args:
    block: `BasicBlock` or `Bottleneck`.
    layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
    num_classes: number of logits.
    groups: conv groups of the bottleneck 3x3 convs (ResNeXt).
    width_per_group: bottleneck width per group (64; 128 for Wide ResNet).
    widths: planes of the four stages (torchvision: 64, 128, 256, 512).
    in_channels: input channels.
    rngs: the random streams for initialisation.
  """

  def __init__(
    self,
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    *,
    num_classes: int = 1000,
    groups: int = 1,
    width_per_group: int = 64,
    widths: Sequence[int] = (64, 128, 256, 512),
    in_channels: int = 3,
    rngs: nnx.Rngs,
  ):
    if len(layers) != 4 or len(widths) != 4:
      raise ValueError(f"layers={layers} and widths={widths} must each have 4 entries, one per stage")
    self.conv1 = nnx.Conv(
      in_channels, widths[0], (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False, rngs=rngs
    )
    self.bn1 = _bn(widths[0], rngs=rngs)
    cin = widths[0]
    for index, (planes, count) in enumerate(zip(widths, layers)):
      blocks = []
      for i in range(count):
        stride = 2 if index > 0 and i == 0 else 1
        blocks.append(block(cin, planes, stride, groups, width_per_group, rngs=rngs))
        cin = planes * block.expansion
      setattr(self, f"layer{index + 1}", nnx.List(blocks))
    self.fc = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(B, H, W, C)`` to logits ``(B, num_classes)``."""
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = max_pool(x, 3, 2, padding=1)
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in stage:
        x = block(x)
    return self.fc(x.mean(axis=(1, 2)))


def _resnet(block, layers, weights: Any, rngs: nnx.Rngs, kwargs: dict[str, Any]) -> ResNet:
  return build_model(lambda rngs: ResNet(block, layers, rngs=rngs, **kwargs), weights, rngs)


# The presets take `weights=` (None, a checkpoint path or a mapping of torchvision-named arrays, e.g.
# `adaptgrad_jax.weights.pretrained("resnet50")`), `rngs=` and the `ResNet` options (`num_classes`,
# `widths`, `in_channels`). Call `model.eval()` before explaining.


def resnet18(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-18, torchvision's ``resnet18``; ``weights`` and ``**kwargs`` as in `resnet50`."""
  return _resnet(BasicBlock, (2, 2, 2, 2), weights, rngs, kwargs)


def resnet34(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-34, torchvision's ``resnet34``; ``weights`` and ``**kwargs`` as in `resnet50`."""
  return _resnet(BasicBlock, (3, 4, 6, 3), weights, rngs, kwargs)


def resnet50(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-50 (v1.5), torchvision's ``resnet50``, one of the paper's models.

  Args:
    weights: None (random initialisation), a checkpoint path or a mapping of
      torchvision-named arrays, e.g. ``adaptgrad_jax.weights.pretrained("resnet50")``.
    rngs: the random streams for initialisation.
    **kwargs: `ResNet` options: ``num_classes``, ``widths``, ``in_channels``.

  Returns:
    A `ResNet`; call ``model.eval()`` before explaining (batch norm then uses
    its running statistics).

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models, weights
    >>> abstract = nnx.eval_shape(lambda: models.resnet50(rngs=nnx.Rngs(0)))  # shapes only
    >>> models.state_dict_from_model(abstract)["layer1.0.downsample.0.weight"].shape
    (256, 64, 1, 1)
    >>> model = models.resnet50(weights=weights.pretrained("resnet50"), rngs=nnx.Rngs(0))  # doctest: +SKIP
    >>> model.eval()  # doctest: +SKIP
    >>> logits = model(images)  # (B, 224, 224, 3), ImageNet-normalised  # doctest: +SKIP

  References:
    He et al., "Deep residual learning for image recognition", CVPR 2016.
  """
  return _resnet(Bottleneck, (3, 4, 6, 3), weights, rngs, kwargs)


def resnet101(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-101, torchvision's ``resnet101``; ``weights`` and ``**kwargs`` as in `resnet50`."""
  return _resnet(Bottleneck, (3, 4, 23, 3), weights, rngs, kwargs)


def resnet152(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-152, torchvision's ``resnet152``; ``weights`` and ``**kwargs`` as in `resnet50`."""
  return _resnet(Bottleneck, (3, 8, 36, 3), weights, rngs, kwargs)


def resnext50_32x4d(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNeXt-50 32x4d, torchvision's ``resnext50_32x4d``; ``weights`` and ``**kwargs`` as in `resnet50`."""
  return _resnet(Bottleneck, (3, 4, 6, 3), weights, rngs, {"groups": 32, "width_per_group": 4, **kwargs})


def wide_resnet50_2(*, weights: Any = None, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """Wide ResNet-50-2, torchvision's ``wide_resnet50_2``; ``weights`` and ``**kwargs`` as in `resnet50`."""
  return _resnet(Bottleneck, (3, 4, 6, 3), weights, rngs, {"width_per_group": 128, **kwargs})
