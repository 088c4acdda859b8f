"""Reading PyTorch, safetensors and NumPy checkpoints without torch, without running code, in bounded resources.

A PyTorch ``.pth`` file is a pickle: ``torch.load`` on an untrusted file can run
any code. Here no pickle is given to Python's unpickler. `_PickleMachine`
interprets the pickle opcodes that ``torch.save`` and plain containers use and
nothing else: a global resolves only to the functions that rebuild tensors
(`_ALLOWED_CALLS`), to torch storage types and dtypes, or to a marker for
``torch.Tensor`` / ``Parameter``; any other global raises
`UnsafeCheckpointError` naming it, before anything is called. Tensors become
NumPy arrays read from the raw storage bytes.

Untrusted files are also kept from exhausting memory or time:

* the pickle memo is honoured (a shared reference stays one object) and every
  walk over the result visits each container once, so a few hundred bytes of
  nested lists that share references cannot expand exponentially;
* the pickle is limited to `MAX_PICKLE_BYTES` bytes and `MAX_PICKLE_OBJECTS`
  opcodes, its containers to `MAX_DEPTH` levels of nesting, dict keys to
  strings, bytes, small integers, booleans and None (no hashing of nested or
  colliding keys), and the flattened names to `MAX_EXPANSION` times the
  number of opcodes (shared references may repeat a tensor under several
  names, but not without end);
* a storage is read only as far as the tensors reachable from the result
  need it, each storage once and each tensor once however often the memo
  shares it; a compressed zip member is inflated only that far;
* a tensor whose strides make it larger than the bytes it covers (stride 0, as
  from ``torch.expand``) is returned as a read-only strided view, never copied
  to its logical size; every other tensor is a contiguous array;
* every declared size is checked against the file before anything is read or
  allocated; any malformed file raises `CheckpointError` naming the path.

Formats:

* zip (torch >= 1.6): ``<name>/data.pkl`` with persistent ids
  ``('storage', storage_type, key, location, numel)`` whose bytes are in
  ``<name>/data/<key>``.
* legacy (torch < 1.6): pickled magic number, protocol version and system info,
  then the pickled object (persistent ids ``('storage', storage_type, key,
  location, numel, view_metadata)``), then a pickled list of storage keys, then
  each storage as an 8-byte little-endian element count and its raw bytes.
* ``.safetensors``: validated by the ``safetensors`` library (overlapping,
  out-of-file or mis-sized byte ranges are refused), bytes read here.
* ``.npz``: ``.npy`` members with their headers checked against the archive
  (no pickled object arrays).
"""

from __future__ import annotations

import codecs
import collections
import io
import json
import math
import os
import pathlib
import struct
import sys
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, Callable

import ml_dtypes
import numpy as np

__all__ = [
  "CheckpointError",
  "MAX_DEPTH",
  "MAX_EXPANSION",
  "MAX_PICKLE_BYTES",
  "MAX_PICKLE_OBJECTS",
  "UnsafeCheckpointError",
  "read_checkpoint",
]

MAX_PICKLE_BYTES = 64 * 2**20
"""Largest pickle read (``data.pkl`` after inflation, or the pickles heading a legacy file); 10^5 tensors take ~15 MB."""

MAX_PICKLE_OBJECTS = 4_000_000
"""Most pickle opcodes executed per file; each creates or places at most one object (about 100 bytes)."""

MAX_DEPTH = 100
"""Deepest nesting of dicts, lists and tuples in a checkpoint (a state dict nests 1 to 3 levels)."""

MAX_EXPANSION = 16
"""Flattening may visit at most ``MAX_EXPANSION`` times the opcodes executed, plus 10^5, container entries."""

MAX_NDIM = 64
"""Most dimensions of one tensor (NumPy's own limit)."""

_MAX_LINE = 2**20  # longest text-opcode argument (GLOBAL names, protocol-0 numbers and strings)
_MAX_INT_KEY = 2**61 - 1  # integer dict keys beyond this could be chosen to collide in hash
_MAX_DEFLATE_RATIO = 1100  # deflate cannot expand beyond 1032:1
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> element dtype (the legacy typed storages; UntypedStorage holds bytes).
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
_QUANTIZED_STORAGES = ("QUInt8Storage", "QInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage")

# complex32 (torch.chalf) has no NumPy dtype: read as pairs of float16, returned as complex64 (exact).
_COMPLEX32 = np.dtype([("re", "<f2"), ("im", "<f2")])

# torch dtype name (a global ``torch.<name>``, as _rebuild_tensor_v3 receives it) -> NumPy dtype.
_TORCH_DTYPES: dict[str, np.dtype] = {
  "float64": np.dtype(np.float64),
  "float32": np.dtype(np.float32),
  "float16": np.dtype(np.float16),
  "bfloat16": np.dtype(ml_dtypes.bfloat16),
  "int64": np.dtype(np.int64),
  "int32": np.dtype(np.int32),
  "int16": np.dtype(np.int16),
  "int8": np.dtype(np.int8),
  "uint64": np.dtype(np.uint64),
  "uint32": np.dtype(np.uint32),
  "uint16": np.dtype(np.uint16),
  "uint8": np.dtype(np.uint8),
  "bool": np.dtype(np.bool_),
  "complex128": np.dtype(np.complex128),
  "complex64": np.dtype(np.complex64),
  "complex32": _COMPLEX32,
  "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
  "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
  "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
  "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
}
if hasattr(ml_dtypes, "float8_e8m0fnu"):
  _TORCH_DTYPES["float8_e8m0fnu"] = np.dtype(ml_dtypes.float8_e8m0fnu)

# torch dtypes that are legitimate but have no faithful NumPy representation here.
_UNSUPPORTED_DTYPES: dict[str, str] = {
  "float4_e2m1fn_x2": "two 4-bit floats packed per byte",
  **{name: "a quantized dtype" for name in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")},
  **{f"int{b}": "a sub-byte integer dtype" for b in range(1, 8)},
  **{f"uint{b}": "a sub-byte integer dtype" for b in range(1, 8)},
  **{name: "a raw bits dtype" for name in ("bits1x8", "bits2x4", "bits4x2", "bits8", "bits16")},
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
  "C64": np.dtype(np.complex64),
  "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
  "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
if hasattr(ml_dtypes, "float8_e8m0fnu"):
  _SAFETENSORS_DTYPES["F8_E8M0"] = np.dtype(ml_dtypes.float8_e8m0fnu)


class CheckpointError(ValueError):
  """A checkpoint file is truncated, corrupt, too large in structure, or of an unknown format."""


class UnsafeCheckpointError(CheckpointError):
  """A pickle in a checkpoint refers to a global that is not allowed (nothing was executed)."""


# ---------------------------------------------------------------------------
# What the pickle builds: storages, views of storages, tensors, markers.


class _Storage:
  """A torch storage: ``nbytes`` bytes under ``key``; ``dtype`` is None for an untyped storage."""

  __slots__ = ("key", "dtype", "nbytes", "type_name", "needed", "buffer")

  def __init__(self, key: str, type_name: str, dtype: np.dtype | None, nbytes: int):
    self.key, self.type_name, self.dtype, self.nbytes = key, type_name, dtype, nbytes
    self.needed = 0  # bytes from the start that reachable tensors use
    self.buffer: bytearray | None = None


class _StorageView:
  """A legacy storage view: ``size`` elements of ``base`` from element ``offset``."""

  __slots__ = ("base", "offset", "size")

  def __init__(self, base: _Storage, offset: int, size: int):
    self.base, self.offset, self.size = base, offset, size


class _Tensor:
  """A tensor to rebuild once its storage's bytes are read: byte offset, shape, strides in elements."""

  __slots__ = ("storage", "dtype", "start", "end", "size", "stride")

  def __init__(self, storage: _Storage, dtype: np.dtype, start: int, end: int, size, stride):
    self.storage, self.dtype, self.start, self.end, self.size, self.stride = storage, dtype, start, end, size, stride


class _Marker:
  """A global that may be named in a pickle (a class, a dtype, a storage type) but never called."""

  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype: np.dtype | None = None):
    self.name, self.dtype = name, dtype

  def __repr__(self):
    return self.name


_REBUILD_TENSOR_V1 = "torch._utils._rebuild_tensor"
_REBUILD_TENSOR_V2 = "torch._utils._rebuild_tensor_v2"
_REBUILD_TENSOR_V3 = "torch._utils._rebuild_tensor_v3"
_REBUILD_PARAMETER = "torch._utils._rebuild_parameter"
_REBUILD_PARAMETER_STATE = "torch._utils._rebuild_parameter_with_state"
_REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"
_ORDERED_DICT = "collections.OrderedDict"
_TORCH_SIZE = "torch.Size"

# (module, name) of every global a pickle may name; the ones in _ALLOWED_CALLS may be called by REDUCE.
_ALLOWED_CALLS = {
  _REBUILD_TENSOR_V1, _REBUILD_TENSOR_V2, _REBUILD_TENSOR_V3, _REBUILD_PARAMETER, _REBUILD_PARAMETER_STATE,
  _REBUILD_FROM_TYPE, _ORDERED_DICT, _TORCH_SIZE,
}
_TYPE_MARKERS = {"torch.Tensor", "torch.nn.parameter.Parameter", "torch.nn.parameter.Buffer"}
_GLOBALS: dict[tuple[str, str], _Marker] = {
  tuple(n.rsplit(".", 1)): _Marker(n) for n in sorted(_ALLOWED_CALLS | _TYPE_MARKERS)  # type: ignore[misc]
}

_REBUILD_KINDS = {
  "_rebuild_qtensor": "a quantized tensor",
  "_rebuild_sparse_tensor": "a sparse tensor",
  "_rebuild_sparse_csr_tensor": "a sparse tensor",
  "_rebuild_nested_tensor": "a nested tensor",
  "_rebuild_meta_tensor_no_storage": "a meta tensor (no data)",
  "_rebuild_wrapper_subclass": "a tensor subclass",
}


def _describe(obj: Any) -> str:
  """A short description of a value from a hostile file (never the repr of a large structure)."""
  if isinstance(obj, _Marker):
    return obj.name
  if isinstance(obj, (str, bytes)):
    return repr(obj[:40]) + ("..." if len(obj) > 40 else "")
  if isinstance(obj, (bool, float)) or obj is None or (isinstance(obj, int) and obj.bit_length() < 128):
    return repr(obj)
  if isinstance(obj, int):
    return f"an integer of {obj.bit_length()} bits"
  if isinstance(obj, (tuple, list, dict, set, frozenset)):
    return f"a {type(obj).__name__} of {len(obj)} items"
  return f"a {type(obj).__name__}"


def _error(what: str, message: str) -> CheckpointError:
  return CheckpointError(f"{what}: {message}")


# ---------------------------------------------------------------------------
# The pickle machine.


class _Source:
  """Bounded reads from a file or buffer: nothing past ``size`` bytes is ever requested or allocated."""

  def __init__(self, f: Any, size: int, what: str, part: str, capped: bool = False):
    self.f, self.left, self.size, self.what, self.part = f, size, size, what, part
    self.capped = capped  # ``size`` is MAX_PICKLE_BYTES, not the end of the data

  @property
  def pos(self) -> int:
    return self.size - self.left

  def read(self, n: int) -> bytes:
    if n > self.left:
      if self.capped:
        raise _error(self.what, f"the pickles run past MAX_PICKLE_BYTES={MAX_PICKLE_BYTES} bytes")
      raise _error(self.what, f"truncated {self.part}: {n} bytes needed at byte {self.pos}, {self.left} remain")
    data = self.f.read(n)
    if len(data) != n:
      raise _error(self.what, f"truncated {self.part}: {len(data)} of {n} bytes at byte {self.pos}")
    self.left -= n
    return data

  def readline(self) -> bytes:
    line = self.f.readline(min(self.left, _MAX_LINE))
    self.left -= len(line)
    if not line.endswith(b"\n"):
      if self.capped and not self.left:
        raise _error(self.what, f"the pickles run past MAX_PICKLE_BYTES={MAX_PICKLE_BYTES} bytes")
      raise _error(self.what, f"unterminated or over-long ({len(line)} bytes) text argument in the {self.part}")
    return line[:-1]


def _check_key(key: Any, what: str) -> Any:
  """Dict keys and set items: scalars whose hashing is cheap and not open to collisions."""
  if isinstance(key, (str, bytes, bool)) or key is None:
    return key
  if isinstance(key, int):
    if -_MAX_INT_KEY < key < _MAX_INT_KEY:
      return key
    raise _error(what, f"a dict key is an integer of {key.bit_length()} bits (at most 61 allowed)")
  raise _error(
    what, f"a dict key or set item is a {type(key).__name__}; only strings, bytes, small integers, booleans and None"
  )


def _check_ints(values: Any, name: str, what: str, allow_negative: bool = False) -> tuple[int, ...]:
  if not isinstance(values, (tuple, list)) or len(values) > MAX_NDIM:
    raise _error(what, f"a tensor {name} is a {type(values).__name__} of length "
                 f"{len(values) if isinstance(values, (tuple, list)) else '?'}, not a tuple of at most {MAX_NDIM} ints")
  for v in values:
    if not isinstance(v, int) or isinstance(v, bool) or (v < 0 and not allow_negative):
      raise _error(what, f"a tensor {name} holds {_describe(v)}; sizes and strides are non-negative integers")
  return tuple(values)


class _PickleMachine:
  """Runs one pickle program with a fixed set of opcodes and globals, honouring the memo."""

  def __init__(self, source: _Source, reader: "_TorchReader"):
    self.src, self.reader, self.what = source, reader, reader.what
    self.stack: list[Any] = []
    self.metastack: list[list[Any]] = []
    self.memo: dict[int, Any] = {}

  def fail(self, message: str) -> CheckpointError:
    return _error(self.what, f"{message} (byte {self.src.pos} of the {self.src.part})")

  def load(self) -> Any:
    read, dispatch, reader = self.src.read, _DISPATCH, self.reader
    try:
      while True:
        reader.ops += 1
        if reader.ops > MAX_PICKLE_OBJECTS:
          raise self.fail(f"the pickle runs more than MAX_PICKLE_OBJECTS={MAX_PICKLE_OBJECTS} opcodes")
        code = read(1)
        op = dispatch.get(code)
        if op is None:
          raise self.fail(f"unsupported pickle opcode {code!r}")
        if op(self) is _STOP:
          if not self.stack:
            raise self.fail("STOP with an empty stack")
          return self.stack.pop()
    except CheckpointError:
      raise
    except IndexError as e:
      raise self.fail(f"malformed pickle: the stack runs empty ({e})") from None
    except KeyError as e:
      raise self.fail(f"malformed pickle: memo entry {e} is missing") from None
    except (ValueError, TypeError, OverflowError, UnicodeError, struct.error) as e:
      raise self.fail(f"malformed pickle ({type(e).__name__}: {str(e)[:200]})") from None

  # Helpers.
  def pop_mark(self) -> list[Any]:
    items = self.stack
    if not self.metastack:
      raise self.fail("malformed pickle: no MARK to pop to")
    self.stack = self.metastack.pop()
    return items

  def push(self, value: Any) -> None:
    self.stack.append(value)

  def container(self, kind: type) -> Any:
    target = self.stack[-1]
    if type(target) is not kind and not (kind is dict and isinstance(target, dict)):
      raise self.fail(f"malformed pickle: adds items to a {type(target).__name__}, not a {kind.__name__}")
    return target

  def decode_str(self, data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")

  def decode_py2(self, data: bytes) -> Any:
    try:
      return data.decode("utf-8")
    except UnicodeDecodeError:
      return data  # Python 2 byte strings that are not text stay bytes

  def find(self, module: str, name: str) -> Any:
    if not isinstance(module, str) or not isinstance(name, str):
      raise self.fail("malformed pickle: a global's module and name must be strings")
    marker = _GLOBALS.get((module, name))
    if marker is not None:
      return marker
    if module in ("torch", "torch.storage", "torch.cuda") and name.endswith("Storage"):
      if name in _STORAGE_DTYPES:
        return _Marker(f"torch.{name}", _STORAGE_DTYPES[name])
      if name in _QUANTIZED_STORAGES:
        raise self.fail(f"torch.{name} holds quantized tensors, which this reader does not read (nothing was "
                        "executed); dequantize with torch and save again")
    if module == "torch" and name in _TORCH_DTYPES:
      return _Marker(f"torch.{name}", _TORCH_DTYPES[name])
    if module == "torch" and name in _UNSUPPORTED_DTYPES:
      raise self.fail(f"the dtype torch.{name} ({_UNSUPPORTED_DTYPES[name]}) has no NumPy equivalent and is not "
                      "supported (the file is not unsafe; nothing was executed); convert it with torch")
    if module == "torch._utils" and name in _REBUILD_KINDS:
      raise self.fail(f"torch._utils.{name} rebuilds {_REBUILD_KINDS[name]}, which this reader does not support "
                      "(the file is not unsafe; nothing was executed); save dense CPU tensors instead")
    raise UnsafeCheckpointError(
      f"{self.what}: refused global {module}.{name}; a checkpoint may only rebuild tensors and plain "
      "containers (nothing was executed). If you trust the file, load it with torch and pass the state dict."
    )

  def call(self, func: Any, args: Any) -> Any:
    if not isinstance(func, _Marker) or func.name not in _ALLOWED_CALLS:
      raise UnsafeCheckpointError(f"{self.what}: refused call of {_describe(func)} (only tensor rebuilding is allowed; "
                                  "nothing was executed)")
    if not isinstance(args, tuple):
      raise self.fail(f"malformed pickle: arguments of {func.name} are a {type(args).__name__}, not a tuple")
    name = func.name
    if name == _ORDERED_DICT:  # OrderedDict() (Python 3), or OrderedDict([[key, value], ...]) (Python 2 pickles)
      out = collections.OrderedDict()
      if len(args) > 1 or (args and not isinstance(args[0], (list, tuple))):
        raise self.fail("OrderedDict takes at most one list of (key, value) pairs")
      for pair in args[0] if args else ():
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
          raise self.fail("OrderedDict takes (key, value) pairs")
        out[_check_key(pair[0], self.what)] = pair[1]
      return out
    if name == _TORCH_SIZE:
      if len(args) != 1:
        raise self.fail("torch.Size takes one tuple of ints")
      return _check_ints(args[0], "size", self.what, allow_negative=True)
    if name in (_REBUILD_PARAMETER, _REBUILD_PARAMETER_STATE):
      if not args or not isinstance(args[0], _Tensor):
        raise self.fail(f"{name} needs a tensor as its first argument")
      return args[0]
    if name == _REBUILD_FROM_TYPE:  # (func, new_type, args, state): tensor subclasses become plain arrays
      if (len(args) != 4 or not isinstance(args[1], _Marker) or args[1].name not in _TYPE_MARKERS
          or not isinstance(args[0], _Marker) or args[0].name == _REBUILD_FROM_TYPE):
        raise self.fail(f"{name} needs (a tensor-rebuilding function, torch.Tensor or Parameter, arguments, state)")
      return self.call(args[0], args[2])
    # _rebuild_tensor (storage, offset, size, stride), _v2 (... requires_grad, hooks[, metadata]),
    # _v3 (... requires_grad, hooks, dtype[, metadata]).
    lengths = {_REBUILD_TENSOR_V1: (4,), _REBUILD_TENSOR_V2: (6, 7), _REBUILD_TENSOR_V3: (7, 8)}[name]
    if len(args) not in lengths:
      raise self.fail(f"{name} takes {' or '.join(map(str, lengths))} arguments, the pickle passes {len(args)}")
    dtype = None
    if name == _REBUILD_TENSOR_V3:
      if not isinstance(args[6], _Marker) or args[6].dtype is None or args[6].name.endswith("Storage"):
        raise self.fail(f"{name} needs a torch dtype, got {_describe(args[6])}")
      dtype = args[6].dtype
    return self.reader.tensor(args[0], args[1], args[2], args[3], dtype)

  def persistent_load(self, pid: Any) -> Any:
    return self.reader.persistent_load(pid)


_STOP = object()


def _op_table() -> dict[bytes, Callable[[_PickleMachine], Any]]:
  """The opcodes of pickle protocols 0 to 5 that state dicts use; anything else is refused."""
  u8 = struct.Struct("<B").unpack
  u16 = struct.Struct("<H").unpack
  i32 = struct.Struct("<i").unpack
  u32 = struct.Struct("<I").unpack
  u64 = struct.Struct("<Q").unpack
  f64 = struct.Struct(">d").unpack

  def n_bytes(m, fmt_size, unpack):
    n = unpack(m.src.read(fmt_size))[0]
    if n < 0:
      raise m.fail("malformed pickle: negative length")
    return m.src.read(n)

  def proto(m):
    version = m.src.read(1)[0]
    if version > 5:
      raise m.fail(f"unsupported pickle protocol {version}")

  def put(m, index):
    if index < 0:
      raise m.fail("malformed pickle: negative memo index")
    m.memo[index] = m.stack[-1]

  def text_int(m):
    data = m.src.readline()
    if data == b"00":
      return m.push(False)
    if data == b"01":
      return m.push(True)
    m.push(int(data))

  def text_long(m):
    data = m.src.readline()
    m.push(int(data[:-1] if data.endswith(b"L") else data))

  def text_string(m):
    data = m.src.readline()
    if len(data) < 2 or data[0] != data[-1] or data[:1] not in (b"'", b'"'):
      raise m.fail("malformed pickle: STRING argument is not quoted")
    m.push(m.decode_py2(codecs.escape_decode(data[1:-1])[0]))

  def dict_from(m, items):
    if len(items) % 2:
      raise m.fail("malformed pickle: odd number of items for a dict")
    out = {}
    for i in range(0, len(items), 2):
      out[_check_key(items[i], m.what)] = items[i + 1]
    return out

  def setitems(m, items):
    target = m.container(dict)
    if len(items) % 2:
      raise m.fail("malformed pickle: odd number of items for SETITEMS")
    for i in range(0, len(items), 2):
      target[_check_key(items[i], m.what)] = items[i + 1]

  def additems(m):
    items = m.pop_mark()
    target = m.container(set)
    target.update(_check_key(v, m.what) for v in items)

  def global_text(m):
    module = m.src.readline().decode("utf-8")
    name = m.src.readline().decode("utf-8")
    m.push(m.find(module, name))

  def stack_global(m):
    name = m.stack.pop()
    module = m.stack.pop()
    m.push(m.find(module, name))

  def reduce(m):
    args = m.stack.pop()
    m.stack[-1] = m.call(m.stack[-1], args)

  def newobj(m):
    args = m.stack.pop()
    m.stack[-1] = m.call(m.stack[-1], args)

  def build(m):
    m.stack.pop()  # the state: a state dict's _metadata, a parameter's attributes; not needed
    target = m.stack[-1]
    if not isinstance(target, (dict, _Tensor)):
      raise m.fail(f"malformed pickle: BUILD on a {type(target).__name__}")

  def inst(m):
    module = m.src.readline().decode("utf-8")
    name = m.src.readline().decode("utf-8")
    cls = m.find(module, name)
    m.push(m.call(cls, tuple(m.pop_mark())))

  def obj(m):
    items = m.pop_mark()
    m.push(m.call(items[0], tuple(items[1:])))

  def newobj_ex(m):
    kwargs = m.stack.pop()
    args = m.stack.pop()
    if kwargs:
      raise m.fail("malformed pickle: NEWOBJ_EX with keyword arguments")
    m.stack[-1] = m.call(m.stack[-1], args)

  def pop(m):
    if m.stack:
      m.stack.pop()
    else:
      m.pop_mark()

  def append(m):
    value = m.stack.pop()
    m.container(list).append(value)

  def appends(m):
    items = m.pop_mark()
    m.container(list).extend(items)

  def setitem(m):
    value = m.stack.pop()
    key = m.stack.pop()
    m.container(dict)[_check_key(key, m.what)] = value

  def mark(m):
    m.metastack.append(m.stack)
    m.stack = []

  def frozenset_(m):
    m.push(frozenset(_check_key(v, m.what) for v in m.pop_mark()))

  return {
    b"\x80": proto,
    b"\x95": lambda m: m.src.read(8),  # FRAME: a hint only, the frame's opcodes follow inline
    b".": lambda m: _STOP,
    b"(": mark,
    b"0": pop,
    b"1": lambda m: m.pop_mark(),
    b"2": lambda m: m.push(m.stack[-1]),
    b"p": lambda m: put(m, int(m.src.readline())),
    b"q": lambda m: put(m, m.src.read(1)[0]),
    b"r": lambda m: put(m, u32(m.src.read(4))[0]),
    b"\x94": lambda m: put(m, len(m.memo)),
    b"g": lambda m: m.push(m.memo[int(m.src.readline())]),
    b"h": lambda m: m.push(m.memo[m.src.read(1)[0]]),
    b"j": lambda m: m.push(m.memo[u32(m.src.read(4))[0]]),
    b"N": lambda m: m.push(None),
    b"\x88": lambda m: m.push(True),
    b"\x89": lambda m: m.push(False),
    b"I": text_int,
    b"J": lambda m: m.push(i32(m.src.read(4))[0]),
    b"K": lambda m: m.push(m.src.read(1)[0]),
    b"M": lambda m: m.push(u16(m.src.read(2))[0]),
    b"L": text_long,
    b"\x8a": lambda m: m.push(int.from_bytes(m.src.read(m.src.read(1)[0]), "little", signed=True)),
    b"\x8b": lambda m: m.push(int.from_bytes(n_bytes(m, 4, i32), "little", signed=True)),
    b"F": lambda m: m.push(float(m.src.readline())),
    b"G": lambda m: m.push(f64(m.src.read(8))[0]),
    b"S": text_string,
    b"T": lambda m: m.push(m.decode_py2(n_bytes(m, 4, i32))),
    b"U": lambda m: m.push(m.decode_py2(n_bytes(m, 1, u8))),
    b"V": lambda m: m.push(m.src.readline().decode("raw-unicode-escape")),
    b"X": lambda m: m.push(m.decode_str(n_bytes(m, 4, u32))),
    b"\x8c": lambda m: m.push(m.decode_str(n_bytes(m, 1, u8))),
    b"\x8d": lambda m: m.push(m.decode_str(n_bytes(m, 8, u64))),
    b"B": lambda m: m.push(n_bytes(m, 4, u32)),
    b"C": lambda m: m.push(n_bytes(m, 1, u8)),
    b"\x8e": lambda m: m.push(n_bytes(m, 8, u64)),
    b"\x96": lambda m: m.push(bytearray(n_bytes(m, 8, u64))),
    b"]": lambda m: m.push([]),
    b"l": lambda m: m.push(list(m.pop_mark())),
    b"a": append,
    b"e": appends,
    b"}": lambda m: m.push({}),
    b"d": lambda m: m.push(dict_from(m, m.pop_mark())),
    b"s": setitem,
    b"u": lambda m: setitems(m, m.pop_mark()),
    b")": lambda m: m.push(()),
    b"t": lambda m: m.push(tuple(m.pop_mark())),
    b"\x85": lambda m: m.push((m.stack.pop(),)),
    b"\x86": lambda m: m.stack.append((m.stack.pop(-2), m.stack.pop())),
    b"\x87": lambda m: m.stack.append((m.stack.pop(-3), m.stack.pop(-2), m.stack.pop())),
    b"\x8f": lambda m: m.push(set()),
    b"\x90": additems,
    b"\x91": frozenset_,
    b"c": global_text,
    b"\x93": stack_global,
    b"R": reduce,
    b"\x81": newobj,
    b"b": build,
    b"i": inst,
    b"o": obj,
    b"\x92": newobj_ex,
    b"P": lambda m: m.push(m.persistent_load(m.src.readline().decode("ascii"))),
    b"Q": lambda m: m.push(m.persistent_load(m.stack.pop())),
  }


_DISPATCH = _op_table()


# ---------------------------------------------------------------------------
# Storages and tensors of one file.


class _TorchReader:
  """The state shared by the pickles of one torch file: storages by key, the opcode count."""

  def __init__(self, what: str, legacy: bool):
    self.what, self.legacy = what, legacy
    self.storages: dict[str, _Storage] = {}
    self.ops = 0

  def run(self, source: _Source) -> Any:
    return _PickleMachine(source, self).load()

  def persistent_load(self, pid: Any) -> Any:
    what = self.what
    if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
      raise UnsafeCheckpointError(f"{what}: refused persistent id {_describe(pid)} (only storages are allowed)")
    expected = 6 if self.legacy else 5
    if len(pid) != expected:
      raise _error(what, f"malformed storage reference of {len(pid)} fields, {expected} expected")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, _Marker) or not storage_type.name.endswith("Storage"):
      raise UnsafeCheckpointError(f"{what}: refused storage type {_describe(storage_type)}")
    if isinstance(key, bytes):
      key = key.decode("ascii", "replace")
    if not isinstance(key, (str, int)) or isinstance(key, bool):
      raise _error(what, f"a storage key is a {type(key).__name__}")
    key = str(key)
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
      raise _error(what, f"storage {key[:40]} declares {_describe(numel)} elements")
    untyped = storage_type.name.endswith("UntypedStorage")
    dtype = None if untyped else storage_type.dtype
    nbytes = numel * (1 if untyped else dtype.itemsize)
    storage = self.storages.get(key)
    if storage is None:
      storage = self.storages[key] = _Storage(key, storage_type.name, dtype, nbytes)
    elif storage.type_name != storage_type.name or storage.nbytes != nbytes:
      raise _error(what, f"storage {key} is declared twice, as {storage.type_name} of {storage.nbytes} bytes "
                   f"and as {storage_type.name} of {nbytes} bytes")
    view = pid[5] if self.legacy else None
    if view is None:
      return storage
    if (not isinstance(view, tuple) or len(view) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in view[1:])):
      raise _error(what, f"malformed storage view {_describe(view)}")
    _, offset, size = view
    if (offset + size) * (dtype.itemsize if dtype is not None else 1) > nbytes:
      raise _error(what, f"a view of storage {key} reaches element {offset + size} beyond its {numel} elements")
    return _StorageView(storage, offset, size)

  def tensor(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None) -> _Tensor:
    what = self.what
    if isinstance(storage, _StorageView):
      base = storage.base
      unit = base.dtype.itemsize if base.dtype is not None else 1
      first, limit = storage.offset * unit, (storage.offset + storage.size) * unit
    elif isinstance(storage, _Storage):
      base, first, limit = storage, 0, storage.nbytes
    else:
      raise _error(what, f"a tensor's storage is a {type(storage).__name__}, not a storage")
    if dtype is None:
      if base.dtype is None:
        raise _error(what, f"a tensor over the untyped storage {base.key} has no dtype")
      dtype = base.dtype
    elif base.dtype is not None and base.dtype != dtype:
      raise _error(what, f"a {dtype} tensor over the {base.type_name} {base.key}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
      raise _error(what, f"a tensor's storage offset is {offset!r}, not a non-negative integer")
    size = _check_ints(size, "size", what)
    stride = _check_ints(stride, "stride", what)
    if len(size) != len(stride):
      raise _error(what, f"a tensor has size {size} but stride {stride} (different lengths)")
    item = dtype.itemsize
    start = first + offset * item
    numel = math.prod(size)
    end = start + (sum((n - 1) * s for n, s in zip(size, stride)) + 1) * item if numel else start
    if end > limit:
      raise _error(
        what,
        f"tensor of size {size}, stride {stride}, offset {offset} reaches byte {end} of storage {base.key}, "
        f"which holds {limit} (corrupt file)",
      )
    if numel * item >= 2**62:
      raise _error(what, f"tensor of size {size} has {numel} elements, beyond what any array can hold")
    return _Tensor(base, dtype, start, end, size, stride)


def _is_container(obj: Any) -> bool:
  return type(obj) in (dict, list, tuple, collections.OrderedDict)


def _children(obj: Any):
  return obj.values() if isinstance(obj, dict) else obj


def _tensor_paths(root: Any, what: str, ops: int) -> list[tuple[str, _Tensor]]:
  """Flattens ``root`` into ('a.b.0', tensor) pairs in file order, visiting each container once per path.

  A first pass marks, once per container object, whether any tensor lies below
  it, refusing reference cycles and nesting beyond `MAX_DEPTH`; the second
  pass only enters containers that hold tensors and counts its work against
  `MAX_EXPANSION`, so shared references cannot multiply it without end.
  """
  if isinstance(root, _Tensor):
    return [("", root)]
  if not _is_container(root):
    return []
  unseen = object()
  holds: dict[int, Any] = {id(root): None}  # None while on the current path, then True or False
  frames = [(root, iter(_children(root)))]
  found = [False]
  while frames:
    obj, it = frames[-1]
    for child in it:
      if isinstance(child, _Tensor):
        found[-1] = True
      elif _is_container(child):
        state = holds.get(id(child), unseen)
        if state is None:
          raise _error(what, "the pickle holds a reference cycle (a container that contains itself)")
        if state is unseen:
          if len(frames) >= MAX_DEPTH:
            raise _error(what, f"containers are nested deeper than MAX_DEPTH={MAX_DEPTH} levels")
          holds[id(child)] = None
          frames.append((child, iter(_children(child))))
          found.append(False)
          break
        found[-1] = found[-1] or state
    else:
      frames.pop()
      state = found.pop()
      holds[id(obj)] = state
      if found:
        found[-1] = found[-1] or state

  budget = MAX_EXPANSION * ops + 100_000
  work = 0
  out: list[tuple[str, _Tensor]] = []
  todo: list[tuple[str, Any]] = [("", root)]
  while todo:
    prefix, obj = todo.pop()
    if isinstance(obj, _Tensor):
      out.append((prefix, obj))
      continue
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    work += len(obj)
    below = []
    for key, value in items:
      if isinstance(value, _Tensor) or (_is_container(value) and holds[id(value)]):
        key = str(key)
        work += (len(prefix) + len(key)) // 64
        if work > budget:
          raise _error(
            what,
            f"shared references expand the checkpoint beyond MAX_EXPANSION={MAX_EXPANSION} times its "
            f"{ops} pickle opcodes (plus 10^5) entries; a state dict names each tensor about once",
          )
        below.append((f"{prefix}.{key}" if prefix else key, value))
    todo.extend(reversed(below))
  return out


def _materialize(tensor: _Tensor, buffer: bytearray, alone: bool, big_endian: bool, what: str,
                 budget: list[int]) -> np.ndarray:
  """The array of ``tensor`` over its storage's ``buffer``.

  A C-contiguous tensor alone on its storage is returned without a copy; a
  tensor that overlaps itself (more elements than bytes covered: stride 0) as a
  read-only strided view; any other as a contiguous copy (never larger than the
  bytes it covers) while the storage's copy budget (``budget[0]`` bytes, twice
  the storage) lasts, then as a read-only view: many distinct tensors over one
  storage cannot multiply it.
  """
  size, dtype, stride = tensor.size, tensor.dtype, tensor.stride
  numel = math.prod(size)
  if numel == 0:
    out = np.zeros(size, dtype)
    return np.zeros(size, np.complex64) if dtype is _COMPLEX32 else out
  item = dtype.itemsize
  flat = np.frombuffer(buffer, dtype=dtype, count=(tensor.end - tensor.start) // item, offset=tensor.start)
  contiguous, expected = True, 1
  for n, s in zip(reversed(size), reversed(stride)):
    if n > 1 and s != expected:
      contiguous = False
    expected *= n
  if contiguous and alone and not big_endian and dtype is not _COMPLEX32:
    return flat[:numel].reshape(size)
  # as_strided goes through __array_interface__, which loses ml_dtypes types: stride raw bytes, then view.
  raw = flat.view(np.dtype((np.void, item)))
  view = np.lib.stride_tricks.as_strided(raw, shape=size, strides=[s * item for s in stride], writeable=False)
  view = view.view(dtype)
  if numel * item > tensor.end - tensor.start:  # overlapping elements (stride 0): never expand
    if big_endian or dtype is _COMPLEX32:
      kind = "big-endian" if big_endian else "complex32"
      raise _error(what, f"a {kind} tensor of size {size} with overlapping strides {stride} cannot be read as a view")
    return view
  cost = numel * item
  if cost > budget[0]:
    if big_endian or dtype is _COMPLEX32:
      raise _error(what, f"the tensors over storage {tensor.storage.key[:40]} would need copies of more than twice "
                   "its size")
    return view
  budget[0] -= cost
  out = np.array(view, order="C")
  if big_endian:
    out = out.byteswap()
  if dtype is _COMPLEX32:
    out = out["re"].astype(np.complex64) + np.complex64(1j) * out["im"].astype(np.complex64)
  return out


def _finish(root: Any, reader: _TorchReader, read_storages: Callable[[list[_Storage]], Any],
            big_endian: bool) -> dict[str, np.ndarray]:
  """Names the reachable tensors, reads the bytes they need (each storage once), builds each tensor once.

  ``read_storages(storages)`` yields ``(storage, buffer)`` pairs; a storage's
  buffer is dropped once its tensors are built, so the peak is the result
  plus one storage.
  """
  what = reader.what
  paths = _tensor_paths(root, what, reader.ops)
  if not paths and not isinstance(root, Mapping):
    raise _error(what, f"the checkpoint holds {_describe(root)}, not a dict of tensors")
  by_storage: dict[int, list[_Tensor]] = {}
  for t in {id(t): t for _, t in paths}.values():
    t.storage.needed = max(t.storage.needed, t.end)
    by_storage.setdefault(id(t.storage), []).append(t)
  needed = [s for s in reader.storages.values() if id(s) in by_storage]
  arrays: dict[int, np.ndarray] = {}
  for storage, buffer in read_storages(needed):
    tensors = by_storage[id(storage)]
    budget = [2 * len(buffer)]
    for t in tensors:
      arrays[id(t)] = _materialize(t, buffer, len(tensors) == 1, big_endian, what, budget)
  return {name: arrays[id(t)] for name, t in paths}


# ---------------------------------------------------------------------------
# Containers.


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, n: int, file_size: int, what: str) -> bytearray:
  """The first ``n`` bytes of a member, inflating no further, after checking the archive's claims."""
  if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
    raise _error(what, f"{info.filename} uses zip compression method {info.compress_type}; only stored and "
                 "deflated members are read")
  if info.flag_bits & 0x1:
    raise _error(what, f"{info.filename} is encrypted")
  if info.file_size < n:
    raise _error(what, f"{info.filename} holds {info.file_size} bytes, {n} are needed (truncated or corrupt)")
  if info.header_offset + info.compress_size > file_size:
    raise _error(what, f"{info.filename} runs past the end of the file (truncated)")
  if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
    raise _error(what, f"{info.filename} is stored with {info.compress_size} bytes but claims {info.file_size}")
  if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 64:
    raise _error(what, f"{info.filename} claims {info.file_size} bytes from {info.compress_size} compressed ones, "
                 "more than deflate can produce (corrupt)")
  buffer = bytearray(n)
  with archive.open(info) as f:
    got = _read_into(f, buffer)
  if got != n:
    raise _error(what, f"{info.filename} ended after {got} of {n} bytes (truncated)")
  return buffer


def _read_into(f: Any, buffer: bytearray) -> int:
  """Fills ``buffer`` from a zip member in 16 MiB reads (``ZipExtFile.readinto`` would copy it whole)."""
  view, got = memoryview(buffer), 0
  while got < len(buffer):
    chunk = f.read(min(len(buffer) - got, 1 << 24))
    if not chunk:
      break
    view[got: got + len(chunk)] = chunk
    got += len(chunk)
  return got


def _check_disjoint(infos: list[zipfile.ZipInfo], what: str) -> None:
  """Refuses members whose data overlap (a zip bomb that reuses one compressed stream many times)."""
  spans = sorted((i.header_offset, i.header_offset + 30 + len(i.orig_filename.encode()) + i.compress_size, i.filename)
                 for i in infos)
  for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
    if start < end:
      raise _error(what, f"zip members {name} and {other} overlap (a malformed or malicious archive)")


def _check_unique(infos: list[zipfile.ZipInfo], what: str) -> None:
  """Refuses an archive with two members of one name: readers disagree on which one counts.

  ``torch.load`` reads the first, Python's ``zipfile`` (and so a dict of its
  members) the last: the same file would give two sets of weights.
  """
  seen = set()
  for info in infos:
    if info.filename in seen:
      raise _error(what, f"the archive holds two members named {info.filename[:80]!r} (a malformed or malicious"
                   " archive: readers disagree on which one counts); re-save the checkpoint")
    seen.add(info.filename)


def _read_torch_zip(path: pathlib.Path, what: str) -> dict[str, np.ndarray]:
  file_size = path.stat().st_size
  with zipfile.ZipFile(path) as archive:
    _check_unique(archive.infolist(), what)
    infos = {i.filename: i for i in archive.infolist()}
    pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
      raise _error(what, "a zip file without <name>/data.pkl is not a PyTorch checkpoint")
    if len(pickles) > 1:
      raise _error(what, f"the archive holds {len(pickles)} pickles ({', '.join(sorted(pickles)[:4])}), not one"
                   " <name>/data.pkl: which one is the checkpoint is ambiguous; re-save it")
    prefix = pickles[0][: -len("data.pkl")]
    big_endian = False
    if prefix + "byteorder" in infos:
      info = infos[prefix + "byteorder"]
      order = bytes(_zip_member(archive, info, min(info.file_size, 16), file_size, what)).decode("ascii", "replace")
      if order.strip() not in ("little", "big"):
        raise _error(what, f"unknown byte order {order.strip()!r}")
      big_endian = order.strip() != sys.byteorder
    pkl = infos[pickles[0]]
    if pkl.file_size > MAX_PICKLE_BYTES:
      raise _error(what, f"{pkl.filename} has {pkl.file_size} bytes, more than MAX_PICKLE_BYTES={MAX_PICKLE_BYTES}")
    data = _zip_member(archive, pkl, pkl.file_size, file_size, what)
    reader = _TorchReader(what, legacy=False)
    root = reader.run(_Source(io.BytesIO(data), len(data), what, pkl.filename))
    del data

    def read_storages(storages: list[_Storage]):
      members = []
      for storage in storages:
        info = infos.get(f"{prefix}data/{storage.key}")
        if info is None:
          raise _error(what, f"storage {storage.key[:40]} is missing from the archive")
        members.append(info)
      _check_disjoint([pkl, *members], what)
      for storage, info in zip(storages, members):
        yield storage, _zip_member(archive, info, storage.needed, file_size, what)

    return _finish(root, reader, read_storages, big_endian)


def _read_torch_legacy(path: pathlib.Path, what: str) -> dict[str, np.ndarray]:
  file_size = path.stat().st_size
  with open(path, "rb") as f:
    source = _Source(f, min(file_size, MAX_PICKLE_BYTES), what, "file", capped=file_size > MAX_PICKLE_BYTES)
    reader = _TorchReader(what, legacy=True)
    magic = reader.run(source)
    if type(magic) is not int or magic != _LEGACY_MAGIC:
      raise _error(what, "not a PyTorch checkpoint (no legacy magic number); is it a plain pickle?")
    protocol = reader.run(source)
    if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
      raise _error(what, f"unsupported legacy protocol version {_describe(protocol)}")
    sys_info = reader.run(source)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
      raise _error(what, "big-endian legacy checkpoints are not supported")
    root = reader.run(source)
    keys = reader.run(source)
    if not isinstance(keys, list):
      raise _error(what, "corrupt storage key list")
    data = _Source(f, file_size - source.pos, what, "storage data")

    def read_storages(storages: list[_Storage]):
      # The data follow in key-list order: an 8-byte element count, then the bytes. Check every header,
      # read each needed storage up to the bytes its tensors use, skip the rest.
      wanted = {id(s) for s in storages}
      done = set()
      for key in keys:
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        storage = reader.storages.get(key)
        if storage is None:
          raise _error(what, f"unknown storage key {key[:40]!r}")
        if key in done:
          raise _error(what, f"storage key {key[:40]!r} is listed twice")
        done.add(key)
        numel = int.from_bytes(data.read(8), "little")
        unit = storage.dtype.itemsize if storage.dtype is not None else 1
        if numel * unit != storage.nbytes:
          raise _error(what, f"storage {key[:40]} has {numel} elements, the pickle says {storage.nbytes // unit}")
        if storage.nbytes > data.left:
          raise _error(what, f"storage {key[:40]} of {storage.nbytes} bytes runs past the end of the file (truncated)")
        if id(storage) in wanted:
          buffer = bytearray(storage.needed)
          if f.readinto(buffer) != storage.needed:
            raise _error(what, f"storage {key[:40]} is truncated")
          f.seek(storage.nbytes - storage.needed, os.SEEK_CUR)
          yield storage, buffer
          wanted.discard(id(storage))
        else:
          f.seek(storage.nbytes, os.SEEK_CUR)
        data.left -= storage.nbytes
      if wanted:
        raise _error(what, f"the data of {len(wanted)} storage(s) are missing (truncated)")

    return _finish(root, reader, read_storages, big_endian=False)


def _read_safetensors(path: pathlib.Path, what: str) -> dict[str, np.ndarray]:
  try:
    import safetensors  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {what} needs the safetensors package: pip install 'safetensors>=0.4'") from e
  try:  # the library validates the header: offsets in the file, contiguous, not overlapping, sized by shape
    with safetensors.safe_open(str(path), framework="numpy"):
      pass
  except safetensors.SafetensorError as e:
    message = str(e)
    hint = " (truncated)" if "incomplete" in message or "too small" in message else ""
    raise _error(what, f"invalid safetensors file{hint}: {message}") from None
  out = {}
  file_size = path.stat().st_size
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(size))
    for name, info in header.items():
      if name == "__metadata__":
        continue
      dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
      if dtype is None:
        raise _error(what, f"tensor {name!r} has the safetensors dtype {info['dtype']}, which has no NumPy "
                     f"equivalent here; supported: {', '.join(_SAFETENSORS_DTYPES)}")
      begin, end = info["data_offsets"]
      if not 0 <= begin <= end <= file_size - 8 - size:  # validated above; re-checked in case the file changed
        raise _error(what, f"tensor {name!r} bytes [{begin}, {end}) lie outside the file")
      buffer = bytearray(end - begin)
      f.seek(8 + size + begin)
      if f.readinto(buffer) != end - begin:
        raise _error(what, f"tensor {name!r} is truncated")
      out[name] = np.frombuffer(buffer, dtype).reshape(info["shape"])
  return out


def _read_npz(path: pathlib.Path, what: str) -> dict[str, np.ndarray]:
  file_size = path.stat().st_size
  out = {}
  with zipfile.ZipFile(path) as archive:
    infos = archive.infolist()
    _check_unique(infos, what)
    _check_disjoint(infos, what)
    for info in infos:
      if not info.filename.endswith(".npy"):
        raise _error(what, f"{info.filename} in an .npz archive is not an .npy file")
      _zip_member(archive, info, 0, file_size, what)  # the archive's claims
      with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
          shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
          shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
          raise _error(what, f"{info.filename} is an .npy file of version {version}, not 1.0 or 2.0")
        if dtype.hasobject:
          raise _error(what, f"{info.filename} holds Python objects (a pickle); only numeric arrays are read")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
          raise _error(what, f"{info.filename} declares {nbytes} bytes of data but holds {info.file_size} (truncated)")
        buffer = bytearray(nbytes)
        if _read_into(f, buffer) != nbytes:
          raise _error(what, f"{info.filename} is truncated")
      array = np.frombuffer(buffer, dtype)
      out[info.filename[: -len(".npy")]] = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
  return out


def _is_npz(path: pathlib.Path) -> bool:
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
  except (zipfile.BadZipFile, OSError, ValueError, EOFError):
    return False
  return bool(names) and all(n.endswith(".npy") for n in names)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a checkpoint into a flat dict of NumPy arrays, without torch, without running code, in bounded resources.

  Supports PyTorch ``.pth`` / ``.pt`` files in the zip format (torch >= 1.6)
  and the legacy format (torch < 1.6), ``.safetensors`` and ``.npz``. Pickles
  are interpreted by a restricted pickle machine admitting only tensor and
  storage reconstruction (``torch._utils._rebuild_tensor_v2`` / ``_v3`` and
  their siblings, ``torch.FloatStorage`` and the other storage types, torch
  dtypes, ``OrderedDict``) and plain containers (dict, list, tuple, set).

  The file may be hostile: memory and time stay proportional to the file's
  size and the tensors it really declares. Shared references stay shared (a
  tensor referenced many times is read once and returned as one array under
  each of its names), storages are read, and compressed zip members inflated,
  only as far as the tensors need; the pickle is limited to
  `MAX_PICKLE_BYTES` bytes and `MAX_PICKLE_OBJECTS` opcodes, nesting to
  `MAX_DEPTH` levels, flattening to `MAX_EXPANSION` times the opcodes. Every
  malformed file raises `CheckpointError` naming the path and the fault.

  Arrays are C-contiguous and writable, except tensors whose strides make them
  larger than the bytes they cover (stride 0, as ``torch.expand`` makes):
  those are read-only strided views (``np.broadcast_to``-like), never copied to
  their logical size. Likewise, once the tensors over one storage have been
  copied to twice its size (only a hostile file gets there: a state dict's
  tensors partition their storages), the rest are read-only views of it. dtypes: float16/32/64, bfloat16 and float8 (as
  ``ml_dtypes`` types), signed and unsigned 8 to 64-bit integers, bool,
  complex64/128, and complex32 (returned as complex64, exactly); quantized,
  4-bit and sub-byte dtypes raise `CheckpointError` saying so.

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
    CheckpointError: if the file is truncated, corrupt, exceeds a limit (named
      in the message), holds an unsupported dtype or tensor kind, or is of an
      unknown format (a `ValueError`); the message names the file.
    FileNotFoundError: if there is no such file.
    ImportError: for a ``.safetensors`` file without the ``safetensors``
      package.

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
  try:
    if suffix == ".safetensors":
      return _read_safetensors(path, what)
    if suffix == ".npz":
      return _read_npz(path, what)
    if head.startswith(b"PK"):
      if suffix not in (".pth", ".pt", ".bin", ".tar", ".ckpt") and _is_npz(path):
        return _read_npz(path, what)
      return _read_torch_zip(path, what)
    if head.startswith(b"\x80"):
      return _read_torch_legacy(path, what)
  except CheckpointError:
    raise
  except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, TypeError, KeyError,
          IndexError, OverflowError, UnicodeError, struct.error, NotImplementedError, RuntimeError,
          RecursionError, MemoryError) as e:
    raise _error(what, f"corrupt or truncated checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
  except OSError as e:
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
      raise
    raise _error(what, f"corrupt or truncated checkpoint ({type(e).__name__}: {e})") from None
  raise CheckpointError(
    f"{what}: unknown checkpoint format (starts with {head!r}); expected a PyTorch .pth/.pt (zip or legacy), "
    ".safetensors or .npz file"
  )
