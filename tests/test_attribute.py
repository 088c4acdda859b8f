"""Tests for adaptgrad_jax.attribute: sharded, resumable batch attribution."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _attribute_worker as worker
from adaptgrad_jax.attribute import (
    attribute, attribute_multihost, load_attributions, local_mesh,
    merge_process_outputs, process_range, sample_mean)
from adaptgrad_jax.attribute import _attribute as attribute_impl

WORKER = pathlib.Path(worker.__file__)
ATOL = 1e-6  # Batched vs unbatched matmuls round differently (~1e-7).
N = 21


def reference(explain_fn, key, xs):
  """Independent reference: one explanation per example, key fold_in(key, i)."""
  one = jax.jit(lambda i, x: explain_fn(jax.random.fold_in(key, i), x))
  return np.stack([np.asarray(one(i, x)) for i, x in enumerate(xs)])


@pytest.fixture(scope="module")
def xs():
  return worker.toy_data(N)


@pytest.fixture(scope="module")
def fns():
  return worker.explain_fns()


@pytest.fixture(scope="module")
def refs(fns, xs):
  key = jax.random.key(3)
  return {name: reference(fn, key, xs) for name, fn in fns.items()}


def _stats(directory):
  return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino)
          for p in pathlib.Path(directory).glob("shard-*.npy")}


def _env(**extra):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(WORKER.parents[1]), env.get("PYTHONPATH", "")])
  env.update(extra)
  return env


# ----------------------------------------------------------------------------
# Determinism: batch size, iterators, devices.


@pytest.mark.parametrize("batch_size", [1, 64])
def test_matches_reference_for_any_batch_size(fns, xs, refs, batch_size):
  res = attribute(fns["noisy_grad"], jax.random.key(3), xs,
                  batch_size=batch_size, progress=False)
  assert res.shape == (N, worker.D_IN) and res.path is None
  np.testing.assert_allclose(np.asarray(res), refs["noisy_grad"], atol=ATOL)


def test_adapt_smooth(fns, xs, refs, tmp_path):
  res = attribute(fns["adapt_smooth"], jax.random.key(3), xs, batch_size=8,
                  out=tmp_path / "a", progress=False)
  np.testing.assert_allclose(np.asarray(res), refs["adapt_smooth"], atol=ATOL)
  fn = fns["adapt_smooth"]  # The default id names it; the fingerprint identifies it.
  assert res.manifest["explain_id"] == attribute_impl._default_explain_id(fn)
  assert len(res.manifest["explain_fingerprint"]) == 64


def test_sample_mean_averages_fold_in_samples(xs, refs):
  """sample_mean's map is the mean of n maps with keys fold_in(key_i, j)."""
  one = jax.jit(worker.noisy_grad)
  k = jax.random.fold_in(jax.random.key(3), 4)  # Example 4's key.
  manual = np.mean([one(jax.random.fold_in(k, j), xs[4]) for j in range(4)], 0)
  np.testing.assert_allclose(refs["sample_mean"][4], manual, atol=ATOL)
  assert not np.allclose(manual, one(k, xs[4]), atol=1e-3)  # Really averaged.
  # attribute() of sample_mean, sharded over samples or not, is compared with
  # refs["sample_mean"] in test_identical_on_8_devices_and_sample_axis.


def test_tuple_examples_pass_per_example_targets(xs, tmp_path):
  """(inputs, labels): explain_fn(key, x, label), e.g. the label's logit."""
  labels = np.arange(N, dtype=np.int32) % worker.D_OUT

  def explain(key, x, label):
    noisy = x + 0.1 * jax.random.normal(key, x.shape)
    return jax.grad(worker.logit)(noisy, label)

  key = jax.random.key(3)
  one = jax.jit(lambda i, x, t: explain(jax.random.fold_in(key, i), x, t))
  ref = np.stack([one(i, xs[i], labels[i]) for i in range(N)])
  res = attribute(explain, key, (xs, labels), batch_size=8, progress=False)
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)
  batches = [(xs[:5], labels[:5]), (xs[5:], labels[5:])]
  res = attribute(explain, key, iter(batches), batch_size=8, out=tmp_path / "t",
                  progress=False)
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)
  assert res.manifest["input_dtype"] == ["float32", "int32"]
  with pytest.raises(ValueError, match=r"lengths \[21, 20\]"):
    attribute(explain, key, (xs, labels[:-1]))


def test_each_call_sees_current_weights():
  """No stale compiled program: a closure over changed weights is re-traced."""
  weights = [jnp.ones(3)]
  explain = lambda key, x: x * weights[0]
  xs = np.ones((4, 3), np.float32)
  first = np.asarray(attribute(explain, jax.random.key(0), xs, progress=False))
  weights[0] = jnp.full(3, 2.0)
  second = np.asarray(attribute(explain, jax.random.key(0), xs, progress=False))
  np.testing.assert_array_equal(first, 1.0)
  np.testing.assert_array_equal(second, 2.0)


def test_iterator_input_with_ragged_batches(fns, xs, refs, tmp_path):
  sizes = [3, 1, 7, 2, 8]
  batches = np.split(xs, np.cumsum(sizes)[:-1])
  res = attribute(fns["noisy_grad"], jax.random.key(3), iter(batches),
                  batch_size=5, out=tmp_path / "it", progress=False)
  np.testing.assert_allclose(np.asarray(res), refs["noisy_grad"], atol=ATOL)
  # Shards follow batch_size, not the iterator's chunking.
  assert [(s, e) for s, e, _ in res.shards] == [
      (0, 5), (5, 10), (10, 15), (15, 20), (20, 21)]
  np.testing.assert_array_equal(res[3:12], np.asarray(res)[3:12])
  np.testing.assert_array_equal(res[[20, 0]], np.asarray(res)[[20, 0]])
  with pytest.raises(ValueError, match="num_examples=30"):
    attribute(fns["noisy_grad"], jax.random.key(3), iter(batches),
              num_examples=30, progress=False)


def test_identical_on_8_devices_and_sample_axis(fns, xs, refs, tmp_path):
  """A subprocess with 8 forced host devices reproduces the 1-device maps."""
  runs = [
      {"name": "noisy_b5", "fn": "noisy_grad", "batch_size": 5,
       "mesh": [8], "axes": ["data"]},
      {"name": "adapt_b16", "fn": "adapt_smooth", "batch_size": 16,
       "disk": True},
      {"name": "samples_4x2", "fn": "sample_mean", "batch_size": 6,
       "samples": 2, "sample_axis": "samples"},
  ]
  spec = {"mode": "devices", "num_examples": N, "seed": 3,
          "out": str(tmp_path), "runs": runs}
  subprocess.run(
      [sys.executable, str(WORKER), json.dumps(spec)], check=True,
      timeout=120, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8",
                            JAX_PLATFORMS="cpu"))
  assert json.loads((tmp_path / "info.json").read_text())["device_count"] == 8
  assert jax.device_count() == 1
  for run in runs:  # refs: computed here, on 1 device, one example at a time.
    there = np.load(tmp_path / f"{run['name']}.npy")
    np.testing.assert_allclose(there, refs[run["fn"]], atol=ATOL,
                               err_msg=run["name"])
  # The 8-device output on disk reads back, shard checksums intact.
  disk = load_attributions(tmp_path / "adapt_b16", verify=True)
  np.testing.assert_array_equal(np.asarray(disk),
                                np.load(tmp_path / "adapt_b16.npy"))


# ----------------------------------------------------------------------------
# Resume, corruption, overwrite protection.


def _interrupted(xs, k, batch_size):
  """Yields batches, then fails as a crash would after k of them."""
  for i in range(k):
    yield xs[i * batch_size:(i + 1) * batch_size]
  raise KeyboardInterrupt


def test_resume_after_interruption(fns, xs, refs, tmp_path):
  out, key, fn = tmp_path / "run", jax.random.key(3), fns["noisy_grad"]
  with pytest.raises(KeyboardInterrupt):
    attribute(fn, key, _interrupted(xs, 3, 4), batch_size=4, out=out,
              progress=False)
  before = _stats(out)
  assert sorted(before) == [f"shard-{s:012d}-{s + 4:012d}.npy"
                            for s in (0, 4, 8)]
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["complete"] is False
  with pytest.raises(ValueError, match="not complete"):
    load_attributions(out)
  # A crash mid-write leaves a temp file and half a journal line behind.
  (out / ".tmp-shard-000000000012-000000000016.npy.123").write_bytes(b"xx")
  with open(out / "shards.jsonl", "a") as f:
    f.write('{"file": "shard-0000')

  res = attribute(fn, key, xs, batch_size=4, out=out, progress=False)
  after = _stats(out)
  assert {k: after[k] for k in before} == before  # Finished shards untouched.
  assert len(after) == 6 and not list(out.glob(".tmp-*"))
  np.testing.assert_allclose(np.asarray(res), refs["noisy_grad"], atol=ATOL)
  assert json.loads((out / "manifest.json").read_text())["complete"] is True
  # Running again recomputes nothing.
  attribute(fn, key, xs, batch_size=4, out=out, progress=False)
  assert _stats(out) == after


def test_corrupt_and_truncated_shards_are_redone(fns, xs, refs, tmp_path):
  out, key, fn = tmp_path / "run", jax.random.key(3), fns["noisy_grad"]
  attribute(fn, key, xs, batch_size=8, out=out, progress=False)
  files = sorted(out.glob("shard-*.npy"))
  before = _stats(out)
  raw = bytearray(files[1].read_bytes())
  raw[-3] ^= 0xFF  # Flip bits in the data, not the header.
  files[1].write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="sha256"):
    load_attributions(out, verify=True)
  load_attributions(out)  # without verify only the headers and sizes are read
  files[2].write_bytes(files[2].read_bytes()[:100])  # Truncated.
  with pytest.raises(ValueError, match="no readable .npy header"):
    load_attributions(out)  # even without verify
  with pytest.warns(UserWarning, match="Redoing shard") as record:
    res = attribute(fn, key, xs, batch_size=8, out=out, progress=False)
  assert len(record) == 2
  np.testing.assert_allclose(np.asarray(res), refs["noisy_grad"], atol=ATOL)
  assert _stats(out)[files[0].name] == before[files[0].name]
  load_attributions(out, verify=True)


def test_existing_outputs_are_protected(fns, xs, tmp_path):
  out, key, fn = tmp_path / "run", jax.random.key(3), fns["noisy_grad"]
  attribute(fn, key, xs, batch_size=8, out=out, progress=False)
  with pytest.raises(FileExistsError, match="overwrite=True"):
    attribute(fn, key, xs, batch_size=8, out=out, resume=False, progress=False)
  with pytest.raises(ValueError, match="key: existing"):
    attribute(fn, jax.random.key(4), xs, batch_size=8, out=out, progress=False)
  with pytest.raises(ValueError, match="explain_id"):
    attribute(fn, key, xs, batch_size=8, out=out, explain_id="other model",
              progress=False)
  with pytest.raises(ValueError, match="batch_size: existing 8"):
    attribute(fn, key, xs, batch_size=4, out=out, progress=False)
  with pytest.raises(ValueError, match="num_examples"):
    attribute(fn, key, xs[:10], batch_size=8, out=out, progress=False)
  res = attribute(fn, jax.random.key(4), xs[:10], batch_size=4, out=out,
                  overwrite=True, progress=False)
  assert res.shape == (10, worker.D_IN) and len(list(out.glob("shard-*"))) == 3
  # A file, or a directory of someone else's files, is not an output.
  (tmp_path / "file").write_text("x")
  with pytest.raises(FileExistsError, match="is a file"):
    attribute(fn, key, xs, out=tmp_path / "file", progress=False)
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="no manifest.json"):
    attribute(fn, key, xs, out=tmp_path / "foreign", progress=False)
  assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True, None])
def test_bad_batch_size(fns, xs, batch_size):
  with pytest.raises(ValueError, match=f"batch_size={batch_size!r}"):
    attribute(fns["noisy_grad"], jax.random.key(0), xs, batch_size=batch_size)


def test_bad_inputs_are_named(fns, xs):
  fn, key = fns["noisy_grad"], jax.random.key(0)
  with pytest.raises(ValueError, match="batch 1 holds examples"):
    attribute(fn, key, [xs[:2], xs[:2, :5]], progress=False)
  with pytest.raises(ValueError, match="sample_mean"):
    attribute(fn, key, xs, sample_axis="samples", progress=False)
  with pytest.raises(ValueError, match="needs a mesh"):
    attribute(fns["sample_mean"], key, xs, sample_axis="samples")
  with pytest.raises(ValueError, match="data_axis='data'"):
    attribute(fn, key, xs, mesh=jax.make_mesh((1,), ("batch",)))
  with pytest.raises(ValueError, match="one array per example"):
    attribute(lambda k, x: (x, x), key, xs, progress=False)
  with pytest.raises(ValueError, match="no examples"):
    attribute(fn, key, iter([]), progress=False)
  with pytest.raises(ValueError, match="not a PRNG key"):
    attribute(fn, jnp.zeros(2), xs)
  with pytest.raises(TypeError, match="is a path"):
    attribute(fn, key, "images/")
  with pytest.raises(ValueError, match="positive integer"):
    sample_mean(fn, 0)
  with pytest.raises(ValueError, match="num_devices=2 must be"):
    local_mesh(2)
  with pytest.raises(ValueError, match="samples=2 must be a positive divisor"):
    local_mesh(1, samples=2)


# ----------------------------------------------------------------------------
# Multi-host.


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_process_ranges_tile_the_examples(count):
  ranges = [process_range(21, p, count) for p in range(count)]
  assert ranges[0][0] == 0 and ranges[-1][1] == 21
  assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
  assert max(h - l for l, h in ranges) - min(h - l for l, h in ranges) <= 1


def test_process_local_shards_merge(fns, xs, refs, tmp_path):
  """Processes that only do their own range (no collectives) merge exactly."""
  key, fn = jax.random.key(3), fns["noisy_grad"]
  for p in (1, 0):  # Any order.
    attribute_impl._attribute(
        fn, key, xs, out=tmp_path / f"process-{p:05d}", batch_size=4,
        num_examples=N, mesh=None, data_axis="data", sample_axis=None,
        explain_id=None, progress=False, overwrite=False, resume=True,
        example_range=process_range(N, p, 2), process=(p, 2))
  with pytest.raises(FileNotFoundError, match="merge_process_outputs"):
    load_attributions(tmp_path)
  res = merge_process_outputs(tmp_path, verify=True)
  np.testing.assert_allclose(np.asarray(res), refs["noisy_grad"], atol=ATOL)
  np.testing.assert_array_equal(np.asarray(load_attributions(tmp_path)),
                                np.asarray(res))
  (tmp_path / "process-00001" / "manifest.json").unlink()
  with pytest.raises(ValueError, match=r"missing \[1\]"):
    merge_process_outputs(tmp_path)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_on_localhost(refs, tmp_path):
  """jax.distributed on the CPU backend: 2 processes x 2 devices, gloo."""
  port, out = _free_port(), tmp_path / "mh"
  procs = []
  for pid in range(2):
    spec = {"mode": "multihost", "process_id": pid, "port": port, "seed": 3,
            "num_examples": N, "batch_size": 4, "out": str(out),
            "local_devices": 2}
    procs.append(subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(JAX_PLATFORMS="cpu")))
  outputs = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=120)
      assert p.returncode == 0, stderr[-3000:]
      outputs.append(json.loads(stdout.strip().splitlines()[-1]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert sorted(o["process"] for o in outputs) == [0, 1]
  assert all(o["global_devices"] == 4 and o["local_devices"] == 2 and
             o["shape"] == [N, worker.D_IN] for o in outputs)
  res = load_attributions(out, verify=True)
  np.testing.assert_allclose(np.asarray(res), refs["noisy_grad"], atol=ATOL)
  assert {f.parent.name for _, _, f in res.shards} == {"process-00000",
                                                       "process-00001"}


def test_multihost_needs_out_and_count(fns, xs, monkeypatch):
  with pytest.raises(ValueError, match="out=None"):
    attribute_multihost(fns["noisy_grad"], jax.random.key(0), xs, out=None)
  with pytest.raises(ValueError, match="num_examples"):
    attribute_multihost(fns["noisy_grad"], jax.random.key(0), iter([xs]),
                        out="unused")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  with pytest.raises(RuntimeError, match="initialize_distributed"):
    attribute_multihost(fns["noisy_grad"], jax.random.key(0), xs, out="unused")
