"""Helpers shared by the commands: noise-scale-input explainers, images in, outputs out.

**Explainers whose noise scale is an input**, so one compiled program serves
many rows. ``adapt_smooth`` and ``smooth_grad`` fix sigma's rule when they are
built, so each c, alpha or method is a new XLA program; on a CPU, compiling an
ImageNet model's gradient takes seconds each time. The sweeps and the demo
instead build the same Monte Carlo estimator (Eq. 11) with
:func:`adaptgrad_jax.gaussian_smooth` on the pair ``(x, s)``, where ``s``
carries the noise scale (or the weights of AdaptGrad's and SmoothGrad's
scales) as a traced input: Grad, SG and AG, or AG at every c, then share one
compiled program.

**Images in** (:func:`read_image`): every Pillow mode becomes 8-bit RGB (or
grey) with its full range kept (16-bit grey is scaled by 255 / 65535, not
clipped), transparency is composited over black, the EXIF orientation is
applied, and what cannot be converted (a float image outside [0, 1], 32-bit
integers, an image above Pillow's decompression-bomb limit, a truncated file)
is a one-line :class:`~adaptgrad_jax.cli._errors.CliError` naming the file.

**Outputs out** (:func:`locked_output`, :func:`write_file` and friends): the
output folder is locked for the whole command (a concurrent run on it is
refused), and every file is written with :func:`adaptgrad_jax._files.atomic_write`,
so a final name holds a whole file or nothing, whatever interrupts the run,
with the mode the user's umask gives. A command refused before it wrote a
file leaves no folder (nor lock file) behind, and :func:`written_files` says
what a command really wrote.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import re
import warnings
from typing import Any, Callable, IO, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

import adaptgrad_jax as ag
from adaptgrad_jax import _files
from adaptgrad_jax.cli._errors import CliError, UsageError
from adaptgrad_jax._extras import install_hint


def sigma_input_smoother(
  grad_fn: Callable[..., Any], n: int, *, batch_size: Optional[int] = None, per_sample: bool = False
) -> Callable[..., Any]:
  """``smoothed(key, x, sigma, t)``: ``mean_j grad_fn(x + sigma * z_j, t)`` with sigma an input.

  ``sigma`` broadcasts to ``x`` (per element for AdaptGrad, a scalar or per
  channel for SmoothGrad, 0 for the plain gradient). With ``per_sample`` it
  returns ``(mean, samples)`` with the n per-sample gradients stacked in front,
  so running means over the first N samples give maps for every N <= n.
  """

  def grad_pair(xs, t):
    g = grad_fn(xs[0], t)
    out = (g, jnp.zeros_like(xs[1]))
    return (out, g) if per_sample else out

  smoothed = ag.gaussian_smooth(
    grad_pair, lambda xs: (xs[1], jnp.zeros_like(xs[1])), n, batch_size=batch_size, has_aux=per_sample)

  def run(key, x, sigma, t):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape)
    result = smoothed(key, (x, sigma), t)
    if per_sample:
      (mean, _), samples = result
      return mean, samples
    return result[0]

  return run


def mixed_integrated_gradients(
  grad_fn: Callable[..., Any], n_steps: int, n: int, *, bounds, c: float = 0.95, alpha: float = 0.2,
  sigma_rule: str = "two_sided", baseline: str = "black", batch_size: Optional[int] = None,
) -> Callable[..., Any]:
  """``ig(key, x, w, t)``: IG, S-IG or A-IG chosen by the weights ``w = (w_ag, w_sg)``.

  At every path point ``p`` the inner smoother draws noise with scale
  ``w_ag * adaptive_sigma(p) + w_sg * alpha * (x_max - x_min)``: ``(0, 0)`` is
  plain IG, ``(0, 1)`` S-IG, ``(1, 0)`` A-IG, equal to
  ``integrated_gradients(adapt_smooth(grad_fn, c, n), n_steps)`` up to the noise
  drawn. The baseline is the lower (black) or upper (white) bound.
  """
  try:
    from adaptgrad_jax import integrated_gradients  # pylint: disable=import-outside-toplevel
  except ImportError:
    from adaptgrad_jax import integrated_gradients  # pylint: disable=import-outside-toplevel

  sg_sigma = ag.smoothgrad_sigma(alpha, bounds=bounds)

  def sigma_fn(xw):
    x, w = xw
    ag_sigma = ag.adaptive_sigma(x, c, bounds=bounds, rule=sigma_rule)
    return (w[0] * ag_sigma + w[1] * jnp.asarray(sg_sigma, x.dtype), jnp.zeros_like(w))

  def grad_pair(xw, t):
    return grad_fn(xw[0], t), jnp.zeros_like(xw[1])

  inner = ag.gaussian_smooth(grad_pair, sigma_fn, n, batch_size=None)
  lower, upper = bounds
  edge = lower if baseline == "black" else upper

  def start(xw):
    return (jnp.broadcast_to(jnp.asarray(edge, xw[0].dtype), xw[0].shape), xw[1])

  ig = integrated_gradients(inner, n_steps, baseline=start, batch_size=batch_size, stochastic=True)

  def run(key, x, w, t):
    return ig(key, (x, jnp.asarray(w, x.dtype)), t)[0]

  return run


def cumulative_means(samples: jax.Array, ns: list[int]) -> list[jax.Array]:
  """Means of the first N samples for each N in ``ns``."""
  sums = jnp.cumsum(samples, axis=0)
  return [sums[k - 1] / k for k in ns]


# ----------------------------------------------------------------------------
# Images in.

# Pillow modes of one channel with more than 8 bits.
_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _pil():
  try:
    from PIL import Image, ImageOps, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise CliError("reading images needs Pillow: " + install_hint("plot")) from err
  return Image, ImageOps, UnidentifiedImageError


def _bomb_message(path, err: Exception, limit: Optional[int]) -> str:
  match = re.search(r"\((\d+) pixels\)", str(err))
  size = f"{int(match.group(1)) / 1e6:.0f} Mpixel" if match else "its size"
  return (f"cannot read image {path}: {size} is above the limit of {(limit or 0) / 1e6:.0f} Mpixel"
          " (Pillow's decompression-bomb guard, PIL.Image.MAX_IMAGE_PIXELS); downscale the image first")


def _white_level(img, path) -> float:
  """The value of white in a one-channel image of more than 8 bits (``img`` as opened: format, tags)."""
  if img.mode.startswith("I;16"):
    return 65535.0
  if img.mode == "F":
    return 1.0
  # Mode I: a 16-bit PNG (older Pillow), or a TIFF whose BitsPerSample says the depth.
  if img.format == "PNG":
    return 65535.0
  bits = None
  tags = getattr(img, "tag_v2", None)
  if tags is not None:
    bits = tags.get(258)
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
  if bits in (8, 16):
    return float(2 ** bits - 1)
  raise CliError(
    f"cannot read image {path}: it holds {bits or 32}-bit integers (Pillow mode I), which have no defined"
    " white level; save it as an 8- or 16-bit image")


def _deep_to_uint8(img, path, source) -> np.ndarray:
  """16-bit, 32-bit integer or float grey -> uint8 grey, scaled by its white level (not clipped)."""
  values = np.asarray(img).astype(np.float64)
  white = _white_level(source, path)
  if not np.all(np.isfinite(values)):
    raise CliError(f"cannot read image {path}: its float pixels hold NaN or inf; save it without them")
  lo, hi = float(values.min()), float(values.max())
  if lo < 0 or hi > white:
    kind = "float image" if img.mode == "F" else f"{int(np.log2(white + 1))}-bit image"
    raise CliError(
      f"cannot read image {path}: the {kind} has values in [{lo:g}, {hi:g}] outside [0, {white:g}];"
      f" rescale it to [0, {white:g}] first")
  grey = np.round(values * (255.0 / white)).astype(np.uint8)
  transparent = img.info.get("transparency")
  if isinstance(transparent, (int, float)) and img.mode != "F":  # a PNG tRNS grey level: over black
    grey[values == transparent] = 0
  return grey


def _to_uint8(img, path, grayscale: bool, source) -> np.ndarray:
  """``img`` (turned upright) as uint8; ``source`` is the image as opened, for its format and tags."""
  Image, _, _ = _pil()
  if img.mode in _DEEP_MODES:
    grey = _deep_to_uint8(img, path, source)
    return grey if grayscale else np.repeat(grey[..., None], 3, axis=-1)
  if img.mode in ("P", "L", "RGB") and "transparency" in img.info:  # a tRNS colour or palette alpha
    img = img.convert("RGBA")
  elif img.mode == "P":
    img = img.convert("RGB")
  if img.mode in _ALPHA_MODES:  # composite over black: a transparent pixel is absent
    rgba = np.asarray(img.convert("RGBA"))
    # round(rgb * a / 255) in integers (no ties: 2 * rgb * a is even, 255 * odd is odd).
    rgb = (rgba[..., :3].astype(np.uint16) * rgba[..., 3:] + 127) // 255
    img = Image.fromarray(rgb.astype(np.uint8), "RGB")
  try:
    converted = img.convert("L" if grayscale else "RGB")
  except (ValueError, OSError) as err:
    raise CliError(
      f"cannot read image {path}: Pillow cannot convert its mode {img.mode} to {'grey' if grayscale else 'RGB'}"
      f" ({err}); save it as an 8-bit RGB or grey image") from None
  return np.asarray(converted, np.uint8).copy()


def read_image(path: pathlib.Path, *, grayscale: bool = False) -> np.ndarray:
  """Reads an image file as uint8 RGB ``(H, W, 3)``, or grey ``(H, W)`` with ``grayscale``.

  The whole file is decoded (a truncated file fails here, not later); every
  Pillow mode is converted with its range kept: 1-bit, palette, CMYK, YCbCr
  and LAB through Pillow; 16-bit grey (``I;16``, and ``I`` from a PNG or a
  16-bit TIFF) divided by 65535; float grey (``F``) must lie in [0, 1];
  transparency (``LA``, ``RGBA``, palette alpha, a PNG transparent colour)
  is composited over black. The first frame of an animation is used, turned
  upright by its EXIF orientation.

  Raises:
    CliError: one line naming the file and the fix: not an image, truncated,
      above Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``),
      or a mode without a defined range.

  Example:
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ramp16.png"
    >>> Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(path)
    >>> read_image(path, grayscale=True).tolist()
    [[0, 128, 255]]
  """
  Image, ImageOps, UnidentifiedImageError = _pil()
  limit = Image.MAX_IMAGE_PIXELS
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        img.load()
        try:
          upright = ImageOps.exif_transpose(img)
        except Exception:  # pylint: disable=broad-except  # a broken EXIF block: keep the pixels as stored
          upright = None
        return _to_uint8(upright if upright is not None else img, path, grayscale, source=img)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
    raise CliError(_bomb_message(path, err, limit)) from None
  except UnidentifiedImageError:
    raise CliError(
      f"cannot read image {path}: Pillow does not recognise it as an image (PNG, JPEG, ...);"
      " convert it or leave it out") from None
  except CliError:
    raise
  except OSError as err:
    reason = err.strerror if err.filename and err.strerror else str(err)
    raise CliError(f"cannot read image {path}: {reason}; is the file complete?") from None
  except Exception as err:  # pylint: disable=broad-except  # any decoder failure of an untrusted file
    reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    raise CliError(f"cannot read image {path}: {reason}; is it a complete, valid image?") from None


def _size(nbytes: int) -> str:
  for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
    if nbytes >= scale:
      return f"{nbytes / scale:.3g} {unit}"
  return f"{nbytes} bytes"


def read_npy(path: pathlib.Path, option: str, fix: str) -> np.ndarray:
  """A user's ``.npy`` file of real numbers, its header checked before any data is read.

  ``option`` names the argument (``--eg-baselines PATH``) and ``fix`` says what
  the file should hold; the error names the file, what its header declares
  and the fix. A small file that declares more data than it holds (a hostile
  or truncated file) is refused without allocating what it declares.

  Raises:
    UsageError: not a ``.npy`` file, Python objects, not real numbers, or a
      size that disagrees with the header.

  Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "b.npy"
    >>> np.save(path, np.zeros((2, 3), np.float32))
    >>> read_npy(path, f"--eg-baselines {path}", "save baselines with numpy.save").shape
    (2, 3)
  """
  try:
    header = _files.npy_header(path)
  except (OSError, ValueError) as err:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else "not a readable .npy file"
    raise UsageError(f"{option}: {reason}; {fix}") from None
  what = f"{header.dtype}{list(header.shape)}"
  if header.dtype.hasobject or header.dtype.kind not in "biuf":
    raise UsageError(f"{option} holds {what}, not real numbers; {fix}")
  if not header.consistent:
    raise UsageError(
      f"{option}: its header declares {what} ({_size(header.declared_bytes)}) but the file holds"
      f" {_size(header.data_bytes)} of data (truncated, or not written by numpy.save); {fix}")
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as err:
    raise UsageError(f"{option}: not a readable .npy array ({err}); {fix}") from None


def check_images(paths: list[pathlib.Path], *, grayscale: bool = False, short_side: Optional[int] = None) -> None:
  """Decodes every image once, so a bad one fails before any work or output.

  ``short_side``: the model's preprocessing resizes the shorter side to it
  keeping the aspect ratio (torchvision's presets: 256, 342 for Inception
  v3); an image so elongated that the resized copy would exceed Pillow's
  pixel limit is refused here instead of exhausting memory there.
  """
  Image, _, _ = _pil()
  limit = Image.MAX_IMAGE_PIXELS
  for path in paths:
    image = read_image(path, grayscale=grayscale)
    if short_side and limit:
      h, w = image.shape[:2]
      scale = short_side / min(h, w)
      new_h, new_w = max(short_side, int(h * scale)), max(short_side, int(w * scale))
      if new_h * new_w > limit:
        raise CliError(
          f"cannot explain {path}: its {w}x{h} pixels (aspect ratio {max(h, w) / min(h, w):.0f}:1) would be resized"
          f" to {new_w}x{new_h} = {new_w * new_h / 1e6:.0f} Mpixel before the model's center crop, above the limit"
          f" of {limit / 1e6:.0f} Mpixel; crop the image to a less elongated shape first")


# ----------------------------------------------------------------------------
# Outputs out.

LOCK_NAME = ".adaptgrad-jax.lock"


# --out folder (absolute) -> the files written there by the command holding it.
_WRITTEN: dict[str, set] = {}


def _missing_folders(out: pathlib.Path) -> list[pathlib.Path]:
  """``out`` and its missing parents, deepest first: what ``out.mkdir(parents=True)`` creates."""
  missing = []
  path = pathlib.Path(os.path.abspath(out))
  while not path.exists() and not path.is_symlink() and path != path.parent:
    missing.append(path)
    path = path.parent
  return missing


def _tidy(out: pathlib.Path, lock: pathlib.Path, lock_is_new: bool, created: list[pathlib.Path]) -> None:
  """After a refusal that wrote nothing: the lock file (if this command made it), then the folders it made."""
  if lock_is_new:
    with contextlib.suppress(OSError):
      lock.unlink()  # still held: a waiting command locks the file it creates afresh (see exclusive_lock)
  for folder in created:  # deepest first; a folder that holds anything stays
    try:
      folder.rmdir()
    except OSError:
      break


@contextlib.contextmanager
def locked_output(out: pathlib.Path) -> Iterator[pathlib.Path]:
  """Creates the ``--out`` folder and holds its lock (``OUT/.adaptgrad-jax.lock``) meanwhile.

  A second command on the same folder fails with
  :class:`adaptgrad_jax._files.LockedError` (one line, exit code 1). The lock
  goes with the process, so a killed run leaves nothing to clean up; the
  empty lock file stays. A command that fails (a refusal, an error, Ctrl-C)
  before it wrote any file leaves ``--out`` as it found it: the folders
  and the lock file it created are removed. Meanwhile :func:`written_files`
  lists what the command wrote there.
  """
  if out.exists() and not out.is_dir():
    raise UsageError(f"--out {out} is a file; pass a folder")
  created = _missing_folders(out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    _tidy(out, out / LOCK_NAME, False, created)
    raise CliError(f"cannot create --out {out}: {err.strerror or err}; choose another folder") from None
  lock = out / LOCK_NAME
  lock_is_new = not (lock.exists() or lock.is_symlink())
  stack = contextlib.ExitStack()
  try:
    stack.enter_context(_files.exclusive_lock(lock, what=f"--out {out}"))
  except _files.LockedError:
    raise
  except OSError as err:
    _tidy(out, lock, False, created)
    if isinstance(err, _files.SymlinkError):
      raise CliError(str(err)) from None
    raise CliError(f"cannot lock --out {out}: {err.strerror or err}; is the folder writable?") from None
  key = os.path.abspath(out)
  with stack, _files.record_writes(out) as written:
    _WRITTEN[key] = written
    try:
      yield out
    except BaseException:
      if not written:
        _tidy(out, lock, lock_is_new, created)
      raise
    finally:
      _WRITTEN.pop(key, None)


def written_files(out: pathlib.Path) -> list[pathlib.Path]:
  """The files written under ``out`` so far by the command holding it (each once, sorted)."""
  return sorted(_WRITTEN.get(os.path.abspath(out), ()))


# atomic_write's temporary file is ".<name>.<8 random>.tmp": keep the final name short enough for it.
_MAX_NAME_BYTES = 255 - 16


def check_no_links(out: pathlib.Path, paths: list[pathlib.Path]) -> None:
  """The folders inside ``--out`` that a command writes into or deletes from (OUT/maps, OUT/shards) are not links.

  Checked before ``--out`` is locked: a link there would make ``--overwrite``
  delete, and a run write, files in its target, outside the output.
  """
  for path in paths:
    if path.is_symlink():
      raise CliError(str(_files.SymlinkError(path, "deletes or writes", f"--out {out}")))


def check_output_names(names: list[str]) -> None:
  """Every output file name fits the file system with its temporary name; checked before any work."""
  for name in names:
    if len(os.fsencode(name)) > _MAX_NAME_BYTES:
      raise UsageError(
        f"the output file name {name[:40]}...{name[-20:]} is {len(os.fsencode(name))} bytes, more than"
        f" {_MAX_NAME_BYTES}; rename the image (or move it closer to the other inputs) and run again")


def remove_stale_temporaries(out: pathlib.Path, names: list[str]) -> None:
  """Removes the temporary files of our outputs left by a killed run (call with the lock held).

  Only ``.<name>.*.tmp`` for the given output names: under the lock no other
  command writes them, and nothing else in ``out`` is touched.
  """
  for name in names:
    for stale in out.glob(f".{glob.escape(name)}.*.tmp"):
      with contextlib.suppress(OSError):
        stale.unlink()


def file_identity(path) -> dict:
  """A file's absolute path, size and modification time: a changed file is another input."""
  path = pathlib.Path(path).expanduser()
  try:
    stat = path.stat()
  except OSError:
    return {"path": os.path.abspath(path)}
  return {"path": os.path.abspath(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_file(path: pathlib.Path, write: Callable[[IO[bytes]], object]) -> pathlib.Path:
  """``_files.atomic_write`` whose errors name ``path``, never the temporary file."""
  try:
    return _files.atomic_write(path, write)
  except OSError as err:
    if err.filename == str(path):
      raise
    raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def write_npy(path: pathlib.Path, array) -> pathlib.Path:
  return write_file(path, lambda f: np.save(f, np.asarray(array)))


def write_npz(path: pathlib.Path, **arrays) -> pathlib.Path:
  return write_file(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def write_json(path: pathlib.Path, value) -> pathlib.Path:
  return write_file(path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def write_png(path: pathlib.Path, image) -> pathlib.Path:
  """A uint8 ``(H, W)`` or ``(H, W, 3|4)`` image as PNG."""
  Image, _, _ = _pil()
  pil = Image.fromarray(np.asarray(image, np.uint8))
  return write_file(path, lambda f: pil.save(f, format="PNG"))


def write_figure(path: pathlib.Path, figure, *, dpi: int) -> pathlib.Path:
  """A matplotlib figure (e.g. from ``viz.plot_grid(path=None)``) as PNG."""
  return write_file(path, lambda f: figure.savefig(f, format="png", dpi=dpi))


def read_record(path: pathlib.Path) -> Optional[dict]:
  """The JSON record of an earlier run, None if absent; a CliError if unreadable."""
  if not path.exists():
    return None
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError, RecursionError) as err:
    raise CliError(
      f"{path} exists but is not a readable record of an earlier run ({type(err).__name__}); pass --overwrite"
      " to replace it, or choose another --out") from None
  if not isinstance(value, dict):
    raise CliError(f"{path} exists but is not a record of an earlier run; pass --overwrite to replace it,"
                   " or choose another --out")
  return value


def differences(recorded: dict, current: dict) -> list[str]:
  """The keys whose values differ between two run identities (for messages)."""
  return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))


def resize_short_side(spec) -> Optional[int]:
  """The shorter side the model's preprocessing resizes to, keeping the aspect ratio (None: no such resize).

  As ``_models.preprocess``: torchvision ImageNet models resize the shorter
  side to 256 (342 for Inception v3); EfficientNet-Lite0 and the MLP resize the
  whole image to a square.
  """
  if spec.family != "imagenet":
    return None
  return 342 if spec.name == "inception_v3" else 256
