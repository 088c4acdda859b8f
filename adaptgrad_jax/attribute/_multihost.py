"""Attribution over many hosts: process-local shards, per-process manifests, a merge.

Every process (one per host on a TPU pod, one per host or per GPU on GPU
clusters) explains a contiguous slice of the example range on its own local
devices with :func:`attribute`, writing ``out/process-<i>/``. Per-example keys
depend only on the global example index, so the result is the same as one
process explaining everything. Explaining examples needs no communication,
so processes do not run in lockstep: a slow or restarted host does not stall
the others, and each resumes its own slice. The only collective is a final
barrier, after which process 0 validates the per-process manifests and writes
the merged ``out/manifest.json``.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import jax
from jax.sharding import Mesh

from adaptgrad_jax import _files
from adaptgrad_jax.attribute import _shards
from adaptgrad_jax.attribute._attribute import ExplainFn, _attribute, _is_array_data
from adaptgrad_jax.attribute._shards import AttributionResult

_PROCESS_DIR = "process-{:05d}"


def _is_initialized() -> bool:
  is_initialized = getattr(jax.distributed, "is_initialized", None)
  if is_initialized is None:  # pragma: no cover  (jax < 0.4.36)
    from jax._src import distributed
    return distributed.global_state.client is not None
  return is_initialized()


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> tuple[int, int]:
  """Joins the JAX multi-process runtime (once) and returns (process index, count).

  Calls ``jax.distributed.initialize``. Arguments left as None are read from
  the environment variables ``JAX_COORDINATOR_ADDRESS`` (host:port of process
  0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; if those are unset too,
  JAX detects the cluster itself (TPU pods, SLURM, Open MPI, Kubernetes), so
  on a Cloud TPU pod slice no argument is needed. Does nothing if the runtime
  is already initialized.

  Args:
    coordinator_address: ``"host:port"`` of process 0, reachable by all.
    num_processes: total number of processes.
    process_id: this process's index in ``[0, num_processes)``.

  Returns:
    ``(jax.process_index(), jax.process_count())``.
  """
  if not _is_initialized():
    env = os.environ
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
      num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
      process_id = int(env["JAX_PROCESS_ID"])
    if num_processes is not None and num_processes < 1:
      raise ValueError(f"num_processes={num_processes} must be >= 1")
    if process_id is not None and num_processes is not None and not (
        0 <= process_id < num_processes):
      raise ValueError(f"process_id={process_id} must lie in [0, "
                       f"{num_processes}) for num_processes={num_processes}")
    if num_processes == 1 and coordinator_address is None and not env.get(
        "JAX_COORDINATOR_ADDRESS"):
      return jax.process_index(), jax.process_count()  # Nothing to join.
    try:
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes,
                                 process_id=process_id)
    except RuntimeError as e:
      if "before any JAX calls" not in str(e):
        raise
      raise RuntimeError(
          "initialize_distributed() must be the program's first JAX call: "
          "call it before creating keys (jax.random.key), models or arrays, "
          "which start the single-process XLA backend") from e
  return jax.process_index(), jax.process_count()


def process_range(num_examples: int, process_index: int,
                  process_count: int) -> tuple[int, int]:
  """The contiguous slice ``[lo, hi)`` of examples that a process explains.

  Slices differ in length by at most one example and tile ``[0, num_examples)``
  in process order.

  Example:
    >>> [process_range(10, p, 3) for p in range(3)]
    [(0, 4), (4, 7), (7, 10)]
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, "
                     f"{process_count})")
  base, extra = divmod(num_examples, process_count)
  lo = process_index * base + min(process_index, extra)
  return lo, lo + base + (process_index < extra)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def attribute_multihost(
    explain_fn: ExplainFn,
    key,
    data,
    *,
    out: str | os.PathLike,
    batch_size: int = 64,
    num_examples: int | None = None,
    mesh: Mesh | None = None,
    data_axis: str = "data",
    sample_axis: str | None = None,
    explain_id: str | None = None,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = True,
    merge: bool = True,
) -> AttributionResult:
  """:func:`attribute` over all processes of a multi-host JAX job.

  Run the same program on every host. It must join the runtime first, with
  :func:`initialize_distributed` (or ``jax.distributed.initialize``) as its
  first JAX call, before creating keys, models or arrays. Each process then
  takes its slice :func:`process_range` of
  the examples, explains it on its local devices (mesh over
  ``jax.local_devices()``) and writes shards and a manifest to
  ``out/process-<index>/``, resumable per process exactly as ``attribute``.
  Then all processes meet at a barrier and process 0 merges the manifests
  (:func:`merge_process_outputs`) into ``out/manifest.json``.

  `out` must be one filesystem that all hosts see (NFS, Filestore, a GCS
  FUSE mount) for the merge; otherwise pass ``merge=False``, gather the
  ``process-*`` directories later and call ``merge_process_outputs``.

  Every process passes the same `data`: an array-like of all examples (each
  process only slices its own range, e.g. a memmap, an ``ArrayRecord`` or
  ``h5py`` dataset), or an iterable of all batches with `num_examples` given
  (each process reads through it and keeps its range; prefer array-likes when
  reading is costly).

  Args:
    explain_fn, key, data, batch_size, num_examples, mesh, data_axis,
    sample_axis, explain_id, settings, progress, overwrite, resume: as in
      :func:`attribute`; `mesh` must hold only this process's devices. An
      iterable is read by each process up to the end of its slice; the last
      process checks that it yields no more than `num_examples`.
    out: output directory shared by all processes (required).
    merge: after a barrier, merge on process 0 and return the merged result
      on every process; with False return this process's result only.

  Returns:
    The merged :class:`AttributionResult` of all examples (``merge=True``),
    or this process's part (``merge=False``, indices relative to its slice).

  Raises:
    ValueError: as :func:`attribute`; also fewer examples than processes, an
      iterable without `num_examples`, or a failed merge.
    RuntimeError: the environment describes a multi-process job
      (``JAX_NUM_PROCESSES`` > 1) but the runtime was not initialized.

  Example:
    On every host of a TPU pod slice (``gcloud ... ssh --worker=all``)::

      initialize_distributed()  # First JAX call: joins the pod's processes.
      explain = adapt_smooth(grad_fn, 0.95, 50, bounds=models.IMAGENET_BOUNDS)
      data = np.load("imagenet_val_224.npy", mmap_mode="r")
      attribute_multihost(explain, jax.random.key(0), data,
                          out="/mnt/shared/maps", batch_size=256,
                          explain_id="adapt_smooth(0.95,50)/resnet50@v1")
  """
  if out is None:
    raise ValueError("out=None: attribute_multihost writes process-local "
                     "shards and needs an output directory shared by all "
                     "hosts; pass out='/shared/path'")
  if (not _is_initialized() and
      int(os.environ.get("JAX_NUM_PROCESSES", "1") or 1) > 1):
    raise RuntimeError(
        "JAX_NUM_PROCESSES > 1 but the JAX distributed runtime is not "
        "initialized; call initialize_distributed() as the program's first "
        "JAX call, before attribute_multihost")
  index, count = jax.process_index(), jax.process_count()
  if _is_array_data(data):
    total = int((data[0] if isinstance(data, tuple) else data).shape[0])
  elif num_examples is None:
    raise ValueError("data is an iterable and num_examples=None; pass "
                     "num_examples= (the total count): every process must know "
                     "it to take its slice of the examples")
  else:
    total = int(num_examples)
  if total < count:
    raise ValueError(f"data holds {total} examples, which cannot be spread "
                     f"over {count} processes; use at most {total} processes")
  lo, hi = process_range(total, index, count)
  root = pathlib.Path(out)
  if root.exists() and not root.is_dir():
    raise FileExistsError(f"out={str(out)!r} is a file; pass a directory path")
  _files.refuse_symlink(root / _PROCESS_DIR.format(index), what=f"out={str(out)!r}")
  if overwrite and index == 0 and (root / _shards.MANIFEST).exists():
    (root / _shards.MANIFEST).unlink()
  local = _attribute(
      explain_fn, key, data, out=root / _PROCESS_DIR.format(index),
      batch_size=batch_size, num_examples=total, mesh=mesh,
      data_axis=data_axis, sample_axis=sample_axis, explain_id=explain_id,
      settings=settings, progress=progress, overwrite=overwrite, resume=resume,
      example_range=(lo, hi), process=(index, count))
  if not merge:
    return local
  _barrier("adaptgrad_jax.attribute:shards-written")
  if index == 0:
    merge_process_outputs(root)
  _barrier("adaptgrad_jax.attribute:merged")
  return _shards.load_attributions(root)


def merge_process_outputs(out: str | os.PathLike, *,
                          verify: bool = False) -> AttributionResult:
  """Validates per-process outputs and writes the merged ``out/manifest.json``.

  Checks that every ``out/process-*/manifest.json`` of the run is present and
  complete, that all were written with the same settings (explanation id,
  key, shapes, dtypes, batch size, number of examples and processes), and
  that their example ranges and shards tile ``[0, num_examples)`` with every
  shard file present at its recorded size (and sha256 with ``verify=True``).
  Shards are not copied: the merged manifest points into the process
  directories.

  Args:
    out: the top output directory of an ``attribute_multihost`` run.
    verify: also check every shard's sha256 (reads all data once).

  Returns:
    The merged, lazily read :class:`AttributionResult`.

  Raises:
    FileNotFoundError: no per-process outputs under `out`.
    ValueError: a process output is missing, unfinished, damaged or
      inconsistent with the others; the message names it.
  """
  root = pathlib.Path(out)
  paths = sorted(root.glob("process-*/" + _shards.MANIFEST))
  if not paths:
    raise FileNotFoundError(f"out={str(out)!r} has no process-*/"
                            f"{_shards.MANIFEST}; nothing to merge")
  manifests = [_shards.read_manifest(p.parent) for p in paths]
  first = manifests[0]
  count = first["process_count"]
  found = sorted(m["process_index"] for m in manifests)
  if found != list(range(count)):
    missing = sorted(set(range(count)) - set(found))
    raise ValueError(f"{out}: expected outputs of processes 0..{count - 1}, "
                     f"found {found} (missing {missing}); run those processes "
                     "again (they resume) and merge")
  shards: list[dict[str, Any]] = []
  for path, m in zip(paths, manifests):
    where = path.parent.name
    if not m.get("complete"):
      raise ValueError(f"{path} is not complete; rerun process "
                       f"{m['process_index']} (it resumes) and merge again")
    if path.parent.name != _PROCESS_DIR.format(m["process_index"]):
      raise ValueError(f"{path} says process {m['process_index']}; the "
                       "directory name disagrees. Move it to "
                       f"{_PROCESS_DIR.format(m['process_index'])}/ or rerun "
                       "that process")
    diffs = _shards.settings_mismatch(
        {**first, "example_range": None}, {**m, "example_range": None})
    if m["process_count"] != count:
      diffs.append(f"process_count: {count} vs {m['process_count']}")
    if diffs:
      raise ValueError(f"{path} was written with other settings than "
                       f"{paths[0]}:\n  " + "\n  ".join(diffs) + "\nRerun "
                       "every process with the same arguments (overwrite=True "
                       "for the odd one out) and merge again")
    for s in m["shards"]:
      problem = (_shards.shard_problem(path.parent, s, m["map_shape"],
                                       m["map_dtype"]) if verify else None)
      file = path.parent / s["file"]
      if problem is None and (not file.is_file() or
                              file.stat().st_size != s["bytes"]):
        problem = f"{s['file']} is missing or has the wrong size"
      if problem:
        raise ValueError(f"{where}: {problem}; rerun process "
                         f"{m['process_index']} (it redoes damaged shards)")
      shards.append({**s, "file": f"{where}/{s['file']}"})
  shards.sort(key=lambda s: s["start"])
  total = first["num_examples"]
  pos = 0
  for s in shards:
    if s["start"] != pos:
      raise ValueError(f"{out}: shards of the processes leave a gap or overlap "
                       f"at example {pos}; rerun the processes (they resume) "
                       "and merge again")
    pos = s["stop"]
  if pos != total:
    raise ValueError(f"{out}: shards end at example {pos}, not {total}; rerun "
                     "the processes (they resume) and merge again")
  merged = {**first, "example_range": [0, total], "process_index": None,
            "complete": True, "shards": shards}
  _shards.write_json_atomic(root / _shards.MANIFEST, merged)
  return _shards.load_attributions(root)
