"""Reading PyTorch, safetensors and NumPy checkpoints without torch and without running pickle code.

A PyTorch ``.pth`` file is a pickle: ``torch.load`` on an untrusted file can run
any code. Here the pickle goes through `_RestrictedUnpickler`, whose
``find_class`` admits only the globals that rebuild tensors and storages
(`_ALLOWED_GLOBALS`, `_STORAGE_DTYPES`) and plain containers; any other global
raises `UnsafeCheckpointError` naming it, before anything is called. Tensors
become NumPy arrays read from the raw storage bytes, with their sizes, strides
and storage offsets checked against the storage.

Formats:

* zip (torch >= 1.6): ``<name>/data.pkl`` with persistent ids
  ``('storage', storage_type, key, location, numel)`` whose bytes are in
  ``<name>/data/<key>``.
* legacy (torch < 1.6): pickled magic number, protocol version and system info,
  then the pickled object (persistent ids ``('storage', storage_type, key,
  location, numel, view_metadata)``), then a pickled list of storage keys, then
  each storage as an 8-byte little-endian element count and its raw bytes.
* ``.safetensors``: an 8-byte little-endian header size, a JSON header
  ``{name: {dtype, shape, data_offsets}}``, then the bytes.
* ``.npz``: read with ``allow_pickle=False``.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pathlib
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["CheckpointError", "UnsafeCheckpointError", "read_checkpoint"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> element dtype.
_STORAGE_DTYPES: dict[str, np.dtype] = {
  "DoubleStorage": np.dtype(np.float64),
  "FloatStorage": np.dtype(np.float32),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
  "ComplexFloatStorage": np.dtype(np.complex64),
  "ComplexDoubleStorage": np.dtype(np.complex128),
  "UntypedStorage": np.dtype(np.uint8),
}

_SAFETENSORS_DTYPES: dict[str, np.dtype] = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype(np.int64),
  "I32": np.dtype(np.int32),
  "I16": np.dtype(np.int16),
  "I8": np.dtype(np.int8),
  "U64": np.dtype(np.uint64),
  "U32": np.dtype(np.uint32),
  "U16": np.dtype(np.uint16),
  "U8": np.dtype(np.uint8),
  "BOOL": np.dtype(np.bool_),
  "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
  "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}


class CheckpointError(ValueError):
  """A checkpoint file is truncated, corrupt or of an unknown format."""


class UnsafeCheckpointError(CheckpointError):
  """A pickle in a checkpoint refers to a global that is not allowed."""


class _Storage:
  """A torch storage: a flat array of ``numel`` elements, filled when its bytes are read."""

  def __init__(self, dtype: np.dtype, numel: int, key: str):
    self.dtype, self.numel, self.key = dtype, numel, key
    self.array: np.ndarray | None = None

  def fill(self, data: bytes | memoryview, what: str) -> None:
    nbytes = self.numel * self.dtype.itemsize
    if len(data) < nbytes:
      raise CheckpointError(f"{what}: storage {self.key} holds {len(data)} bytes, {nbytes} expected (truncated)")
    self.array = np.frombuffer(data, self.dtype, count=self.numel)


class _StorageView:
  """A legacy storage view: ``size`` elements of ``base`` from ``offset``."""

  def __init__(self, base: _Storage, offset: int, size: int):
    self.base, self.offset, self.size = base, offset, size


class _TensorRef:
  """A tensor to rebuild once its storage's bytes are known (legacy files store them last)."""

  def __init__(self, storage: Any, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def materialize(self, what: str) -> np.ndarray:
    storage, offset = self.storage, int(self.offset)
    limit = None
    if isinstance(storage, _StorageView):
      storage, offset, limit = storage.base, offset + storage.offset, storage.offset + storage.size
    if not isinstance(storage, _Storage) or storage.array is None:
      raise CheckpointError(f"{what}: a tensor refers to a storage whose data is missing")
    flat = storage.array
    limit = len(flat) if limit is None else min(limit, len(flat))
    size, stride = tuple(int(s) for s in self.size), tuple(int(s) for s in self.stride)
    if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
      raise CheckpointError(f"{what}: invalid tensor geometry size={size} stride={stride} offset={offset}")
    if math.prod(size) == 0:
      return np.zeros(size, flat.dtype)
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if extent > limit:
      raise CheckpointError(
        f"{what}: tensor of size {size}, stride {stride}, offset {offset} reaches element {extent} "
        f"of a storage of {limit} (corrupt file)"
      )
    view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size, strides=[s * flat.dtype.itemsize for s in stride], writeable=False
    )
    return np.array(view, order="C")  # a contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  del unused  # requires_grad, backward_hooks[, state]
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state  # tensor subclasses become plain arrays
  if func not in (_rebuild_tensor, _rebuild_parameter, _rebuild_from_type_v2):
    raise UnsafeCheckpointError(f"refused call of {func!r} in _rebuild_from_type_v2")
  return func(*args)


class _TypeMarker:
  """Stands for a class (torch.Tensor, Parameter) that may be named but is never called."""

  def __init__(self, name: str):
    self.name = name

  def __call__(self, *args, **kwargs):
    raise UnsafeCheckpointError(f"refused call of the global {self.name}")


# (module, name) -> what the unpickler hands back. Nothing else is importable.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
  ("torch", "Tensor"): _TypeMarker("torch.Tensor"),
  ("torch.nn.parameter", "Parameter"): _TypeMarker("torch.nn.parameter.Parameter"),
  ("collections", "OrderedDict"): collections.OrderedDict,
}


class _StorageType:
  def __init__(self, name: str):
    self.name, self.dtype = name, _STORAGE_DTYPES[name]

  def __call__(self, *args, **kwargs):
    raise UnsafeCheckpointError(f"refused call of the global torch.{self.name}")


class _RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that resolves only tensor-rebuilding globals and torch storages."""

  def __init__(self, file, what: str, storages: dict[str, _Storage], legacy: bool):
    super().__init__(file)
    self.what, self.storages, self.legacy = what, storages, legacy

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module in ("torch", "torch.storage", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafeCheckpointError(
      f"{self.what}: refused global {module}.{name}; a checkpoint may only rebuild tensors and plain "
      "containers (nothing was executed). If you trust the file, load it with torch and pass the state dict."
    )

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
      raise UnsafeCheckpointError(f"{self.what}: refused persistent id {str(pid)[:80]}")
    if self.legacy:
      if len(pid) != 6:
        raise CheckpointError(f"{self.what}: malformed storage reference {pid!r}")
      _, storage_type, key, _, numel, view = pid
    else:
      if len(pid) != 5:
        raise CheckpointError(f"{self.what}: malformed storage reference {pid!r}")
      _, storage_type, key, _, numel = pid
      view = None
    if not isinstance(storage_type, _StorageType) or storage_type.dtype not in _STORAGE_DTYPES.values():
      raise UnsafeCheckpointError(f"{self.what}: refused storage type {storage_type!r}")
    key = key.decode() if isinstance(key, bytes) else str(key)
    storage = self.storages.setdefault(key, _Storage(storage_type.dtype, int(numel), key))
    if view is not None:
      _, offset, size = view
      return _StorageView(storage, int(offset), int(size))
    return storage


def _materialize(obj: Any, what: str) -> Any:
  if isinstance(obj, _TensorRef):
    return obj.materialize(what)
  if isinstance(obj, Mapping):
    return type(obj)((k, _materialize(v, what)) for k, v in obj.items()) if isinstance(obj, dict) else obj
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v, what) for v in obj)
  return obj


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  """Nested dicts and lists of arrays -> one dict with '.'-joined names; other leaves are dropped."""
  if isinstance(obj, np.ndarray):
    out[prefix] = obj
  elif isinstance(obj, Mapping):
    for key, value in obj.items():
      _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
  elif isinstance(obj, (list, tuple)):
    for i, value in enumerate(obj):
      _flatten(value, f"{prefix}.{i}" if prefix else str(i), out)


def _unpickle(file, what: str, storages: dict[str, _Storage], legacy: bool) -> Any:
  try:
    return _RestrictedUnpickler(file, what, storages, legacy).load()
  except CheckpointError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
    raise CheckpointError(f"{what}: corrupt or truncated pickle ({type(e).__name__}: {e})") from e


def _read_torch_zip(path: pathlib.Path, what: str) -> Any:
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
      if not pickles:
        raise CheckpointError(f"{what}: a zip file without <name>/data.pkl is not a PyTorch checkpoint")
      prefix = pickles[0][: -len("data.pkl")]
      byteorder = "little"
      if prefix + "byteorder" in names:
        byteorder = archive.read(prefix + "byteorder").decode().strip()
      storages: dict[str, _Storage] = {}
      obj = _unpickle(io.BytesIO(archive.read(pickles[0])), what, storages, legacy=False)
      for key, storage in storages.items():
        name = f"{prefix}data/{key}"
        if name not in names:
          raise CheckpointError(f"{what}: storage {key} is missing from the archive")
        storage.fill(archive.read(name), what)
        if byteorder == "big":
          storage.array = storage.array.byteswap().view(storage.array.dtype.newbyteorder())
  except zipfile.BadZipFile as e:
    raise CheckpointError(f"{what}: corrupt or truncated zip archive ({e})") from e
  return _materialize(obj, what)


def _read_torch_legacy(path: pathlib.Path, what: str) -> Any:
  with open(path, "rb") as f:
    storages: dict[str, _Storage] = {}
    magic = _unpickle(f, what, storages, legacy=True)
    if magic != _LEGACY_MAGIC:
      raise CheckpointError(f"{what}: not a PyTorch checkpoint (no legacy magic number); is it a plain pickle?")
    protocol = _unpickle(f, what, storages, legacy=True)
    if protocol != _LEGACY_PROTOCOL:
      raise CheckpointError(f"{what}: unsupported legacy protocol version {protocol!r}")
    sys_info = _unpickle(f, what, storages, legacy=True)
    if isinstance(sys_info, Mapping) and not sys_info.get("little_endian", True):
      raise CheckpointError(f"{what}: big-endian legacy checkpoints are not supported")
    obj = _unpickle(f, what, storages, legacy=True)
    keys = _unpickle(f, what, storages, legacy=True)
    if not isinstance(keys, list):
      raise CheckpointError(f"{what}: corrupt storage key list")
    for key in keys:
      key = key.decode() if isinstance(key, bytes) else str(key)
      if key not in storages:
        raise CheckpointError(f"{what}: unknown storage key {key!r}")
      storage = storages[key]
      header = f.read(8)
      if len(header) < 8:
        raise CheckpointError(f"{what}: truncated before the data of storage {key}")
      numel = int.from_bytes(header, "little")
      if numel != storage.numel:
        raise CheckpointError(f"{what}: storage {key} has {numel} elements, the pickle says {storage.numel}")
      storage.fill(f.read(numel * storage.dtype.itemsize), what)
  return _materialize(obj, what)


def _read_safetensors(path: pathlib.Path, what: str) -> dict[str, np.ndarray]:
  data = path.read_bytes()
  if len(data) < 8:
    raise CheckpointError(f"{what}: truncated safetensors file ({len(data)} bytes)")
  size = int.from_bytes(data[:8], "little")
  if size > len(data) - 8:
    raise CheckpointError(f"{what}: safetensors header of {size} bytes runs past the end of the file (truncated)")
  try:
    header = json.loads(data[8 : 8 + size])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{what}: corrupt safetensors header ({e})") from e
  if not isinstance(header, dict):
    raise CheckpointError(f"{what}: corrupt safetensors header (not a JSON object)")
  body = memoryview(data)[8 + size :]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = _SAFETENSORS_DTYPES[info["dtype"]]
      shape = tuple(int(s) for s in info["shape"])
      begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"{what}: corrupt safetensors entry {name!r}: {info!r}") from e
    if not 0 <= begin <= end <= len(body):
      raise CheckpointError(f"{what}: tensor {name!r} bytes [{begin}, {end}) lie outside the file (truncated)")
    if end - begin != math.prod(shape) * dtype.itemsize:
      raise CheckpointError(f"{what}: tensor {name!r} has {end - begin} bytes for shape {shape} of {dtype}")
    out[name] = np.frombuffer(body[begin:end], dtype).reshape(shape).copy()
  return out


def _read_npz(path: pathlib.Path, what: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as archive:
      return {name: archive[name] for name in archive.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise CheckpointError(f"{what}: corrupt or truncated .npz archive ({e})") from e


def _is_npz(path: pathlib.Path) -> bool:
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
  except zipfile.BadZipFile:
    return False
  return bool(names) and all(n.endswith(".npy") for n in names)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a checkpoint into a flat dict of NumPy arrays, without torch and without running pickle code.

  Supports PyTorch ``.pth`` / ``.pt`` files in the zip format (torch >= 1.6)
  and the legacy format (torch < 1.6), ``.safetensors`` and ``.npz``. Pickles
  are read by a restricted unpickler admitting only tensor and storage
  reconstruction (``torch._utils._rebuild_tensor_v2`` and its siblings,
  ``torch.FloatStorage`` and the other storage types, ``OrderedDict``) and
  plain containers. Non-contiguous tensors are read through their strides and
  storage offset; the result is always contiguous. dtypes: float16, bfloat16
  (as ``ml_dtypes.bfloat16``), float32, float64, the integer types and bool.

  Nested dicts (e.g. ``{"state_dict": {...}, "epoch": 3}``) are flattened with
  ``'.'``-joined names; leaves that are not tensors (numbers, strings) are
  dropped.

  Args:
    path: the checkpoint file.

  Returns:
    A dict from (torch) parameter names to arrays, in file order.

  Raises:
    UnsafeCheckpointError: if the pickle names any other global; the message
      names it (``module.name``) and nothing was executed.
    CheckpointError: if the file is truncated, corrupt or of an unknown format
      (a `ValueError`); the message names the file.
    FileNotFoundError: if there is no such file.

  Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> np.savez(path, **{"fc.weight": np.ones((2, 3))})
    >>> read_checkpoint(path)["fc.weight"].shape
    (2, 3)
  """
  path = pathlib.Path(path)
  what = str(path)
  if not path.is_file():
    raise FileNotFoundError(f"no checkpoint file at {what}")
  with open(path, "rb") as f:
    head = f.read(8)
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    return _read_safetensors(path, what)
  if suffix == ".npz":
    return _read_npz(path, what)
  if head.startswith(b"PK"):
    if suffix not in (".pth", ".pt", ".bin", ".tar", ".ckpt") and _is_npz(path):
      return _read_npz(path, what)
    obj = _read_torch_zip(path, what)
  elif head.startswith(b"\x80"):
    obj = _read_torch_legacy(path, what)
  else:
    raise CheckpointError(
      f"{what}: unknown checkpoint format (starts with {head!r}); expected a PyTorch .pth/.pt (zip or legacy), "
      ".safetensors or .npz file"
    )
  out: dict[str, np.ndarray] = {}
  _flatten(obj, "", out)
  if not out and not isinstance(obj, Mapping):
    raise CheckpointError(f"{what}: the checkpoint holds a {type(obj).__name__}, not a dict of tensors")
  return out
