"""Downloading torchvision's pretrained weight files on request, verified, resumable and atomic."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

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

_ENV = "ADAPTGRAD_JAX_CACHE"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
_CHUNK = 1 << 20


def default_cache_dir() -> pathlib.Path:
  """The weight cache: ``$ADAPTGRAD_JAX_CACHE``, else ``~/.cache/adaptgrad_jax``."""
  return pathlib.Path(os.environ.get(_ENV) or pathlib.Path.home() / ".cache" / "adaptgrad_jax")


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _download(url: str, partial: pathlib.Path, progress: bool) -> None:
  """Appends the rest of ``url`` to ``partial`` (an HTTP Range request if it exists)."""
  start = partial.stat().st_size if partial.exists() else 0
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
    with open(partial, "ab" if start else "wb") as out:
      while chunk := response.read(_CHUNK):
        out.write(chunk)
        done += len(chunk)
        if progress:
          shown = f"{done / 2**20:.1f} / {total / 2**20:.1f} MiB" if total else f"{done / 2**20:.1f} MiB"
          sys.stderr.write(f"\rdownloading {partial.name.removesuffix('.partial')}: {shown}")
  if progress:
    sys.stderr.write("\n")
  if total is not None and done < total:
    raise OSError(f"download of {url} stopped after {done} of {total} bytes; call again to resume")


def pretrained(
  name: str,
  *,
  cache_dir: str | os.PathLike | None = None,
  url: str | None = None,
  sha256: str | None = None,
  progress: bool = True,
) -> pathlib.Path:
  """Returns the local path of a torchvision pretrained weight file, downloading it on first use.

  The file goes to ``cache_dir`` (default: ``$ADAPTGRAD_JAX_CACHE``, else
  ``~/.cache/adaptgrad_jax``). It is written to ``<file>.partial`` and renamed
  only once its SHA-256 matches, so no half or unverified file is ever left
  under the final name; an interrupted download resumes with an HTTP Range
  request on the next call, and a file with the wrong hash is deleted. Nothing
  is downloaded at import time. Pass the path to a model constructor:
  ``models.resnet50(weights=pretrained("resnet50"), rngs=...)``.

  Args:
    name: a key of `TORCHVISION_URLS` (``vgg11`` ... ``vgg19_bn``,
      ``resnet18`` ... ``resnet152``, ``resnext50_32x4d``,
      ``wide_resnet50_2``, ``inception_v3``), or any name when ``url`` is given.
    cache_dir: where to keep the files.
    url: download from here instead (a mirror, or ``file://``); the file
      name comes from the URL.
    sha256: the expected SHA-256 hex digest, or a prefix of it. Default: the
      hex after the last ``-`` of the file name, torchvision's convention
      (``resnet50-0676ba61.pth``: the digest starts with ``0676ba61``).
    progress: print the progress to stderr.

  Returns:
    The path of the verified file.

  Raises:
    ValueError: for an unknown ``name`` without ``url``, or when no hash is
      known; also when the downloaded file's hash does not match (the file is
      removed).
    OSError: when the download fails (an interrupted download resumes on the
      next call).

  Example:
    >>> from flax import nnx
    >>> from adaptgrad_jax import models, weights
    >>> path = weights.pretrained("vgg16")  # 528 MB, once  # doctest: +SKIP
    >>> model = models.vgg16(weights=path, rngs=nnx.Rngs(0))  # doctest: +SKIP
  """
  if url is None:
    if name not in TORCHVISION_URLS:
      raise ValueError(
        f"name={name!r} has no known weights; choose one of {sorted(TORCHVISION_URLS)} or pass url=..."
      )
    url = TORCHVISION_URLS[name]
  filename = pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name
  if not filename:
    raise ValueError(f"url={url!r} does not end in a file name")
  if sha256 is None:
    match = _HASH_IN_NAME.search(filename)
    if match is None:
      raise ValueError(
        f"the file name {filename!r} carries no hash prefix (as in resnet50-0676ba61.pth); pass sha256=..."
      )
    sha256 = match.group(1)
  sha256 = sha256.lower()
  directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  directory.mkdir(parents=True, exist_ok=True)
  target = directory / filename
  if target.exists():
    return target
  partial = directory / (filename + ".partial")
  _download(url, partial, progress)
  digest = _sha256(partial)
  if not digest.startswith(sha256):
    partial.unlink()
    raise ValueError(
      f"{url} downloaded with SHA-256 {digest}, expected {sha256}...; the file was removed. "
      "The download was corrupted or the URL serves another file."
    )
  os.replace(partial, target)
  return target
