"""Flax NNX ports of torchvision classifiers, the paper's MNIST MLP, and GPT-2 / BERT-style text models.

All models take NHWC float inputs ``(B, H, W, C)`` and return logits
``(B, classes)``. Their attribute paths mirror torchvision's parameter names, so
torchvision checkpoints load with `load_state_dict` (see `_loading.py` for the
convention). Call ``model.eval()`` before explaining: batch norm then uses its
running statistics and dropout is off.

The text models (`gpt2`, `bert`) take token ids ``(B, L)`` and load
`transformers` state-dict names; ``model.embed(ids)`` and
``model.forward_from_embeddings(embeds, attention_mask)`` split them at the
embedding lookup, for attribution in embedding space.
"""

from adaptgrad_jax.models._bert import BERT_BASE as BERT_BASE
from adaptgrad_jax.models._bert import BERT_TINY as BERT_TINY
from adaptgrad_jax.models._bert import BertConfig as BertConfig
from adaptgrad_jax.models._bert import BertForSequenceClassification as BertForSequenceClassification
from adaptgrad_jax.models._bert import BertLayer as BertLayer
from adaptgrad_jax.models._bert import bert as bert
from adaptgrad_jax.models._convnext import CNBlock as CNBlock
from adaptgrad_jax.models._convnext import ConvNeXt as ConvNeXt
from adaptgrad_jax.models._convnext import convnext_base as convnext_base
from adaptgrad_jax.models._convnext import convnext_large as convnext_large
from adaptgrad_jax.models._convnext import convnext_micro as convnext_micro
from adaptgrad_jax.models._convnext import convnext_small as convnext_small
from adaptgrad_jax.models._convnext import convnext_tiny as convnext_tiny
from adaptgrad_jax.models._densenet import DenseBlock as DenseBlock
from adaptgrad_jax.models._densenet import DenseLayer as DenseLayer
from adaptgrad_jax.models._densenet import DenseNet as DenseNet
from adaptgrad_jax.models._densenet import Transition as Transition
from adaptgrad_jax.models._densenet import densenet121 as densenet121
from adaptgrad_jax.models._densenet import densenet161 as densenet161
from adaptgrad_jax.models._densenet import densenet169 as densenet169
from adaptgrad_jax.models._densenet import densenet201 as densenet201
from adaptgrad_jax.models._densenet import densenet_micro as densenet_micro
from adaptgrad_jax.models._efficientnet import EfficientNetLite as EfficientNetLite
from adaptgrad_jax.models._efficientnet import MBConvBlock as MBConvBlock
from adaptgrad_jax.models._efficientnet import efficientnet_lite0 as efficientnet_lite0
from adaptgrad_jax.models._efficientnet import efficientnet_lite0_checkpoint as efficientnet_lite0_checkpoint
from adaptgrad_jax.models._efficientnet import pretrained_efficientnet_lite0 as pretrained_efficientnet_lite0
from adaptgrad_jax.models._gpt2 import GPT2_SMALL as GPT2_SMALL
from adaptgrad_jax.models._gpt2 import GPT2_TINY as GPT2_TINY
from adaptgrad_jax.models._gpt2 import GPT2Block as GPT2Block
from adaptgrad_jax.models._gpt2 import GPT2Config as GPT2Config
from adaptgrad_jax.models._gpt2 import GPT2LMHeadModel as GPT2LMHeadModel
from adaptgrad_jax.models._gpt2 import gpt2 as gpt2
from adaptgrad_jax.models._imagenet import EFFICIENTNET_LITE_BOUNDS as EFFICIENTNET_LITE_BOUNDS
from adaptgrad_jax.models._imagenet import IMAGENET_BOUNDS as IMAGENET_BOUNDS
from adaptgrad_jax.models._imagenet import IMAGENET_MEAN as IMAGENET_MEAN
from adaptgrad_jax.models._imagenet import IMAGENET_STD as IMAGENET_STD
from adaptgrad_jax.models._imagenet import PHOTOS as PHOTOS
from adaptgrad_jax.models._imagenet import imagenet_classes as imagenet_classes
from adaptgrad_jax.models._imagenet import imagenet_synsets as imagenet_synsets
from adaptgrad_jax.models._imagenet import load_photo as load_photo
from adaptgrad_jax.models._imagenet import preprocess_efficientnet_lite as preprocess_efficientnet_lite
from adaptgrad_jax.models._imagenet import preprocess_imagenet as preprocess_imagenet
from adaptgrad_jax.models._inception import BasicConv2d as BasicConv2d
from adaptgrad_jax.models._inception import INCEPTION_V3_MIN_SIZE as INCEPTION_V3_MIN_SIZE
from adaptgrad_jax.models._inception import Inception3 as Inception3
from adaptgrad_jax.models._inception import InceptionA as InceptionA
from adaptgrad_jax.models._inception import InceptionAux as InceptionAux
from adaptgrad_jax.models._inception import InceptionB as InceptionB
from adaptgrad_jax.models._inception import InceptionC as InceptionC
from adaptgrad_jax.models._inception import InceptionD as InceptionD
from adaptgrad_jax.models._inception import InceptionE as InceptionE
from adaptgrad_jax.models._inception import inception_v3 as inception_v3
from adaptgrad_jax.models._loading import LoadResult as LoadResult
from adaptgrad_jax.models._loading import build_model as build_model
from adaptgrad_jax.models._loading import load_state_dict as load_state_dict
from adaptgrad_jax.models._loading import load_weights as load_weights
from adaptgrad_jax.models._loading import state_dict_from_model as state_dict_from_model
from adaptgrad_jax.models._mlp import MLP as MLP
from adaptgrad_jax.models._mlp import mlp as mlp
from adaptgrad_jax.models._mobilenetv3 import InvertedResidual as InvertedResidual
from adaptgrad_jax.models._mobilenetv3 import InvertedResidualConfig as InvertedResidualConfig
from adaptgrad_jax.models._mobilenetv3 import MOBILENET_V3_LARGE as MOBILENET_V3_LARGE
from adaptgrad_jax.models._mobilenetv3 import MOBILENET_V3_SMALL as MOBILENET_V3_SMALL
from adaptgrad_jax.models._mobilenetv3 import MobileNetV3 as MobileNetV3
from adaptgrad_jax.models._mobilenetv3 import SqueezeExcitation as SqueezeExcitation
from adaptgrad_jax.models._mobilenetv3 import mobilenet_v3_large as mobilenet_v3_large
from adaptgrad_jax.models._mobilenetv3 import mobilenet_v3_micro as mobilenet_v3_micro
from adaptgrad_jax.models._mobilenetv3 import mobilenet_v3_small as mobilenet_v3_small
from adaptgrad_jax.models._resnet import BasicBlock as BasicBlock
from adaptgrad_jax.models._resnet import Bottleneck as Bottleneck
from adaptgrad_jax.models._resnet import ResNet as ResNet
from adaptgrad_jax.models._resnet import resnet101 as resnet101
from adaptgrad_jax.models._resnet import resnet152 as resnet152
from adaptgrad_jax.models._resnet import resnet18 as resnet18
from adaptgrad_jax.models._resnet import resnet34 as resnet34
from adaptgrad_jax.models._resnet import resnet50 as resnet50
from adaptgrad_jax.models._resnet import resnext50_32x4d as resnext50_32x4d
from adaptgrad_jax.models._resnet import wide_resnet50_2 as wide_resnet50_2
from adaptgrad_jax.models._sequence import positions_from_mask as positions_from_mask
from adaptgrad_jax.models._vgg import VGG as VGG
from adaptgrad_jax.models._vgg import adaptive_avg_pool as adaptive_avg_pool
from adaptgrad_jax.models._vgg import max_pool as max_pool
from adaptgrad_jax.models._vgg import vgg11 as vgg11
from adaptgrad_jax.models._vgg import vgg11_bn as vgg11_bn
from adaptgrad_jax.models._vgg import vgg13 as vgg13
from adaptgrad_jax.models._vgg import vgg13_bn as vgg13_bn
from adaptgrad_jax.models._vgg import vgg16 as vgg16
from adaptgrad_jax.models._vgg import vgg16_bn as vgg16_bn
from adaptgrad_jax.models._vgg import vgg19 as vgg19
from adaptgrad_jax.models._vgg import vgg19_bn as vgg19_bn
from adaptgrad_jax.models._vit import EncoderBlock as EncoderBlock
from adaptgrad_jax.models._vit import MultiheadAttention as MultiheadAttention
from adaptgrad_jax.models._vit import VisionTransformer as VisionTransformer
from adaptgrad_jax.models._vit import interpolate_pos_embedding as interpolate_pos_embedding
from adaptgrad_jax.models._vit import vit_b_16 as vit_b_16
from adaptgrad_jax.models._vit import vit_b_32 as vit_b_32
from adaptgrad_jax.models._vit import vit_l_16 as vit_l_16
from adaptgrad_jax.models._vit import vit_micro as vit_micro

__all__ = [
  "BERT_BASE",
  "BERT_TINY",
  "BasicBlock",
  "BasicConv2d",
  "BertConfig",
  "BertForSequenceClassification",
  "BertLayer",
  "Bottleneck",
  "CNBlock",
  "ConvNeXt",
  "DenseBlock",
  "DenseLayer",
  "DenseNet",
  "EFFICIENTNET_LITE_BOUNDS",
  "EfficientNetLite",
  "EncoderBlock",
  "GPT2Block",
  "GPT2Config",
  "GPT2LMHeadModel",
  "GPT2_SMALL",
  "GPT2_TINY",
  "IMAGENET_BOUNDS",
  "IMAGENET_MEAN",
  "IMAGENET_STD",
  "INCEPTION_V3_MIN_SIZE",
  "Inception3",
  "InceptionA",
  "InceptionAux",
  "InceptionB",
  "InceptionC",
  "InceptionD",
  "InceptionE",
  "InvertedResidual",
  "InvertedResidualConfig",
  "LoadResult",
  "MBConvBlock",
  "MLP",
  "MOBILENET_V3_LARGE",
  "MOBILENET_V3_SMALL",
  "MobileNetV3",
  "MultiheadAttention",
  "PHOTOS",
  "ResNet",
  "SqueezeExcitation",
  "Transition",
  "VGG",
  "VisionTransformer",
  "adaptive_avg_pool",
  "bert",
  "build_model",
  "convnext_base",
  "convnext_large",
  "convnext_micro",
  "convnext_small",
  "convnext_tiny",
  "densenet121",
  "densenet161",
  "densenet169",
  "densenet201",
  "densenet_micro",
  "efficientnet_lite0",
  "efficientnet_lite0_checkpoint",
  "gpt2",
  "imagenet_classes",
  "imagenet_synsets",
  "inception_v3",
  "interpolate_pos_embedding",
  "load_photo",
  "load_state_dict",
  "load_weights",
  "max_pool",
  "mlp",
  "mobilenet_v3_large",
  "mobilenet_v3_micro",
  "mobilenet_v3_small",
  "positions_from_mask",
  "preprocess_efficientnet_lite",
  "preprocess_imagenet",
  "pretrained_efficientnet_lite0",
  "resnet101",
  "resnet152",
  "resnet18",
  "resnet34",
  "resnet50",
  "resnext50_32x4d",
  "state_dict_from_model",
  "vgg11",
  "vgg11_bn",
  "vgg13",
  "vgg13_bn",
  "vgg16",
  "vgg16_bn",
  "vgg19",
  "vgg19_bn",
  "vit_b_16",
  "vit_b_32",
  "vit_l_16",
  "vit_micro",
  "wide_resnet50_2",
]
