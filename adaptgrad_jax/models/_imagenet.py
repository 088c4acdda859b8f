"""ImageNet class names, sample photos and the input preprocessing of the pretrained models.

Everything returns NumPy arrays in the models' NHWC convention (one image
``(H, W, 3)``; stack images for a batch). Resizing uses Pillow, imported only
when an image is resized or a photo is read (``pip install pillow``, included in
the ``plot`` and ``pretrained`` extras); the class names need nothing beyond the
standard library.

Each preprocessing comes with the ``bounds`` of its output, the image of the
pixel range ``[0, 255]``, to hand to the smoothing transforms
(``adapt_smooth(..., bounds=EFFICIENTNET_LITE_BOUNDS)``).
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

import numpy as np
from adaptgrad_jax._extras import install_hint

__all__ = [
  "EFFICIENTNET_LITE_BOUNDS",
  "IMAGENET_BOUNDS",
  "IMAGENET_MEAN",
  "IMAGENET_STD",
  "PHOTOS",
  "imagenet_classes",
  "imagenet_synsets",
  "load_photo",
  "preprocess_efficientnet_lite",
  "preprocess_imagenet",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel (RGB) mean of torchvision's ImageNet normalisation, on a 0..1 scale."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel (RGB) standard deviation of torchvision's ImageNet normalisation."""
IMAGENET_BOUNDS = (
  (0.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32),
  (1.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32),
)
"""Per-channel ``(lower, upper)`` of `preprocess_imagenet` outputs, arrays of shape ``(3,)``
(about ``(-2.12, -2.04, -1.80)`` to ``(2.25, 2.43, 2.64)``); broadcast against NHWC inputs."""

EFFICIENTNET_LITE_MEAN = 127.0
EFFICIENTNET_LITE_STD = 128.0
EFFICIENTNET_LITE_BOUNDS = ((0.0 - 127.0) / 128.0, (255.0 - 127.0) / 128.0)
"""``(lower, upper) = (-0.9921875, 1.0)``, the range of `preprocess_efficientnet_lite` outputs."""

PHOTOS = ("chelsea", "coffee")
"""Names accepted by `load_photo`: scikit-image's CC0 ``chelsea`` (a cat) and ``coffee`` (a cup)."""

_DATA = "data"


def _data_file(*parts: str):
  return importlib.resources.files("adaptgrad_jax").joinpath(_DATA, *parts)


@functools.lru_cache(maxsize=1)
def _imagenet_table() -> tuple[tuple[str, str], ...]:
  text = _data_file("imagenet_classes.txt").read_text(encoding="utf-8")
  rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line and not line.startswith("#"))
  if len(rows) != 1000:
    raise RuntimeError(
      f"the packaged imagenet_classes.txt has {len(rows)} classes instead of 1000; reinstall adaptgrad-jax"
    )
  return rows


def imagenet_classes(*, full: bool = False) -> list[str]:
  """The 1000 ImageNet-1k class names, in the index order of torchvision and timm models.

  Args:
    full: if False, each class's first WordNet lemma (``"tench"``,
      ``"Egyptian cat"``); if True, all its lemmas (``"tench, Tinca tinca"``).
      Short names are not unique (``"crane"`` is 134, the bird, and 517, the machine).

  Returns:
    A list of 1000 strings; ``imagenet_classes()[285] == "Egyptian cat"``.

  Example:
    >>> from adaptgrad_jax.models import imagenet_classes
    >>> imagenet_classes()[285]
    'Egyptian cat'
  """
  return [lemmas if full else lemmas.split(", ")[0] for _, lemmas in _imagenet_table()]


def imagenet_synsets() -> list[str]:
  """The 1000 WordNet synset ids of ImageNet-1k, in class index order (``"n01440764"``, ...)."""
  return [synset for synset, _ in _imagenet_table()]


def _pil():
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise ImportError(
      "reading and resizing images needs Pillow, which is not installed; "
      "install it with: " + install_hint("plot")
    ) from err
  return Image


def load_photo(name: str) -> np.ndarray:
  """Loads one of the packaged sample photos as RGB ``uint8`` ``(H, W, 3)``.

  The photos are scikit-image's CC0 ``chelsea`` (300 x 451, a cat, ImageNet
  class 285 "Egyptian cat" for the pretrained EfficientNet-Lite0) and
  ``coffee`` (400 x 600, a cup), copied byte for byte, so the arrays equal
  ``skimage.data.chelsea()`` and ``skimage.data.coffee()``. scikit-image is not
  needed; Pillow decodes the PNG files.

  Args:
    name: one of `PHOTOS`.

  Returns:
    The photo, a ``uint8`` array of shape ``(H, W, 3)``.

  Raises:
    ValueError: for an unknown name.
    ImportError: if Pillow is not installed.

  Example:
    >>> from adaptgrad_jax.models import load_photo
    >>> load_photo("chelsea").shape
    (300, 451, 3)
  """
  if name not in PHOTOS:
    raise ValueError(f"name={name!r} is not a packaged photo; choose one of {PHOTOS}")
  image = _pil()
  with _data_file("photos", f"{name}.png").open("rb") as f, image.open(f) as img:
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _as_pil_rgb(image: Any):
  """A ``uint8`` ``(H, W, 3)`` array or a PIL image -> an RGB PIL image, validating the array."""
  pil = _pil()
  if isinstance(image, pil.Image):
    return image.convert("RGB")
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(
      f"image must be an RGB uint8 array of shape (H, W, 3) with values 0..255 (or a PIL image), "
      f"got dtype {array.dtype} and shape {array.shape}; convert with np.asarray(img, np.uint8), "
      "add channels with np.stack([img] * 3, -1) for grey images, drop alpha with img[..., :3]"
    )
  return pil.fromarray(array, "RGB")


def _check_size(name: str, value: int) -> int:
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}={value!r} must be a positive number of pixels")
  return int(value)


def preprocess_efficientnet_lite(image: Any, *, size: int = 224) -> np.ndarray:
  """RGB ``uint8`` image -> the input of the pretrained EfficientNet-Lite0.

  The whole image is resized to ``size x size`` (bilinear, Pillow; the aspect
  ratio is not kept and nothing is cropped, as TensorFlow Lite's image
  classifiers do), then each value becomes ``(x - 127) / 128``, so outputs lie
  in `EFFICIENTNET_LITE_BOUNDS` = ``(-0.9921875, 1.0)``. With this
  preprocessing the pretrained model gives ``chelsea`` probability 0.791 for
  "Egyptian cat" (0.39 with a shorter-side resize and center crop instead).

  Args:
    image: an RGB ``uint8`` array ``(H, W, 3)`` with values 0..255, or a PIL image.
    size: output height and width (224 for EfficientNet-Lite0).

  Returns:
    A ``float32`` array ``(size, size, 3)``; add a batch axis with ``x[None]``.

  Raises:
    ValueError: if ``image`` is not an RGB ``uint8`` array.
    ImportError: if Pillow is not installed.

  Example:
    >>> from adaptgrad_jax.models import load_photo, preprocess_efficientnet_lite
    >>> x = preprocess_efficientnet_lite(load_photo("chelsea"))
    >>> x.shape, x.dtype.name
    ((224, 224, 3), 'float32')
  """
  size = _check_size("size", size)
  img = _as_pil_rgb(image).resize((size, size), _pil().Resampling.BILINEAR)
  x = np.asarray(img, dtype=np.float32)
  return (x - EFFICIENTNET_LITE_MEAN) / EFFICIENTNET_LITE_STD


def preprocess_imagenet(image: Any, *, resize: int = 256, crop: int = 224) -> np.ndarray:
  """RGB ``uint8`` image -> torchvision's ImageNet input (VGG, ResNet, Inception v3).

  As torchvision's classification presets: the shorter side is resized to
  ``resize`` (bilinear with antialiasing, Pillow), the center ``crop x crop``
  is cut out, values are scaled to ``[0, 1]`` and normalised per channel with
  `IMAGENET_MEAN` and `IMAGENET_STD`. Outputs lie in the per-channel
  `IMAGENET_BOUNDS`. For Inception v3 use ``resize=342, crop=299``.

  Args:
    image: an RGB ``uint8`` array ``(H, W, 3)`` with values 0..255, or a PIL image.
    resize: length of the shorter side after resizing (256; 342 for Inception v3).
    crop: height and width of the center crop (224; 299 for Inception v3).

  Returns:
    A ``float32`` array ``(crop, crop, 3)``; add a batch axis with ``x[None]``.

  Raises:
    ValueError: if ``image`` is not an RGB ``uint8`` array or ``crop > resize``.
    ImportError: if Pillow is not installed.

  Example:
    >>> from adaptgrad_jax.models import load_photo, preprocess_imagenet
    >>> preprocess_imagenet(load_photo("coffee")).shape
    (224, 224, 3)
  """
  resize, crop = _check_size("resize", resize), _check_size("crop", crop)
  if crop > resize:
    raise ValueError(f"crop={crop} must not exceed resize={resize}, the shorter side after resizing")
  img = _as_pil_rgb(image)
  w, h = img.size
  if w <= h:
    new_w, new_h = resize, int(resize * h / w)
  else:
    new_w, new_h = int(resize * w / h), resize
  img = img.resize((new_w, new_h), _pil().Resampling.BILINEAR)
  top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
  img = img.crop((left, top, left + crop, top + crop))
  x = np.asarray(img, dtype=np.float32) / 255.0
  return ((x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)).astype(np.float32)
