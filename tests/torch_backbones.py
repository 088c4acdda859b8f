"""Independent PyTorch references of ViT, ConvNeXt, MobileNetV3 and DenseNet (NCHW).

Written by hand from torchvision's definitions (``torchvision.models.
vision_transformer``, ``convnext``, ``mobilenetv3``, ``densenet``) with the same
module and parameter names, so a torchvision ``state_dict()`` loads into them
and theirs into torchvision (torchvision itself is not a dependency). Each
constructor takes the architecture's sizes so the tests can build tiny
variants; the defaults are the full torchvision models. Only what evaluation
needs is written (dropout and stochastic depth are identities in eval mode and
are omitted from ``forward``).

Import this module only inside tests that have torch (``pytest.importorskip``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch_reference
from torch import nn
from torch.nn import functional as F


# ----------------------------------------------------------------------------------------------
# ViT (torchvision.models.vision_transformer.VisionTransformer)
# ----------------------------------------------------------------------------------------------


class MLPBlock(nn.Sequential):
  """Linear (0), GELU (1), Dropout (2), Linear (3), Dropout (4)."""

  def __init__(self, dim, mlp_dim):
    super().__init__(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim), nn.Dropout(0.0))


class EncoderBlock(nn.Module):

  def __init__(self, num_heads, hidden_dim, mlp_dim):
    super().__init__()
    self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
    self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
    self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
    self.mlp = MLPBlock(hidden_dim, mlp_dim)

  def forward(self, inputs):
    x = self.ln_1(inputs)
    x, _ = self.self_attention(x, x, x, need_weights=False)
    x = x + inputs
    return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):

  def __init__(self, seq_length, num_layers, num_heads, hidden_dim, mlp_dim):
    super().__init__()
    self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
    self.layers = nn.Sequential(
      OrderedDict((f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim)) for i in range(num_layers))
    )
    self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

  def forward(self, x):
    return self.ln(self.layers(x + self.pos_embedding))


class VisionTransformer(nn.Module):

  def __init__(
    self,
    image_size=224,
    patch_size=16,
    num_layers=12,
    num_heads=12,
    hidden_dim=768,
    mlp_dim=3072,
    num_classes=1000,
  ):
    super().__init__()
    self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
    self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
    seq_length = (image_size // patch_size) ** 2 + 1
    self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
    self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
    self.heads = nn.Sequential(OrderedDict([("head", nn.Linear(hidden_dim, num_classes))]))

  def forward(self, x):
    n, _, h, w = x.shape
    assert h == w == self.image_size
    x = self.conv_proj(x)  # (n, hidden, h/p, w/p)
    x = x.reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
    x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
    x = self.encoder(x)
    return self.heads(x[:, 0])


# ----------------------------------------------------------------------------------------------
# ConvNeXt (torchvision.models.convnext.ConvNeXt)
# ----------------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):

  def forward(self, x):
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
    return x.permute(0, 3, 1, 2)


class Permute(nn.Module):

  def __init__(self, dims):
    super().__init__()
    self.dims = dims

  def forward(self, x):
    return torch.permute(x, self.dims)


class CNBlock(nn.Module):

  def __init__(self, dim, layer_scale=1e-6):
    super().__init__()
    self.block = nn.Sequential(
      nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
      Permute([0, 2, 3, 1]),
      nn.LayerNorm(dim, eps=1e-6),
      nn.Linear(dim, 4 * dim),
      nn.GELU(),
      nn.Linear(4 * dim, dim),
      Permute([0, 3, 1, 2]),
    )
    self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)

  def forward(self, x):
    return self.layer_scale * self.block(x) + x


class ConvNeXt(nn.Module):
  """``stages`` as torchvision's CNBlockConfig list: (input_channels, out_channels or None, num_layers)."""

  def __init__(self, stages=((96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)), num_classes=1000):
    super().__init__()
    first = stages[0][0]
    layers = [
      nn.Sequential(nn.Conv2d(3, first, kernel_size=4, stride=4, padding=0, bias=True), LayerNorm2d(first, eps=1e-6))
    ]
    for cin, cout, count in stages:
      layers.append(nn.Sequential(*[CNBlock(cin) for _ in range(count)]))
      if cout is not None:
        layers.append(nn.Sequential(LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, kernel_size=2, stride=2)))
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    last = stages[-1][1] if stages[-1][1] is not None else stages[-1][0]
    self.classifier = nn.Sequential(LayerNorm2d(last, eps=1e-6), nn.Flatten(1), nn.Linear(last, num_classes))

  def forward(self, x):
    return self.classifier(self.avgpool(self.features(x)))


# ----------------------------------------------------------------------------------------------
# MobileNetV3 (torchvision.models.mobilenetv3.MobileNetV3)
# ----------------------------------------------------------------------------------------------


def make_divisible(v, divisor=8):
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


class ConvBNActivation(nn.Sequential):
  """torchvision's Conv2dNormActivation: conv (0, no bias), BatchNorm (1), activation (2) if any."""

  def __init__(self, cin, cout, kernel_size, stride=1, groups=1, activation=None, eps=1e-3, momentum=0.01):
    layers = [
      nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
      nn.BatchNorm2d(cout, eps=eps, momentum=momentum),
    ]
    if activation is not None:
      layers.append(activation())
    super().__init__(*layers)


class SqueezeExcitation(nn.Module):

  def __init__(self, channels, squeeze):
    super().__init__()
    self.fc1 = nn.Conv2d(channels, squeeze, 1)
    self.fc2 = nn.Conv2d(squeeze, channels, 1)

  def forward(self, x):
    scale = F.adaptive_avg_pool2d(x, 1)
    scale = self.fc2(F.relu(self.fc1(scale)))
    # relu6(x + 3) / 6 is torchvision's F.hardsigmoid; written out because torch's CPU backward of
    # hardsigmoid multiplies by the float32 constant 1.0f / 6.0f, a 3e-8 relative error even in float64.
    return F.relu6(scale + 3.0) / 6.0 * x


class InvertedResidual(nn.Module):

  def __init__(self, cin, kernel, expanded, cout, use_se, activation, stride):
    super().__init__()
    act = nn.Hardswish if activation == "HS" else nn.ReLU
    layers = []
    if expanded != cin:
      layers.append(ConvBNActivation(cin, expanded, 1, activation=act))
    layers.append(ConvBNActivation(expanded, expanded, kernel, stride, groups=expanded, activation=act))
    if use_se:
      layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)))
    layers.append(ConvBNActivation(expanded, cout, 1))
    self.block = nn.Sequential(*layers)
    self.use_res_connect = stride == 1 and cin == cout

  def forward(self, x):
    y = self.block(x)
    return y + x if self.use_res_connect else y


# (input_channels, kernel, expanded_channels, out_channels, use_se, activation, stride): the Large table.
MOBILENET_V3_LARGE = (
  (16, 3, 16, 16, False, "RE", 1),
  (16, 3, 64, 24, False, "RE", 2),
  (24, 3, 72, 24, False, "RE", 1),
  (24, 5, 72, 40, True, "RE", 2),
  (40, 5, 120, 40, True, "RE", 1),
  (40, 5, 120, 40, True, "RE", 1),
  (40, 3, 240, 80, False, "HS", 2),
  (80, 3, 200, 80, False, "HS", 1),
  (80, 3, 184, 80, False, "HS", 1),
  (80, 3, 184, 80, False, "HS", 1),
  (80, 3, 480, 112, True, "HS", 1),
  (112, 3, 672, 112, True, "HS", 1),
  (112, 5, 672, 160, True, "HS", 2),
  (160, 5, 960, 160, True, "HS", 1),
  (160, 5, 960, 160, True, "HS", 1),
)


class MobileNetV3(nn.Module):

  def __init__(self, settings=MOBILENET_V3_LARGE, last_channel=1280, num_classes=1000):
    super().__init__()
    first = settings[0][0]
    layers = [ConvBNActivation(3, first, 3, 2, activation=nn.Hardswish)]
    layers += [InvertedResidual(*s) for s in settings]
    lastconv_in = settings[-1][3]
    layers.append(ConvBNActivation(lastconv_in, 6 * lastconv_in, 1, activation=nn.Hardswish))
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.classifier = nn.Sequential(
      nn.Linear(6 * lastconv_in, last_channel), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(last_channel, num_classes)
    )

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ----------------------------------------------------------------------------------------------
# DenseNet (torchvision.models.densenet.DenseNet)
# ----------------------------------------------------------------------------------------------


class DenseLayer(nn.Module):

  def __init__(self, cin, growth_rate, bn_size):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(cin)
    self.relu1 = nn.ReLU()
    self.conv1 = nn.Conv2d(cin, bn_size * growth_rate, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.relu2 = nn.ReLU()
    self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

  def forward(self, features):
    x = torch.cat(features, 1)
    return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):

  def __init__(self, num_layers, cin, bn_size, growth_rate):
    super().__init__()
    for i in range(num_layers):
      self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth_rate, growth_rate, bn_size))

  def forward(self, x):
    features = [x]
    for layer in self.values():
      features.append(layer(features))
    return torch.cat(features, 1)


class Transition(nn.Sequential):

  def __init__(self, cin, cout):
    super().__init__()
    self.norm = nn.BatchNorm2d(cin)
    self.relu = nn.ReLU()
    self.conv = nn.Conv2d(cin, cout, 1, bias=False)
    self.pool = nn.AvgPool2d(2, stride=2)


class DenseNet(nn.Module):

  def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4, num_classes=1000):
    super().__init__()
    layers = OrderedDict(
      [
        ("conv0", nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False)),
        ("norm0", nn.BatchNorm2d(num_init_features)),
        ("relu0", nn.ReLU()),
        ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
      ]
    )
    features = num_init_features
    for i, count in enumerate(block_config):
      layers[f"denseblock{i + 1}"] = DenseBlock(count, features, bn_size, growth_rate)
      features += count * growth_rate
      if i != len(block_config) - 1:
        layers[f"transition{i + 1}"] = Transition(features, features // 2)
        features //= 2
    layers["norm5"] = nn.BatchNorm2d(features)
    self.features = nn.Sequential(layers)
    self.classifier = nn.Linear(features, num_classes)

  def forward(self, x):
    x = F.relu(self.features(x))
    return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomize(module, seed):
  """`torch_reference.randomize` (random weights and batch-norm statistics keeping activations O(1)), in float64."""
  return torch_reference.randomize(module, seed).double()


__all__ = [
  "ConvNeXt",
  "DenseNet",
  "MOBILENET_V3_LARGE",
  "MobileNetV3",
  "VisionTransformer",
  "make_divisible",
  "randomize",
]
