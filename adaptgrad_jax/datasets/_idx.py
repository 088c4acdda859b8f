"""Reading and writing the IDX format of the MNIST distribution files."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}


def _open(path: str | os.PathLike):
  with open(path, "rb") as f:
    gzipped = f.read(2) == b"\x1f\x8b"
  return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (as in yann.lecun.com/exdb/mnist), gzipped or not.

  Args:
    path: the file, e.g. ``train-images-idx3-ubyte`` or ``...-ubyte.gz``.

  Returns:
    The array in native byte order (uint8 for MNIST).

  Raises:
    ValueError: if the file is not a well-formed IDX file.
  """
  with _open(path) as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(
        f"{os.fspath(path)!r} is not an IDX file (magic bytes "
        f"{data[:4].hex() or 'missing'}; an MNIST IDX file starts with "
        f"00000803 for images or 00000801 for labels); pass the four MNIST "
        f"files train-images-idx3-ubyte(.gz) etc. or an .npz archive.")
  dtype = _IDX_DTYPES[data[2]]
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{os.fspath(path)!r}: IDX header truncated.")
  shape = struct.unpack(f">{ndim}I", data[4:header])
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - header != expected:
    raise ValueError(
        f"{os.fspath(path)!r}: IDX header announces shape {shape} "
        f"({expected} bytes of data) but the file holds "
        f"{len(data) - header}; the file is truncated or corrupt: download "
        f"it again.")
  arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
  return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file (gzipped when ``path`` ends in .gz)."""
  array = np.asarray(array)
  code = _IDX_CODES.get(array.dtype.newbyteorder("="))
  if code is None:
    raise ValueError(
        f"array dtype {array.dtype} has no IDX type code; use one of "
        f"uint8, int8, int16, int32, float32, float64.")
  header = bytes([0, 0, code, array.ndim]) + struct.pack(
      f">{array.ndim}I", *array.shape)
  payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(payload)
