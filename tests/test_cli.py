"""Tests of the ``adaptgrad-jax`` command line (adaptgrad_jax.cli), run in-process via ``main``."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from _cli_errors import error_line as _error_line
import adaptgrad_jax as ag
from adaptgrad_jax import flax_adapters, models
from adaptgrad_jax.cli import main

COMMANDS = ("demo", "explain", "evaluate", "convergence", "confidence")


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """A private cache so no test reads or writes ~/.cache."""
  path = tmp_path / "cache"
  monkeypatch.setenv("ADAPTGRAD_JAX_CACHE", str(path))
  return path


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
  """A real MNIST digit (the embedded test set's first, a 7) written as a PNG."""
  from PIL import Image

  from adaptgrad_jax import datasets

  image = datasets.mnist_embedded(dtype="uint8").x_test[0, :, :, 0]
  path = tmp_path_factory.mktemp("images") / "seven.png"
  Image.fromarray(image).save(path)
  return path


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command_shows_an_example(command, capsys):
  assert main([command, "--help"]) == 0
  out = capsys.readouterr().out
  assert "examples:" in out
  assert f"adaptgrad-jax {command} " in out.split("examples:")[1]
  assert "--out" in out


def test_top_level_help_lists_commands(capsys):
  assert main(["--help"]) == 0
  out = capsys.readouterr().out
  for command in COMMANDS:
    assert command in out
  assert main([]) == 2  # no command: help, usage exit code


@pytest.mark.parametrize(
  "argv, code, needles",
  [
    (["explain", "IMG", "--c", "1.5", "--out", "o"], 2, ["--c 1.5", "(0, 1)", "0.95"]),
    (["explain", "IMG", "--n", "0", "--out", "o"], 2, ["--n 0", ">= 1"]),
    (["explain", "IMG", "--alpha", "-1", "--out", "o"], 2, ["--alpha -1", ">= 0"]),
    (["explain", "IMG", "--target", "cat", "--out", "o"], 2, ["--target 'cat'", "predicted"]),
    (["explain", "IMG", "--model", "alexnet", "--out", "o"], 2, ["unknown model 'alexnet'", "efficientnet_lite0"]),
    (["explain", "IMG", "--method", "lime", "--out", "o"], 2, ["unknown method 'lime'", "adaptgrad"]),
    (["explain", "IMG", "--model", "vgg16", "--out", "o"], 2,
     ["needs weights", "--weights download", "adaptgrad_jax.weights.pretrained('vgg16')"]),
    (["explain", "IMG", "--model", "resnet50", "--weights", "nowhere.pth", "--out", "o"], 2,
     ["nowhere.pth", "no such file"]),
    (["explain", "IMG", "--model", "mlp", "--weights", "random", "--target", "10", "--out", "o"], 2,
     ["--target 10", "10 classes"]),
    (["explain", "IMG", "--out", "o", "--frobnicate"], 2, ["unrecognized arguments: --frobnicate"]),
    (["explain", "IMG"], 2, ["--out"]),
    (["explain", "missing.png", "--model", "mlp", "--out", "o"], 2, ["missing.png", "no such file"]),
    (["confidence", "IMG", "--cs", "0.9,1.2", "--out", "o"], 2, ["--c 1.2", "(0, 1)"]),
    (["convergence", "IMG", "--ns", "1,x", "--out", "o"], 2, ["--ns 'x'"]),
    (["demonstrate"], 2, ["invalid choice: 'demonstrate'"]),
    (["explain", "IMG", "--seed", str(2 ** 70), "--out", "o"], 2, ["--seed", "64-bit", "e.g. 0"]),
    (["explain", "IMG", "--seed", "x", "--out", "o"], 2, ["--seed 'x'", "whole number"]),
    (["explain", "IMG", "--n", str(10 ** 14), "--out", "o"], 2, ["--n 100000000000000 is too large"]),
    (["convergence", "IMG", "--ns", f"1,{10 ** 12}", "--out", "o"], 2, ["--ns 1000000000000 is too large"]),
    (["explain", "IMG", "--method", "s-eg", "--estimator", "smooth-diff", "--out", "o"], 2,
     ["--estimator smooth-diff", "not s-eg", "--estimator mc"]),
    (["explain", "IMG", "--estimator", "smooth-diff", "--rtol", "0.1", "--batch-size", "2", "--out", "o"], 2,
     ["--rtol", "--estimator smooth-diff", "leave one of them out"]),
    (["explain", "IMG", "--estimator", "bootstrap", "--out", "o"], 2, ["--estimator", "'bootstrap'", "smooth-diff"]),
    (["evaluate", "--mnist", "--methods", "sg,s-eg", "--estimator", "moments", "--out", "o"], 2,
     ["--estimator moments", "not s-eg"]),
    (["demo", "--seed", "1.5", "--out", "o"], 2, ["--seed '1.5'"]),
    (["demo", "--out", ""], 2, ["--out '' is empty"]),
    (["explain", "IMG", "--out", ""], 2, ["--out '' is empty"]),
  ],
)
def test_user_mistakes_give_one_line_with_the_fix(argv, code, needles, digit_png, tmp_path, capsys):
  argv = [str(digit_png) if a == "IMG" else (str(tmp_path / "o") if a == "o" else a) for a in argv]
  assert main(argv) == code
  err = _error_line(capsys)
  assert err.startswith("adaptgrad-jax")
  assert "error:" in err
  for needle in needles:
    assert needle in err


def test_unreadable_image_is_a_runtime_error(tmp_path, capsys):
  bad = tmp_path / "notes.png"
  bad.write_text("this is not an image")
  assert main(["explain", str(bad), "--model", "mlp", "--weights", "random", "--out", str(tmp_path / "o")]) == 1
  err = _error_line(capsys)
  assert "cannot read image" in err and "notes.png" in err


def test_debug_shows_the_traceback(tmp_path, capsys):
  bad = tmp_path / "notes.png"
  bad.write_text("this is not an image")
  argv = ["explain", str(bad), "--model", "mlp", "--weights", "random", "--out", str(tmp_path / "o"), "--debug"]
  assert main(argv) == 1
  assert "Traceback" in capsys.readouterr().err


def _mlp_f():
  """The model `--weights random` builds, and its f(x, target)."""
  model = models.mlp(rngs=nnx.Rngs(0))
  model.eval()
  return model, flax_adapters.nnx_target_fn(model)


def test_explain_writes_maps_equal_to_the_library_and_refuses_to_overwrite(digit_png, tmp_path, capsys):
  out = tmp_path / "maps"
  argv = ["explain", str(digit_png), "--model", "mlp", "--weights", "random", "--method", "adaptgrad",
          "--n", "8", "--target", "3", "--seed", "5", "--out", str(out)]
  assert main(argv) == 0
  npy, png = out / "seven_adaptgrad.npy", out / "seven_adaptgrad.png"
  assert npy.exists() and png.exists()
  summary = json.loads((out / "explain.json").read_text())
  assert summary["images"][0]["target"] == 3
  stdout = capsys.readouterr().out
  assert "seven.png" in stdout and "AG maps" in stdout

  # The .npy is exactly what the library computes (key folded with the image index).
  model, f = _mlp_f()
  from PIL import Image
  x = np.asarray(Image.open(digit_png), np.float32)[..., None] / 255.0
  # Jitted, as the CLI runs it: eager calls dispatch op by op (seconds more than a compile).
  expected = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 8, bounds=(0.0, 1.0)))(
    jax.random.fold_in(jax.random.key(5), 0), x, 3)
  np.testing.assert_allclose(np.load(npy), np.asarray(expected), rtol=1e-5, atol=1e-7)
  # Its relative error, free from return_stderr=True, is recorded and printed next to it.
  estimate = jax.jit(ag.adapt_smooth(jax.grad(f), 0.95, 8, bounds=(0.0, 1.0), return_stderr=True))(
    jax.random.fold_in(jax.random.key(5), 0), x, 3)
  error = float(ag.relative_error(estimate))
  assert abs(summary["images"][0]["relative_error"] - error) < 1e-4 * error
  assert f"{error:.1%}" in stdout and "rel. error" in stdout
  from PIL import Image as PILImage
  assert PILImage.open(png).size == (28, 28)

  # The same command again has nothing to do; other settings are refused; --overwrite replaces.
  before = npy.stat().st_mtime_ns
  assert main(argv) == 0
  assert "nothing to do" in capsys.readouterr().out
  assert main(argv[:-2] + ["--seed", "6", "--out", str(out)]) == 1
  err = _error_line(capsys)
  assert "explain.json records another run (differs in seed)" in err and "--overwrite" in err
  assert npy.stat().st_mtime_ns == before
  assert main(argv + ["--overwrite"]) == 0
  assert npy.stat().st_mtime_ns != before


@pytest.mark.parametrize("method", ["a-ig", "s-ng"])
def test_explain_methods_on_a_folder_match_single_files(method, digit_png, tmp_path, capsys):
  """A folder goes through adaptgrad_jax.attribute; the maps equal the per-file path."""
  folder = tmp_path / "digits"
  folder.mkdir()
  for name in ("a.png", "b.png"):
    (folder / name).write_bytes(digit_png.read_bytes())
  common = ["--model", "mlp", "--weights", "random", "--method", method, "--n", "3", "--ig-steps", "4",
            "--ng-samples", "3"]
  assert main(["explain", str(folder), "--out", str(tmp_path / "f")] + common) == 0
  assert main(["explain", str(folder / "a.png"), str(folder / "b.png"), "--out", str(tmp_path / "s")] + common) == 0
  for name in ("a", "b"):
    sharded = np.load(tmp_path / "f" / f"{name}_{method}.npy")
    single = np.load(tmp_path / "s" / f"{name}_{method}.npy")
    assert sharded.shape == (28, 28, 1) and np.all(np.isfinite(sharded))
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)
  assert (tmp_path / "f" / "shards" / "manifest.json").exists()
  # The shards carry each map's stderr: the folder records the same relative errors as the files.
  errors = [[r["relative_error"] for r in json.loads((tmp_path / run / "explain.json").read_text())["images"]]
            for run in ("f", "s")]
  assert all(0 < e < np.inf for e in errors[0]) and np.allclose(errors[0], errors[1], rtol=1e-4)
  capsys.readouterr()


def test_explain_estimators_are_the_library_s_and_report_their_error(digit_png, tmp_path, capsys):
  out = tmp_path / "sd"
  argv = ["explain", str(digit_png), "--model", "mlp", "--weights", "random", "--method", "a-gi", "--estimator",
          "smooth-diff", "--n", "8", "--target", "3", "--out", str(out)]
  assert main(argv) == 0
  model, f = _mlp_f()
  from PIL import Image
  x = np.asarray(Image.open(digit_png), np.float32)[..., None] / 255.0
  # Jitted, as the CLI runs it: eager calls dispatch op by op (seconds more than a compile).
  explain = jax.jit(ag.gradient_x_input(ag.smooth_diff(f, 8, c=0.95, bounds=(0.0, 1.0), return_stderr=True)))
  expected = explain(jax.random.fold_in(jax.random.key(0), 0), x, 3)
  np.testing.assert_allclose(np.load(out / "seven_a-gi.npy"), np.asarray(expected.value), rtol=1e-4, atol=1e-6)
  record = json.loads((out / "explain.json").read_text())
  assert record["run"]["options"]["estimator"] == "smooth-diff"
  assert abs(record["images"][0]["relative_error"] - float(ag.relative_error(expected))) < 1e-3
  capsys.readouterr()
  # Moment propagation: no samples, no error to show ("deterministic").
  assert main(argv[:7] + ["adaptgrad", "--estimator", "moments", "--target", "3", "--out", str(tmp_path / "mo")]) == 0
  expected = jax.jit(ag.moment_smooth(f, c=0.95, bounds=(0.0, 1.0)))(x, 3)
  np.testing.assert_allclose(np.load(tmp_path / "mo" / "seven_adaptgrad.npy"), np.asarray(expected), rtol=1e-4,
                             atol=1e-6)
  assert "deterministic" in capsys.readouterr().out
  assert json.loads((tmp_path / "mo" / "explain.json").read_text())["images"][0]["relative_error"] is None


def test_sweeps_write_grids(digit_png, tmp_path, capsys):
  out = tmp_path / "fig"
  common = ["--model", "mlp", "--weights", "random", "--out", str(out), "--target", "7"]
  # Two N: each is two compiles of the command's error curves (test_cli_precision checks their values).
  assert main(["convergence", str(digit_png), "--ns", "1,6", "--batch-size", "4"] + common) == 0
  assert main(["confidence", str(digit_png), "--cs", "0.5,0.95,0.999", "--n", "6"] + common) == 0
  conv = np.load(out / "seven_convergence.npz")
  conf = np.load(out / "seven_confidence.npz")
  assert conv["ag"].shape == (2, 28, 28, 1) and conv["sg"].shape == (2, 28, 28, 1)
  assert conf["ag"].shape == (3, 28, 28, 1)
  # N = 1 of the running mean is one noisy gradient; AG at c -> 1 approaches the plain gradient.
  model, f = _mlp_f()
  x = conf["image"]
  grad = np.asarray(jax.jit(jax.grad(f))(x, 7))
  errors = [np.linalg.norm(m - grad) for m in conf["ag"]]
  assert errors[2] < errors[0]
  from PIL import Image
  for kind in ("convergence", "confidence"):
    width, height = Image.open(out / f"seven_{kind}.png").size
    assert width > 200 and height > 200
  assert main(["confidence", str(digit_png), "--cs", "0.9", "--n", "2"] + common) == 1  # exists
  assert "--overwrite" in _error_line(capsys)


def _docs_script():
  """docs/make_demo_figures.py, the committed command that writes the docs' demo figures and numbers."""
  import importlib.util

  path = pathlib.Path(__file__).resolve().parents[1] / "docs" / "make_demo_figures.py"
  spec = importlib.util.spec_from_file_location("make_demo_figures", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_demo_quick_writes_the_figure_and_prints_the_table(cache, tmp_path, capsys):
  out = tmp_path / "demo"
  assert main(["demo", "--quick", "--out", str(out)]) == 0
  stdout = capsys.readouterr().out
  assert "Sparseness" in stdout and "rel. error" in stdout and "deterministic" in stdout
  for label in ("Grad", "SG", "AG", "A-GI", "A-IG(B)"):
    assert label in stdout
  from PIL import Image
  width, height = Image.open(out / "mnist.png").size
  assert width > 300 and height > 500
  summary = json.loads((out / "demo.json").read_text())
  rates = summary["mnist"]["out_of_range_per_element"]
  assert rates["AG"] < 0.05 < rates["SG"]  # most MNIST pixels sit on a bound
  errors = summary["mnist"]["relative_error_median"]
  assert errors["Grad"] is None and errors["IG(B)"] is None  # deterministic
  assert all(0 < errors[m] < 1 for m in ("SG", "AG", "S-GI", "A-GI", "S-IG(B)", "A-IG(B)"))
  assert list(cache.glob("demo/mlp-*/meta.json"))  # the trained MLP is cached
  assert main(["demo", "--quick", "--out", str(out)]) == 1  # refuses to overwrite
  assert "--overwrite" in _error_line(capsys)

  # The docs' command (python docs/make_demo_figures.py) publishes the run into the pages' blocks.
  script, docs = _docs_script(), tmp_path / "docs"
  docs.mkdir()
  root = pathlib.Path(__file__).resolve().parents[1] / "docs"
  for page in script.BLOCKS:
    (docs / page).write_text((root / page).read_text())
  published = script.publish(out, docs)
  assert (docs / "demo_mnist.png").read_bytes() == (out / "mnist.png").read_bytes()
  assert json.loads((docs / "demo.json").read_text()) == published
  table = script.block((docs / "idea.md").read_text(), "demo-table")
  assert table == script.table_markdown(summary) and "| A-GI |" in table
  assert f"{summary['mnist']['sparseness']['AG']:.3f}" in table
  assert script.block((docs / "cli.md").read_text(), "demo-run") == script.run_markdown(summary)


def test_the_docs_show_the_recorded_demo_run_with_the_demo_s_current_settings(capsys):
  """docs/demo.json is the run docs/make_demo_figures.py recorded; change the demo, and this asks for a rerun."""
  from adaptgrad_jax.cli import _demo, _mnist

  script = _docs_script()
  root = pathlib.Path(__file__).resolve().parents[1] / "docs"
  summary = json.loads((root / "demo.json").read_text())
  for page, (name, render) in script.BLOCKS.items():
    assert script.block((root / page).read_text(), name) == render(summary), f"rerun docs/make_demo_figures.py"
  settings = _mnist.describe(_mnist.DEMO_SETTINGS)
  assert summary["run"] == {"command": "demo", "quick": False, "photos": True, "photo_n": _demo.PHOTO_N,
                            "estimator": _demo.PHOTO_ESTIMATOR, "seed": 0}
  assert summary["mnist"]["settings"] == settings and summary["mnist"]["n"] == _demo.MNIST_N
  assert (summary["photos"]["ig_steps"], summary["photos"]["ig_n"]) == (_demo.PHOTO_IG_STEPS, _demo.PHOTO_IG_N)
  # The training the pages and --help state is the one the demo runs, and its accuracy the recorded one.
  assert f"`{settings}`" in (root / "cli.md").read_text()
  accuracy = f"{summary['mnist']['test_accuracy']:.1%} test accuracy"
  assert accuracy in " ".join((root / "evaluate.md").read_text().split())
  import inspect

  from adaptgrad_jax import training
  defaults = {k: v.default for k, v in inspect.signature(training.train_classifier).parameters.items()}
  stated = (f"(SGD, learning rate {defaults['learning_rate']}, batch {defaults['batch_size']},"
            f" {defaults['epochs']} epochs;")
  assert stated in " ".join((root / "models.md").read_text().split())
  assert main(["demo", "--help"]) == 0
  assert settings in " ".join(capsys.readouterr().out.split())


def test_python_dash_m_entry_point(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", "adaptgrad_jax", "explain", "x.png", "--c", "2", "--out", str(tmp_path)],
    capture_output=True, text=True, env=env, cwd=pathlib.Path(__file__).resolve().parents[1], timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and "--c 2" in proc.stderr


def test_missing_plotting_extra_fails_before_any_work(digit_png, tmp_path, capsys, monkeypatch):
  import importlib.util

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
  assert main(["explain", str(digit_png), "--model", "mlp", "--weights", "random", "--out", str(tmp_path)]) == 1
  err = _error_line(capsys)
  assert "matplotlib" in err and '"matplotlib>=3.7" "pillow>=9"' in err and 'pip install -e ".[plot]"' in err
  assert not list(tmp_path.iterdir())
