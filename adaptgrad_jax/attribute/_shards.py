"""On-disk format of attribution runs: shards, manifest, journal, resume, reading.

An output directory holds

* ``shard-<start>-<stop>.npy``: the maps of examples ``start <= i < stop``
  (global example indices, zero-padded to 12 digits), one ``.npy`` per batch,
  written to a temporary file, fsync'ed and atomically renamed;
* ``shards.jsonl``: a journal with one JSON line per finished shard (file,
  start, stop, bytes, sha256, and ``data_sha256``: a fingerprint of the
  shard's inputs and targets), appended after the rename, so a crash loses at
  most the shard being written; each run (and each resume) first appends a
  ``{"settings": ...}`` line, from which a lost manifest is rebuilt;
* ``manifest.json``: the settings of the run (format, explanation id and
  fingerprint, key, shapes, dtypes, batch size, example range) and
  ``complete``; rewritten atomically at the start and, with the full shard
  list, at the end;
* ``.lock``: locked (``fcntl.flock``) by the process writing the directory,
  so a second process is refused instead of deleting the first's temporary
  files.

A multi-host run writes one such directory per process (``process-00000/``,
...) and a merged top-level ``manifest.json`` whose shard files are relative
paths into them. :func:`load_attributions` reads either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from adaptgrad_jax import _files
from adaptgrad_jax._files import atomic_write

FORMAT = "adaptgrad-jax/attributions"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
JOURNAL = "shards.jsonl"
LOCK = ".lock"
_TMP_PREFIX = ".tmp-"  # Temporary files of older versions.
# Temporary files of atomic_write: "." + final name + random part + ".tmp".
_TMP_PATTERNS = (f"{_TMP_PREFIX}*", ".shard-*.tmp", f".{MANIFEST}.*.tmp")

# Settings that must agree for a run to resume (or merge) an existing output.
SETTINGS_KEYS = (
    "explain_id", "explain_settings", "key", "example_shape", "input_dtype", "map_shape",
    "map_dtype", "batch_size", "num_examples", "example_range", "samples",
    "process_count",
)


def shard_name(start: int, stop: int) -> str:
  return f"shard-{start:012d}-{stop:012d}.npy"


# ----------------------------------------------------------------------------
# Atomic writes.


class _HashingWriter:
  """A file wrapper that hashes and counts everything written through it."""

  def __init__(self, f):
    self._f = f
    self.sha256 = hashlib.sha256()
    self.nbytes = 0

  def write(self, b) -> int:
    b = memoryview(b).cast("B")
    self.sha256.update(b)
    self.nbytes += len(b)
    return self._f.write(b)

  def flush(self):
    self._f.flush()


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  text = json.dumps(obj, indent=1) + "\n"
  atomic_write(path, lambda f: f.write(text.encode()))


def data_sha256(parts: Sequence[np.ndarray]) -> str:
  """A fingerprint of one batch of examples: sha256 of each array's dtype, shape and bytes.

  Recorded with each shard (``data_sha256``), so a resume with other data of
  the same shape is noticed, never served the old maps.
  """
  h = hashlib.sha256()
  for p in parts:
    p = np.ascontiguousarray(p)
    h.update(f"{p.dtype.str}{list(p.shape)};".encode())
    h.update(p.reshape(-1).view(np.uint8))
  return h.hexdigest()


def write_shard(directory: pathlib.Path, start: int, stop: int,
                maps: np.ndarray, data: str | None = None) -> dict[str, Any]:
  """Writes one shard atomically and returns its journal entry (with `data`, its inputs' fingerprint)."""
  name = shard_name(start, stop)
  writers = []

  def write(f):
    writers.append(_HashingWriter(f))
    np.lib.format.write_array(writers[-1], np.ascontiguousarray(maps),
                              allow_pickle=False)

  atomic_write(directory / name, write)
  entry = {"file": name, "start": int(start), "stop": int(stop),
           "bytes": writers[-1].nbytes, "sha256": writers[-1].sha256.hexdigest()}
  if data is not None:
    entry["data_sha256"] = data
  return entry


def append_journal(directory: pathlib.Path, entry: Mapping[str, Any]) -> None:
  """Appends one line (a shard entry or a ``{"settings": ...}`` record), fsync'ed.

  Never through a symbolic link: a linked ``shards.jsonl`` is refused
  (``_files.SymlinkError``) and its target left alone.
  """
  line = (json.dumps(entry, sort_keys=True) + "\n").encode()
  fd = _files.open_no_follow(directory / JOURNAL, os.O_WRONLY | os.O_APPEND,
                             what=f"the attribution output {directory}")
  with os.fdopen(fd, "ab") as f:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())
  _files.note_written(directory / JOURNAL)


_MAX_LINE = 1 << 24  # A journal line (a shard entry, a run's settings) is far shorter; longer ones are garbage.


def _journal_lines(directory: pathlib.Path) -> Iterator[Any]:
  """The journal's lines as JSON values; a truncated, garbled or non-UTF-8 line (a crash mid-append) is skipped.

  Lines are read in bounded pieces: a damaged journal without newlines costs
  no more memory than `_MAX_LINE` bytes.
  """
  path = directory / JOURNAL
  if not path.exists():
    return
  with open(path, "rb") as f:
    while raw := f.readline(_MAX_LINE):
      if not raw.endswith(b"\n") and len(raw) == _MAX_LINE:  # too long: skip to its end
        while (rest := f.readline(_MAX_LINE)) and not rest.endswith(b"\n"):
          pass
        continue
      try:
        yield json.loads(raw.decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        continue


def read_journal(directory: pathlib.Path) -> list[dict[str, Any]]:
  """Journal entries; a truncated or garbled line (a crash mid-append) is skipped."""
  return [entry for entry in _journal_lines(directory) if valid_entry(entry)]


def valid_entry(entry: Any) -> bool:
  """Whether `entry` is a well-formed shard entry of one output directory.

  Its file must be the shard's own name (no path: a damaged or hostile
  journal cannot point outside the directory).
  """
  if not isinstance(entry, dict) or not {"file", "start", "stop", "sha256",
                                         "bytes"} <= entry.keys():
    return False
  start, stop, size = entry["start"], entry["stop"], entry["bytes"]
  if not all(isinstance(v, int) and not isinstance(v, bool)
             for v in (start, stop, size)):
    return False
  sha = entry["sha256"]
  data = entry.get("data_sha256")
  if data is not None and not (isinstance(data, str) and len(data) == 64 and
                               all(c in "0123456789abcdef" for c in data)):
    return False
  return (0 <= start < stop and size >= 0 and
          entry["file"] == shard_name(start, stop) and isinstance(sha, str) and
          len(sha) == 64 and all(c in "0123456789abcdef" for c in sha))


def read_journal_settings(directory: pathlib.Path) -> dict[str, Any] | None:
  """The settings of the last run journaled in `directory` (None if none are)."""
  found = None
  for entry in _journal_lines(directory):
    if (isinstance(entry, dict) and isinstance(entry.get("settings"), dict)
        and entry["settings"].get("format") == FORMAT):
      found = entry["settings"]
  return found


def file_sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def header_problem(path: pathlib.Path, shape: Sequence[int],
                   dtype: str | None) -> str | None:
  """Why the ``.npy`` file at `path` does not hold `dtype` `shape` (None if it does).

  Reads the header only (a few hundred bytes): its magic, dtype, shape and
  order, and checks the file's size against them, so a shard that the
  manifest describes one way and whose header says another is never served.
  """
  name = path.name
  try:
    header = _files.npy_header(path)
  except (OSError, ValueError) as e:
    return f"{name} has no readable .npy header ({e})"
  got_dtype = header.dtype
  want = tuple(int(v) for v in shape)
  if dtype is not None and _stored_as_void(dtype, got_dtype):
    got_dtype = np.dtype(dtype)
  if header.shape != want or (dtype is not None and str(got_dtype) != dtype) or header.fortran_order:
    order = " (Fortran order)" if header.fortran_order else ""
    return (f"{name} holds {got_dtype}{list(header.shape)}{order} by its header, expected "
            f"{dtype}{list(want)}")
  if not header.consistent:
    return (f"{name} holds {header.data_bytes} bytes of data, its header declares "
            f"{header.declared_bytes}")
  return None


def _stored_as_void(dtype: str, stored: np.dtype) -> bool:
  """Whether `stored` is how ``.npy`` headers record `dtype`: ml_dtypes' (bfloat16, float8_*) become void ``V<n>``."""
  if stored.kind != "V" or stored.names is not None:
    return False
  try:
    wanted = np.dtype(dtype)
  except TypeError:
    return False
  return wanted.kind == "V" and wanted.itemsize == stored.itemsize and wanted.names is None and str(wanted) == dtype


def shard_problem(directory: pathlib.Path, entry: Mapping[str, Any],
                  map_shape: Sequence[int] | None = None,
                  map_dtype: str | None = None) -> str | None:
  """Returns why a journaled shard is unusable, or None if it is intact."""
  path = directory / entry["file"]
  if not path.is_file():
    return f"{entry['file']} is missing"
  size = path.stat().st_size
  if size != entry["bytes"]:
    return f"{entry['file']} has {size} bytes, the journal says {entry['bytes']}"
  if map_shape is not None:
    problem = header_problem(path, (entry["stop"] - entry["start"], *map_shape), map_dtype)
    if problem:
      return problem
  if file_sha256(path) != entry["sha256"]:
    return f"{entry['file']} fails its sha256 check"
  return None


def clean_temporaries(directory: pathlib.Path) -> None:
  """Deletes temporary files of crashed runs; call it only with the lock held."""
  for pattern in _TMP_PATTERNS:
    for p in directory.glob(pattern):
      p.unlink(missing_ok=True)


def _process_dirs(directory: pathlib.Path) -> list[pathlib.Path]:
  """The ``process-*`` folders of a multi-host output; a symbolic link among them is refused."""
  subs = sorted(directory.glob("process-*"))
  for sub in subs:
    _files.refuse_symlink(sub, what=f"the attribution output {directory}")
  return [sub for sub in subs if sub.is_dir()]


def remove_outputs(directory: pathlib.Path) -> None:
  """Deletes the files this module writes (and nothing else) under `directory`.

  Links are never followed: a linked file (``shard-*.npy``, the journal, the
  manifest) is removed as a link, its target left alone, and a linked
  ``process-*`` folder is refused (``_files.SymlinkError``) before anything
  is deleted.
  """
  subs = _process_dirs(directory)
  for sub in subs:  # every level is checked before anything is deleted
    _process_dirs(sub)
  for pattern in ("shard-*.npy", JOURNAL, MANIFEST, *_TMP_PATTERNS):
    for p in directory.glob(pattern):
      p.unlink()  # a link: the link itself
  for sub in subs:
    remove_outputs(sub)
    try:
      sub.rmdir()
    except OSError:
      pass


class DamagedManifestError(ValueError):
  """``manifest.json`` exists but is not valid JSON (truncated, overwritten)."""


def read_manifest(directory: pathlib.Path) -> dict[str, Any] | None:
  """The manifest in `directory`, or None if there is none.

  Raises:
    DamagedManifestError: it is not a JSON object.
    ValueError: it is JSON but not an attribution manifest.
  """
  path = directory / MANIFEST
  if not path.exists():
    return None
  try:
    manifest = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
    raise DamagedManifestError(
        f"{path} is not valid JSON ({e}); it is not an adaptgrad-jax output or "
        "it was damaged. Pass overwrite=True to start afresh.") from e
  if not isinstance(manifest, dict):
    raise DamagedManifestError(
        f"{path} holds a JSON {type(manifest).__name__}, not a manifest; it was "
        "damaged. Pass overwrite=True to start afresh.")
  if manifest.get("format") != FORMAT:
    raise ValueError(
        f"{path} is not an adaptgrad-jax attribution manifest (format="
        f"{manifest.get('format')!r}); choose another `out` directory.")
  return manifest


def settings_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """Human-readable differences between the settings of two runs."""
  diffs = []
  for k in SETTINGS_KEYS:
    a, b = old.get(k), new.get(k)
    # num_examples may be unknown (None) for an iterator until it is exhausted.
    if k == "num_examples" and (a is None or b is None):
      continue
    ranges = all(isinstance(r, list) and len(r) == 2 for r in (a, b))
    if k == "example_range" and (a is None or b is None or (
        ranges and (a[1] is None or b[1] is None))):
      if ranges and a[0] != b[0]:
        diffs.append(f"{k}: existing {a}, requested {b}")
      continue
    if a != b:
      diffs.append(f"{k}: existing {a!r}, requested {b!r}")
  return diffs


# ----------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass(frozen=True)
class AttributionResult:
  """Attribution maps of a dataset, in memory or lazily read from shards.

  Index it like an array (``result[i]``, ``result[a:b]``), take ``len``, or
  call ``np.asarray(result)`` to load everything. Shards on disk are opened
  as read-only memory maps only when indexed, so a result larger than memory
  can be read piece by piece with :meth:`iter_shards`.

  Attributes:
    shape: ``(num_examples, *map_shape)``.
    dtype: dtype of the maps.
    path: the output directory, or None for an in-memory result.
    manifest: the run's manifest (settings and shard list); for an in-memory
      result the settings only.
    shards: ``(start, stop, file)`` per shard, sorted; files are absolute.
  """

  shape: tuple[int, ...]
  dtype: np.dtype
  path: pathlib.Path | None = None
  manifest: Mapping[str, Any] = dataclasses.field(default_factory=dict,
                                                  repr=False)
  shards: tuple[tuple[int, int, pathlib.Path], ...] = dataclasses.field(
      default=(), repr=False)
  maps: np.ndarray | None = dataclasses.field(default=None, repr=False)

  def __len__(self) -> int:
    return self.shape[0]

  def _open(self, file: pathlib.Path) -> np.ndarray:
    arr = np.load(file, mmap_mode="r")
    if arr.dtype != self.dtype and _stored_as_void(str(self.dtype), arr.dtype):
      arr = arr.view(self.dtype)  # bfloat16 & co., stored as V2 by np.save
    return arr

  def iter_shards(self) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yields ``(start, stop, maps)`` per shard, maps memory-mapped read-only."""
    if self.maps is not None:
      yield 0, len(self), self.maps
      return
    for start, stop, file in self.shards:
      yield start, stop, self._open(file)

  def __getitem__(self, idx) -> np.ndarray:
    if self.maps is not None:
      return self.maps[idx]
    n = len(self)
    if isinstance(idx, (int, np.integer)):
      i = int(idx) + n if idx < 0 else int(idx)
      if not 0 <= i < n:
        raise IndexError(f"index {idx} is out of range for {n} examples")
      for start, stop, file in self.shards:
        if start <= i < stop:
          return np.asarray(self._open(file)[i - start])
    if isinstance(idx, slice):
      lo, hi, step = idx.indices(n)
      if step != 1:
        return self[lo:hi][::step]
      parts = [np.asarray(self._open(f)[max(lo, s) - s:min(hi, e) - s])
               for s, e, f in self.shards if s < hi and e > lo]
      if not parts:
        return np.empty((0, *self.shape[1:]), self.dtype)
      return np.concatenate(parts)
    # Fancy indexing: load what is needed, index by index.
    idx = np.asarray(idx)
    if idx.dtype == bool:
      idx = np.flatnonzero(idx)
    return np.stack([self[int(i)] for i in idx.ravel()]).reshape(
        *idx.shape, *self.shape[1:])

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    out = self.maps if self.maps is not None else self[0:len(self)]
    return np.asarray(out, dtype=dtype)


def _entries_for(manifest: Mapping[str, Any], directory: pathlib.Path
                 ) -> list[tuple[int, int, pathlib.Path]]:
  """The manifest's shards as (start, stop, path), checked to lie in `directory`."""
  where = directory / MANIFEST
  shards = manifest.get("shards")
  rng = manifest.get("example_range")
  if not isinstance(shards, list) or not (
      isinstance(rng, list) and len(rng) == 2 and
      all(isinstance(v, int) and not isinstance(v, bool) for v in rng)):
    raise ValueError(f"{where} is damaged (its shards or example_range are "
                     "malformed); call attribute() again with the same "
                     "arguments to rebuild it from its journal")
  entries = []
  for s in shards:
    name = s.get("file") if isinstance(s, dict) else None
    parts = pathlib.PurePosixPath(name).parts if isinstance(name, str) else ()
    if (not parts or parts[0] == "/" or ".." in parts or len(parts) > 2 or
        not parts[-1].startswith("shard-") or
        not all(isinstance(s.get(k), int) for k in ("start", "stop"))):
      raise ValueError(f"{where} lists a malformed shard entry {s!r} (a shard "
                       "file inside the output, with integer start and stop); "
                       "the manifest is damaged: call attribute() again with "
                       "the same arguments to rebuild it from its journal")
    entries.append((s["start"], s["stop"], directory.joinpath(*parts)))
  return sorted(entries)


def load_attributions(out: str | os.PathLike, *, verify: bool = False
                      ) -> AttributionResult:
  """Opens the output of a finished :func:`attribute` run lazily.

  Args:
    out: the output directory passed to ``attribute`` (or the top directory of
      an ``attribute_multihost`` run, after its merge step).
    verify: also check every shard's size and sha256 against the manifest
      (reads all data once). Without it each shard's ``.npy`` header (dtype,
      shape, order) and file size are still checked against the manifest:
      cheap, and a shard that contradicts its manifest is never served.

  Returns:
    An :class:`AttributionResult` whose indexing reads memory-mapped shards.

  Raises:
    FileNotFoundError: `out` has no ``manifest.json``.
    ValueError: the run is not complete (resume it by calling ``attribute``
      again with the same arguments), shards do not tile the example range,
      a shard's header contradicts the manifest, or ``verify=True`` finds a
      damaged shard.
  """
  directory = pathlib.Path(out)
  manifest = read_manifest(directory)
  if manifest is None:
    procs = sorted(directory.glob("process-*/" + MANIFEST))
    hint = (" It holds per-process outputs: run merge_process_outputs(out) "
            "first." if procs else "")
    if read_journal_settings(directory) is not None:
      hint = (f" Its {JOURNAL} records a run: call attribute() again with the "
              "same arguments to rebuild the manifest (intact shards are "
              "verified, not recomputed).")
    raise FileNotFoundError(
        f"out={str(out)!r} has no {MANIFEST}; it is not the output of a "
        f"finished attribute() run.{hint}")
  if not manifest.get("complete"):
    raise ValueError(
        f"The attribution run in {str(out)!r} is not complete; call attribute() "
        "again with the same arguments to resume it.")
  shards = _entries_for(manifest, directory)
  lo, hi = manifest["example_range"]
  pos = lo
  for start, stop, file in shards:
    if start != pos:
      raise ValueError(f"{directory / MANIFEST}: shards do not tile "
                       f"[{lo}, {hi}): gap or overlap at example {pos}")
    pos = stop
  if pos != hi:
    raise ValueError(f"{directory / MANIFEST}: shards end at {pos}, not {hi}")
  map_shape, map_dtype = manifest.get("map_shape"), manifest.get("map_dtype")
  if not (isinstance(map_shape, list) and all(
      isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in map_shape)
          and isinstance(map_dtype, str)):
    raise ValueError(f"{directory / MANIFEST} is damaged (map_shape={map_shape!r}, "
                     f"map_dtype={map_dtype!r}); call attribute() again with the "
                     "same arguments to rebuild it from its journal")
  for start, stop, file in shards:
    problem = (f"{file.name} is missing" if not file.is_file() else
               header_problem(file, (stop - start, *map_shape), map_dtype))
    if problem:
      raise ValueError(f"Damaged output in {str(out)!r}: {problem} (the "
                       f"manifest says {map_dtype}{[stop - start, *map_shape]}). "
                       "Call attribute() again with the same arguments to redo "
                       "it.")
  if verify:
    for s in manifest["shards"]:
      problem = shard_problem(directory, s, manifest.get("map_shape"),
                              manifest.get("map_dtype"))
      if problem:
        raise ValueError(f"Damaged output in {str(out)!r}: {problem}. Call "
                         "attribute() again with the same arguments to redo it.")
  return AttributionResult(
      shape=(hi - lo, *manifest["map_shape"]),
      dtype=np.dtype(manifest["map_dtype"]),
      path=directory, manifest=manifest,
      shards=tuple((s - lo, e - lo, f) for s, e, f in shards))
