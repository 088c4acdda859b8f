"""Hostile and malformed checkpoints, racing and tampered downloads (issue 15, sections 2 and 3).

Every hostile file is built here, byte by byte. Cases that made the previous
reader hang or allocate gigabytes run in a subprocess under ``RLIMIT_AS`` and
``RLIMIT_CPU`` (`_read_limited`), so a regression fails fast instead of taking
the machine down; none of them allocates more than a few megabytes when the
reader is right. No test touches the network.
"""

import collections
import hashlib
import io
import json
import os
import pathlib
import struct
import subprocess
import sys
import threading
import warnings
import zipfile
import zlib

import numpy as np
import pytest

from adaptgrad_jax import weights
from adaptgrad_jax.weights import _checkpoint, _pretrained

# ---------------------------------------------------------------------------
# Pickle and zip bytes by hand.


def _int(v):
  """LONG1: any integer."""
  n = (v.bit_length() + 8) // 8
  return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def _str(s):
  data = s.encode()
  return b"X" + struct.pack("<I", len(data)) + data


def _tuple(values):
  return b"(" + b"".join(_int(v) for v in values) + b"t"


def _tensor(key="0", numel=1, size=(1,), stride=(1,), offset=0, storage="FloatStorage"):
  """``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`` for a zip checkpoint."""
  pid = b"(" + _str("storage") + b"ctorch\n" + storage.encode() + b"\n" + _str(key) + _str("cpu") + _int(numel) + b"t"
  return (
    b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"Q" + _int(offset) + _tuple(size) + _tuple(stride)
    + b"\x89ccollections\nOrderedDict\n)RtR"
  )


def _dict(items):
  """A dict from (str key, pickled value) pairs."""
  return b"}(" + b"".join(_str(k) + v for k, v in items) + b"u"


def _program(body):
  return b"\x80\x02" + body + b"."


def _zip(path, members, compress=()):
  """Writes a zip with ``members`` {name: bytes}; names in ``compress`` are deflated."""
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in members.items():
      archive.writestr(name, data, zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED)
  return path


def _torch_zip(path, pickle_body, storages=None):
  members = {"m/data.pkl": _program(pickle_body), "m/byteorder": b"little"}
  members.update({f"m/data/{k}": v for k, v in (storages or {}).items()})
  return _zip(path, members)


def _deflate_zeros(n_mib):
  """A raw deflate stream of ``n_mib`` MiB of zeros built from a repeated flush block: about 1 KB per MiB."""
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  mib = bytes(2**20)
  first = c.compress(mib) + c.flush(zlib.Z_SYNC_FLUSH)
  block = c.compress(mib) + c.flush(zlib.Z_SYNC_FLUSH)
  assert c.compress(mib) + c.flush(zlib.Z_SYNC_FLUSH) == block  # the window is all zeros: blocks repeat
  crc = 0  # not computed (2 GiB of CRC-32 would take seconds): a reader that stops early never checks it
  return first + block * (n_mib - 2) + c.compress(mib) + c.flush(), crc


def _raw_zip(path, members):
  """A zip written by hand: members (name, raw bytes, method, uncompressed size, crc)."""
  out, central = bytearray(), bytearray()
  for name, raw, method, size, crc in members:
    encoded = name.encode()
    offset = len(out)
    out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(raw), size, len(encoded), 0)
    out += encoded + raw
    central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(raw), size,
                           len(encoded), 0, 0, 0, 0, 0, offset) + encoded
  end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
  path.write_bytes(bytes(out + central + end))
  return path


def _stored(name, data):
  return (name, data, zipfile.ZIP_STORED, len(data), zlib.crc32(data))


# ---------------------------------------------------------------------------
# Reading in a subprocess with bounded memory and CPU time.

_RUNNER = r"""
import importlib.util, json, resource, sys, time
module, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
spec = importlib.util.spec_from_file_location("checkpoint_under_test", module)
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if len(sys.argv) > 4:  # measure allocations (Python objects and NumPy data) too; slower
  import tracemalloc
  tracemalloc.start()
start = time.perf_counter()
try:
  out = m.read_checkpoint(path)
  first = next(iter(out.values()), None)
  result = {"ok": True, "names": len(out), "distinct": len({id(v) for v in out.values()}),
            "shape": None if first is None else list(first.shape),
            "writeable": None if first is None else bool(first.flags.writeable),
            "first": None if first is None or first.size == 0 else float(first.flat[0])}
except BaseException as e:
  result = {"ok": False, "type": type(e).__name__, "message": str(e)[:2000]}
result["seconds"] = time.perf_counter() - start
result["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
if len(sys.argv) > 4:
  result["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps(result))
"""

_LIMIT = 1536 * 2**20  # address space of the reading subprocess: numpy and ml_dtypes need ~600 MiB of it


def _read_limited(path, module=None, timeout=120, traced=False):
  """Reads ``path`` with ``read_checkpoint`` in a subprocess under RLIMIT_AS and RLIMIT_CPU; returns its report."""
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
  proc = subprocess.run(
    [sys.executable, "-c", _RUNNER, module or _checkpoint.__file__, str(path), str(_LIMIT), *(["traced"] if traced else [])],
    capture_output=True, text=True, timeout=timeout, env=env, check=False,
  )
  assert proc.returncode == 0, f"the reader died (rc={proc.returncode}): {proc.stderr[-2000:]}"
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_refused(report, path, *fragments):
  assert not report["ok"], report
  assert report["type"] in ("CheckpointError", "UnsafeCheckpointError"), report
  assert str(path) in report["message"], report
  for fragment in fragments:
    assert fragment in report["message"], report


# ---------------------------------------------------------------------------
# 1. Shared references: the memo is honoured and nothing expands without bound.


def _shared_lists(depth, leaf=b"]"):
  """L0 = leaf; L(i+1) = [L(i), L(i)] through the memo: 2**depth paths in about 9 bytes per level."""
  body = leaf + b"q\x000"
  for i in range(1, depth + 1):
    body += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]) + b"0"
  return body + b"h" + bytes([depth])


def test_shared_nested_lists_load_at_once(tmp_path):
  body = _dict([("bomb", _shared_lists(38))])
  path = _torch_zip(tmp_path / "bomb.pth", body)
  raw = _program(body)
  assert len(raw) < 372, len(raw)  # the audit's file was 372 bytes
  report = _read_limited(path)
  assert report["ok"] and report["names"] == 0, report  # no tensors: an empty state dict
  assert report["peak_mib"] < 64, report


def test_shared_references_to_a_tensor_cannot_multiply_names(tmp_path):
  leaf = b"(" + _tensor(numel=1) + b"l"  # a list holding one tensor
  path = _torch_zip(tmp_path / "bomb.pth", _dict([("bomb", _shared_lists(38, leaf))]), {"0": bytes(4)})
  report = _read_limited(path)
  _assert_refused(report, path, "MAX_EXPANSION")
  assert report["peak_mib"] < 256, report


def test_tensor_shared_2000_times_is_one_array(tmp_path):
  n = 2**20  # 4 MiB: 2000 copies would be 8 GiB
  body = b"}q\x00(" + _str("w0") + _tensor(numel=n, size=(n,)) + b"q\x01"
  body += b"".join(_str(f"w{i}") + b"h\x01" for i in range(1, 2000)) + b"u"
  path = _torch_zip(tmp_path / "shared.pth", body, {"0": np.arange(n, dtype=np.float32).tobytes()})
  report = _read_limited(path)
  assert report["ok"] and report["names"] == 2000 and report["distinct"] == 1, report
  assert report["peak_mib"] < 64, report
  state = weights.read_checkpoint(path)  # in this process too: one array under 2000 names
  assert all(v is state["w0"] for v in state.values())
  np.testing.assert_array_equal(state["w0"], np.arange(n, dtype=np.float32))


# ---------------------------------------------------------------------------
# 2. Views stay views; storages are read and inflated only as far as needed.


def test_stride_zero_tensor_over_one_element_is_a_view(tmp_path):
  n = 2**31  # 8 GiB of float32 if copied
  path = _torch_zip(tmp_path / "expand.pth", _dict([("w", _tensor(numel=1, size=(n,), stride=(0,)))]),
                    {"0": np.float32(2.5).tobytes()})
  assert path.stat().st_size < 2048
  report = _read_limited(path)
  assert report["ok"] and report["shape"] == [n] and report["first"] == 2.5, report
  assert report["writeable"] is False, report
  assert report["peak_mib"] < 64, report


def test_expanded_torch_tensor_round_trips_as_a_read_only_view(tmp_path):
  torch = pytest.importorskip("torch")
  state = {"row": torch.arange(3.0).expand(1000, 3), "dense": torch.arange(6.0).reshape(2, 3)}
  torch.save(state, tmp_path / "e.pth")
  read = weights.read_checkpoint(tmp_path / "e.pth")
  np.testing.assert_array_equal(read["row"], np.broadcast_to(np.arange(3.0, dtype=np.float32), (1000, 3)))
  assert read["row"].strides == (0, 4) and not read["row"].flags.writeable
  assert read["dense"].flags.c_contiguous and read["dense"].flags.writeable


def test_deflated_storage_is_inflated_only_as_far_as_needed(tmp_path):
  stream, crc = _deflate_zeros(2048)  # 2 GiB of zeros in about 2 MB
  pkl = _program(_dict([("w", _tensor(numel=1, size=(1,)))]))
  path = _raw_zip(tmp_path / "deflate.pth", [
    _stored("m/data.pkl", pkl),
    ("m/data/0", stream, zipfile.ZIP_DEFLATED, 2**31, crc),
  ])
  assert path.stat().st_size < 3 * 2**20
  report = _read_limited(path)
  assert report["ok"] and report["shape"] == [1] and report["first"] == 0.0, report
  assert report["peak_mib"] < 64, report


def test_zip_member_claiming_more_than_deflate_can_give_is_refused(tmp_path):
  pkl = _program(_dict([("w", _tensor(numel=2**28, size=(2**28,)))]))
  raw = zlib.compress(bytes(1000))[2:-4]
  path = _raw_zip(tmp_path / "liar.pth", [_stored("m/data.pkl", pkl), ("m/data/0", raw, 8, 2**30, 0)])
  _assert_refused(_read_limited(path), path, "more than deflate can produce")


def test_overlapping_zip_members_are_refused(tmp_path):
  # Two storages whose central-directory entries point at the same bytes (a non-recursive zip bomb).
  data = bytes(4)
  pkl = _program(_dict([("a", _tensor(key="0")), ("b", _tensor(key="1"))]))
  path = _raw_zip(tmp_path / "overlap.pth", [_stored("m/data.pkl", pkl), _stored("m/data/0", data)])
  blob = bytearray(path.read_bytes())
  # Append a second central entry named m/data/1 that reuses m/data/0's local header offset.
  eocd = blob.rindex(b"PK\x05\x06")
  cd_size, cd_offset = struct.unpack("<II", blob[eocd + 12: eocd + 20])
  entries = bytes(blob[cd_offset: cd_offset + cd_size])
  second = entries.rindex(b"PK\x01\x02")
  clone = bytearray(entries[second:])
  clone[-1:] = b"1"  # the name m/data/0 -> m/data/1
  new_cd = entries + bytes(clone)
  end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 3, 3, len(new_cd), cd_offset, 0)
  path.write_bytes(bytes(blob[:cd_offset]) + new_cd + end)
  with pytest.raises(weights.CheckpointError, match="zip members m/data/0 and m/data/1 overlap"):
    weights.read_checkpoint(path)


# ---------------------------------------------------------------------------
# 3. safetensors: the format's rules (checked by the safetensors library).


def _safetensors(path, header, body):
  data = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(data)) + data + body)
  return path


@pytest.mark.parametrize("case", ["overlap", "same_bytes", "out_of_file", "gap"])
def test_safetensors_byte_ranges_must_tile_the_file(tmp_path, case):
  pytest.importorskip("safetensors")
  a = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
  b = {
    "overlap": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    "same_bytes": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "out_of_file": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    "gap": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]},
  }[case]
  path = _safetensors(tmp_path / "w.safetensors", {"a": a, "b": b}, bytes(16 if case == "gap" else 12))
  with pytest.raises(weights.CheckpointError, match="invalid safetensors file") as info:
    weights.read_checkpoint(path)
  assert str(path) in str(info.value)


def test_safetensors_newer_dtypes(tmp_path):
  pytest.importorskip("safetensors")
  import ml_dtypes

  values = np.array([0.5, -2.0], np.float32)
  header = {
    "b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
    "e4": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [4, 6]},
    "u": {"dtype": "U16", "shape": [2], "data_offsets": [6, 10]},
  }
  body = (values.astype(ml_dtypes.bfloat16).tobytes() + values.astype(ml_dtypes.float8_e4m3fn).tobytes()
          + np.array([1, 65535], np.uint16).tobytes())
  read = weights.read_checkpoint(_safetensors(tmp_path / "w.safetensors", header, body))
  np.testing.assert_array_equal(read["b"].astype(np.float32), values)
  np.testing.assert_array_equal(read["e4"].astype(np.float32), values)
  np.testing.assert_array_equal(read["u"], [1, 65535])


# ---------------------------------------------------------------------------
# 4. Malformed files: always CheckpointError naming the path and the fault.


def _deep_lists(n):
  return b"]" * n + b"a" * (n - 1)


_MALFORMED = {
  "bad_opcode": (_dict([("w", b"\xff")]), "unsupported pickle opcode"),
  "deep_nesting": (_dict([("w", _deep_lists(100_000))]), "MAX_DEPTH=100"),
  "cycle": (_dict([("w", b"]q\x00h\x00a")]), "reference cycle"),
  "float_size": (_dict([("w", _tensor(numel=4, size=(4,)).replace(_tuple((4,)), b"(G@\x10\x00\x00\x00\x00\x00\x00t"))]),
                 "sizes and strides are non-negative integers"),
  "string_stride": (_dict([("w", _tensor(numel=4, size=(4,)).replace(_tuple((1,)), b"(" + _str("1") + b"t"))]),
                    "sizes and strides are non-negative integers"),
  "negative_stride": (_dict([("w", _tensor(numel=4, size=(4,), stride=(-1,)))]), "non-negative"),
  "storage_not_storage": (_dict([("w", b"ctorch._utils\n_rebuild_tensor_v2\n(" + _str("x") + _int(0) + _tuple((1,))
                                 + _tuple((1,)) + b"\x89ccollections\nOrderedDict\n)RtR")]), "not a storage"),
  "size_stride_lengths": (_dict([("w", _tensor(numel=4, size=(2, 2), stride=(1,)))]), "different lengths"),
  "missing_memo": (_dict([("w", b"h\x07")]), "memo entry 7 is missing"),
  "empty_stack": (b"a", "stack runs empty"),
  "setitem_on_list": (b"]" + _str("k") + _str("v") + b"s", "adds items to a list"),
  "append_to_dict": (b"}" + _str("v") + b"a", "adds items to a dict"),
  "truncated_string": (b"X\xff\xff\x00\x00abc", "truncated"),
  "tuple_key": (b"}" + b"(K\x01K\x02t" + _str("v") + b"s", "dict key"),
  "too_many_tensor_args": (_dict([("w", _tensor().replace(b"tR", b"K\x00K\x00K\x00tR"))]), "arguments"),
  "storage_missing": (_dict([("w", _tensor(key="9"))]), "storage 9 is missing"),
  "unknown_rebuild": (b"ctorch._utils\n_rebuild_qtensor\n", "quantized tensor"),
  "nested_rebuild_from_type": (b"ctorch._tensor\n_rebuild_from_type_v2\n(ctorch._tensor\n_rebuild_from_type_v2\n"
                               b"ctorch\nTensor\n)}tR", "a tensor-rebuilding function"),
  "ordered_dict_bad_pairs": (b"ccollections\nOrderedDict\n(((K\x01tltR", "(key, value) pairs"),
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_malformed_pickle_raises_checkpoint_error(tmp_path, case):
  body, fragment = _MALFORMED[case]
  path = _torch_zip(tmp_path / f"{case}.pth", body, {"0": bytes(16)})
  with pytest.raises(weights.CheckpointError) as info:
    weights.read_checkpoint(path)
  message = str(info.value)
  assert message.startswith(str(path)), message
  assert not isinstance(info.value, weights.UnsafeCheckpointError), message
  if fragment:
    assert fragment in message, message


def test_colliding_or_nested_dict_keys_are_refused_before_hashing(tmp_path):
  # A key that is a DAG of tuples (2**40 elements to hash) would hang any unpickler that hashes it.
  body = b"}" + b")q\x000" + b"".join(b"(h" + bytes([i]) + b"h" + bytes([i]) + b"tq" + bytes([i + 1]) + b"0"
                                    for i in range(40)) + b"h\x28" + _str("v") + b"s"
  path = _torch_zip(tmp_path / "hash.pth", body)
  _assert_refused(_read_limited(path), path, "dict key")


def test_huge_memo_index_costs_nothing(tmp_path):
  path = _torch_zip(tmp_path / "memo.pth", b"]r\xff\xff\xff\xff0}")  # LONG_BINPUT 2**32 - 1
  report = _read_limited(path)
  assert report["ok"] and report["names"] == 0 and report["peak_mib"] < 64, report


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_legacy_and_zip_files(tmp_path, keep):
  torch = pytest.importorskip("torch")
  state = collections.OrderedDict(a=torch.arange(1000.0), b=torch.ones(3, 3).t())
  for zip_format in (True, False):
    path = tmp_path / f"t{zip_format}.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    with pytest.raises(weights.CheckpointError, match=str(path)):
      weights.read_checkpoint(path)


def test_limits_are_named_and_documented():
  for name in ("MAX_DEPTH", "MAX_EXPANSION", "MAX_PICKLE_BYTES", "MAX_PICKLE_OBJECTS"):
    assert isinstance(getattr(_checkpoint, name), int) and name in _checkpoint.read_checkpoint.__doc__


def test_pickle_opcode_limit(tmp_path, monkeypatch):
  monkeypatch.setattr(_checkpoint, "MAX_PICKLE_OBJECTS", 1000)
  path = _torch_zip(tmp_path / "long.pth", b"]" + b"K\x01a" * 1000)
  with pytest.raises(weights.CheckpointError, match="MAX_PICKLE_OBJECTS=1000"):
    weights.read_checkpoint(path)


def test_legacy_file_with_a_storage_larger_than_the_file(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "legacy.pth"
  torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
  data = path.read_bytes()
  # The element count before the storage bytes (last 8 + 16 bytes): claim 2**40 elements.
  head = data[:-24] + struct.pack("<Q", 2**40) + data[-16:]
  path.write_bytes(head)
  with pytest.raises(weights.CheckpointError, match="elements, the pickle says 4"):
    weights.read_checkpoint(path)


# ---------------------------------------------------------------------------
# 5. Newer torch dtypes: read exactly, or refused precisely (not "unsafe").


@pytest.mark.parametrize("name", ["uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                  "float8_e5m2fnuz", "float8_e8m0fnu", "complex32"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_newer_torch_dtypes_are_read_exactly(tmp_path, name, zip_format):
  torch = pytest.importorskip("torch")
  dtype = getattr(torch, name, None)
  if dtype is None or (name == "float8_e8m0fnu" and "float8_e8m0fnu" not in _checkpoint._TORCH_DTYPES):
    pytest.skip(f"torch.{name} or its ml_dtypes type is not available")
  base = torch.tensor([[0.0, 0.5, 1.0], [2.0, 4.0, 8.0]])
  if name.startswith("uint"):
    tensor = torch.tensor([[0, 1, 2], [3, 2**16 - 1, 7]], dtype=torch.int64).to(dtype)
    expected = tensor.to(torch.int64).numpy().astype(name)
  elif name == "complex32":
    with warnings.catch_warnings():  # torch warns that complex32 is experimental
      warnings.simplefilter("ignore", UserWarning)
      tensor = (base + 1j * base.flip(1)).to(torch.complex64).to(dtype)
    expected = tensor.to(torch.complex64).numpy()
  else:
    tensor = base.to(dtype)
    expected = tensor.to(torch.float32).numpy()
  path = tmp_path / "d.pth"
  with warnings.catch_warnings():  # torch warns that complex32 is experimental
    warnings.simplefilter("ignore", UserWarning)
    torch.save({"x": tensor, "xt": tensor.t()}, path, _use_new_zipfile_serialization=zip_format)
  read = weights.read_checkpoint(path)
  for key, want in (("x", expected), ("xt", expected.T)):
    got = read[key]
    assert got.shape == want.shape and got.flags.c_contiguous
    if name.startswith("float8"):
      assert got.dtype.name == name
      got = got.astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_unsupported_torch_dtypes_are_refused_precisely(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "q.pth"
  torch.save({"x": torch.zeros(2, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)}, path)
  with pytest.raises(weights.CheckpointError, match="float4_e2m1fn_x2 .two 4-bit floats packed") as info:
    weights.read_checkpoint(path)
  assert not isinstance(info.value, weights.UnsafeCheckpointError)
  with warnings.catch_warnings():  # deprecated since torch 2.13; older checkpoints still hold such tensors
    warnings.simplefilter("ignore", UserWarning)
    quantized = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
  torch.save({"x": quantized}, path)
  with pytest.raises(weights.CheckpointError, match="quantized tensor") as info:
    weights.read_checkpoint(path)
  assert not isinstance(info.value, weights.UnsafeCheckpointError)


# ---------------------------------------------------------------------------
# 6. Downloads: one writer, per-process temporary files, verified caches, no way to skip the hash.


def _source(tmp_path, payload=b"weights!" * 4096, stem="resnet50"):
  src = tmp_path / "src" / f"{stem}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
  src.parent.mkdir(exist_ok=True)
  src.write_bytes(payload)
  return src


@pytest.fixture
def fresh(monkeypatch):
  """Each test starts as a new process would: nothing verified yet, fast lock polling."""
  monkeypatch.setattr(_pretrained, "_VERIFIED", set(), raising=False)
  monkeypatch.setattr(_pretrained, "_LOCK_POLL_S", 0.01, raising=False)


def test_concurrent_first_calls_download_once_and_agree(fresh, tmp_path, monkeypatch):
  src = _source(tmp_path)
  cache = tmp_path / "cache"
  calls, first_writing, release = [], threading.Event(), threading.Event()
  real = _pretrained._download

  def slow_download(url, path, progress):
    calls.append(path)
    if len(calls) == 1:  # the first writer pauses mid-download until the second caller is waiting
      path.write_bytes(src.read_bytes()[:1000])
      first_writing.set()
      assert release.wait(30)
    return real(url, path, progress)

  monkeypatch.setattr(_pretrained, "_download", slow_download)
  waits = []
  real_lock = _pretrained._files.exclusive_lock

  def counting_lock(path, what="this output"):
    if first_writing.is_set():
      waits.append(path)
      if len(waits) >= 3:
        release.set()
    return real_lock(path, what=what)

  monkeypatch.setattr(_pretrained._files, "exclusive_lock", counting_lock)
  results, errors = [None, None], []

  def call(i):
    try:
      results[i] = weights.pretrained("x", url=src.as_uri(), cache_dir=cache, progress=False)
    except BaseException as e:  # noqa: BLE001
      errors.append(e)

  a = threading.Thread(target=call, args=(0,))
  a.start()
  assert first_writing.wait(30)
  # While the first call writes, the final name does not exist and no shared .partial is used.
  assert not (cache / src.name).exists() and not (cache / f".{src.name}.partial").exists()
  b = threading.Thread(target=call, args=(1,))
  b.start()
  a.join(60)
  b.join(60)
  assert not errors, errors
  assert results[0] == results[1] == cache / src.name
  assert results[0].read_bytes() == src.read_bytes()
  assert len(calls) == 1 and calls[0].parent == cache and calls[0].name.endswith(".download")
  assert sorted(os.listdir(cache)) == [f".{src.name}.lock", src.name]


def test_concurrent_processes_never_expose_a_wrong_file(fresh, tmp_path):
  src = _source(tmp_path, payload=os.urandom(3 * 2**20))
  cache = tmp_path / "cache"
  # The two modules alone, without the package's __init__ (which imports jax: seconds per process).
  package = pathlib.Path(_pretrained.__file__).parent.parent
  code = (
    "import sys, types\n"
    "for name, where in (('adaptgrad_jax', sys.argv[3]), ('adaptgrad_jax.weights', sys.argv[3] + '/weights')):\n"
    "  module = types.ModuleType(name); module.__path__ = [where]; sys.modules[name] = module\n"
    "from adaptgrad_jax.weights import _pretrained as p\n"
    "assert 'jax' not in sys.modules\n"
    "print(p.pretrained('x', url=sys.argv[1], cache_dir=sys.argv[2], progress=False))\n"
  )
  procs = [subprocess.Popen([sys.executable, "-c", code, src.as_uri(), str(cache), str(package)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(3)]
  outputs = [p.communicate(timeout=120) for p in procs]
  assert all(p.returncode == 0 for p in procs), outputs
  assert {out.strip() for out, _ in outputs} == {str(cache / src.name)}
  assert hashlib.sha256((cache / src.name).read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
  assert [n for n in os.listdir(cache) if not n.startswith(".")] == [src.name]
  assert not [n for n in os.listdir(cache) if n.endswith((".download", ".partial"))]


def test_a_tampered_cached_file_is_not_returned(fresh, tmp_path):
  src = _source(tmp_path)
  cache = tmp_path / "cache"
  path = weights.pretrained("x", url=src.as_uri(), cache_dir=cache, progress=False)
  path.write_bytes(b"tampered" + path.read_bytes()[8:])  # same size, another hash
  _pretrained._VERIFIED.clear()  # a new process
  with pytest.warns(UserWarning, match="does not have the expected SHA-256"):
    again = weights.pretrained("x", url=src.as_uri(), cache_dir=cache, progress=False)
  assert again == path and again.read_bytes() == src.read_bytes()


def test_a_cached_file_is_hashed_once_per_process(fresh, tmp_path, monkeypatch):
  src = _source(tmp_path)
  cache = tmp_path / "cache"
  weights.pretrained("x", url=src.as_uri(), cache_dir=cache, progress=False)
  _pretrained._VERIFIED.clear()
  hashed = []
  real = _pretrained._sha256
  monkeypatch.setattr(_pretrained, "_sha256", lambda p: hashed.append(p) or real(p))
  for _ in range(3):
    weights.pretrained("x", url=src.as_uri(), cache_dir=cache, progress=False)
  assert len(hashed) == 1


@pytest.mark.parametrize("sha256", ["", "0676ba61", "g" * 64, b"0" * 64, 0])
def test_sha256_cannot_disable_verification(fresh, tmp_path, sha256):
  src = _source(tmp_path)
  with pytest.raises(ValueError, match="must be the file's full SHA-256 digest, 64 hexadecimal digits"):
    weights.pretrained("x", url=src.as_uri(), cache_dir=tmp_path / "cache", sha256=sha256, progress=False)
  assert not (tmp_path / "cache" / src.name).exists()


def test_full_sha256_is_checked(fresh, tmp_path):
  src = _source(tmp_path)
  good = hashlib.sha256(src.read_bytes()).hexdigest()
  path = weights.pretrained("x", url=src.as_uri(), cache_dir=tmp_path / "c1", sha256=good.upper(), progress=False)
  assert path.read_bytes() == src.read_bytes()
  with pytest.raises(ValueError, match="the file was removed"):
    weights.pretrained("x", url=src.as_uri(), cache_dir=tmp_path / "c2", sha256="0" * 64, progress=False)
  assert [n for n in os.listdir(tmp_path / "c2") if not n.endswith(".lock")] == []


@pytest.mark.parametrize("tail", ["/..", "/.", "/", "/.hidden-0676ba61.pth"])
def test_urls_without_a_plain_file_name_are_refused(fresh, tmp_path, tail):
  url = (tmp_path / "src").as_uri() + tail
  with pytest.raises(ValueError, match="must end in a file name"):
    weights.pretrained("x", url=url, cache_dir=tmp_path / "cache", sha256="0" * 64, progress=False)


def test_interrupted_download_leaves_nothing_under_the_final_name(fresh, tmp_path, monkeypatch):
  src = _source(tmp_path)
  cache = tmp_path / "cache"
  real = _pretrained._download

  def dies_halfway(url, path, progress):
    path.write_bytes(src.read_bytes()[:5000])
    raise KeyboardInterrupt

  monkeypatch.setattr(_pretrained, "_download", dies_halfway)
  with pytest.raises(KeyboardInterrupt):
    weights.pretrained("x", url=src.as_uri(), cache_dir=cache, progress=False)
  assert not (cache / src.name).exists()
  assert (cache / f".{src.name}.partial").stat().st_size == 5000
  monkeypatch.setattr(_pretrained, "_download", real)
  path = weights.pretrained("x", url=src.as_uri(), cache_dir=cache, progress=False)
  assert path.read_bytes() == src.read_bytes()
  assert sorted(os.listdir(cache)) == [f".{src.name}.lock", src.name]


def test_cache_dir_is_the_shared_one(tmp_path, monkeypatch):
  from adaptgrad_jax import _files, datasets

  monkeypatch.setenv("ADAPTGRAD_JAX_CACHE", "~/somewhere")
  assert weights.default_cache_dir() == _files.cache_dir() == datasets.cache_dir() == pathlib.Path.home() / "somewhere"


def test_npz_header_declaring_more_than_the_archive_holds(tmp_path):
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
  path = _zip(tmp_path / "big.npz", {"w.npy": header.getvalue() + bytes(8)})  # 8 TiB declared, 8 bytes held
  with pytest.raises(weights.CheckpointError, match="declares 8796093022208 bytes of data but holds"):
    weights.read_checkpoint(path)


def test_npz_compressed_fortran_and_object_arrays(tmp_path):
  a = np.asfortranarray(np.arange(6.0).reshape(2, 3))
  np.savez_compressed(tmp_path / "c.npz", a=a, b=np.arange(12, dtype=np.int16).reshape(3, 4), e=np.zeros((0, 3)))
  read = weights.read_checkpoint(tmp_path / "c.npz")
  np.testing.assert_array_equal(read["a"], a)
  np.testing.assert_array_equal(read["b"], np.arange(12, dtype=np.int16).reshape(3, 4))
  assert read["e"].shape == (0, 3)
  np.savez(tmp_path / "o.npz", o=np.array([{"x": 1}], dtype=object))
  with pytest.raises(weights.CheckpointError, match="holds Python objects"):
    weights.read_checkpoint(tmp_path / "o.npz")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_size_limit(tmp_path, monkeypatch, zip_format):
  torch = pytest.importorskip("torch")
  path = tmp_path / "m.pth"
  torch.save({f"w{i}": torch.zeros(1) for i in range(50)}, path, _use_new_zipfile_serialization=zip_format)
  monkeypatch.setattr(_checkpoint, "MAX_PICKLE_BYTES", 300)
  with pytest.raises(weights.CheckpointError, match="MAX_PICKLE_BYTES=300"):
    weights.read_checkpoint(path)
  monkeypatch.undo()
  assert len(weights.read_checkpoint(path)) == 50


def test_python2_ordered_dict_with_pairs(tmp_path):
  body = b"ccollections\nOrderedDict\n(((" + _str("w") + _tensor(numel=2, size=(2,)) + b"lltR"
  path = _torch_zip(tmp_path / "py2.pth", body, {"0": np.array([1.5, -2], np.float32).tobytes()})
  np.testing.assert_array_equal(weights.read_checkpoint(path)["w"], [1.5, -2])


def test_distinct_tensors_over_one_storage_cannot_multiply_it(tmp_path):
  n = 2**20  # 2000 distinct full views of 4 MiB would be 8 GiB of copies
  body = _dict([(f"w{i}", _tensor(numel=n, size=(n,))) for i in range(2000)])
  path = _torch_zip(tmp_path / "views.pth", body, {"0": np.arange(n, dtype=np.float32).tobytes()})
  report = _read_limited(path)
  assert report["ok"] and report["names"] == 2000 and report["distinct"] == 2000, report
  assert report["peak_mib"] < 64, report
  state = weights.read_checkpoint(path)
  assert state["w0"].flags.writeable and not state["w1999"].flags.writeable  # copies, then views
  for value in state.values():
    np.testing.assert_array_equal(value[:: n // 7], np.arange(n, dtype=np.float32)[:: n // 7])


def _append_member(path, name, data):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # zipfile warns "Duplicate name"
    with zipfile.ZipFile(path, "a") as archive:
      archive.writestr(name, data)


def test_duplicate_zip_members_are_refused(tmp_path):
  # torch.load reads the first of two members of one name, zipfile the last: two readers, two sets of weights.
  torch = pytest.importorskip("torch")
  path = tmp_path / "dup.pth"
  torch.save({"w": torch.arange(4.0)}, path)
  storage = next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("/data/0"))
  assert weights.read_checkpoint(path)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
  _append_member(path, storage, np.full(4, 7.0, np.float32).tobytes())
  assert torch.load(path, weights_only=True)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]  # the first
  with pytest.raises(weights.CheckpointError, match=rf"two members named '{storage}'.*re-save"):
    weights.read_checkpoint(path)
  # Two data.pkl: the same name twice, or two archives in one file.
  path = _torch_zip(tmp_path / "pkl.pth", _dict([]))
  _append_member(path, "m/data.pkl", _program(_dict([])))
  with pytest.raises(weights.CheckpointError, match="two members named 'm/data.pkl'"):
    weights.read_checkpoint(path)
  path = _torch_zip(tmp_path / "two.pth", _dict([]))
  _append_member(path, "n/data.pkl", _program(_dict([])))
  with pytest.raises(weights.CheckpointError, match=r"2 pickles \(m/data\.pkl, n/data\.pkl\)"):
    weights.read_checkpoint(path)
  # And in an .npz.
  path = tmp_path / "dup.npz"
  np.savez(path, w=np.zeros(2))
  _append_member(path, "w.npy", zipfile.ZipFile(path).read("w.npy"))
  with pytest.raises(weights.CheckpointError, match="two members named 'w.npy'"):
    weights.read_checkpoint(path)
