"""attribute() never mixes, truncates or loses maps: counts, locks, identity, lost manifests."""

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _attribute_worker as worker
from adaptgrad_jax import adapt_smooth, smooth_grad
from adaptgrad_jax._files import LockedError, exclusive_lock
from adaptgrad_jax.attribute import attribute, load_attributions
from adaptgrad_jax.attribute import _attribute as attribute_impl
from adaptgrad_jax.attribute._identity import fingerprint

WORKER = pathlib.Path(worker.__file__)
ATOL = 1e-6
N = 21
KEY = jax.random.key(3)
BOUNDS = (0.0, 1.0)


@pytest.fixture(scope="module")
def xs():
  return worker.toy_data(N)


@pytest.fixture(scope="module")
def ref(xs):
  """Independent reference: one explanation per example, key fold_in(KEY, i)."""
  one = jax.jit(lambda i, x: worker.noisy_grad(jax.random.fold_in(KEY, i), x))
  return np.stack([np.asarray(one(i, x)) for i, x in enumerate(xs)])


def _stats(directory):
  return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino)
          for p in pathlib.Path(directory).glob("shard-*.npy")}


def _run(out, xs, fn=worker.noisy_grad, **kw):
  kw.setdefault("batch_size", 8)
  return attribute(fn, KEY, xs, out=out, progress=False, **kw)


# ----------------------------------------------------------------------------
# 1. num_examples is a check: more or fewer examples are errors.


def test_more_examples_than_num_examples_is_an_error(xs, tmp_path):
  batches = [xs[:10], xs[10:]]
  with pytest.raises(ValueError, match=r"more than num_examples=10 .*batch 1"):
    attribute(worker.noisy_grad, KEY, iter(batches), num_examples=10,
              batch_size=4, progress=False)
  # The extra examples begin exactly at a batch boundary: one more batch is
  # read to find them, also when writing shards.
  with pytest.raises(ValueError, match="more than num_examples=10"):
    _run(tmp_path / "a", iter(batches), num_examples=10, batch_size=5)
  assert json.loads((tmp_path / "a" / "manifest.json").read_text())[
      "complete"] is False

  def endless():
    while True:
      yield xs[:4]

  with pytest.raises(ValueError, match="more than num_examples=6"):
    attribute(worker.noisy_grad, KEY, endless(), num_examples=6,
              progress=False)


def test_fewer_examples_than_num_examples_is_an_error(xs, ref):
  with pytest.raises(ValueError, match=r"yielded 21 examples, fewer than "
                     r"num_examples=30; pass the true count"):
    attribute(worker.noisy_grad, KEY, iter([xs]), num_examples=30,
              progress=False)
  # The exact count passes, however the batches are cut.
  res = attribute(worker.noisy_grad, KEY, iter([xs[:10], xs[10:]]),
                  num_examples=N, batch_size=5, progress=False)
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)


def test_only_the_last_process_checks_the_end(xs, ref, tmp_path):
  """Processes of a multi-host run stop at their slice; the last checks the total."""
  def run(p, data):
    return attribute_impl._attribute(
        worker.noisy_grad, KEY, iter(data), out=tmp_path / f"p{p}",
        batch_size=4, num_examples=N, mesh=None, data_axis="data",
        sample_axis=None, explain_id=None, progress=False, overwrite=False,
        resume=True, example_range=((0, 11), (11, N))[p], process=(p, 2))

  longer = [xs, xs[:3]]  # 24 examples where 21 are declared.
  first = run(0, longer)  # Stops at example 11: cannot see the surplus.
  np.testing.assert_allclose(np.asarray(first), ref[:11], atol=ATOL)
  with pytest.raises(ValueError, match="more than num_examples=21"):
    run(1, longer)


# ----------------------------------------------------------------------------
# 2. One process per output directory.


def _interrupted(xs, k, batch_size):
  for i in range(k):
    yield xs[i * batch_size:(i + 1) * batch_size]
  raise KeyboardInterrupt


def test_a_second_process_is_refused_and_deletes_nothing(xs, ref, tmp_path):
  out = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    _run(out, _interrupted(xs, 2, 8))
  # What another process would have in flight: its temporary shard files.
  in_flight = [out / ".shard-000000000016-000000000021.npy.x1y2.tmp",
               out / ".tmp-shard-000000000016-000000000021.npy.4242"]
  for p in in_flight:
    p.write_bytes(b"half a shard")
  files = {p.name: p.read_bytes() for p in out.iterdir()}
  with exclusive_lock(out / ".lock"):  # That process holds the lock.
    for kw in ({}, {"overwrite": True}):
      with pytest.raises(LockedError, match=r"out='.*run' is in use by another "
                         r"process .*wait for it to finish"):
        _run(out, xs, **kw)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
  # Once it is gone, the run resumes and its stale temporaries are removed.
  res = _run(out, xs)
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)
  assert not any(p.exists() for p in in_flight)


def test_a_second_thread_is_refused(xs, tmp_path):
  """flock locks are per open file: a second call in the same process is refused too."""
  out, started, release = tmp_path / "run", threading.Event(), threading.Event()

  def slow():
    yield xs[:8]
    started.set()
    release.wait(60)
    yield xs[8:]

  errors = []
  thread = threading.Thread(target=lambda: errors.append(_run(out, slow())))
  thread.start()
  try:
    assert started.wait(60)
    with pytest.raises(LockedError):
      _run(out, xs)
  finally:
    release.set()
    thread.join(60)
  assert len(errors) == 1 and errors[0].shape == (N, worker.D_IN)


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(
      [str(WORKER.parents[1]), env.get("PYTHONPATH", "")])
  return env


def _start_paused_worker(tmp_path, out, *, pause_after, go, stdout):
  """Starts the worker's "hold" run on `out` (batches of 4) and returns it once it pauses, holding `out`.

  It pauses after `pause_after` batches and goes on when the file `go` exists.
  """
  paused = tmp_path / "paused"
  spec = {"mode": "hold", "out": str(out), "num_examples": N, "seed": 3,
          "batch_size": 4, "pause_after": pause_after, "paused": str(paused),
          "go": str(go)}
  proc = subprocess.Popen([sys.executable, str(WORKER), json.dumps(spec)],
                          stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=_env())
  try:
    deadline = time.monotonic() + 120
    while not paused.exists():
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline, "the worker never paused"
      time.sleep(0.05)
  except BaseException:
    proc.kill()
    proc.wait(60)
    raise
  return proc


def test_concurrent_process_on_the_same_out(xs, ref, tmp_path):
  """A worker pauses mid-run holding `out`; this process is refused and the worker finishes intact."""
  out, go = tmp_path / "run", tmp_path / "go"
  proc = _start_paused_worker(tmp_path, out, pause_after=3, go=go, stdout=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 60  # the worker's writer threads may still be renaming a shard
    while any(p.name.endswith(".tmp") for p in out.iterdir()) and time.monotonic() < deadline:
      time.sleep(0.05)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(LockedError, match="in use by another process"):
      _run(out, xs, batch_size=4)
    with pytest.raises(LockedError):
      _run(out, xs, batch_size=4, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    go.touch()
    stdout, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr[-3000:]
  report = json.loads(stdout.strip().splitlines()[-1])
  assert report["shape"] == [N, worker.D_IN]
  # The same function fingerprints the same in another process.
  assert report["fingerprint"] == fingerprint(worker.noisy_grad).digest
  res = load_attributions(out, verify=True)
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)


def test_kill_9_releases_the_lock_and_the_run_resumes(xs, ref, tmp_path):
  out = tmp_path / "run"
  proc = _start_paused_worker(tmp_path, out, pause_after=4, go=tmp_path / "never", stdout=subprocess.DEVNULL)
  proc.kill()  # SIGKILL: no cleanup runs.
  proc.wait(60)
  res = _run(out, xs, batch_size=4)
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)
  load_attributions(out, verify=True)


# ----------------------------------------------------------------------------
# 3. The explanation's identity: other hyper-parameters are refused, never mixed.


def _adapt(c=0.95, n=4, bounds=BOUNDS):
  return adapt_smooth(jax.grad(worker.logit), c, n, bounds=bounds)


W_ONES = jnp.ones(worker.D_IN)


def _weighted(w):
  return lambda key, x: worker.noisy_grad(key, x) * w


@pytest.mark.parametrize("other", [
    pytest.param(lambda: _adapt(c=0.5), id="c"),
    pytest.param(lambda: _adapt(n=5), id="n"),
    pytest.param(lambda: _adapt(bounds=(-1.0, 1.0)), id="bounds"),
    pytest.param(lambda: smooth_grad(jax.grad(worker.logit), 0.2, 4,
                                     bounds=BOUNDS), id="method"),
])
def test_other_hyperparameters_are_refused(xs, tmp_path, other):
  # The library's transforms must stay describable (hyper-parameters in
  # closures, partials, dataclasses or pytrees), or this rule breaks.
  for fn in (_adapt(), other()):
    assert fingerprint(fn).digest is not None, fingerprint(fn).why_not
  out = tmp_path / "run"
  first = np.asarray(_run(out, xs, fn=_adapt()))
  before = _stats(out)
  with pytest.raises(ValueError, match="other settings") as err:
    _run(out, xs, fn=other())
  assert "explain_fingerprint" in str(err.value) or "explain_id" in str(
      err.value)
  assert _stats(out) == before  # Nothing rewritten, nothing mixed.
  # The same hyper-parameters (a new function object) resume: nothing redone.
  again = _run(out, xs, fn=_adapt())
  assert _stats(out) == before
  np.testing.assert_array_equal(np.asarray(again), first)


def test_other_weights_are_refused(xs, tmp_path):
  out = tmp_path / "run"
  _run(out, xs, fn=_weighted(W_ONES))
  with pytest.raises(ValueError, match="explain_fingerprint"):
    _run(out, xs, fn=_weighted(W_ONES.at[0].set(2.0)))
  _run(out, xs, fn=_weighted(jnp.ones(worker.D_IN)))  # Equal bytes: resumes.


def test_unidentifiable_explanation_needs_an_explain_id(xs, ref, tmp_path):
  """State the fingerprint cannot read: warn at the start, refuse a resume, accept an id."""
  out = tmp_path / "run"
  model = types.SimpleNamespace(scale=1.0)  # A library object: opaque.
  explain = lambda key, x: worker.noisy_grad(key, x) * model.scale
  with pytest.raises(KeyboardInterrupt), pytest.warns(
      UserWarning, match="cannot be fingerprinted .*SimpleNamespace"):
    _run(out, _interrupted(xs, 1, 8), fn=explain)
  recorded = json.loads((out / "manifest.json").read_text())["explain_id"]
  model.scale = 2.0  # Had it resumed now, two scales would be mixed.
  with pytest.raises(ValueError, match=r"cannot be established.*SimpleNamespace"
                     r".*resume with explain_id="):
    _run(out, xs, fn=explain)
  model.scale = 1.0
  res = _run(out, xs, fn=explain, explain_id=recorded)  # The user vouches.
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)


def test_explicit_id_and_settings_are_the_identity(xs, tmp_path):
  out = tmp_path / "run"
  _run(out, xs, explain_id="toy/v1", settings={"c": 0.95, "n": 4})
  before = _stats(out)
  with pytest.raises(ValueError, match="explain_settings: existing"):
    _run(out, xs, explain_id="toy/v1", settings={"c": 0.5, "n": 4})
  with pytest.raises(ValueError, match="explain_id: existing 'toy/v1'"):
    _run(out, xs, explain_id="toy/v2", settings={"c": 0.95, "n": 4})
  # With an explicit id the function is not inspected: the id is the promise.
  _run(out, xs, fn=_weighted(W_ONES), explain_id="toy/v1",
       settings={"n": 4, "c": 0.95})
  assert _stats(out) == before
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["explain_settings"] == {"c": 0.95, "n": 4}


def test_run_of_an_older_version_without_fingerprint(xs, tmp_path):
  out = tmp_path / "run"
  _run(out, xs)
  path = out / "manifest.json"
  manifest = json.loads(path.read_text())
  for k in ("explain_fingerprint", "explain_fingerprint_unknown",
            "explain_settings"):
    del manifest[k]
  path.write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="recorded no fingerprint"):
    _run(out, xs)
  _run(out, xs, explain_id=manifest["explain_id"])


def test_fingerprint_sees_globals_closures_and_attributes():
  def make(c):
    return lambda key, x: c * x

  class Scaled:
    def __init__(self, c):
      self.c = c

    def __call__(self, key, x):
      return self.c * x

  assert fingerprint(make(1.0)) == fingerprint(make(1.0))
  assert fingerprint(make(1.0)) != fingerprint(make(2.0))
  assert fingerprint(Scaled(1.0)) != fingerprint(Scaled(2.0))
  assert fingerprint(np.ones(3)) != fingerprint(np.ones(3, np.float32))
  global _GLOBAL_SCALE
  _GLOBAL_SCALE = 1.0
  before = fingerprint(_uses_global)
  _GLOBAL_SCALE = 3.0
  assert fingerprint(_uses_global) != before
  assert fingerprint(jax.jit(make(1.0))) != fingerprint(jax.jit(make(2.0)))
  opaque = fingerprint(lambda key, x: x * threading.Lock().locked())
  assert opaque.digest is not None  # Only names: nothing opaque is reached.
  lock = threading.Lock()
  blocked = fingerprint(lambda key, x: (lock, x)[1])
  assert blocked.digest is None and "lock" in blocked.why_not


def test_fingerprint_of_flax_nnx_models_sees_the_weights(xs, tmp_path):
  from flax import nnx  # pylint: disable=import-outside-toplevel

  def mlp(seed):
    return nnx.Sequential(nnx.Linear(worker.D_IN, 4, rngs=nnx.Rngs(seed)),
                          nnx.tanh, nnx.Linear(4, 1, rngs=nnx.Rngs(seed + 1)))

  def explain_with(model):
    return lambda key, x: jax.grad(lambda v: model(v)[0])(
        x + 0.1 * jax.random.normal(key, x.shape))

  assert fingerprint(mlp(0)).digest is not None
  assert fingerprint(mlp(0)) == fingerprint(mlp(0))
  assert fingerprint(mlp(0)) != fingerprint(mlp(1))
  out, model = tmp_path / "run", mlp(0)
  _run(out, xs, fn=explain_with(model))
  model.layers[0].kernel[...] = model.layers[0].kernel[...].at[0, 0].add(1.0)
  with pytest.raises(ValueError, match="explain_fingerprint"):
    _run(out, xs, fn=explain_with(model))
  _run(out, xs, fn=explain_with(mlp(0)))  # The original weights resume.


_GLOBAL_SCALE = 1.0


def _uses_global(key, x):
  return _GLOBAL_SCALE * x


# ----------------------------------------------------------------------------
# 4. A lost or damaged manifest is rebuilt from the journal.


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_lost_manifest_is_rebuilt_from_the_journal(xs, ref, tmp_path, damage):
  out = tmp_path / "run"
  _run(out, xs)
  before = _stats(out)
  path = out / "manifest.json"
  if damage == "deleted":
    path.unlink()
  else:
    path.write_bytes(path.read_bytes()[:40])
  shard = sorted(out.glob("shard-*.npy"))[1]
  raw = bytearray(shard.read_bytes())
  raw[-2] ^= 0xFF  # The journal's sha256 catches a damaged shard too.
  shard.write_bytes(bytes(raw))
  with pytest.warns(UserWarning) as record:
    res = _run(out, xs)
  messages = " ".join(str(w.message) for w in record)
  assert f"{damage if damage == 'deleted' else 'damaged'}" in messages.replace(
      "missing", "deleted")
  assert "rebuilding it from shards.jsonl" in messages
  assert "Redoing shard [8, 16)" in messages
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)
  after = _stats(out)
  assert {k: v for k, v in after.items() if k != shard.name} == {
      k: v for k, v in before.items() if k != shard.name}
  assert json.loads(path.read_text())["complete"] is True
  load_attributions(out, verify=True)


def test_lost_manifest_of_an_interrupted_run(xs, ref, tmp_path):
  out = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    _run(out, _interrupted(xs, 2, 8))
  (out / "manifest.json").unlink()
  with pytest.raises(ValueError, match="key: existing"):  # Checked vs journal.
    with pytest.warns(UserWarning, match="rebuilding"):
      attribute(worker.noisy_grad, jax.random.key(4), xs, out=out,
                batch_size=8, progress=False)
  before = _stats(out)
  with pytest.warns(UserWarning, match="rebuilding"):
    res = _run(out, xs)
  assert {k: _stats(out)[k] for k in before} == before
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)


def test_load_names_the_recovery_and_journal_cannot_point_outside(
    xs, ref, tmp_path):
  out = tmp_path / "run"
  _run(out, xs)
  (out / "manifest.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"call attribute\(\) again with "
                     "the same arguments to rebuild"):
    load_attributions(out)
  # A hostile journal line naming a file outside `out` (with its true hash).
  outside = tmp_path / "outside.npy"
  np.save(outside, np.zeros((8, worker.D_IN), np.float32))
  raw = outside.read_bytes()
  import hashlib  # pylint: disable=import-outside-toplevel
  with open(out / "shards.jsonl", "a") as f:
    f.write(json.dumps({"file": "../outside.npy", "start": 0, "stop": 8,
                        "bytes": len(raw),
                        "sha256": hashlib.sha256(raw).hexdigest()}) + "\n")
  (out / sorted(p.name for p in out.glob("shard-*.npy"))[0]).unlink()
  with pytest.warns(UserWarning) as record:
    res = _run(out, xs)
  messages = " ".join(str(w.message) for w in record)
  assert "rebuilding" in messages and "Redoing shard [0, 8)" in messages
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)
  assert all(f.parent == out for _, _, f in res.shards)


def test_lost_manifest_without_journal_settings_says_how_to_recover(xs,
                                                                    tmp_path):
  out = tmp_path / "run"
  _run(out, xs)
  (out / "manifest.json").unlink()
  journal = out / "shards.jsonl"
  journal.write_text("".join(line + "\n" for line in
                             journal.read_text().splitlines()
                             if '"settings"' not in line))
  with pytest.raises(FileExistsError, match=r"no manifest.json and no journal "
                     r"record.*Restore manifest.json.*overwrite=True"):
    _run(out, xs)
  res = _run(out, xs, overwrite=True)
  assert res.shape == (N, worker.D_IN)


def test_hostile_manifest_is_refused_cleanly(xs, tmp_path):
  out = tmp_path / "run"
  _run(out, xs)
  path = out / "manifest.json"
  manifest = json.loads(path.read_text())
  manifest.update(example_range=5, shards="x", explain_fingerprint=7,
                  batch_size=[8])
  path.write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match=r"(?s)batch_size: existing \[8\].*"
                     r"example_range: existing 5"):
    _run(out, xs)


def test_load_refuses_manifest_pointing_outside(xs, tmp_path):
  out = tmp_path / "run"
  _run(out, xs)
  path = out / "manifest.json"
  manifest = json.loads(path.read_text())
  np.save(tmp_path / "shard-outside.npy", np.zeros((8, worker.D_IN), np.float32))
  manifest["shards"][0]["file"] = "../shard-outside.npy"
  path.write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match=r"malformed shard entry .*rebuild it"):
    load_attributions(out)


# ----------------------------------------------------------------------------
# 6. Errors name the argument, the value and the fix.


@pytest.mark.parametrize("kwargs, error, match", [
    ({"out": ""}, ValueError, r"out='' is empty; pass a directory"),
    ({"overwrite": "yes"}, TypeError, r"overwrite='yes' must be True or False"),
    ({"resume": None}, TypeError, r"resume=None must be True or False"),
    ({"explain_id": ""}, ValueError, r"explain_id='' must be a non-empty"),
    ({"settings": {"c": object()}}, ValueError,
     r"settings=.* must be a dict of JSON values"),
    ({"settings": {"c": float("nan")}}, ValueError, r"settings=\{'c': nan\}"),
    ({"num_examples": -1}, ValueError, r"num_examples=-1 must be"),
])
def test_errors_name_argument_value_and_fix(xs, kwargs, error, match):
  with pytest.raises(error, match=match):
    attribute(worker.noisy_grad, KEY, xs, progress=False, **kwargs)


# ----------------------------------------------------------------------------
# Issue 26: other data, garbled journals, lying headers, links, file modes.


def _files_state(directory):
  """Every file under `directory` (links not followed): name -> (mtime, inode, bytes)."""
  return {str(p.relative_to(directory)): (p.lstat().st_mtime_ns, p.lstat().st_ino, p.lstat().st_size)
          for p in pathlib.Path(directory).rglob("*")}


def test_other_data_of_the_same_shape_is_refused_before_anything_is_written(xs, ref, tmp_path):
  """attribute(f, key, xa, out=o) then (f, key, xb, out=o) returned xa's maps; now refused, o untouched."""
  out = tmp_path / "run"
  targets = np.arange(N) % 3
  explain = lambda key, x, t: worker.noisy_grad(key, x) * (1.0 + t)  # noqa: E731
  _run(out, (xs, targets), fn=explain)
  before = _files_state(out)
  for other in ((xs[::-1].copy(), targets), (xs, (targets + 1) % 3)):  # other inputs; other targets
    with pytest.raises(ValueError, match=r"holds maps of other data: examples \[0, 8\) differ"):
      _run(out, other, fn=explain)
    assert _files_state(out) == before
  np.testing.assert_allclose(np.asarray(load_attributions(out)), ref * (1.0 + targets[:, None]), atol=ATOL)
  # The fix the message names: overwrite=True computes the maps of the new data.
  res = _run(out, (xs[::-1].copy(), targets), fn=explain, overwrite=True)
  np.testing.assert_allclose(np.asarray(res)[0], np.asarray(explain(jax.random.fold_in(KEY, 0), xs[-1], 0)),
                             atol=ATOL)


def test_an_iterable_with_other_data_is_refused_or_its_shards_redone(xs, ref, tmp_path):
  """An iterable is read once: its first batch is checked before writing, later ones as the run reaches them."""
  out = tmp_path / "run"
  _run(out, iter([xs]), num_examples=N)
  before = _files_state(out)
  with pytest.raises(ValueError, match="holds maps of other data"):
    _run(out, iter([xs + 0.5]), num_examples=N)
  assert _files_state(out) == before
  changed = xs.copy()
  changed[17] += 0.25  # in the third shard [16, 21)
  with pytest.warns(UserWarning, match=r"Redoing shard \[16, 21\): its maps were computed from other data"):
    res = _run(out, iter([changed]), num_examples=N)
  one = jax.jit(lambda i, x: worker.noisy_grad(jax.random.fold_in(KEY, i), x))
  np.testing.assert_allclose(np.asarray(res)[:17], ref[:17], atol=ATOL)
  np.testing.assert_allclose(np.asarray(res)[17], np.asarray(one(17, changed[17])), atol=ATOL)


def test_shards_of_an_older_version_without_data_fingerprint_are_redone(xs, ref, tmp_path):
  out = tmp_path / "run"
  _run(out, xs)
  for name in ("manifest.json",):
    manifest = json.loads((out / name).read_text())
    for s in manifest["shards"]:
      del s["data_sha256"]
    (out / name).write_text(json.dumps(manifest))
  lines = [json.loads(line) for line in (out / "shards.jsonl").read_text().splitlines()]
  (out / "shards.jsonl").write_text("".join(
      json.dumps({k: v for k, v in e.items() if k != "data_sha256"}) + "\n" for e in lines))
  with pytest.warns(UserWarning, match="records no fingerprint of its inputs") as record:
    res = _run(out, xs)
  assert len(record) == 3
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)


def test_a_non_utf8_journal_line_is_skipped(xs, ref, tmp_path):
  out = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    _run(out, _interrupted(xs, 2, 8))
  with open(out / "shards.jsonl", "ab") as f:
    f.write(b"\xff\xfe garbled \x80\n" + b"[" * 100_000 + b"\n")  # not UTF-8; nested past json's recursion
  (out / "manifest.json").write_text("[" * 100_000)  # damaged: rebuilt from the journal, read past those lines
  before = _stats(out)
  with pytest.warns(UserWarning, match="damaged; rebuilding"):
    res = _run(out, xs)
  assert {k: _stats(out)[k] for k in before} == before
  np.testing.assert_allclose(np.asarray(res), ref, atol=ATOL)


def test_load_checks_every_header_against_the_manifest_without_verify(xs, tmp_path):
  """A shard rewritten as float64 (the manifest says float32) was served as garbage."""
  out = tmp_path / "run"
  _run(out, xs)
  shard = sorted(out.glob("shard-*.npy"))[1]
  np.save(shard, np.load(shard).astype(np.float64)[:, : worker.D_IN // 2].copy())  # same bytes, float64
  with pytest.raises(ValueError, match=r"holds float64\[8, 6\] by its header, expected float32\[8, 12\]"):
    load_attributions(out)
  np.save(shard, np.zeros((8, worker.D_IN), np.float32, order="F").T.copy().T)  # right shape, Fortran order
  with pytest.raises(ValueError, match="Fortran order"):
    load_attributions(out)


def test_bfloat16_maps_are_served_as_bfloat16(xs, tmp_path):
  out = tmp_path / "run"
  fn = lambda key, x: worker.noisy_grad(key, x).astype(jnp.bfloat16)  # noqa: E731
  res = _run(out, xs, fn=fn)
  assert res.dtype == jnp.bfloat16 and res[3].dtype == jnp.bfloat16 and np.asarray(res).dtype == jnp.bfloat16
  want = np.asarray(fn(jax.random.fold_in(KEY, 3), xs[3]))
  np.testing.assert_array_equal(res[3].view(np.uint16), want.view(np.uint16))


def test_overwrite_and_appends_never_follow_links_out_of_out(xs, tmp_path):
  """A linked process-00007 had its target's shards deleted; a linked shards.jsonl was appended to its target."""
  from adaptgrad_jax._files import SymlinkError

  elsewhere = tmp_path / "elsewhere"
  _run(elsewhere, xs)
  target_state = _files_state(elsewhere)
  out = tmp_path / "run"
  _run(out, xs)
  (out / "process-00007").symlink_to(elsewhere)
  with pytest.raises(SymlinkError, match="process-00007 is a symbolic link"):
    _run(out, xs, overwrite=True)
  assert _files_state(elsewhere) == target_state
  (out / "process-00007").unlink()
  journal = tmp_path / "journal.jsonl"
  journal.write_text("the user's\n")
  (out / "shards.jsonl").unlink()
  (out / "shards.jsonl").symlink_to(journal)
  with pytest.raises(SymlinkError, match="shards.jsonl is a symbolic link .* never writes through links"):
    _run(out, xs)
  assert journal.read_text() == "the user's\n"
  res = _run(out, xs, overwrite=True)  # overwrite removes the link itself, never its target
  assert not (out / "shards.jsonl").is_symlink() and journal.read_text() == "the user's\n"
  assert res.shape == (N, worker.D_IN)
  (out / ".lock").unlink()
  (out / ".lock").symlink_to(tmp_path / "lock-target")
  with pytest.raises(SymlinkError, match=".lock is a symbolic link"):
    _run(out, xs)
  assert not (tmp_path / "lock-target").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_shards_manifest_and_journal_get_the_mode_of_the_umask(xs, tmp_path, umask, mode):
  old = os.umask(umask)
  try:
    _run(tmp_path / "run", xs)
  finally:
    os.umask(old)
  modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
  assert "manifest.json" in modes and "shards.jsonl" in modes and len(modes) == 6  # 3 shards and the lock
  assert set(modes.values()) == {mode}, modes
