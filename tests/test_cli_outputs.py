"""The CLI loses nothing and overwrites nothing (issue 15, section 4).

Every output is written atomically (an interruption or a full disk leaves
whole files only and the same command continues), output names never collide,
a busy ``--out`` is refused, and each mistake is one line with a non-zero exit
code. All through ``main([...])`` with the MNIST MLP (``--weights random``)
and 28x28 images built here.
"""

import contextlib
import errno
import functools
import json
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from _cli_errors import error_line as _error_line
from adaptgrad_jax import _files, flax_adapters, models
from adaptgrad_jax.cli import main

PIL = pytest.importorskip("PIL")
from PIL import Image  # pylint: disable=wrong-import-position

MLP = ["--model", "mlp", "--weights", "random"]
LOCK = ".adaptgrad-jax.lock"


def _digit(path, seed):
  """A 28x28 grey PNG, different per seed."""
  path.parent.mkdir(parents=True, exist_ok=True)
  image = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
  Image.fromarray(image).save(path)
  return path


@functools.lru_cache(maxsize=1)
def _mlp_grad():
  """The gradient of the model ``--model mlp --weights random`` builds, jitted once."""
  model = models.mlp(rngs=nnx.Rngs(0))
  model.eval()
  return jax.jit(jax.grad(flax_adapters.nnx_target_fn(model)))


def _grad_map(path, target):
  """The library's plain gradient of the random MLP for one image: the reference."""
  x = np.asarray(Image.open(path), np.float32)[..., None] / 255.0
  return np.asarray(_mlp_grad()(x, target))


def _leftovers(folder):
  """Temporary files of atomic writes still in a folder."""
  return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------
# 2. Unique output names.


def test_same_stem_in_two_folders_gives_three_distinct_maps(tmp_path, capsys):
  """``cat.png sub/cat.png cat-2.png``: three maps, each of its own image (no map lost)."""
  images = [_digit(tmp_path / "cat.png", 1), _digit(tmp_path / "sub" / "cat.png", 2),
            _digit(tmp_path / "cat-2.png", 3)]
  out = tmp_path / "maps"
  argv = ["explain", *map(str, images), *MLP, "--method", "grad", "--target", "4", "--out", str(out)]
  assert main(argv) == 0
  capsys.readouterr()
  stems = ["cat", "sub_cat", "cat-2"]
  assert sorted(p.name for p in out.glob("*.npy")) == sorted(f"{s}_grad.npy" for s in stems)
  for image, stem in zip(images, stems):
    np.testing.assert_allclose(np.load(out / f"{stem}_grad.npy"), _grad_map(image, 4), rtol=1e-5, atol=1e-7)
  records = json.loads((out / "explain.json").read_text())["images"]
  assert [(r["image"], r["npy"]) for r in records] == [(str(i), f"{s}_grad.npy") for i, s in zip(images, stems)]


@pytest.mark.parametrize("names", [("cat.png", "cat.jpg"), ("Cat.png", "cat.png")])
def test_stems_that_still_collide_are_refused_before_any_work(names, tmp_path, capsys):
  folder = tmp_path / "in"
  images = [_digit(folder / name, i) for i, name in enumerate(names)]
  if len(list(folder.iterdir())) < 2:
    pytest.skip("case-insensitive file system")
  out = tmp_path / "maps"
  assert main(["explain", *map(str, images), *MLP, "--out", str(out)]) == 2
  err = _error_line(capsys)
  assert str(images[0]) in err and str(images[1]) in err and "rename one" in err
  assert not out.exists()


def test_the_same_file_twice_is_explained_once(tmp_path, capsys):
  image = _digit(tmp_path / "in" / "a.png", 0)
  out = tmp_path / "maps"
  assert main(["explain", str(image), str(tmp_path / "in"), *MLP, "--method", "grad", "--out", str(out)]) == 0
  capsys.readouterr()
  assert [r["npy"] for r in json.loads((out / "explain.json").read_text())["images"]] == ["a_grad.npy"]


def test_out_inside_the_inputs_is_refused(tmp_path, capsys):
  folder = tmp_path / "in"
  _digit(folder / "a.png", 0)
  assert main(["explain", str(folder), *MLP, "--out", str(folder)]) == 2
  assert "also an input folder" in _error_line(capsys)


# ----------------------------------------------------------------------------
# 3. A busy --out.


@pytest.mark.parametrize("command", ["explain", "convergence", "confidence", "demo"])
def test_a_busy_out_is_refused(command, tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("ADAPTGRAD_JAX_CACHE", str(tmp_path / "cache"))
  image = _digit(tmp_path / "a.png", 0)
  out = tmp_path / "maps"
  out.mkdir()
  argv = [command, "--quick", "--out", str(out)] if command == "demo" else [
    command, str(image), *MLP, "--n", "2", "--ns", "3", "--cs", "0.9", "--out", str(out)]
  if command == "explain":
    argv = [a for a in argv if a not in ("--ns", "3", "--cs", "0.9")]
  elif command == "convergence":  # one N: the run after the lock is freed compiles 3 programs, not 5
    argv = [a for a in argv if a not in ("--cs", "0.9")]
  elif command == "confidence":
    argv = [a for a in argv if a not in ("--ns", "3")]
  with _files.exclusive_lock(out / LOCK):  # a concurrent run holds the folder
    assert main(argv) == 1
  err = _error_line(capsys)
  assert f"--out {out} is in use by another process" in err and str(out / LOCK) in err
  assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing written
  if command != "demo":  # free again: the same command runs
    assert main(argv) == 0


# ----------------------------------------------------------------------------
# 1. Atomic outputs; an interrupted run continues.


class _FailingFile:
  """A file whose writes fail (a full disk) or are interrupted (Ctrl-C) half way."""

  def __init__(self, f, error):
    self._f, self._error = f, error

  def write(self, data):
    self._f.write(bytes(data)[: max(1, len(data) // 2)])
    raise self._error

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()

  def __getattr__(self, name):
    return getattr(self._f, name)


@contextlib.contextmanager
def _fail_writes_after(monkeypatch, folder, count, error):
  """The first ``count`` files written under ``folder`` succeed, the next fail with ``error``."""
  if not sys.platform.startswith("linux"):
    pytest.skip("finds the file of a descriptor through /proc")
  real = os.fdopen
  seen = []

  def fdopen(fd, *args, **kwargs):
    f = real(fd, *args, **kwargs)
    try:
      target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
      return f
    if not target.startswith(str(folder) + os.sep):
      return f
    seen.append(target)
    return f if len(seen) <= count else _FailingFile(f, error)

  with monkeypatch.context() as patch:
    patch.setattr(os, "fdopen", fdopen)
    yield seen


@pytest.mark.parametrize("kind", ["disk_full", "ctrl_c"])
def test_an_interrupted_run_leaves_whole_files_and_the_same_command_continues(kind, tmp_path, capsys, monkeypatch):
  images = [_digit(tmp_path / "in" / f"{name}.png", i) for i, name in enumerate("abc")]
  out = tmp_path / "maps"
  argv = ["explain", *map(str, images), *MLP, "--method", "grad", "--target", "2", "--out", str(out)]
  error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if kind == "disk_full" else KeyboardInterrupt()
  # Files in order: explain.json (started), a.npy, a.png, b.npy <- fails half way.
  with _fail_writes_after(monkeypatch, out, 3, error):
    code = main(argv)
  captured = capsys.readouterr()
  assert "Traceback" not in captured.err
  if kind == "disk_full":
    assert code == 1
    line = [l for l in captured.err.splitlines() if "error:" in l]
    assert len(line) == 1 and f"{out / 'b_grad.npy'}: No space left on device" in line[0]
    assert "free some space" in line[0]
  else:
    assert code == 130
    assert "interrupted" in captured.err and "run the same command again to continue" in captured.err
  assert _leftovers(out) == []
  assert not (out / "b_grad.npy").exists()  # no partial file under a final name
  np.testing.assert_allclose(np.load(out / "a_grad.npy"), _grad_map(images[0], 2), rtol=1e-5, atol=1e-7)
  assert Image.open(out / "a_grad.png").size == (28, 28)
  record = json.loads((out / "explain.json").read_text())
  assert record["complete"] is False
  done_before = (out / "a_grad.npy").stat().st_mtime_ns

  # The same command, without --overwrite, continues: a is kept, b and c are written.
  assert main(argv) == 0
  assert "1 already done, continuing" in capsys.readouterr().err.replace("\n", " ")
  assert (out / "a_grad.npy").stat().st_mtime_ns == done_before
  for image in images:
    name = image.stem
    np.testing.assert_allclose(np.load(out / f"{name}_grad.npy"), _grad_map(image, 2), rtol=1e-5, atol=1e-7)
  record = json.loads((out / "explain.json").read_text())
  assert record["complete"] is True and [r["npy"] for r in record["images"]] == ["a_grad.npy", "b_grad.npy",
                                                                               "c_grad.npy"]
  assert _leftovers(out) == []


def test_a_full_disk_while_writing_the_record_names_it(tmp_path, capsys, monkeypatch):
  image = _digit(tmp_path / "a.png", 0)
  out = tmp_path / "maps"
  with _fail_writes_after(monkeypatch, out, 0, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))):
    assert main(["explain", str(image), *MLP, "--method", "grad", "--out", str(out)]) == 1
  assert f"{out / 'explain.json'}: No space left on device" in _error_line(capsys)
  assert not out.exists()  # no file was written: the folder the command created is gone (no lock file left)


def test_a_truncated_later_image_fails_before_any_output(tmp_path, capsys):
  good = _digit(tmp_path / "in" / "a.png", 0)
  bad = tmp_path / "in" / "b.png"
  data = _digit(tmp_path / "full.png", 1).read_bytes()
  bad.write_bytes(data[: len(data) // 2])  # the header is intact: Image.open succeeds
  with Image.open(bad) as img:
    assert img.size == (28, 28)
  out = tmp_path / "maps"
  assert main(["explain", str(good), str(bad), *MLP, "--out", str(out)]) == 1
  err = _error_line(capsys)
  assert f"cannot read image {bad}" in err and "truncated" in err
  assert not out.exists()


def test_outputs_of_an_unrecorded_or_unreadable_run_are_not_replaced(tmp_path, capsys):
  image = _digit(tmp_path / "a.png", 0)
  out = tmp_path / "maps"
  out.mkdir()
  argv = ["explain", str(image), *MLP, "--method", "grad", "--out", str(out)]
  (out / "a_grad.npy").write_bytes(b"someone else's file")
  assert main(argv) == 1
  err = _error_line(capsys)
  assert f"{out / 'a_grad.npy'} already exists" in err and "--overwrite" in err
  assert (out / "a_grad.npy").read_bytes() == b"someone else's file"
  (out / "explain.json").write_text("{not json")
  assert main(argv) == 1
  err = _error_line(capsys)
  assert "explain.json exists but is not a readable record" in err and "--overwrite" in err
  assert main(argv + ["--overwrite"]) == 0
  assert np.load(out / "a_grad.npy").shape == (28, 28, 1)


@pytest.mark.parametrize("kind", ["confidence", "convergence"])
def test_sweeps_continue_do_nothing_when_done_and_refuse_other_settings(kind, tmp_path, capsys, monkeypatch):
  image = _digit(tmp_path / "a.png", 0)
  out = tmp_path / "fig"
  # Two levels / one N: continuing is the point here, not the grid (each N is 2 more compiles).
  extra = ["--cs", "0.5,0.9"] if kind == "confidence" else ["--ns", "3"]
  argv = [kind, str(image), *MLP, "--n", "3", "--target", "1", *extra, "--out", str(out)]
  png, npz = out / f"a_{kind}.png", out / f"a_{kind}.npz"
  # Interrupted after the .npz (written first): the rerun continues without --overwrite.
  with _fail_writes_after(monkeypatch, out, 1, KeyboardInterrupt()):
    assert main(argv) == 130
  assert npz.exists() and not png.exists() and _leftovers(out) == []
  capsys.readouterr()
  assert main(argv) == 0
  assert png.exists() and json.loads(str(np.load(npz)["settings"]))["command"] == kind
  stamp = png.stat().st_mtime_ns
  assert main(argv) == 0  # finished: nothing to do
  assert "nothing to do" in capsys.readouterr().out
  assert png.stat().st_mtime_ns == stamp
  assert main(argv[:-2] + ["--seed", "1", "--out", str(out)]) == 1
  assert "already exists" in _error_line(capsys)
  assert png.stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------
# 5. Every mistake is one line with a non-zero exit code.


@pytest.mark.parametrize("command", ["explain", "convergence", "confidence", "demo"])
def test_empty_out_is_a_usage_error(command, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  image = _digit(tmp_path / "a.png", 0)
  argv = [command, "--out", ""] if command == "demo" else [command, str(image), *MLP, "--out", ""]
  assert main(argv) == 2
  assert "--out '' is empty" in _error_line(capsys)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_out_below_a_file_is_one_line(tmp_path, capsys):
  image = _digit(tmp_path / "a.png", 0)
  blocker = tmp_path / "file"
  blocker.write_text("x")
  assert main(["explain", str(image), *MLP, "--out", str(blocker / "maps")]) == 1
  err = _error_line(capsys)
  assert f"cannot create --out {blocker / 'maps'}" in err and "Not a directory" in err
  assert main(["explain", str(image), *MLP, "--out", str(blocker)]) == 2
  assert "is a file; pass a folder" in _error_line(capsys)


def test_a_killed_run_s_temporaries_are_removed_and_nothing_else(tmp_path, capsys):
  """kill -9 skips atomic_write's clean-up; the next run (holding the lock) removes only our temporaries."""
  image = _digit(tmp_path / "a.png", 0)
  out = tmp_path / "maps"
  out.mkdir()
  (out / ".a_grad.npy.x1y2z3w4.tmp").write_bytes(b"half a map")
  (out / ".notes.txt.tmp").write_text("the user's")
  assert main(["explain", str(image), *MLP, "--method", "grad", "--out", str(out)]) == 0
  capsys.readouterr()
  assert _leftovers(out) == [".notes.txt.tmp"]


def test_an_image_changed_since_the_interrupted_run_is_not_mixed_in(tmp_path, capsys, monkeypatch):
  images = [_digit(tmp_path / "in" / f"{name}.png", i) for i, name in enumerate("ab")]
  out = tmp_path / "maps"
  argv = ["explain", *map(str, images), *MLP, "--method", "grad", "--out", str(out)]
  with _fail_writes_after(monkeypatch, out, 3, KeyboardInterrupt()):
    assert main(argv) == 130
  _digit(images[0], 7)  # a.png replaced by another picture
  os.utime(images[0], ns=(1, 1))
  assert main(argv) == 1
  err = _error_line(capsys)
  assert "explain.json records another run (differs in images)" in err and "--overwrite" in err


def test_too_long_output_names_are_refused_before_any_work(tmp_path, capsys):
  image = _digit(tmp_path / ("x" * 240 + ".png"), 0)
  out = tmp_path / "maps"
  assert main(["explain", str(image), *MLP, "--out", str(out)]) == 2
  assert "rename the image" in _error_line(capsys)
  assert not out.exists()


def test_interrupted_while_writing_the_final_record_the_rerun_completes_it(tmp_path, capsys, monkeypatch):
  image = _digit(tmp_path / "a.png", 0)
  out = tmp_path / "maps"
  argv = ["explain", str(image), *MLP, "--method", "grad", "--out", str(out)]
  # explain.json (started), a.npy, a.png, explain.json (final) <- interrupted.
  with _fail_writes_after(monkeypatch, out, 3, KeyboardInterrupt()):
    assert main(argv) == 130
  assert json.loads((out / "explain.json").read_text())["complete"] is False
  stamp = (out / "a_grad.npy").stat().st_mtime_ns
  capsys.readouterr()
  assert main(argv) == 0
  assert "wrote 1 file to" in capsys.readouterr().out  # explain.json, completed; the maps were whole
  record = json.loads((out / "explain.json").read_text())
  assert record["complete"] is True and record["images"][0]["npy"] == "a_grad.npy"
  assert (out / "a_grad.npy").stat().st_mtime_ns == stamp


def test_a_busy_out_is_refused_across_processes(tmp_path):
  """The real case: another process holds the lock of --out (here the test process)."""
  import subprocess

  image = _digit(tmp_path / "a.png", 0)
  out = tmp_path / "maps"
  out.mkdir()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  with _files.exclusive_lock(out / LOCK):
    proc = subprocess.run(
      [sys.executable, "-m", "adaptgrad_jax", "explain", str(image), *MLP, "--out", str(out)],
      capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().count("\n") == 0 and "is in use by another process" in proc.stderr
  assert sorted(p.name for p in out.iterdir()) == [LOCK]


def test_an_error_creating_the_temporary_file_names_the_output_not_the_temporary(tmp_path, capsys, monkeypatch):
  """E.g. a folder that became read-only: the message names the file the user asked for."""
  image = _digit(tmp_path / "a.png", 0)
  out = tmp_path / "maps"
  real = _files.temp_file

  def temp_file(directory, *, prefix, suffix):
    if str(directory) == str(out):
      temporary = os.path.join(str(out), f"{prefix}abcd1234{suffix}")
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), temporary)
    return real(directory, prefix=prefix, suffix=suffix)

  monkeypatch.setattr(_files, "temp_file", temp_file)
  assert main(["explain", str(image), *MLP, "--out", str(out)]) == 1
  err = _error_line(capsys)
  assert f"{out / 'explain.json'}: Permission denied" in err and ".tmp" not in err


# ----------------------------------------------------------------------------
# 6. Outputs a user can share; a refused run leaves nothing (issue 26).


def _modes(folder):
  return {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask, mode", [(0o022, "0o644"), (0o077, "0o600")])
def test_every_output_file_gets_the_mode_of_the_umask(umask, mode, tmp_path, capsys):
  """Maps, overlays, JSON and the attribution shards of a folder run: 0644 under umask 022 (mkstemp gave 0600)."""
  images = [_digit(tmp_path / "in" / f"{name}.png", i) for i, name in enumerate("ab")]
  out = tmp_path / "maps"
  old = os.umask(umask)
  try:
    assert main(["explain", str(tmp_path / "in"), *MLP, "--method", "grad", "--out", str(out)]) == 0
  finally:
    os.umask(old)
  modes = _modes(out)
  assert {"a_grad.npy", "a_grad.png", "b_grad.png", "explain.json", "shards/manifest.json",
          "shards/shards.jsonl"} <= set(modes) and any(n.startswith("shards/shard-") for n in modes)
  assert set(modes.values()) == {mode}, modes
  files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
  printed = " ".join(capsys.readouterr().out.split())
  assert f"wrote {len(files)} files to {out}" in printed  # maps, overlays, record, shards, manifest, journal
  assert len(images) == 2


def test_refused_runs_leave_no_output_folder(tmp_path, capsys, monkeypatch):
  """Refusals after --out is locked (weights, a layer) remove the folders and lock file they created."""
  monkeypatch.setenv("ADAPTGRAD_JAX_CACHE", str(tmp_path / "cache"))
  image = _digit(tmp_path / "a.png", 0)
  out = tmp_path / "new" / "maps"
  assert main(["explain", str(image), "--model", "resnet18", "--out", str(out)]) != 0
  assert "--weights" in _error_line(capsys)
  assert not (tmp_path / "new").exists()
  assert main(["explain", str(image), *MLP, "--method", "grad-cam", "--layer", "nowhere", "--out", str(out)]) == 2
  assert "--layer 'nowhere' does not exist" in _error_line(capsys)
  assert not (tmp_path / "new").exists()
  existing = tmp_path / "mine"
  existing.mkdir()
  (existing / "notes.txt").write_text("the user's")
  assert main(["explain", str(image), *MLP, "--method", "grad-cam", "--layer", "nowhere", "--out",
               str(existing)]) == 2
  _error_line(capsys)
  assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]  # no lock file left either


def test_a_hostile_npy_header_is_named_not_allocated(tmp_path, capsys):
  """A 3 KB --eg-baselines file whose header declares 10**12 rows: one line naming it, nothing written."""
  image = _digit(tmp_path / "a.png", 0)
  evil = tmp_path / "evil.npy"
  with open(evil, "wb") as f:
    np.lib.format.write_array_header_1_0(
      f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 28, 28, 1)})
    f.write(bytes(3000))
  out = tmp_path / "maps"
  assert main(["explain", str(image), *MLP, "--method", "eg", "--eg-baselines", str(evil), "--out", str(out)]) == 2
  err = _error_line(capsys)
  assert f"--eg-baselines {evil}" in err and "float32[1000000000000, 28, 28, 1]" in err and "3 KB" in err
  assert not out.exists()
  objects = tmp_path / "objects.npy"
  np.save(objects, np.array([None, 1], dtype=object), allow_pickle=True)
  assert main(["explain", str(image), *MLP, "--method", "eg", "--eg-baselines", str(objects), "--out",
               str(out)]) == 2
  assert "not real numbers" in _error_line(capsys)
  assert not out.exists()


def test_the_default_output_folders_are_git_ignored():
  """``adaptgrad-jax demo`` (and evaluate, convergence, confidence) run in a clone write nothing git tracks."""
  import pathlib

  from adaptgrad_jax.cli import build_parser

  parser = build_parser()
  subparsers = next(a for a in parser._actions if a.dest == "command")  # pylint: disable=protected-access
  defaults = {sub.get_default("out") for sub in subparsers.choices.values()} - {None}
  assert "adaptgrad_demo" in defaults
  ignored = (pathlib.Path(__file__).parents[1] / ".gitignore").read_text().split()
  assert {f"{d}/" for d in defaults} <= set(ignored)


def test_a_linked_shards_folder_is_refused_before_any_work(tmp_path, capsys):
  """explain --overwrite on a folder deletes OUT/shards' files: never in a link's target."""
  _digit(tmp_path / "in" / "a.png", 0)
  out, elsewhere = tmp_path / "maps", tmp_path / "elsewhere"
  elsewhere.mkdir()
  (elsewhere / "manifest.json").write_text("the user's")
  out.mkdir()
  (out / "shards").symlink_to(elsewhere)
  assert main(["explain", str(tmp_path / "in"), *MLP, "--overwrite", "--out", str(out)]) == 1
  err = _error_line(capsys)
  assert f"{out / 'shards'} is a symbolic link (to {elsewhere})" in err and "never deletes or writes" in err
  assert sorted(p.name for p in elsewhere.iterdir()) == ["manifest.json"]
  assert sorted(p.name for p in out.iterdir()) == ["shards"]
