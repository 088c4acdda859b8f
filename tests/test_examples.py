"""Smoke test: every script in examples/ runs to completion at a small size.

The scripts run in this process (``runpy``), with ``ADAPTGRAD_EXAMPLES_SMALL=1``
and a private cache directory, so they share JAX's start-up and the compiled
training step (the MNIST examples train the same MLP with the same settings).
"""

import pathlib
import runpy

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_examples_are_found():
  names = {p.name for p in EXAMPLES}
  assert {"quickstart.py", "flax_resnet.py", "batch_attribution.py", "adversarial.py", "mnist_checks.py"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("ADAPTGRAD_EXAMPLES_SMALL", "1")
  monkeypatch.setenv("ADAPTGRAD_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.chdir(tmp_path)
  runpy.run_path(str(script), run_name="__main__")
  out = capsys.readouterr().out
  assert out.strip(), f"{script.name} printed nothing"
  assert "nan" not in out.lower().split(), f"{script.name} printed NaN:\n{out}"
