"""Opening an attribution output directory: lock, refuse, overwrite, resume or rebuild.

:func:`attribute` calls these in order, between describing the run and
computing it: :func:`output_directory` creates `out`; :func:`lock_output`
holds ``out/.lock`` for the whole run, so a second process is refused before
it reads or deletes anything; :func:`open_output` decides what happens to an
existing output: refused (other settings or another explanation, see
:func:`check_same_run`), replaced (`overwrite`), or resumed with its intact
shards (:func:`intact_shards`), the manifest rebuilt from the journal if it
was lost (:func:`previous_run`).
"""

from __future__ import annotations

import contextlib
import errno
import pathlib
import warnings
from typing import Any, Callable, Mapping

from adaptgrad_jax import _files
from adaptgrad_jax._files import exclusive_lock
from adaptgrad_jax.attribute import _shards



def output_directory(out) -> pathlib.Path | None:
  """`out` as an existing directory (created if missing), or None."""
  if out is None:
    return None
  if isinstance(out, str) and not out.strip():
    raise ValueError(f"out={out!r} is empty; pass a directory path, or "
                     "out=None to keep the maps in memory")
  directory = pathlib.Path(out)
  if directory.exists() and not directory.is_dir():
    raise FileExistsError(f"out={str(out)!r} is a file; pass a directory "
                          "path (it is created if missing)")
  directory.mkdir(parents=True, exist_ok=True)
  return directory


def lock_output(directory: pathlib.Path | None, out
                 ) -> contextlib.AbstractContextManager:
  """Holds ``out/.lock`` (``LockedError`` if another process does).

  On a filesystem without ``flock`` (some network mounts) it warns and goes on
  unlocked: one process per `out` is then the caller's duty.
  """
  stack = contextlib.ExitStack()
  if directory is None:
    return stack
  try:
    stack.enter_context(exclusive_lock(directory / _shards.LOCK,
                                       what=f"out={str(out)!r}"))
  except OSError as e:
    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
      raise
    warnings.warn(f"out={str(out)!r}: this filesystem cannot lock "
                  f"{directory / _shards.LOCK} ({e.strerror}); make sure no "
                  "other process writes this directory", stacklevel=4)
  return stack


def remove_output(directory: pathlib.Path) -> None:
  """Deletes an output's own files (shards, journal, manifest, lock) under its lock, then the folder if empty.

  Nothing else in `directory` is touched, nothing is followed through a
  symbolic link (a linked `directory` or ``process-*`` folder is refused with
  ``_files.SymlinkError``), and another process writing it is refused
  (``LockedError``).
  """
  _files.refuse_symlink(directory, what=f"out={str(directory)!r}")
  if not directory.is_dir():
    return
  lock = directory / _shards.LOCK
  with exclusive_lock(lock, what=f"out={str(directory)!r}"):
    _shards.remove_outputs(directory)
    lock.unlink(missing_ok=True)  # still held: a waiting process locks a fresh one
  with contextlib.suppress(OSError):
    directory.rmdir()  # only if nothing else is left


def open_output(directory: pathlib.Path, run: dict[str, Any], *,
                 explain_id_given: bool, overwrite: bool, resume: bool,
                 check_data: Callable[[dict], Any] | None = None
                 ) -> dict[tuple[int, int], dict[str, Any]]:
  """Prepares `directory` (its lock held) and returns its intact shards.

  Refuses an existing output unless `resume` or `overwrite`, and one of
  another run; ``check_data(done)`` may refuse intact shards computed from
  other data. Only then (nothing is written before a refusal) removes
  crashed runs' temporary files, writes the unfinished manifest and journals
  the run's settings.
  """
  old = None
  if overwrite:
    _shards.remove_outputs(directory)
  else:
    old = previous_run(directory)
  done = {}
  if old is not None:
    if not resume:
      raise FileExistsError(
          f"out={str(directory)!r} already holds attributions; pass resume=True "
          "to continue or re-check them, or overwrite=True to replace them")
    check_same_run(directory, old, run, explain_id_given)
    done = intact_shards(directory, old, run)
    if check_data is not None:
      check_data(done)
  elif not explain_id_given and run["explain_fingerprint"] is None:
    warnings.warn(
        f"attribute(): explain_fn cannot be fingerprinted "
        f"({run['explain_fingerprint_unknown']}), so this run in "
        f"{str(directory)!r} can only be resumed with an explain_id; pass "
        "explain_id= naming the explanation, its hyper-parameters and "
        "weights", stacklevel=4)
  _shards.clean_temporaries(directory)  # Safe: no other process holds the lock.
  _shards.write_json_atomic(directory / _shards.MANIFEST,
                            {**run, "complete": False, "shards": []})
  _shards.append_journal(directory, {"settings": run})
  return done


def previous_run(directory: pathlib.Path) -> dict[str, Any] | None:
  """The manifest of the output in `directory`, None if there is none.

  A missing or damaged manifest is rebuilt from the settings the journal
  recorded (its shards are read from the journal and verified later).
  """
  try:
    manifest = _shards.read_manifest(directory)
  except _shards.DamagedManifestError as e:
    manifest, damaged = None, e
  else:
    damaged = None
  if manifest is not None:
    return manifest
  journaled = _shards.read_journal_settings(directory)
  if journaled is not None:
    warnings.warn(
        f"{directory / _shards.MANIFEST} is "
        f"{'damaged' if damaged else 'missing'}; rebuilding it from "
        f"{_shards.JOURNAL} and the shards it lists (each checked against its "
        "sha256)", stacklevel=5)
    return {**journaled, "shards": []}
  ours = [p.name for p in directory.iterdir()
          if p.name == _shards.JOURNAL or p.name.startswith("shard-")]
  if damaged is not None or ours:
    what = "a damaged" if damaged is not None else "no"
    raise FileExistsError(
        f"out={str(directory)!r} holds {what} {_shards.MANIFEST} and no "
        f"journal record of the run's settings ({_shards.JOURNAL} is missing "
        "or was written by an older version), so its shards cannot be checked "
        f"against this run. Restore {_shards.MANIFEST} from a backup, or pass "
        "overwrite=True to recompute (it deletes only this function's files), "
        "or choose another `out`")
  if any(not p.name.startswith(".") for p in directory.iterdir()):
    raise FileExistsError(
        f"out={str(directory)!r} holds files but no {_shards.MANIFEST}; choose "
        "an empty or new directory (or overwrite=True to write into it anyway)")
  return None


def check_same_run(directory: pathlib.Path, old: Mapping[str, Any],
                    run: Mapping[str, Any], explain_id_given: bool) -> None:
  """Refuses to resume `old` with `run` unless both are provably the same run."""
  diffs = _shards.settings_mismatch(old, run)
  if not diffs and not explain_id_given:
    before, now = old.get("explain_fingerprint"), run["explain_fingerprint"]
    if before is None or now is None:
      why = (f"explain_fn cannot be fingerprinted: "
             f"{run['explain_fingerprint_unknown']}" if now is None else
             "the existing run recorded no fingerprint "
             f"({old.get('explain_fingerprint_unknown') or 'older version'})")
      raise ValueError(
          f"out={str(directory)!r} holds a run of explain_id="
          f"{old.get('explain_id')!r}, but it cannot be established that "
          f"explain_fn is the same explanation ({why}). If it is (same "
          "method, hyper-parameters and weights), resume with explain_id="
          f"{old.get('explain_id')!r}; otherwise use another `out`, or "
          "overwrite=True.")
    if before != now:
      diffs.append(
          f"explain_fingerprint: existing {str(before)[:16]}..., requested "
          f"{now[:16]}... (explain_fn differs in hyper-parameters, weights or "
          "code)")
  if diffs:
    raise ValueError(
        f"out={str(directory)!r} holds a run with other settings, which would "
        "mix incompatible maps:\n  " + "\n  ".join(diffs) + "\nUse the "
        "same arguments to resume, another `out`, or overwrite=True.")


def intact_shards(directory: pathlib.Path, old: Mapping[str, Any],
                   run: Mapping[str, Any]
                   ) -> dict[tuple[int, int], dict[str, Any]]:
  """Shards of the manifest and journal that pass their size, header and sha256 checks.

  A shard without a fingerprint of its inputs (``data_sha256``, written by
  an older version) cannot be matched to the data and is redone.
  """
  entries = {}
  listed = old.get("shards")
  for e in (listed if isinstance(listed, list) else []) + _shards.read_journal(
      directory):
    if _shards.valid_entry(e):
      entries[(e["start"], e["stop"])] = e
  done = {}
  for (s, e), entry in sorted(entries.items()):
    problem = _shards.shard_problem(directory, entry, run["map_shape"],
                                    run["map_dtype"])
    if problem is None and not isinstance(entry.get("data_sha256"), str):
      problem = ("it records no fingerprint of its inputs (written by an "
                 "older version), so it cannot be matched to this data")
    if problem is None:
      done[(s, e)] = entry
    else:
      warnings.warn(f"Redoing shard [{s}, {e}) in {directory}: {problem}",
                    stacklevel=5)
  return done
