"""Downloading torchvision's pretrained weight files on request: verified, resumable, atomic, one writer at a time."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Any

from adaptgrad_jax import _files

__all__ = ["TORCHVISION_URLS", "default_cache_dir", "pretrained"]

_BASE = "https://download.pytorch.org/models/"

# torchvision's IMAGENET1K_V1 weights; the hex in each file name is the start of its SHA-256.
TORCHVISION_URLS: dict[str, str] = {
  "vgg11": _BASE + "vgg11-8a719046.pth",
  "vgg13": _BASE + "vgg13-19584684.pth",
  "vgg16": _BASE + "vgg16-397923af.pth",
  "vgg19": _BASE + "vgg19-dcbb9e9d.pth",
  "vgg11_bn": _BASE + "vgg11_bn-6002323d.pth",
  "vgg13_bn": _BASE + "vgg13_bn-abd245e5.pth",
  "vgg16_bn": _BASE + "vgg16_bn-6c64b313.pth",
  "vgg19_bn": _BASE + "vgg19_bn-c79401a0.pth",
  "resnet18": _BASE + "resnet18-f37072fd.pth",
  "resnet34": _BASE + "resnet34-b627a593.pth",
  "resnet50": _BASE + "resnet50-0676ba61.pth",
  "resnet101": _BASE + "resnet101-63fe2227.pth",
  "resnet152": _BASE + "resnet152-394f9c45.pth",
  "resnext50_32x4d": _BASE + "resnext50_32x4d-7cdf4587.pth",
  "wide_resnet50_2": _BASE + "wide_resnet50_2-95faca4d.pth",
  "inception_v3": _BASE + "inception_v3_google-0cc3c7bd.pth",
}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CHUNK = 1 << 20
_LOCK_POLL_S = 0.2  # how often a waiting call retries the lock
_LOCK_WAIT_S = 6 * 3600.0  # how long it waits for another process's download

# Cached files whose hash this process has checked: (path, expected, size, mtime_ns, inode).
_VERIFIED: set[tuple[str, str, int, int, int]] = set()


def default_cache_dir() -> pathlib.Path:
  """The weight cache: ``$ADAPTGRAD_JAX_CACHE`` (``~`` expanded), else ``~/.cache/adaptgrad_jax``.

  The same directory as every other cache of the library (`adaptgrad_jax._files.cache_dir`).
  """
  return _files.cache_dir()


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _stat_key(path: pathlib.Path, expected: str) -> tuple[str, str, int, int, int] | None:
  try:
    st = path.stat()
  except FileNotFoundError:
    return None
  return (str(path), expected, st.st_size, st.st_mtime_ns, st.st_ino)


def _is_verified(path: pathlib.Path, expected: str) -> bool:
  """Whether ``path`` exists with the expected hash: checked once per process (and again if the file changes)."""
  key = _stat_key(path, expected)
  if key is None or not path.is_file():
    return False
  if key in _VERIFIED:
    return True
  if not _sha256(path).startswith(expected):
    return False
  _VERIFIED.add(key)
  return True


@contextlib.contextmanager
def _wait_for_lock(lock: pathlib.Path, what: str, progress: bool):
  """Holds ``_files.exclusive_lock(lock)``, waiting while another process or thread holds it."""
  waited = 0.0
  while True:
    try:
      with _files.exclusive_lock(lock, what=what):
        yield
      return
    except _files.LockedError:
      if waited >= _LOCK_WAIT_S:
        raise
      if progress and waited == 0.0:
        sys.stderr.write(f"waiting for another process to finish {what} (lock {lock})\n")
      time.sleep(_LOCK_POLL_S)
      waited += _LOCK_POLL_S


def _download(url: str, path: pathlib.Path, progress: bool) -> None:
  """Appends the rest of ``url`` to ``path`` (an HTTP Range request if it is not empty)."""
  start = path.stat().st_size
  headers = {"User-Agent": "adaptgrad-jax"}
  if start:
    headers["Range"] = f"bytes={start}-"
  request = urllib.request.Request(url, headers=headers)
  try:
    response = urllib.request.urlopen(request, timeout=60)  # noqa: S310 (http, https and file URLs)
  except urllib.error.HTTPError as e:
    if e.code == 416 and start:  # nothing left to fetch: the partial file is complete
      return
    raise
  with response:
    status = getattr(response, "status", None)
    if start and status != 206:  # the server (or a file:// URL) ignored the range: start over
      start = 0
    total = response.headers.get("Content-Length")
    total = int(total) + start if total is not None else None
    done = start
    with open(path, "ab" if start else "wb") as out:
      while chunk := response.read(_CHUNK):
        out.write(chunk)
        done += len(chunk)
        if progress:
          shown = f"{done / 2**20:.1f} / {total / 2**20:.1f} MiB" if total else f"{done / 2**20:.1f} MiB"
          sys.stderr.write(f"\rdownloading {url.rsplit('/', 1)[-1]}: {shown}")
      out.flush()
      os.fsync(out.fileno())
  if progress:
    sys.stderr.write("\n")
  if total is not None and done < total:
    raise OSError(f"download of {url} stopped after {done} of {total} bytes; call again to resume")


def _file_name(url: str) -> str:
  """The cache file name: the URL's last path segment, refused if it could escape or collide."""
  name = pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name
  raw = urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]
  if not name or raw != name or name in (".", "..") or name.startswith(".") or "\\" in name or "\0" in name:
    raise ValueError(
      f"url={url!r} must end in a file name (its last path segment is {raw!r}); a URL ending in '/', '.' or "
      "'..', or naming a hidden file, is refused"
    )
  return name


def _expected_hash(sha256: Any, filename: str) -> str:
  if sha256 is None:
    match = _HASH_IN_NAME.search(filename)
    if match is None:
      raise ValueError(
        f"the file name {filename!r} carries no hash prefix (as in resnet50-0676ba61.pth); pass sha256= with the "
        "file's 64-hex-digit SHA-256 digest (sha256sum FILE, or hashlib.sha256(data).hexdigest())"
      )
    return match.group(1)
  if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
    raise ValueError(
      f"sha256={sha256!r} must be the file's full SHA-256 digest, 64 hexadecimal digits (sha256sum FILE, or "
      "hashlib.sha256(data).hexdigest()); verification cannot be turned off. Pass sha256=None to use the hash "
      "prefix in a torchvision file name"
    )
  return sha256.lower()


def pretrained(
  name: str,
  *,
  cache_dir: str | os.PathLike | None = None,
  url: str | None = None,
  sha256: str | None = None,
  progress: bool = True,
) -> pathlib.Path:
  """Returns the local path of a torchvision pretrained weight file, downloading it on first use.

  The file goes to ``cache_dir`` (default: `default_cache_dir`,
  ``$ADAPTGRAD_JAX_CACHE``, else ``~/.cache/adaptgrad_jax``). No half or
  unverified file is ever left under the final name, also when several
  processes or threads ask at once:

  * a download is written to a temporary file of this process and renamed to
    the final name only once its SHA-256 matches; a file with the wrong hash is
    deleted;
  * one caller at a time downloads (an exclusive lock on
    ``.<file>.lock`` beside it); the others wait, then find the verified file;
  * an existing cached file is verified once per process (again if it
    changes); one with the wrong hash is deleted and downloaded again, with a
    warning;
  * an interrupted download keeps its bytes as ``.<file>.partial`` (moved
    there by the lock holder) and resumes with an HTTP Range request on the
    next call.

  Verification cannot be turned off: ``sha256`` is a full digest or None
  (the torchvision hash prefix in the file name). Nothing is downloaded at
  import time. Pass the path to a model constructor:
  ``models.resnet50(weights=pretrained("resnet50"), rngs=...)``.

  Args:
    name: a key of `TORCHVISION_URLS` (``vgg11`` ... ``vgg19_bn``,
      ``resnet18`` ... ``resnet152``, ``resnext50_32x4d``,
      ``wide_resnet50_2``, ``inception_v3``), or any name when ``url`` is given.
    cache_dir: where to keep the files.
    url: download from here instead (a mirror, or ``file://``); the file
      name is the URL's last path segment, which must be a plain file name
      (not empty, ``.``, ``..`` or hidden).
    sha256: the expected SHA-256 digest, 64 hexadecimal digits. Default
      (None): the hex after the last ``-`` of the file name, torchvision's
      convention (``resnet50-0676ba61.pth``: the digest starts with
      ``0676ba61``); a name without one needs ``sha256``.
    progress: print the progress to stderr.

  Returns:
    The path of the verified file.

  Raises:
    ValueError: for an unknown ``name`` without ``url``, a URL without a
      plain file name, a ``sha256`` that is not 64 hex digits, or when no hash
      is known; also when the downloaded file's hash does not match (the file
      is removed).
    OSError: when the download fails (an interrupted download resumes on the
      next call).

  Example:
    >>> import hashlib, pathlib, tempfile
    >>> from adaptgrad_jax import weights
    >>> src = pathlib.Path(tempfile.mkdtemp()) / "tiny.pth"
    >>> _ = src.write_bytes(b"weights")
    >>> digest = hashlib.sha256(b"weights").hexdigest()
    >>> cache = tempfile.mkdtemp()
    >>> path = weights.pretrained("tiny", url=src.as_uri(), sha256=digest, cache_dir=cache, progress=False)
    >>> path.name, path.read_bytes()
    ('tiny.pth', b'weights')
    >>> weights.pretrained("tiny", url=src.as_uri(), sha256="", cache_dir=cache)
    Traceback (most recent call last):
    ...
    ValueError: sha256='' must be the file's full SHA-256 digest, ...

    With torchvision's files (528 MB, downloaded once)::

      from flax import nnx
      from adaptgrad_jax import models
      model = models.vgg16(weights=weights.pretrained("vgg16"), rngs=nnx.Rngs(0))
  """
  if url is None:
    if name not in TORCHVISION_URLS:
      raise ValueError(
        f"name={name!r} has no known weights; choose one of {sorted(TORCHVISION_URLS)} or pass url=..."
      )
    url = TORCHVISION_URLS[name]
  filename = _file_name(url)
  expected = _expected_hash(sha256, filename)
  directory = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  directory.mkdir(parents=True, exist_ok=True)
  target = directory / filename
  if _is_verified(target, expected):
    return target
  with _wait_for_lock(directory / f".{filename}.lock", f"the download of {filename}", progress):
    if target.exists():  # re-checked under the lock: another caller may have just finished
      if _is_verified(target, expected):
        return target
      warnings.warn(f"{target} does not have the expected SHA-256 ({expected}...); deleting and downloading it again",
                    stacklevel=2)
      target.unlink()
    partial = directory / f".{filename}.partial"
    fd, tmp_name = _files.temp_file(directory, prefix=f".{filename}.", suffix=".download")  # the umask's mode
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
      with contextlib.suppress(FileNotFoundError):
        os.replace(partial, tmp)  # adopt the bytes of an interrupted download (only the lock holder does)
      try:
        _download(url, tmp, progress)
      except BaseException:
        if tmp.exists() and tmp.stat().st_size:
          os.replace(tmp, partial)  # keep them for the next call
        raise
      digest = _sha256(tmp)
      if not digest.startswith(expected):
        raise ValueError(
          f"{url} downloaded with SHA-256 {digest}, expected {expected}...; the file was removed. "
          "The download was corrupted or the URL serves another file."
        )
      os.replace(tmp, target)
      _files.fsync_dir(directory)
    finally:
      with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    key = _stat_key(target, expected)
    if key is not None:
      _VERIFIED.add(key)
  return target
