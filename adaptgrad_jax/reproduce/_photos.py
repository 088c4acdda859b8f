"""Public-domain / CC0 photographs shipped by installable packages, for Table 2.

The photos are NOT copied into this package: they are loaded at reproduce
time from the installed scikit-image (``skimage.data``) and matplotlib
(``sample_data``). Each entry records where the file comes from and the
licence statement its package gives, so that a run lists them in its output.

Chosen: every natural photograph whose package states CC0, public domain or
"no known copyright restrictions". Left out, and why:

* scikit-image ``moon`` and ``motorcycle_left`` / ``motorcycle_right``
  (Middlebury stereo 2014): scikit-image states no licence for them;
  ``microaneurysms`` (CC0): a 102 x 102 grey crop; ``cell``, ``ihc``,
  ``kidney``, ``lily``: microscopy, not photographs of ImageNet-like scenes;
  ``horse``, ``logo``, ``text``, ``page``, ``phantom``, ``chessboard``,
  ``color``, ``colorwheel``: drawings, scans or synthetic; ``lfw_subset``:
  25 x 25 faces without a licence note.
* scikit-learn's ``china.jpg`` and ``flower.jpg``: CC BY 2.0, not CC0.

Grey photographs are converted to RGB by repeating the grey channel three
times (the model takes RGB).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from adaptgrad_jax._extras import install_hint

__all__ = ("TABLE2_PHOTOS", "Photo", "load_table2_photo")


class Photo(NamedTuple):
  """One photograph: its name, where it comes from and its licence.

  Attributes:
    name: short name (scikit-image's function name, or the file's stem).
    source: the package and function or file it is loaded from.
    licence: the licence statement of that package, quoted or summarised.
    grey: whether the original is grey (repeated to three channels here).
  """
  name: str
  source: str
  licence: str
  grey: bool = False


TABLE2_PHOTOS = (
    Photo("astronaut", "scikit-image skimage.data.astronaut()",
          "public domain (NASA; 'No known copyright restrictions, released "
          "into the public domain')"),
    Photo("camera", "scikit-image skimage.data.camera()",
          "CC0 (photographer Lav Varshney)", grey=True),
    Photo("chelsea", "scikit-image skimage.data.chelsea()",
          "CC0 (photographer Stefan van der Walt)"),
    Photo("coffee", "scikit-image skimage.data.coffee()",
          "CC0 (photographer Rachel Michetti)"),
    Photo("rocket", "scikit-image skimage.data.rocket()",
          "public domain (SpaceX)"),
    Photo("hubble_deep_field", "scikit-image skimage.data.hubble_deep_field()",
          "public domain (NASA)"),
    Photo("retina", "scikit-image skimage.data.retina()",
          "CC0 1.0 (Wikimedia Commons, Fundus photograph of normal left eye)"),
    Photo("coins", "scikit-image skimage.data.coins()",
          "no known copyright restrictions (Brooklyn Museum collection)",
          grey=True),
    Photo("clock", "scikit-image skimage.data.clock()",
          "public domain (photographer Stefan van der Walt)", grey=True),
    Photo("brick", "scikit-image skimage.data.brick()",
          "CC0 (CC0Textures, Bricks25)", grey=True),
    Photo("grass", "scikit-image skimage.data.grass()",
          "CC0 (DeviantArt, linolafett, Grass 01)", grey=True),
    Photo("gravel", "scikit-image skimage.data.gravel()",
          "CC0 (CC0Textures, Gravel04)", grey=True),
    Photo("grace_hopper", "matplotlib sample_data/grace_hopper.jpg",
          "public domain: official U.S. Navy portrait of Grace Hopper (a work "
          "of the U.S. federal government, per Wikimedia Commons); matplotlib "
          "ships it without a licence note"),
)
"""The photos of the Table 2 analogue, with source and licence."""

_BY_NAME = {p.name: p for p in TABLE2_PHOTOS}


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
  def load() -> np.ndarray:
    try:
      from skimage import data  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
          f"the photo {name!r} is loaded from scikit-image's bundled data: "
          "pip install scikit-image") from e
    return np.asarray(getattr(data, name)())
  return load


def _matplotlib_loader(file: str) -> Callable[[], np.ndarray]:
  def load() -> np.ndarray:
    try:
      from matplotlib import cbook  # pylint: disable=import-outside-toplevel
      from PIL import Image  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
          f"the photo {file!r} is loaded from matplotlib's sample data: "
          + install_hint("plot")) from e
    with cbook.get_sample_data(file) as f:
      return np.asarray(Image.open(f).convert("RGB"))
  return load


def load_table2_photo(name: str) -> np.ndarray:
  """Loads one photo of :data:`TABLE2_PHOTOS` as RGB ``uint8`` ``(H, W, 3)``.

  Grey photos are repeated to three channels; an alpha channel is dropped.

  Args:
    name: a name in :data:`TABLE2_PHOTOS`.

  Returns:
    The photo, ``uint8`` ``(H, W, 3)``.

  Raises:
    ValueError: an unknown name (the known ones are listed).
    ImportError: scikit-image (or matplotlib) is not installed; the message
      says what to install.
  """
  if name not in _BY_NAME:
    raise ValueError(f"photo {name!r} is not one of the Table 2 photos "
                     f"{tuple(_BY_NAME)}")
  if name == "grace_hopper":
    img = _matplotlib_loader("grace_hopper.jpg")()
  else:
    img = _skimage_loader(name)()
  if img.dtype == bool:
    img = img.astype(np.uint8) * 255
  if img.dtype != np.uint8:
    raise ValueError(f"photo {name!r} loaded as {img.dtype}; expected uint8")
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  if img.shape[-1] == 4:
    img = img[..., :3]
  return np.ascontiguousarray(img)
