"""Batch attribution of whole datasets, sharded over a device mesh, streamed to disk."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import pathlib
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

try:  # jax >= 0.6: meshes carry axis types (jax.make_mesh gives Explicit).
  from jax.sharding import AxisType
except ImportError:  # pragma: no cover
  AxisType = None

from adaptgrad_jax import cpu
from adaptgrad_jax._progress import progress_bar
from adaptgrad_jax.attribute import _identity as _identity_lib
from adaptgrad_jax.attribute import _resume
from adaptgrad_jax.attribute import _shards
from adaptgrad_jax.attribute._shards import AttributionResult

ExplainFn = Callable[[Any, jax.Array], jax.Array]

_MAX_INDEX = 2**32  # Example indices are folded into keys as uint32.
_MAX_PENDING_WRITES = 2  # Shards held in host memory while being written.


# ----------------------------------------------------------------------------
# Noise-sample splitting.


@dataclasses.dataclass(frozen=True)
class SampleMean:
  """An explanation that is the mean of `n` i.i.d. one-sample explanations.

  Built by :func:`sample_mean`. Calling it, ``explain(key, x)``, returns
  ``mean_j sample_fn(fold_in(key, j), x)`` over ``j = 0 .. n-1``. Because the
  sample axis is explicit, :func:`attribute` can shard it over a mesh axis.

  Attributes:
    sample_fn: ``sample_fn(key, x) -> map``, one noisy sample for one example.
    n: number of samples averaged.
  """

  sample_fn: ExplainFn
  n: int

  def sample_keys(self, key) -> jax.Array:
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(self.n))

  def __call__(self, key, *example) -> jax.Array:
    one = lambda k: self.sample_fn(k, *example)
    return jnp.mean(jax.vmap(one)(self.sample_keys(key)), axis=0)


def sample_mean(sample_fn: ExplainFn, n: int) -> SampleMean:
  """Makes an n-sample Monte-Carlo explanation whose samples can be sharded.

  ``attribute`` treats an ordinary ``explain_fn`` as opaque: it can spread
  examples over devices but not the noise samples inside one explanation. An
  explanation built here exposes its sample axis, so ``attribute(...,
  sample_axis="samples")`` splits the `n` samples of each example over that
  mesh axis (useful when a batch is too small to fill all devices, or one
  example's `n` samples do not fit on one device).

  With tuple examples (see :func:`attribute`) both are called with the
  example unpacked: ``sample_fn(key, *example)``.

  Any estimator that is a plain mean of i.i.d. noisy samples fits: AdaptGrad
  and SmoothGrad with ``aggregate="mean"`` (the default) and
  ``include_clean=False``. Build the one-sample function with ``n=1``; the
  result has the same distribution as the n-sample transform, but draws its
  noise from ``fold_in(key, j)`` instead of ``split(key, n)``, so it is not
  bit-identical to it.

  Args:
    sample_fn: ``sample_fn(key, x) -> map`` drawing ONE noisy sample for one
      example (no batch dimension), e.g.
      ``adapt_smooth(grad_fn, 0.95, 1, bounds=b)``.
    n: number of samples to average, >= 1 (the paper uses 50).

  Returns:
    A callable :class:`SampleMean`, ``explain(key, x) -> map``.

  Raises:
    TypeError: `sample_fn` is not callable.
    ValueError: `n` is not a positive integer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> grad_fn = jax.grad(lambda x: jnp.sum(jnp.sin(x)))
    >>> one = lambda key, x: grad_fn(x + 0.1 * jax.random.normal(key, x.shape))
    >>> explain = sample_mean(one, 8)
    >>> explain(jax.random.key(0), jnp.zeros(3)).shape
    (3,)
  """
  if not callable(sample_fn):
    raise TypeError(f"sample_fn={sample_fn!r} must be callable as "
                    "sample_fn(key, x) -> map")
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n={n!r} is the number of noise samples and must be a "
                     "positive integer; the paper uses 50")
  return SampleMean(sample_fn, int(n))


# ----------------------------------------------------------------------------
# Helpers: keys, ids, meshes, batches, progress.


def _key_record(key) -> dict[str, Any]:
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"key holds keys of shape {key.shape}; pass one key, "
                       "e.g. jax.random.key(0)")
    return {"impl": str(jax.random.key_impl(key)),
            "data": np.asarray(jax.random.key_data(key)).ravel().tolist()}
  if key.dtype != jnp.uint32 or key.ndim != 1:
    raise ValueError(f"key={key!r} is not a PRNG key; pass jax.random.key(seed)"
                     " (or a raw jax.random.PRNGKey(seed))")
  return {"impl": "raw", "data": np.asarray(key).ravel().tolist()}


def _default_explain_id(fn) -> str:
  base = fn
  while isinstance(base, functools.partial):
    base = base.func
  if isinstance(base, SampleMean):
    return f"sample_mean({_default_explain_id(base.sample_fn)}, n={base.n})"
  name = getattr(base, "__qualname__", None) or type(base).__qualname__
  module = getattr(base, "__module__", None) or type(base).__module__
  return f"{module}.{name}"


def _is_array(data) -> bool:
  return hasattr(data, "shape") and hasattr(data, "__getitem__") and hasattr(
      data, "dtype")


def _is_array_data(data) -> bool:
  """Arrays of examples (leading axis = example), not an iterable of batches."""
  if isinstance(data, tuple):
    return bool(data) and all(_is_array(d) for d in data)
  return _is_array(data)


def _parts(batch, what: str) -> tuple[np.ndarray, ...]:
  """A batch as a tuple of numpy arrays with one common leading length."""
  parts = tuple(np.asarray(b) for b in (
      batch if isinstance(batch, tuple) else (batch,)))
  if not parts:
    raise ValueError(f"{what} is an empty tuple; pass arrays of examples")
  for a in parts:
    if a.ndim < 1:
      raise ValueError(f"{what} holds a scalar; each array needs a leading "
                       "example axis")
  if len({len(a) for a in parts}) > 1:
    raise ValueError(f"{what} is a tuple of arrays of lengths "
                     f"{[len(a) for a in parts]}; they must hold the same "
                     "number of examples")
  return parts


def _describe(shapes, dtypes) -> str:
  return ", ".join(f"{d}{list(s)}" for s, d in zip(shapes, dtypes))


def _local_mesh(mesh: Mesh | None, data_axis: str, sample_axis: str | None
                ) -> Mesh:
  if mesh is None:
    if sample_axis is not None:
      raise ValueError(
          f"sample_axis={sample_axis!r} needs a mesh with that axis, e.g. "
          f"mesh=jax.make_mesh((4, 2), ({data_axis!r}, {sample_axis!r}), "
          "devices=jax.local_devices())")
    return Mesh(np.array(jax.local_devices()), (data_axis,))
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh={mesh!r} must be a jax.sharding.Mesh, e.g. "
                    f"jax.make_mesh((n,), ({data_axis!r},), devices="
                    "jax.local_devices()), or None for all local devices")
  if data_axis not in mesh.axis_names:
    raise ValueError(f"mesh has axes {mesh.axis_names}, but data_axis="
                     f"{data_axis!r} is not one of them; name the batch axis "
                     f"{data_axis!r} or pass data_axis=")
  if sample_axis is not None and sample_axis not in mesh.axis_names:
    raise ValueError(f"sample_axis={sample_axis!r} is not an axis of the mesh "
                     f"(axes {mesh.axis_names}); name one of them, or pass "
                     "sample_axis=None")
  local = set(jax.local_devices())
  if any(d not in local for d in mesh.devices.flat):
    raise ValueError(
        "mesh contains devices of other processes; attribute() runs on this "
        "process's devices (use attribute_multihost to spread a dataset over "
        "hosts), e.g. jax.make_mesh(shape, names, devices=jax.local_devices())")
  # Shardings are given explicitly below; use the mesh's devices and names
  # with Auto axes whatever axis types (jax.make_mesh: Explicit) it came with.
  if AxisType is None:  # pragma: no cover
    return mesh
  return Mesh(mesh.devices, mesh.axis_names,
              axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def local_mesh(num_devices: int | None = None, *, samples: int = 1,
               data_axis: str = "data", sample_axis: str = "samples") -> Mesh:
  """A mesh over this process's devices for :func:`attribute`.

  Args:
    num_devices: how many of ``jax.local_devices()`` to use (the first ones);
      None for all. What a ``--devices`` flag sets.
    samples: size of the `sample_axis` that splits noise samples (see
      :func:`sample_mean`); 1 gives a mesh with the `data_axis` only.
    data_axis: name of the axis that splits examples.
    sample_axis: name of the axis that splits samples.

  Returns:
    ``Mesh`` of shape ``(num_devices // samples, samples)`` with axes
    ``(data_axis, sample_axis)``, or ``(num_devices,)`` with ``(data_axis,)``.

  Raises:
    ValueError: `num_devices` is not in ``[1, len(jax.local_devices())]`` or
      not divisible by `samples`.

  Example:
    >>> dict(local_mesh(1).shape)
    {'data': 1}
  """
  local = jax.local_devices()
  if num_devices is None:
    num_devices = len(local)
  if isinstance(num_devices, bool) or not isinstance(
      num_devices, (int, np.integer)) or not 1 <= num_devices <= len(local):
    raise ValueError(f"num_devices={num_devices!r} must be an integer in "
                     f"[1, {len(local)}] (this process has {len(local)} "
                     f"{local[0].platform} devices)")
  if isinstance(samples, bool) or not isinstance(
      samples, (int, np.integer)) or samples < 1 or num_devices % samples:
    raise ValueError(f"samples={samples!r} must be a positive divisor of "
                     f"num_devices={num_devices}")
  devices = np.array(local[:num_devices])
  if samples == 1:
    return Mesh(devices, (data_axis,))
  return Mesh(devices.reshape(num_devices // samples, samples),
              (data_axis, sample_axis))


def _rebatch(batches: Iterable[Any], batch_size: int, lo: int, hi: int | None,
             end: int | None = None
             ) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
  """Re-chunks an iterable of batches into `batch_size` chunks of examples [lo, hi).

  With `end` (the declared ``num_examples`` when [lo, hi) reaches it), reads
  one batch past `hi` and raises if the iterable yields more than `end`.
  """
  buf: list[tuple[np.ndarray, ...]] = []
  nbuf = 0
  pos = 0  # Global index of the next example the iterable yields.
  start = lo
  signature = None

  def cat(chunks):
    if len(chunks) == 1:
      return chunks[0]
    return tuple(np.concatenate(p) for p in zip(*chunks))

  for b, batch in enumerate(batches):
    parts = _parts(batch, f"data batch {b}")
    sig = ([p.shape[1:] for p in parts], [p.dtype for p in parts])
    if signature is None:
      signature = sig
    elif sig != signature:
      raise ValueError(
          f"data batch {b} holds examples of {_describe(*sig)}, earlier "
          f"batches {_describe(*signature)}; all examples must share one shape "
          "and dtype (resize or pad them first)")
    a, z = pos, pos + len(parts[0])
    pos = z
    if end is not None and z > end:
      raise ValueError(
          f"data yielded more than num_examples={end} examples (batch {b} "
          f"reaches example {z}); pass the true count as num_examples, or "
          "num_examples=None to count them")
    if hi is not None and a >= hi:
      break
    keep = slice(max(lo - a, 0), (z if hi is None else min(hi, z)) - a)
    parts = tuple(p[keep] for p in parts)
    if not len(parts[0]):
      continue
    buf.append(parts)
    nbuf += len(parts[0])
    while nbuf >= batch_size:
      joined = cat(buf)
      yield start, tuple(p[:batch_size] for p in joined)
      start += batch_size
      rest = tuple(p[batch_size:] for p in joined)
      nbuf = len(rest[0])
      buf = [rest] if nbuf else []
  if nbuf:
    yield start, cat(buf)


def _explain_batch(explain_fn, mesh: Mesh, data_axis: str,
                   sample_axis: str | None, key, indices, xs) -> jax.Array:
  """Maps of a batch: ``vmap(explain_fn)`` with keys ``fold_in(key, index)``."""
  data_sharding = NamedSharding(mesh, P(data_axis))
  example_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, indices)
  if isinstance(explain_fn, SampleMean):
    keys = jax.vmap(explain_fn.sample_keys)(example_keys)
    one = lambda k, xs: explain_fn.sample_fn(k, *xs)
    per_sample = jax.vmap(jax.vmap(one, (0, None)))
    if sample_axis is None:
      samples = per_sample(keys, xs)
    else:
      both = NamedSharding(mesh, P(data_axis, sample_axis))
      keys = jax.lax.with_sharding_constraint(keys, both)
      samples = jax.lax.with_sharding_constraint(per_sample(keys, xs), both)
    maps = jnp.mean(samples, axis=1)
  else:
    maps = jax.vmap(lambda k, xs: explain_fn(k, *xs))(example_keys, xs)
  return jax.lax.with_sharding_constraint(maps, data_sharding)


def _build_step(explain_fn, mesh: Mesh, data_axis: str,
                sample_axis: str | None):
  # A fresh jit per call on purpose: explain_fn is traced again, so a closure
  # over weights that changed since the last call (a model still training) is
  # seen; one cached program would silently keep the old weights as constants.
  step = jax.jit(functools.partial(_explain_batch, explain_fn, mesh, data_axis, sample_axis),
                 compiler_options=cpu.compiler_options())
  return step, NamedSharding(mesh, P(data_axis))


def _check_batch_size(batch_size) -> int:
  if isinstance(batch_size, bool) or not isinstance(
      batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} is the number of examples per "
                     "step and shard and must be a positive integer, e.g. 64")
  return int(batch_size)


# ----------------------------------------------------------------------------
# The public driver.


def attribute(
    explain_fn: ExplainFn,
    key,
    data,
    *,
    out: str | os.PathLike | None = None,
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
) -> AttributionResult:
  """Explains every example of a dataset, sharded over devices, streamed to disk.

  Each example ``i`` (its position in `data`, counted from 0) is explained
  with its own key ``jax.random.fold_in(key, i)``, so the maps do not depend on
  the number of devices, the batch size, the shard layout or on resuming: the
  same `key` gives the same map for example ``i`` on 1 CPU or on 8 GPUs (up to
  float rounding of the explanation's own reductions, ~1e-7 relative).

  Batches of `batch_size` examples are placed on a ``jax.sharding.Mesh`` over
  this process's devices, split along its `data_axis`, and explained by one
  jitted ``jax.vmap(explain_fn)``. The computed batch is rounded up to a
  multiple of the number of devices on the data axis; the last, ragged batch
  is padded to that same size (repeating its last example, so one program is
  compiled) and the padding is dropped. While the devices compute batch t the
  host fetches batch t-1, and two threads hash and write earlier shards.

  With `out`, each batch becomes one shard ``shard-<start>-<stop>.npy``
  written atomically (temp file, fsync, rename), journaled with its sha256 in
  ``shards.jsonl``, and summarised in ``manifest.json`` at the end. The
  process holds a lock on ``out/.lock`` for the whole call: a second process
  on the same `out` is refused (a ``RuntimeError``) and touches nothing.
  Calling ``attribute`` again with the same arguments resumes: intact shards
  are kept (not rewritten), missing, truncated or corrupt ones (size or
  sha256 mismatch) are recomputed. If ``manifest.json`` was deleted or
  damaged, it is rebuilt from the journal (which records each run's
  settings) and the shards, each verified against its sha256.

  **Which runs may resume each other.** A run with other settings (key,
  shapes, dtypes, `batch_size`, number of examples, `settings`) or another
  explanation is refused, never mixed. Nor is other data of the same shape:
  each shard records a fingerprint of its examples (``data_sha256``, a
  sha256 of the inputs and targets, computed while they are read anyway),
  and a resume whose examples differ is refused before anything is written
  (for an iterable, whose later batches are read only as the run reaches
  them, such a shard is recomputed, with a warning). The explanation is
  identified by:

  * `explain_id`, when you give one: it is then the identity, compared as
    given (with `settings`), and `explain_fn` is not inspected. Put in it
    everything that changes the maps (method, hyper-parameters, model and
    weights version), or pass those as `settings`;
  * otherwise by a fingerprint of `explain_fn`: a sha256 of its code, the
    values in its closures, defaults and ``functools.partial`` arguments,
    the module globals your own functions read (arrays by their bytes), and
    the name and version of library code. The functions this library
    returns keep their hyper-parameters in closures, so another ``c``,
    ``n``, bounds, sigma rule or method gives another fingerprint. A
    callable that reaches state the fingerprint cannot read (a Flax or
    PyTorch module object, a file) has no fingerprint: such a run cannot be
    resumed without an `explain_id` (a warning says so when it starts; the
    refusal names the object and the fix).

  Args:
    explain_fn: ``explain_fn(key, x) -> map`` for ONE example ``x`` (no batch
      dimension), e.g. ``adapt_smooth(jax.grad(f), 0.95, 50, bounds=b)``; must
      be jax-traceable and return one array. When examples are tuples (see
      `data`) it is called as ``explain_fn(key, *example)``, e.g.
      ``explain_fn(key, image, label)``. A :func:`sample_mean` explanation
      can in addition shard its noise samples over `sample_axis`.
    key: a PRNG key (``jax.random.key(seed)`` or a raw ``PRNGKey``).
    data: either an array of examples with a leading example axis (numpy,
      ``np.load(..., mmap_mode="r")`` memmaps for data larger than memory, jax
      arrays, or anything with ``shape``, ``dtype`` and slicing), sliced one
      batch at a time; or an iterable of batches (arrays with a leading
      example axis, any sizes), re-chunked into `batch_size` examples. A
      tuple of such arrays of equal length, e.g. ``(images, labels)``, or an
      iterable of such tuples, gives tuple examples (a list is read as an
      iterable of batches).
    out: directory for shards and manifest (created if missing). None keeps
      the maps in memory instead.
    batch_size: examples per device step and per shard, >= 1. Larger batches
      use devices better but need batch_size x (memory of one explanation).
    num_examples: the number of examples an iterable yields, for the progress
      bar and as a check: an iterable that yields more or fewer is an error
      (an array's length is known). Optional.
    mesh: a ``Mesh`` over this process's devices with axis `data_axis` (and
      `sample_axis`, if given). Default: all local devices on one axis.
    data_axis: mesh axis that splits the examples of a batch.
    sample_axis: mesh axis that splits the `n` noise samples of each example;
      requires `explain_fn` built by :func:`sample_mean` with `n` divisible by
      that axis' size.
    explain_id: a string naming the explanation and model (e.g.
      ``"adapt_smooth(c=0.95,n=50)/resnet50@v1"``), recorded in the manifest
      and compared on resume instead of the fingerprint (see above). Default:
      the function's qualified name, with the fingerprint as identity.
    settings: a dict of JSON values (numbers, strings, lists, dicts), e.g.
      ``{"c": 0.95, "n": 50, "weights": "v1"}``, recorded in the manifest and
      compared on resume.
    progress: show a rich progress bar on stderr.
    overwrite: delete an existing output in `out` (only the files this
      function writes, never through a symbolic link) and start afresh.
    resume: continue an unfinished (or re-check a finished) output in `out`.
      With ``resume=False`` an existing output is an error unless `overwrite`.

  Returns:
    An :class:`AttributionResult` of shape ``(num_examples, *map_shape)``:
    lazy memory-mapped shards when `out` is given, else in memory.

  Raises:
    ValueError: a bad `batch_size`, `mesh`, `sample_axis`, `key`, `settings`,
      empty data, more or fewer examples than `num_examples`, examples of
      inconsistent shape or dtype, an explanation that does not return one
      array, or an existing output of other settings or another explanation
      (or one whose explanation cannot be identified without `explain_id`).
    FileExistsError: `out` is a file, or holds an output and neither `resume`
      nor `overwrite` is set, or holds foreign files (or shards without a
      manifest or journal to check them against).
    RuntimeError: another process (or thread) is writing `out`; the error
      (``LockedError``, from ``adaptgrad_jax._files``) names the lock file.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> grad_fn = jax.grad(lambda x: jnp.sum(jnp.sin(x)))
    >>> explain = lambda key, x: grad_fn(x + 0.1 * jax.random.normal(key, x.shape))
    >>> xs = np.linspace(0, 1, 30, dtype=np.float32).reshape(10, 3)
    >>> res = attribute(explain, jax.random.key(0), xs, batch_size=4,
    ...                 progress=False)
    >>> res.shape, np.asarray(res).dtype
    ((10, 3), dtype('float32'))
    >>> one = explain(jax.random.fold_in(jax.random.key(0), 7), xs[7])
    >>> bool(jnp.allclose(res[7], one, atol=1e-6))
    True
  """
  return _attribute(explain_fn, key, data, out=out, batch_size=batch_size,
                    num_examples=num_examples, mesh=mesh, data_axis=data_axis,
                    sample_axis=sample_axis, explain_id=explain_id,
                    settings=settings, progress=progress, overwrite=overwrite,
                    resume=resume)


def _attribute(explain_fn, key, data, *, out, batch_size, num_examples, mesh,
               data_axis, sample_axis, explain_id, progress, overwrite, resume,
               settings: Mapping[str, Any] | None = None,
               example_range: tuple[int, int | None] | None = None,
               process: tuple[int, int] = (0, 1)) -> AttributionResult:
  """:func:`attribute` for examples ``example_range`` as process ``process``.

  The steps, in order: check the arguments, read the data's first batch,
  find the maps' shape, describe the run, then, with `out` locked, open (or
  resume) the output, explain every missing batch and finish the output.
  """
  batch_size, key_record, mesh = _check_arguments(
      explain_fn, key, batch_size, num_examples, mesh, data_axis, sample_axis,
      overwrite, resume)
  examples = _read_examples(data, batch_size, num_examples, example_range)
  map_shape, map_dtype = _map_signature(explain_fn, key, examples)
  run = _describe_run(explain_fn, explain_id, settings, out, key_record,
                      examples, map_shape, map_dtype, batch_size, process)
  directory = _resume.output_directory(out)
  verified: set[tuple[int, int]] = set()
  with _resume.lock_output(directory, out):
    done = {} if directory is None else _resume.open_output(
        directory, run, explain_id_given=explain_id is not None,
        overwrite=overwrite, resume=resume,
        check_data=lambda done: verified.update(
            _check_data(examples, done, directory)))
    desc = ("attribute" if process[1] == 1 else
            f"attribute [process {process[0]}/{process[1]}]")
    total = None if examples.hi is None else examples.hi - examples.lo
    with progress_bar(progress, total, desc, show_rate=True) as advance, \
         concurrent.futures.ThreadPoolExecutor(2) as writer:
      sink = _Sink(directory, examples, map_shape, map_dtype, advance, writer)
      step = _batch_step(explain_fn, key, mesh, data_axis, sample_axis,
                         batch_size, examples)
      seen = _explain_all(examples, done, sink, step, verified)
    hi = _check_count(examples, seen, num_examples)
    return _finish(directory, run, sink, examples.lo, hi)


# ----------------------------------------------------------------------------
# Step 1: Python-level arguments, checked before touching devices or disk.


def _check_arguments(explain_fn, key, batch_size, num_examples, mesh,
                     data_axis, sample_axis, overwrite, resume
                     ) -> tuple[int, dict[str, Any], Mesh]:
  """Validates the arguments; returns the batch size, the key's record and the mesh."""
  if not callable(explain_fn):
    raise TypeError(f"explain_fn={explain_fn!r} must be callable as "
                    "explain_fn(key, x) -> map")
  batch_size = _check_batch_size(batch_size)
  key_record = _key_record(key)
  if num_examples is not None and (
      isinstance(num_examples, bool) or
      not isinstance(num_examples, (int, np.integer)) or num_examples < 0):
    raise ValueError(f"num_examples={num_examples!r} must be a non-negative "
                     "integer (the number of examples data yields) or None")
  for name, value in (("overwrite", overwrite), ("resume", resume)):
    if not isinstance(value, (bool, np.bool_)):
      raise TypeError(f"{name}={value!r} must be True or False")
  if sample_axis is not None and not isinstance(explain_fn, SampleMean):
    raise ValueError(
        f"sample_axis={sample_axis!r} splits noise samples, which an opaque "
        "explain_fn hides; build it with sample_mean(one_sample_fn, n) (e.g. "
        "sample_mean(adapt_smooth(grad_fn, 0.95, 1, bounds=b), 50)) or pass "
        "sample_axis=None")
  mesh = _local_mesh(mesh, data_axis, sample_axis)
  if sample_axis is not None and explain_fn.n % mesh.shape[sample_axis]:
    raise ValueError(
        f"sample_mean n={explain_fn.n} is not divisible by the mesh's "
        f"{sample_axis!r} axis of size {mesh.shape[sample_axis]}; choose n or "
        "the mesh shape so that it is")
  return batch_size, key_record, mesh


# ----------------------------------------------------------------------------
# Step 2: the examples, as far as they are known before computing.


@dataclasses.dataclass(frozen=True)
class _Examples:
  """The examples one call explains.

  Attributes:
    shapes: shape of each array of one example (one per tuple element).
    dtypes: their dtypes.
    lo: global index of the first example explained.
    hi: one past the last, or None for an iterable of unknown length.
    total: examples in the whole dataset, or None while unknown.
    chunks: returns an iterator of ``(start, stop, load)``, one per batch of
      `batch_size` examples; ``load()`` returns the batch's arrays.
    ahead: the chunks that can be read before the run without consuming
      anything: all of an array's, the first batch of an iterable.
  """

  shapes: list[tuple[int, ...]]
  dtypes: list[np.dtype]
  lo: int
  hi: int | None
  total: int | None
  chunks: Callable[[], Iterator[tuple[int, int, Callable[[], tuple]]]]
  ahead: Callable[[], Iterator[tuple[int, int, Callable[[], tuple]]]]


def _read_examples(data, batch_size: int, num_examples: int | None,
                   example_range: tuple[int, int | None] | None) -> _Examples:
  """Describes `data`: arrays are sliced lazily, an iterable's first batch is read."""
  if _is_array_data(data):
    examples = _array_examples(data, batch_size, num_examples, example_range)
  else:
    examples = _iterable_examples(data, batch_size, num_examples,
                                  example_range)
  if examples.hi is not None and examples.hi <= examples.lo:
    raise ValueError(f"data has no examples in the range [{examples.lo}, "
                     f"{examples.hi}); pass at least one example")
  return examples


def _example_range(total: int | None, example_range) -> tuple[int, int | None]:
  lo, hi = example_range if example_range is not None else (0, total)
  if hi is not None and hi > _MAX_INDEX:
    raise ValueError(f"data holds {hi} examples, more than the 2**32 indices "
                     "that fold_in keys support; split the dataset")
  return lo, hi


def _array_examples(data, batch_size, num_examples, example_range) -> _Examples:
  arrays = data if isinstance(data, tuple) else (data,)
  if any(len(a.shape) < 1 for a in arrays):
    raise ValueError("data holds an array of shape (); pass arrays with a "
                     "leading example axis or an iterable of batches")
  lengths = [int(a.shape[0]) for a in arrays]
  if len(set(lengths)) > 1:
    raise ValueError(f"data is a tuple of arrays of lengths {lengths}; they "
                     "must hold the same number of examples")
  total = lengths[0]
  if num_examples is not None and num_examples != total:
    raise ValueError(f"num_examples={num_examples} disagrees with the data's "
                     f"leading axis of length {total}; drop num_examples")
  lo, hi = _example_range(total, example_range)

  def chunks():
    for start in range(lo, hi, batch_size):
      stop = min(start + batch_size, hi)
      yield start, stop, (lambda s=start, e=stop: tuple(
          np.asarray(a[s:e]) for a in arrays))

  return _Examples([tuple(a.shape[1:]) for a in arrays],
                   [np.dtype(a.dtype) for a in arrays], lo, hi, total, chunks,
                   chunks)


def _iterable_examples(data, batch_size, num_examples, example_range
                       ) -> _Examples:
  if isinstance(data, (str, bytes, os.PathLike)):
    raise TypeError(f"data={data!r} is a path; load it first, e.g. "
                    "np.load(path, mmap_mode='r')")
  try:
    iter(data)
  except TypeError:
    raise TypeError(f"data of type {type(data).__name__} is neither an array "
                    "of examples nor an iterable of batches; pass an array "
                    "with a leading example axis (or a tuple of them), or an "
                    "iterable of such batches") from None
  total = num_examples
  lo, hi = _example_range(total, example_range)
  # The process whose range ends the dataset checks that nothing follows.
  end = total if hi is not None and hi == total else None
  stream = _rebatch(data, batch_size, lo, hi, end)
  first = next(stream, None)
  if first is None:
    raise ValueError(f"data yielded no examples (in the range [{lo}, {hi}) "
                     "of this process); pass batches with a leading example "
                     "axis")

  def chunks():
    for start, parts in itertools.chain([first], stream):
      yield start, start + len(parts[0]), (lambda p=parts: p)

  def ahead():
    yield first[0], first[0] + len(first[1][0]), (lambda: first[1])

  return _Examples([tuple(p.shape[1:]) for p in first[1]],
                   [p.dtype for p in first[1]], lo, hi, total, chunks, ahead)


def _map_signature(explain_fn, key, examples: _Examples
                   ) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype of one map, by abstract evaluation (nothing computed)."""
  single = jax.eval_shape(explain_fn, key, *(
      jax.ShapeDtypeStruct(sh, dt)
      for sh, dt in zip(examples.shapes, examples.dtypes)))
  if not isinstance(single, jax.ShapeDtypeStruct):
    raise ValueError(
        f"explain_fn returned {jax.tree.structure(single)}; it must return one "
        "array per example (select the map, e.g. lambda k, x: fn(k, x)[0])")
  return tuple(single.shape), np.dtype(single.dtype)


# ----------------------------------------------------------------------------
# Step 3: the run's description, recorded in the manifest and journal.


def _describe_run(explain_fn, explain_id, settings, out, key_record,
                  examples: _Examples, map_shape, map_dtype, batch_size,
                  process) -> dict[str, Any]:
  """The settings a resumed run must share, with the explanation's identity."""
  shapes, dtypes = examples.shapes, examples.dtypes
  return {
      "format": _shards.FORMAT, "version": _shards.FORMAT_VERSION,
      **_identity(explain_fn, explain_id, settings, fingerprint_it=out is not None),
      "key": key_record,
      # One array per example: its shape and dtype; a tuple: lists of them.
      "example_shape": (list(shapes[0]) if len(shapes) == 1 else
                        [list(sh) for sh in shapes]),
      "input_dtype": (str(dtypes[0]) if len(dtypes) == 1 else
                      [str(dt) for dt in dtypes]),
      "map_shape": list(map_shape), "map_dtype": str(map_dtype),
      "batch_size": batch_size, "num_examples": examples.total,
      "example_range": [examples.lo, examples.hi],
      "samples": explain_fn.n if isinstance(explain_fn, SampleMean) else None,
      "process_index": process[0], "process_count": process[1],
  }


def _identity(explain_fn, explain_id, settings, *, fingerprint_it: bool
              ) -> dict[str, Any]:
  """The manifest's ``explain_*`` fields: who made the maps (see attribute())."""
  if explain_id is not None and (not isinstance(explain_id, str) or
                                 not explain_id.strip()):
    raise ValueError(
        f"explain_id={explain_id!r} must be a non-empty string naming the "
        "explanation, its hyper-parameters and model, e.g. "
        "'adapt_smooth(c=0.95,n=50)/resnet50@v1' (or None to fingerprint "
        "explain_fn)")
  if settings is not None:
    try:
      if not isinstance(settings, Mapping):
        raise TypeError
      settings = json.loads(json.dumps(dict(settings), sort_keys=True,
                                       allow_nan=False))
    except (TypeError, ValueError):
      raise ValueError(
          f"settings={settings!r} must be a dict of JSON values (finite "
          "numbers, strings, booleans, None, lists, dicts), e.g. "
          "{'c': 0.95, 'n': 50}; convert other values with str()") from None
  record = {"explain_id": explain_id or _default_explain_id(explain_fn),
            "explain_settings": settings, "explain_fingerprint": None,
            "explain_fingerprint_unknown": "explain_id given"}
  if explain_id is None:
    record["explain_fingerprint_unknown"] = "no output directory"
    if fingerprint_it:
      found = _identity_lib.fingerprint(explain_fn)
      record.update(explain_fingerprint=found.digest,
                    explain_fingerprint_unknown=found.why_not)
  return record


# ----------------------------------------------------------------------------
# Step 4 (with `out` opened by _resume): explain every batch not done, writing shards while devices compute.


def _batch_step(explain_fn, key, mesh: Mesh, data_axis: str,
                sample_axis: str | None, batch_size: int, examples: _Examples):
  """Returns ``step(start, stop, xs) -> maps on device`` for one batch.

  Checks the batch's shapes, pads it to the compiled size and dispatches it
  (asynchronously) to the mesh.
  """
  jitted, data_sharding = _build_step(explain_fn, mesh, data_axis, sample_axis)
  key_on_mesh = jax.device_put(key, NamedSharding(mesh, P()))
  n_data = mesh.shape[data_axis]
  compute_batch = -(-batch_size // n_data) * n_data
  expected = (examples.shapes, examples.dtypes)

  def step(start: int, stop: int, xs) -> jax.Array:
    got = ([tuple(p.shape[1:]) for p in xs], [p.dtype for p in xs])
    if got != expected:
      raise ValueError(
          f"data examples [{start}, {stop}) are {_describe(*got)}, earlier "
          f"ones {_describe(*expected)}; all must share one shape and dtype")
    idx = np.arange(start, stop, dtype=np.uint32)
    if stop - start < compute_batch:  # Pad by repeating the last example.
      pad = compute_batch - (stop - start)
      xs = tuple(np.concatenate([p, np.repeat(p[-1:], pad, axis=0)])
                 for p in xs)
      idx = np.concatenate([idx, np.repeat(idx[-1:], pad)])
    return jitted(key_on_mesh, jax.device_put(idx, data_sharding),
                  jax.device_put(xs, data_sharding))

  return step


class _Sink:
  """Where finished batches go: journaled shards on disk, or one array in memory.

  On disk, two writer threads hash, write and fsync shards while the devices
  compute; at most `_MAX_PENDING_WRITES` shards wait in host memory, and
  entries are journaled in order as their writes finish.
  """

  def __init__(self, directory: pathlib.Path | None, examples: _Examples,
               map_shape, map_dtype, advance: Callable[[int], None],
               writer: concurrent.futures.Executor):
    self._directory = directory
    self._lo, self._hi = examples.lo, examples.hi
    self._map_shape, self._map_dtype = map_shape, map_dtype
    self._advance = advance
    self._writer = writer
    self._writes: collections.deque = collections.deque()
    self._in_memory: list[np.ndarray] = []
    self.entries: list[dict[str, Any]] = []  # Journaled shards of this output.

  @property
  def on_disk(self) -> bool:
    return self._directory is not None

  def reuse(self, entry: dict[str, Any]) -> None:
    """Keeps an intact shard of an earlier run."""
    self.entries.append(entry)
    self._advance(entry["stop"] - entry["start"])

  def add(self, start: int, stop: int, maps_device: jax.Array,
          data: str | None = None) -> None:
    """Fetches a computed batch (dropping padding) and stores it (with `data`, its inputs' fingerprint)."""
    maps = np.asarray(jax.device_get(maps_device))[:stop - start]
    if self._directory is not None:
      self._writes.append(self._writer.submit(
          _shards.write_shard, self._directory, start, stop, maps, data))
      self._collect(keep=_MAX_PENDING_WRITES)
    elif self._hi is None:
      self._in_memory.append(maps)
      self._advance(stop - start)
    else:  # Known size: fill one preallocated array, no final copy.
      if not self._in_memory:
        self._in_memory.append(np.empty((self._hi - self._lo, *self._map_shape),
                                        self._map_dtype))
      self._in_memory[0][start - self._lo:stop - self._lo] = maps
      self._advance(stop - start)

  def flush(self) -> None:
    """Waits for every write and journals it."""
    self._collect(keep=0)

  def salvage(self, pending) -> None:
    """After an interruption: stores and journals what is computed, ignoring errors."""
    if self._directory is None:
      return
    with contextlib.suppress(BaseException):
      if pending is not None:
        self.add(*pending)
    while self._writes:
      future = self._writes.popleft()
      with contextlib.suppress(BaseException):
        _shards.append_journal(self._directory, future.result())

  def maps(self) -> np.ndarray:
    """The in-memory maps, in example order."""
    parts = self._in_memory
    return parts[0] if len(parts) == 1 else np.concatenate(parts)

  def _collect(self, keep: int) -> None:
    """Journals finished writes, in order, until at most `keep` remain."""
    while self._writes and (len(self._writes) > keep or self._writes[0].done()):
      entry = self._writes.popleft().result()
      _shards.append_journal(self._directory, entry)
      self.entries.append(entry)
      self._advance(entry["stop"] - entry["start"])


def _check_data(examples: _Examples, done, directory: pathlib.Path
                ) -> set[tuple[int, int]]:
  """The intact shards whose inputs are this data's; other data is refused.

  Reads what can be read before the run (all of an array, the first batch of
  an iterable) and compares each done shard's recorded ``data_sha256`` with
  the fingerprint of the same examples now, before anything is written.

  Raises:
    ValueError: a shard was computed from other inputs (or targets) than the
      same examples of `data`.
  """
  verified = set()
  if not done:
    return verified
  for start, stop, load in examples.ahead():
    entry = done.get((start, stop))
    if entry is None:
      continue
    if _shards.data_sha256(load()) != entry["data_sha256"]:
      what = "inputs" if len(examples.shapes) == 1 else "inputs (or targets)"
      raise ValueError(
          f"out={str(directory)!r} holds maps of other data: examples [{start}, "
          f"{stop}) differ from the {what} its {entry['file']} was computed "
          "from (same shapes and settings, other values). Pass the same data to "
          "resume, another `out`, or overwrite=True to recompute the maps for "
          "this data.")
    verified.add((start, stop))
  return verified


def _explain_all(examples: _Examples, done, sink: _Sink, step,
                 verified=frozenset()) -> int:
  """Explains every batch not in `done` into `sink`; returns the index after the last example read.

  Batch t is dispatched before batch t-1 is fetched, so devices and host
  overlap. On any interruption (an error, Ctrl-C) what is computed is kept,
  so a resumed run has less to do. A done shard not in `verified` (an
  iterable's, read only now) is reused if its inputs' fingerprint matches,
  else recomputed with a warning.
  """
  pending = None  # The batch being computed: (start, stop, maps on device, inputs' fingerprint).
  seen = examples.lo
  try:
    for start, stop, load in examples.chunks():
      seen = stop
      xs = None
      if (start, stop) in done:
        entry = done[(start, stop)]
        if (start, stop) in verified:
          sink.reuse(entry)
          continue
        xs = load()
        digest = _shards.data_sha256(xs)
        if digest == entry["data_sha256"]:
          sink.reuse(entry)
          continue
        warnings.warn(
            f"Redoing shard [{start}, {stop}): its maps were computed from "
            "other data than the examples the data yields now", stacklevel=4)
      xs = load() if xs is None else xs
      digest = _shards.data_sha256(xs) if sink.on_disk else None
      maps = step(start, stop, xs)
      if pending is not None:
        sink.add(*pending)
      pending = (start, stop, maps, digest)
    if pending is not None:
      sink.add(*pending)
      pending = None
    sink.flush()
  except BaseException:
    sink.salvage(pending)
    raise
  return seen


# ----------------------------------------------------------------------------
# Step 5: check the count and finish the output.


def _check_count(examples: _Examples, seen: int, num_examples) -> int:
  """The end of the explained range; an error if data ended short of it."""
  if examples.hi is None:  # An iterable of unknown length is exhausted now.
    return seen
  if seen != examples.hi:
    if examples.hi == examples.total and examples.lo == 0:
      raise ValueError(f"data yielded {seen} examples, fewer than num_examples="
                       f"{num_examples}; pass the true count as num_examples, "
                       "or num_examples=None to count them")
    raise ValueError(
        f"data yielded examples only up to index {seen}, short of the range "
        f"[{examples.lo}, {examples.hi}) of this process; every process must "
        f"get the same data of num_examples={examples.total} examples")
  return examples.hi


def _finish(directory: pathlib.Path | None, run: dict[str, Any], sink: _Sink,
            lo: int, hi: int) -> AttributionResult:
  """Writes the complete manifest (removing stale shards) or wraps the in-memory maps."""
  total = run["num_examples"] if run["num_examples"] is not None else hi
  run = {**run, "num_examples": total, "example_range": [lo, hi]}
  if directory is None:
    maps = sink.maps()
    return AttributionResult(shape=maps.shape, dtype=maps.dtype,
                             manifest={**run, "complete": True}, maps=maps)
  used = sorted(sink.entries, key=lambda e: e["start"])
  keep = {e["file"] for e in used}
  for p in directory.glob("shard-*.npy"):  # Stale shards of an older layout.
    if p.name not in keep:
      p.unlink()
  _shards.write_json_atomic(directory / _shards.MANIFEST,
                            {**run, "complete": True, "shards": used})
  return _shards.load_attributions(directory)
