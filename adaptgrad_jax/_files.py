"""Files that are never half written: atomic writes, exclusive locks, the cache directory.

One helper per idea, shared by the CLI, ``attribute``, ``weights`` and
``datasets``:

* :func:`atomic_write` writes to a temporary file of this process beside the
  target, fsyncs it and renames it over the target, so a reader sees the old
  file or the whole new one, never a part (Ctrl-C, a full disk, a crash).
* :func:`exclusive_lock` takes an advisory lock (``fcntl.flock``) on a lock
  file, so two processes never work on one output at once; the lock goes
  with the process, so a killed run leaves nothing to clean up.
* :func:`cache_dir` is the one cache directory (``$ADAPTGRAD_JAX_CACHE``, else
  ``~/.cache/adaptgrad_jax``), with ``~`` expanded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import tempfile
from typing import Callable, IO, Iterator, Union

CACHE_ENV = "ADAPTGRAD_JAX_CACHE"

PathLike = Union[str, "os.PathLike[str]"]


class LockedError(RuntimeError):
  """Another process holds the lock on a path."""


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
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
  return path


@contextlib.contextmanager
def exclusive_lock(path: PathLike, *, what: str = "this output") -> Iterator[pathlib.Path]:
  """Holds an exclusive, non-blocking advisory lock on ``path`` (created if missing).

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
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
      if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise LockedError(
            f"{what} is in use by another process (lock held on {path}); wait"
            " for it to finish, or choose another output."
        ) from None
      raise
    yield path
  finally:
    os.close(fd)  # releases the lock
