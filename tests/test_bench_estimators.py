"""The estimator benchmark's command at tiny sizes, and its reference arithmetic (no timing assertions)."""

import json

import numpy as np

from benchmarks import bench_estimators as be


def test_pooled_reference_equals_the_mean_and_stderr_of_all_samples(tmp_path):
  rng = np.random.default_rng(0)
  samples = rng.normal(1.0, 2.0, size=(3 * be.CHUNK, 5))
  d = be._ref_dir(tmp_path, "w", "adapt")  # pylint: disable=protected-access
  d.mkdir(parents=True)
  for k in range(3):
    part = samples[k * be.CHUNK:(k + 1) * be.CHUNK]
    np.savez(d / f"chunk_{k:05d}.npz", mean=part.mean(0), stderr=part.std(0, ddof=1) / np.sqrt(be.CHUNK),
             n=be.CHUNK, seconds=1.0)
  ref = be.load_reference(tmp_path, "w", "adapt")
  np.testing.assert_allclose(ref.mean, samples.mean(0), rtol=1e-6)
  np.testing.assert_allclose(ref.stderr, samples.std(0, ddof=1) / np.sqrt(samples.shape[0]), rtol=1e-5)
  assert ref.n == 3 * be.CHUNK and ref.seconds == 3.0
  # i.i.d. error predicted from the per-sample variance: tr(Cov) / ||truth||^2 = 5 * 4 / 5 here, about 4.
  assert abs(be.iid_variance_ratio(ref) - 4.0) < 1.0


def test_agreement_of_a_map_with_itself_and_with_its_reverse():
  m = np.arange(1.0, 101.0).reshape(10, 10, 1)
  same = be.agreement(m, m)
  assert abs(same["spearman"] - 1.0) < 1e-12 and same["top10_overlap"] == 1.0
  flipped = be.agreement(m, 101.0 - m)
  assert abs(flipped["spearman"] + 1.0) < 1e-12 and flipped["top10_overlap"] == 0.0


def test_quick_command_writes_results_and_smooth_diff_is_close_on_a_one_relu_mlp(tmp_path):
  be.main(["--quick", "--parts", "estimators", "--methods", "adapt", "--out", str(tmp_path),
           "--cache", str(tmp_path / "cache")])
  results = json.loads((tmp_path / "estimators_quick.json").read_text())
  (rec,) = results["workloads"]
  assert rec["reference"]["n"] == 256
  by_name = {(r["estimator"], r["n"]): r for r in rec["records"]}
  # One ReLU layer: smoothed differentiation is unbiased; 16 forwards are within 20% of a 256-sample truth.
  assert by_name[("smooth_diff", 16)]["error_vs_truth"] < 0.2
  assert ("mc_iid", 128) in by_name  # from the reference's chunks, against the other chunk
  assert "| smooth_diff | 16 |" in (tmp_path / "estimators_quick.md").read_text()
  # --rescore reloads the cached maps: the same errors without calling the estimators.
  be.main(["--quick", "--parts", "estimators", "--methods", "adapt", "--out", str(tmp_path),
           "--cache", str(tmp_path / "cache"), "--rescore"])
  again = json.loads((tmp_path / "estimators_quick.json").read_text())["workloads"][0]
  assert [r["errors"] for r in again["records"]] == [r["errors"] for r in rec["records"]]


def test_captum_at_equal_error_is_its_seconds_per_sample_times_the_iid_samples_for_that_error():
  captum = {"size": 112, "n": 16, "methods": {"captum NoiseTunnel(Saliency)": {"median_s": 3.2},
                                              "moment_smooth (SG sigma)": {"median_s": 0.5},
                                              "smooth_diff (SG sigma)": {"median_s": 1.0}}}
  record = lambda est, n, e: {"estimator": est, "n": n, "error_vs_truth": e, "iid_n_same_error": 4.0 / e**2}
  work = {"workload": "vgg16-112", "method": "adapt", "reference": {"n": 16_384, "rel_stderr": 0.1},
          "records": [record("moment_smooth", 1, 0.5), record("smooth_diff", 16, 0.4), record("smooth_diff", 64, 0.3)]}
  eq = be.captum_equal_error(captum, [work])
  rows = {(r["estimator"], r["n"]): r for r in eq["rows"]}
  assert set(rows) == {("moment_smooth", 1), ("smooth_diff", 16)}  # n = 64 was not timed beside Captum
  assert abs(rows[("moment_smooth", 1)]["captum_s"] - 0.2 * 16.0) < 1e-12  # 0.2 s a sample, 16 samples for 0.5
  assert abs(rows[("smooth_diff", 16)]["speedup"] - 0.2 * 25.0 / 1.0) < 1e-12
  assert be.captum_equal_error(dict(captum, size=224), [work]) is None  # no truth at that size
