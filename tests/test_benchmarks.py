"""Smoke test of the benchmark harness at tiny sizes: correctness only, no timing assertions."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference  # noqa: E402  (tests/torch_reference.py)  pylint: disable=wrong-import-position
from benchmarks import _harness  # noqa: E402  pylint: disable=wrong-import-position
from benchmarks import run  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def mlp():
  return _harness.build_workload("mlp")


def test_harness_and_tests_share_one_reference_module():
  assert _harness._torch() is torch_reference  # pylint: disable=protected-access


@pytest.mark.parametrize("name, size", [("mlp", None), ("convnet", 32)])
def test_jax_and_torch_models_share_weights(name, size):
  # Float64 on both sides (through ReLU and max-pool a float32 comparison depends on the CPU).
  workload = _harness.build_workload(name, size)
  jax_grad, torch_grad = _harness.clean_gradients(workload)
  torch_reference.assert_close(jax_grad, torch_grad, 1e-10)


def test_torch_batched_equals_loop_without_noise(mlp):
  # In float64: the batched and single-row kernels round differently, and through a ReLU a
  # float32 rounding difference can flip a unit.
  module = torch_reference.load_numpy_state_dict(torch_reference.TorchMLP(), mlp.state_dict()).double()
  x = torch.from_numpy(np.moveaxis(mlp.x, -1, 0).copy())[None].double()
  zero = torch.zeros_like(x)
  with torch_reference.single_threaded_torch():
    loop = torch_reference.torch_loop_smooth(module, x, zero, mlp.target, 3)
    for batch_size in (None, 2):
      batched = torch_reference.torch_batched_smooth(module, x, zero, mlp.target, 5, batch_size=batch_size)
      torch_reference.assert_close(batched.numpy(), loop.numpy(), 1e-12)


def test_worker_records_and_report(mlp, tmp_path):
  preset = {"models": [("mlp", 28, [4])], "batch_sizes": [2], "repeats": 1, "min_seconds": 0.0}
  records = run.run_suite(preset, with_torch=True, in_process=True, log=lambda *a: None)
  labels = {r["label"] for r in records}
  assert labels == {"limit", "limit[xla defaults]", "adapt_smooth[None]", "adapt_smooth[None][xla defaults]",
                    "adapt_smooth[2]", "jax_loop", "torch_loop", "torch_batched"}
  for r in records:
    assert "error" not in r, r
    assert r["samples_per_s"] > 0 and r["median_s"] > 0 and r["n"] == 4
    if not r["method"].startswith("torch"):
      assert r["xla_memory"]["total"] > 0 and r["compile_s"] > 0
  by_label = {r["label"]: r for r in records}
  assert by_label["limit"]["ratio_to_limit"] == 1.0
  # The same noise (split(key, n)[j]) whatever the chunking or the loop: the same result.
  for label in ("adapt_smooth[2]", "adapt_smooth[None][xla defaults]", "jax_loop"):
    assert by_label[label]["max_rel_diff_vs_adapt_smooth"] < 1e-5
  for r in records:  # the stolen CPU share of the timed calls, on Linux
    assert r["steal_fraction"] is None or 0.0 <= r["steal_fraction"] <= 1.0
  # The limit and PyTorch draw other noise: the same explanation up to Monte Carlo error.
  for label in ("limit", "torch_loop", "torch_batched"):
    assert by_label[label]["cosine_vs_adapt_smooth"] > 0.5

  env = _harness.environment()
  paths = run.write_results(records, env, "smoke", str(tmp_path), "smoke")
  saved = json.loads(open(paths["json"], encoding="utf-8").read())
  assert saved["environment"]["jax"] and len(saved["records"]) == len(records)
  table = open(paths["md"], encoding="utf-8").read()
  assert "| 4 | adapt_smooth[2] |" in table and "torch_batched" in table
  assert open(paths["png"], "rb").read(4) == b"\x89PNG"


def test_worker_reports_errors_instead_of_crashing():
  out = []
  run.run_worker({"model": "mlp", "size": 28, "ns": [3], "method": "no_such_method", "repeats": 1, "min_seconds": 0.0}, out.append)
  assert len(out) == 1 and "unknown JAX method" in out[0]["error"]


def test_versus_torch_rows():
  from benchmarks import experiments  # pylint: disable=import-outside-toplevel

  rows = []
  experiments.exp_versus_torch(rows, cases=(("mlp", 28, 4),), rounds=2, round_seconds=0.0)
  assert [r["variant"] for r in rows] == ["limit", "adapt_smooth[None]", "torch_loop", "torch_batched"]
  assert all(r["ms"] > 0 and r["model"] == "mlp 28, n=4" for r in rows)
  assert "adapt_smooth's time / the limit's" in rows[0]["note"] and "faster by" in rows[3]["note"]
  assert "## versus_torch" in experiments.markdown(rows, _harness.environment())
