"""Files that are never half written: atomic writes, exclusive locks, the cache directory.

One helper per idea, shared by the CLI, ``attribute``, ``weights`` and
``datasets``:

* :func:`atomic_write` writes to a temporary file of this process beside the
  target, fsyncs it and renames it over the target, so a reader sees the old
  file or the whole new one, never a part (Ctrl-C, a full disk, a crash).
* :func:`temp_file` creates that temporary file with the mode the user's
  umask gives (``0o666 & ~umask``, e.g. 0644), not ``tempfile.mkstemp``'s
  0600: the renamed file is as shareable as one written with ``open``.
* :func:`open_no_follow` opens a file for appending or writing, refusing a
  symbolic link in its place (``SymlinkError``): an output is never written
  through a link into a file outside it.
* :func:`exclusive_lock` takes an advisory lock (``fcntl.flock``) on a lock
  file, so two processes never work on one output at once; the lock goes
  with the process, so a killed run leaves nothing to clean up.
* :func:`record_writes` collects the paths :func:`atomic_write` writes under
  a folder (from any thread), so a command reports what it really wrote.
* :func:`npy_header` reads a ``.npy`` file's header only (shape, dtype, where
  the data starts, the file's size), so a file is checked before its data is
  read: a small file that declares 10**12 rows is refused, not allocated.
* :func:`cache_dir` is the one cache directory (``$ADAPTGRAD_JAX_CACHE``, else
  ``~/.cache/adaptgrad_jax``), with ``~`` expanded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import secrets
import threading
from typing import Callable, IO, Iterator, NamedTuple, Union

CACHE_ENV = "ADAPTGRAD_JAX_CACHE"

PathLike = Union[str, "os.PathLike[str]"]


class LockedError(RuntimeError):
  """Another process holds the lock on a path."""


class SymlinkError(OSError):
  """A path that adaptgrad-jax would write or delete is a symbolic link."""

  def __init__(self, path: PathLike, action: str, what: str):
    path = os.fspath(path)
    try:
      target = os.readlink(path)
    except OSError:
      target = "?"
    super().__init__(
        errno.ELOOP, f"a symbolic link (to {target}): adaptgrad-jax never {action} through links in {what};"
        " remove the link (its target is left alone) or choose another output", path)

  def __str__(self) -> str:
    return f"{self.filename} is {self.strerror}"


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_TEMP_TRIES = 100


def temp_file(directory: PathLike, *, prefix: str, suffix: str) -> tuple[int, str]:
  """A new, empty file ``<prefix><8 random hex digits><suffix>`` in ``directory``, open for writing.

  As ``tempfile.mkstemp`` (created exclusively, never a link), but with the
  mode ``0o666`` masked by the process's umask, as ``open(path, "w")`` gives:
  a file renamed from it is readable by whoever the user's umask allows
  (umask 022: 0644; umask 077: 0600).

  Returns:
    ``(fd, path)``: an OS-level descriptor (close it, or wrap it with
    ``os.fdopen``) and the file's path.

  Example:
    >>> import os, tempfile
    >>> old = os.umask(0o022)
    >>> fd, path = temp_file(tempfile.mkdtemp(), prefix=".x.", suffix=".tmp")
    >>> os.close(fd); _ = os.umask(old)
    >>> oct(os.stat(path).st_mode & 0o777)
    '0o644'
  """
  directory = os.fspath(directory)
  flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
  for _ in range(_TEMP_TRIES):
    path = os.path.join(directory, f"{prefix}{secrets.token_hex(4)}{suffix}")
    try:
      return os.open(path, flags, 0o666), path
    except FileExistsError:
      continue
  raise FileExistsError(errno.EEXIST, f"no free temporary name after {_TEMP_TRIES} tries",
                        os.path.join(directory, f"{prefix}*{suffix}"))


def open_no_follow(path: PathLike, flags: int, *, what: str = "this output") -> int:
  """``os.open(path, flags | O_CREAT, 0o666)`` that refuses a symbolic link at ``path``.

  An output's own files (a journal appended to, a lock file) are never
  opened through a link, so a link placed in an output folder cannot make
  adaptgrad-jax write into its target.

  Raises:
    SymlinkError: ``path`` is a symbolic link, naming it, its target and
      ``what`` it belongs to.
  """
  path = os.fspath(path)
  try:
    return os.open(path, flags | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
  except OSError:
    if os.path.islink(path):
      raise SymlinkError(path, "writes", what) from None
    raise


def refuse_symlink(path: PathLike, *, what: str = "this output") -> None:
  """Raises :class:`SymlinkError` if ``path`` is a symbolic link (before deleting or writing into it)."""
  if os.path.islink(os.fspath(path)):
    raise SymlinkError(path, "deletes or writes", what)


# Folders whose written files are being counted: [(root, set of paths)], shared by all threads.
_RECORDERS: list[tuple[str, set]] = []
_RECORDERS_LOCK = threading.Lock()


@contextlib.contextmanager
def record_writes(root: PathLike) -> Iterator[set]:
  """Collects the paths :func:`atomic_write` renames into place under ``root`` meanwhile (any thread).

  Example:
    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with record_writes(root) as written:
    ...   _ = atomic_write(root / "a.txt", lambda f: f.write(b"a"))
    ...   _ = atomic_write(root / "a.txt", lambda f: f.write(b"b"))
    >>> sorted(p.name for p in written)
    ['a.txt']
  """
  entry = (os.path.abspath(os.fspath(root)), set())
  with _RECORDERS_LOCK:
    _RECORDERS.append(entry)
  try:
    yield entry[1]
  finally:
    with _RECORDERS_LOCK:
      _RECORDERS.remove(entry)


def note_written(path: PathLike) -> None:
  """Counts ``path`` as written for :func:`record_writes` (a file appended to; ``atomic_write`` calls it itself)."""
  if not _RECORDERS:
    return
  full = os.path.abspath(path)
  with _RECORDERS_LOCK:
    for root, paths in _RECORDERS:
      if full == root or full.startswith(root.rstrip(os.sep) + os.sep):
        paths.add(pathlib.Path(full))


def cache_dir() -> pathlib.Path:
  """``$ADAPTGRAD_JAX_CACHE`` (``~`` expanded), else ``~/.cache/adaptgrad_jax``."""
  root = os.environ.get(CACHE_ENV)
  return pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "adaptgrad_jax"


def fsync_dir(path: PathLike) -> None:
  """fsyncs a directory so a rename in it is durable (a no-op where unsupported)."""
  try:
    fd = os.open(os.fspath(path), os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object], *,
                 overwrite: bool = True) -> pathlib.Path:
  """Writes ``path`` all at once: ``write(f)`` fills a temporary file that is renamed over it.

  Args:
    path: the final path; its directory must exist.
    write: called with the temporary file opened for binary writing.
    overwrite: if False, refuse (``FileExistsError``) when ``path`` exists.

  The file gets the mode the umask gives (see :func:`temp_file`). A
  symbolic link at ``path`` is replaced by the file; its target is never
  written.

  Returns:
    ``path`` as a ``pathlib.Path``.

  Raises:
    OSError: from the writer, the disk or the rename, with ``path`` named;
      the temporary file is removed and ``path`` is unchanged.

  Example:
    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> _ = atomic_write(target, lambda f: f.write(b"all or nothing"))
    >>> target.read_bytes()
    b'all or nothing'
  """
  path = pathlib.Path(path)
  if not overwrite and path.exists():
    raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", str(path))
  fd, tmp = temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    if not overwrite:
      os.link(tmp, path)  # fails if path appeared meanwhile
      os.unlink(tmp)
    else:
      os.replace(tmp, path)
  except BaseException as err:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    if isinstance(err, OSError) and err.filename is None:
      raise type(err)(err.errno, err.strerror, str(path)) from err
    raise
  fsync_dir(path.parent)
  note_written(path)
  return path


class NpyHeader(NamedTuple):
  """What a ``.npy`` header declares, and how many data bytes the file really holds."""

  shape: tuple[int, ...]
  fortran_order: bool
  dtype: "object"  # numpy.dtype
  data_bytes: int  # the file's size minus the header's
  declared_bytes: int  # prod(shape) * itemsize

  @property
  def consistent(self) -> bool:
    """Whether the file holds exactly the data its header declares (and no Python objects)."""
    return not self.dtype.hasobject and self.data_bytes == self.declared_bytes


def npy_header(path: PathLike) -> NpyHeader:
  """Reads the header of the ``.npy`` file at ``path`` (a few hundred bytes), not its data.

  Raises:
    ValueError: not a ``.npy`` file (bad magic, version or header), naming
      ``path``.
    OSError: unreadable.

  Example:
    >>> import numpy as np, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.npy"
    >>> np.save(path, np.zeros((2, 3), np.float32))
    >>> h = npy_header(path)
    >>> h.shape, str(h.dtype), h.consistent
    ((2, 3), 'float32', True)
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  fmt = np.lib.format
  with open(path, "rb") as f:
    try:
      version = fmt.read_magic(f)
      if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
      elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(f)
      else:
        shape, fortran, dtype = fmt._read_array_header(f, version)  # pylint: disable=protected-access  # 3.0
    except (ValueError, SyntaxError, TypeError, EOFError, AttributeError) as err:
      raise ValueError(f"{os.fspath(path)} is not a readable .npy file ({err})") from None
    offset = f.tell()
    size = os.fstat(f.fileno()).st_size
  count = 1
  for n in shape:
    count *= int(n)
  return NpyHeader(tuple(int(n) for n in shape), bool(fortran), dtype, size - offset, count * dtype.itemsize)


@contextlib.contextmanager
def exclusive_lock(path: PathLike, *, what: str = "this output") -> Iterator[pathlib.Path]:
  """Holds an exclusive, non-blocking advisory lock on ``path`` (created if missing).

  The lock file is never opened through a symbolic link
  (:class:`SymlinkError`). If the file is replaced or removed while this
  process waits for the lock (a finished run cleaning up), the new file is
  locked instead, so two holders never lock two different files.

  Raises:
    LockedError: if another process holds it, naming ``path`` and ``what``.

  Example:
    >>> import pathlib, tempfile
    >>> lock = pathlib.Path(tempfile.mkdtemp()) / ".lock"
    >>> with exclusive_lock(lock):
    ...   pass
  """
  import fcntl  # POSIX; imported here so the module imports everywhere

  path = pathlib.Path(path)
  for _ in range(_TEMP_TRIES):
    fd = open_no_follow(path, os.O_RDWR, what=what)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
      os.close(fd)
      if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise LockedError(
            f"{what} is in use by another process (lock held on {path}); wait"
            " for it to finish, or choose another output."
        ) from None
      raise
    try:
      same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except OSError:  # removed meanwhile
      same = False
    if same:
      break
    os.close(fd)  # locked a file that another holder removed on leaving: lock the current one
  else:  # pragma: no cover - the lock file replaced 100 times in a row
    raise LockedError(f"{what}: the lock file {path} keeps being replaced; try again")
  try:
    yield path
  finally:
    os.close(fd)  # releases the lock
