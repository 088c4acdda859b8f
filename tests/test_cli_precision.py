"""The CLI's Monte Carlo precision options: ``explain --rtol/--noise`` and ``convergence``'s error curves."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from _cli_errors import error_line as _error_line
import adaptgrad_jax as ag
from adaptgrad_jax import flax_adapters, models
from adaptgrad_jax.cli import main


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
  from PIL import Image

  from adaptgrad_jax import datasets

  image = datasets.mnist_embedded(dtype="uint8").x_test[0, :, :, 0]
  path = tmp_path_factory.mktemp("images") / "seven.png"
  Image.fromarray(image).save(path)
  return path


def _digit(digit_png):
  from PIL import Image
  return np.asarray(Image.open(digit_png), np.float32)[..., None] / 255.0


def _random_mlp_f():
  model = models.mlp(rngs=nnx.Rngs(0))  # what --weights random builds
  model.eval()
  return flax_adapters.nnx_target_fn(model)


@pytest.mark.parametrize(
  "extra, needles",
  [
    (["--rtol", "0.1"], ["--rtol 0.1", "--batch-size"]),
    (["--rtol", "0.1", "--batch-size", "4", "--method", "a-ig"], ["--rtol", "smoothgrad or adaptgrad", "a-ig"]),
    (["--rtol", "1.5", "--batch-size", "4"], ["--rtol 1.5", "(0, 1)"]),
    (["--rtol", "0", "--batch-size", "4"], ["--rtol 0", "(0, 1)"]),
    (["--rtol", "half", "--batch-size", "4"], ["--rtol 'half'", "not a number"]),
    (["--noise", "antithetic", "--n", "5"], ["--n 5", "antithetic", "--n 6"]),
    (["--noise", "lhs", "--n", "12"], ["--n 12", "lhs", "--n 16"]),
    (["--noise", "orthogonal", "--method", "grad"], ["--noise orthogonal", "--method grad"]),
    (["--noise", "sobol"], ["--noise", "sobol", "iid"]),
    (["--rtol", "0.1", "--batch-size", "4", "--devices", "1"], ["--rtol", "--devices"]),
  ])
def test_precision_mistakes_are_one_usage_line(extra, needles, digit_png, tmp_path, capsys):
  argv = ["explain", str(digit_png), "--model", "mlp", "--weights", "random", "--out", str(tmp_path / "o")] + extra
  assert main(argv) == 2
  line = _error_line(capsys)
  for needle in needles:
    assert needle in line, line
  assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("method, build", [
  ("adaptgrad", lambda g, **kw: ag.adapt_smooth(g, 0.95, 24, bounds=(0.0, 1.0), **kw)),
  ("smoothgrad", lambda g, **kw: ag.smooth_grad(g, 0.2, 24, bounds=(0.0, 1.0), **kw)),
])
def test_explain_rtol_records_the_samples_and_matches_the_library(method, build, digit_png, tmp_path, capsys):
  out = tmp_path / "maps"
  argv = ["explain", str(digit_png), "--model", "mlp", "--weights", "random", "--method", method, "--n", "24",
          "--batch-size", "4", "--rtol", "0.3", "--target", "3", "--seed", "2", "--out", str(out)]
  assert main(argv) == 0
  captured = capsys.readouterr()
  # Jitted, as the CLI runs it: eagerly the chunk loop dispatches op by op (seconds more than a compile).
  est = jax.jit(build(jax.grad(_random_mlp_f()), batch_size=4, rtol=0.3))(
    jax.random.fold_in(jax.random.key(2), 0), _digit(digit_png), 3)
  samples, rel = int(est.num_samples), float(ag.relative_error(est))
  assert 4 <= samples <= 24
  np.testing.assert_allclose(np.load(out / f"seven_{method}.npy"), np.asarray(est.value), rtol=1e-5, atol=1e-7)
  record = json.loads((out / "explain.json").read_text())
  image = record["images"][0]
  assert image["samples"] == samples
  assert image["relative_error"] == pytest.approx(rel, rel=1e-4)
  assert record["run"]["options"]["rtol"] == 0.3
  assert f"{samples} of 24 samples" in captured.err
  assert f"{samples} ({rel:.3f})" in captured.out  # the table's column
  # Stopping is real: the recorded error reached the tolerance, or all n were used.
  assert rel <= 0.3 or samples == 24


@pytest.mark.parametrize("noise", ["antithetic", "lhs"])
def test_explain_noise_scheme_is_passed_through(noise, digit_png, tmp_path, capsys):
  out = tmp_path / "maps"
  argv = ["explain", str(digit_png), "--model", "mlp", "--weights", "random", "--method", "smoothgrad", "--n", "8",
          "--noise", noise, "--target", "1", "--out", str(out)]
  assert main(argv) == 0
  f = _random_mlp_f()
  key = jax.random.fold_in(jax.random.key(0), 0)
  x = _digit(digit_png)
  scheme = jax.jit(ag.smooth_grad(jax.grad(f), 0.2, 8, bounds=(0.0, 1.0), noise=noise))(key, x, 1)
  iid = jax.jit(ag.smooth_grad(jax.grad(f), 0.2, 8, bounds=(0.0, 1.0)))(key, x, 1)
  saved = np.load(out / "seven_smoothgrad.npy")
  np.testing.assert_allclose(saved, np.asarray(scheme), rtol=1e-5, atol=1e-7)
  assert not np.allclose(saved, np.asarray(iid), rtol=1e-3, atol=1e-6)


def test_convergence_plots_reported_and_measured_errors(digit_png, tmp_path, capsys):
  out = tmp_path / "fig"
  ns = [2, 16]  # each N is 4 compiles (the command's and the references here)
  argv = ["convergence", str(digit_png), "--model", "mlp", "--weights", "random", "--ns", ",".join(map(str, ns)),
          "--batch-size", "4", "--target", "7", "--seed", "3", "--out", str(out)]
  assert main(argv) == 0
  assert "relative error" in capsys.readouterr().out
  from PIL import Image
  assert Image.open(out / "seven_convergence_error.png").size[0] > 100
  data = np.load(out / "seven_convergence.npz")
  f = _random_mlp_f()
  x = _digit(digit_png)
  for i, (name, build) in enumerate([
      ("sg", lambda n: ag.smooth_grad(jax.grad(f), 0.2, n, bounds=(0.0, 1.0), batch_size=4, return_stderr=True)),
      ("ag", lambda n: ag.adapt_smooth(jax.grad(f), 0.95, n, bounds=(0.0, 1.0), batch_size=4,
                                       return_stderr=True))]):
    reference = data[name][-1]  # the grid's N = 16 map
    for j, n in enumerate(ns):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 100 + i), n)
      est = jax.jit(build(n))(key, x, 7)  # jitted: eager calls cost the test seconds
      assert data[f"{name}_reported"][j] == pytest.approx(float(ag.relative_error(est)), rel=1e-4)
      measured = np.linalg.norm(np.asarray(est.value) - reference) / np.linalg.norm(reference)
      assert data[f"{name}_measured"][j] == pytest.approx(measured, rel=1e-3)
      assert data[f"{name}_samples"][j] == n
    # The reported error falls with N (1/sqrt(N) up to the spread of its estimate).
    assert data[f"{name}_reported"][-1] < data[f"{name}_reported"][0]
  # Done: the same command does nothing; every output is there.
  assert main(argv) == 0
  assert "nothing to do" in capsys.readouterr().out


def test_the_cli_offers_every_noise_scheme_of_the_library():
  from adaptgrad_jax import _noise
  from adaptgrad_jax.cli import _methods
  assert _methods.NOISE_SCHEMES == _noise.NOISE_SCHEMES
