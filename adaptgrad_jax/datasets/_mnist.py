"""MNIST: reading the standard files, the cache, and the embedded subset."""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import pathlib
import urllib.request
import zipfile
from typing import NamedTuple

import numpy as np

from adaptgrad_jax import _files
from adaptgrad_jax._files import CACHE_ENV, cache_dir
from adaptgrad_jax.datasets import _idx

ENV_MNIST = "ADAPTGRAD_JAX_MNIST"
ENV_CACHE = CACHE_ENV  # the one cache directory: adaptgrad_jax._files.cache_dir()
MNIST_FILES = {  # name: (key, md5 of the .gz as distributed)
    "train-images-idx3-ubyte": ("x_train", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte": ("y_train", "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte": ("x_test", "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte": ("y_test", "ec29112dd5afa0611ce80d1b7f02629c"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_KEYS = ("x_train", "y_train", "x_test", "y_test")


class MNIST(NamedTuple):
  """MNIST splits. Images are (N, 28, 28, 1) NHWC, labels (N,) int32.

  With the default ``dtype="float32"`` images lie in [0, 1] (pixel / 255);
  with ``dtype="uint8"`` they are the raw 0..255 values.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def _how_to_get(searched: list[str]) -> str:
  places = "\n  ".join(searched)
  return (
      "MNIST was not found. Searched:\n  " + places + "\n"
      "Get it in one of these ways:\n"
      "  - adaptgrad_jax.datasets.mnist(download=True) downloads the four "
      f"IDX files (about 11 MB) into {cache_dir() / 'mnist'};\n"
      "  - or place train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
      "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (or an .npz "
      "with x_train, y_train, x_test, y_test) there, or point "
      f"${ENV_MNIST} or mnist(path=...) at them;\n"
      "  - or use adaptgrad_jax.datasets.mnist_embedded(), the 12,000-digit "
      "subset shipped with the package.")


def _find_idx(directory: pathlib.Path, name: str) -> pathlib.Path | None:
  for candidate in (name + ".gz", name, name.replace("-idx", ".idx") + ".gz",
                    name.replace("-idx", ".idx")):
    p = directory / candidate
    if p.is_file():
      return p
  return None


def _load_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(
        f"{str(path)!r} is not a readable .npz archive ({e}); pass an .npz "
        f"made with np.savez or a directory holding the MNIST IDX "
        f"files.") from e
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(
        f"{str(path)!r} holds a single array, not an .npz archive; save MNIST "
        f"with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).")
  with archive as data:
    missing = [k for k in _KEYS if k not in data.files]
    if missing:
      raise ValueError(
          f"{str(path)!r} has arrays {sorted(data.files)} but MNIST needs "
          f"{list(_KEYS)} (missing {missing}); save it with "
          f"np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).")
    return {k: data[k] for k in _KEYS}


def _load_dir(directory: pathlib.Path) -> dict[str, np.ndarray] | None:
  found = {name: _find_idx(directory, name) for name in MNIST_FILES}
  if all(found.values()):
    return {MNIST_FILES[n][0]: _idx.read_idx(p) for n, p in found.items()}
  if any(found.values()):
    missing = [n for n, p in found.items() if p is None]
    raise ValueError(
        f"{str(directory)!r} holds only some MNIST IDX files; missing "
        f"{missing} (gzipped or not). Add them or call "
        f"mnist(download=True).")
  npz = directory / "mnist.npz"
  if npz.is_file():
    return _load_npz(npz)
  return None


def _load_path(path: pathlib.Path) -> dict[str, np.ndarray] | None:
  if path.is_dir():
    return _load_dir(path)
  if path.is_file():
    if path.suffix == ".npz":
      return _load_npz(path)
    raise ValueError(
        f"{str(path)!r} is a file but not an .npz archive; pass an .npz with "
        f"x_train, y_train, x_test, y_test, or the directory holding the four "
        f"MNIST IDX files.")
  return None


def _validate(raw: dict[str, np.ndarray], source: str) -> None:
  for split in ("train", "test"):
    x, y = raw[f"x_{split}"], raw[f"y_{split}"]
    if x.ndim == 4 and x.shape[-1] == 1:
      x = x[..., 0]
      raw[f"x_{split}"] = x
    if x.ndim != 3 or x.shape[1:] != (28, 28):
      raise ValueError(
          f"{source}: x_{split} has shape {x.shape}, expected (N, 28, 28); "
          f"this is not MNIST.")
    if y.shape != (x.shape[0],):
      raise ValueError(
          f"{source}: y_{split} has shape {y.shape} but x_{split} holds "
          f"{x.shape[0]} images; expected ({x.shape[0]},).")
    if y.size and (y.min() < 0 or y.max() > 9):
      raise ValueError(
          f"{source}: y_{split} holds labels outside 0..9 "
          f"(min {y.min()}, max {y.max()}); this is not MNIST.")


def _check_dtype(dtype: str) -> None:
  if dtype not in ("float32", "uint8"):
    raise ValueError(f"dtype={dtype!r} must be 'float32' (pixels / 255) or 'uint8'.")


def _convert(raw: dict[str, np.ndarray], dtype: str) -> MNIST:
  out = {}
  for k in _KEYS:
    v = np.asarray(raw[k])
    if k.startswith("x"):
      v = v[..., None]
      scaled = np.issubdtype(v.dtype, np.floating) and v.max(initial=0) <= 1.0
      if dtype == "float32":
        v = v.astype(np.float32) / (1.0 if scaled else 255.0)
      else:
        v = np.round(v * 255.0 if scaled else v).astype(np.uint8)
    else:
      v = v.astype(np.int32)
    out[k] = v
  return MNIST(**out)


def download_mnist(directory: str | os.PathLike | None = None) -> pathlib.Path:
  """Downloads the four MNIST IDX .gz files into ``directory`` (atomic writes).

  Each file is checked against its published MD5 and written through a
  temporary file renamed into place, so an interrupted download never leaves a
  partial file. Existing valid files are kept.

  Args:
    directory: target directory; default ``cache_dir() / "mnist"``.

  Returns:
    The directory.

  Raises:
    OSError: if no mirror could deliver a file with the right checksum.
  """
  directory = pathlib.Path(directory) if directory else cache_dir() / "mnist"
  directory.mkdir(parents=True, exist_ok=True)
  for name, (_, md5) in MNIST_FILES.items():
    target = directory / (name + ".gz")
    if target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() == md5:
      continue
    errors = []
    for mirror in MIRRORS:
      try:
        with urllib.request.urlopen(mirror + name + ".gz", timeout=60) as r:
          payload = r.read()
      except OSError as e:
        errors.append(f"{mirror}: {e}")
        continue
      if hashlib.md5(payload).hexdigest() != md5:
        errors.append(f"{mirror}: checksum mismatch")
        continue
      fd, tmp = _files.temp_file(directory, prefix=f".{name}.", suffix=".part")  # the umask's mode
      try:
        with os.fdopen(fd, "wb") as f:
          f.write(payload)
        os.replace(tmp, target)
      finally:
        if os.path.exists(tmp):
          os.remove(tmp)
      break
    else:
      raise OSError(f"could not download {name}.gz: " + "; ".join(errors))
  return directory


def mnist(
    path: str | os.PathLike | None = None,
    *,
    download: bool = False,
    dtype: str = "float32",
) -> MNIST:
  """Full MNIST (60,000 training and 10,000 test digits).

  Looks, in order, at ``path`` (an .npz archive or a directory with the four
  IDX files, gzipped or not, or an ``mnist.npz``), at ``$ADAPTGRAD_JAX_MNIST``
  (same forms), and at ``cache_dir() / "mnist"`` (``$ADAPTGRAD_JAX_CACHE`` or
  ``~/.cache/adaptgrad_jax``). Nothing is downloaded unless
  ``download=True``; then the IDX files go to the cache directory.

  Args:
    path: an .npz file or a directory; None searches the environment
      variable and the cache.
    download: download into the cache if MNIST is not found.
    dtype: ``"float32"`` (default, pixels / 255 in [0, 1]) or ``"uint8"``.

  Returns:
    An :class:`MNIST` tuple of (N, 28, 28, 1) images and int32 labels.

  Raises:
    FileNotFoundError: MNIST is not found and ``download`` is False; the
      message lists the places searched and how to get the data.
    ValueError: a file that is not MNIST (wrong keys, shapes, IDX magic).

  Example:
    >>> from adaptgrad_jax import datasets
    >>> data = datasets.mnist()  # doctest: +SKIP
    >>> data.x_train.shape  # doctest: +SKIP
    (60000, 28, 28, 1)

  References:
    LeCun, Cortes and Burges, "The MNIST database of handwritten digits"
    (CC BY-SA 3.0).
  """
  _check_dtype(dtype)
  searched = []
  candidates = []
  if path is not None:
    candidates.append((pathlib.Path(path), "path"))
  else:
    env = os.environ.get(ENV_MNIST)
    if env:
      candidates.append((pathlib.Path(env), f"${ENV_MNIST}"))
    candidates.append((cache_dir() / "mnist", "cache"))
  for p, label in candidates:
    searched.append(f"{p} ({label})")
    raw = _load_path(p)
    if raw is not None:
      _validate(raw, str(p))
      return _convert(raw, dtype)
  if download:
    directory = download_mnist()
    raw = _load_dir(directory)
    _validate(raw, str(directory))
    return _convert(raw, dtype)
  raise FileNotFoundError(_how_to_get(searched))


def mnist_embedded(*, dtype: str = "float32") -> MNIST:
  """The MNIST subset shipped in the package: 10,000 training, 2,000 test digits.

  Class-balanced (1,000 training and 200 test digits per class): for each
  class, the first ones in the canonical file order, kept in that order (see
  ``adaptgrad_jax/datasets/_build_subset.py``). It lets demos and quick
  experiments run offline with no setup; use :func:`mnist` for the paper's
  full-data numbers.

  Args:
    dtype: ``"float32"`` (default, [0, 1]) or ``"uint8"``.

  Returns:
    An :class:`MNIST` tuple of (N, 28, 28, 1) images and int32 labels.

  Example:
    >>> from adaptgrad_jax import datasets
    >>> data = datasets.mnist_embedded()
    >>> data.x_train.shape, data.x_test.shape
    ((10000, 28, 28, 1), (2000, 28, 28, 1))
  """
  _check_dtype(dtype)
  ref = importlib.resources.files("adaptgrad_jax") / "data" / "mnist_subset.npz"
  with importlib.resources.as_file(ref) as p:
    raw = _load_npz(pathlib.Path(p))
  _validate(raw, "embedded subset")
  return _convert(raw, dtype)
