"""The text demo (task, cached model), the token heat maps, `adaptgrad-jax explain-text` and the benchmark script."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptgrad_jax import text
from adaptgrad_jax.cli import main
from adaptgrad_jax.text import _demo, _viz


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """An empty cache, and the quick demo trained 100 steps (held-out accuracy 1.0 at 100 as at 200; half the time)."""
  root = tmp_path_factory.mktemp("cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("ADAPTGRAD_JAX_CACHE", str(root))
    patch.setattr(_demo, "QUICK_SETTINGS", dict(_demo.QUICK_SETTINGS, steps=100))
    yield root


def test_synthetic_task_ground_truth():
  task = text.synthetic_task(3, 64)
  ids, mask, labels, deciding = (np.asarray(a) for a in task)
  for i in range(64):
    marker = _demo.MARKERS[labels[i]]
    np.testing.assert_array_equal(deciding[i], ids[i] == marker)  # the deciding tokens are the class's marker
    assert 1 <= deciding[i].sum() <= 3
    others = set(ids[i][mask[i]].tolist()) & set(_demo.MARKERS)
    assert others == {marker}  # no other marker occurs
    assert np.all(ids[i][~mask[i]] == _demo.PAD_ID) and mask[i].sum() >= 8
  np.testing.assert_array_equal(text.synthetic_task(3, 64).ids, task.ids)  # reproducible


def test_demo_trains_caches_and_explains(cache, tmp_path, capsys):
  demo = text.demo_classifier(quick=True)
  assert demo.accuracy > 0.9, demo.description
  again = text.demo_classifier(quick=True)  # loaded from the cache
  assert again.accuracy == demo.accuracy
  ids = text.synthetic_task(5, 4).ids
  np.testing.assert_array_equal(jax.jit(jax.vmap(again.split))(ids), jax.jit(jax.vmap(demo.split))(ids))
  assert len(list(cache.glob("demo/text-*/params.npz"))) == 1

  out = tmp_path / "maps"
  assert main(["explain-text", "--quick", "--random", "2", "--method", "ag", "--n", "4", "--out", str(out)]) == 0
  result = json.loads((out / "explain_adaptgrad.json").read_text())
  seqs = result["sequences"]
  assert len(seqs) == 2 and all(len(s["tokens"]) == len(s["scores"]) == len(s["stderr"]) for s in seqs)
  assert all(s["deciding"] is not None for s in seqs)
  page = (out / "explain_adaptgrad.html").read_text()
  assert page.count("<span") == sum(len(s["tokens"]) for s in seqs) and "±" in page
  assert (out / "explain_adaptgrad.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  capsys.readouterr()
  # Refuses to overwrite; one-line usage errors, no traceback.
  for argv, needle in (
      (["--quick", "--random", "2", "--method", "ag", "--n", "4", "--out", str(out)], "--overwrite"),
      (["--quick", "w12 <b> B", "--out", str(out)], "not in the demo's vocabulary"),
      (["--quick", "w12 B", "--method", "lrp", "--out", str(out)], "not a text method"),
      (["--quick", "--out", str(out)], "TOKENS) or --random"),
      (["--quick", " ".join(["w12"] * 33), "--out", str(out)], "at most 32"),
  ):
    code = main(["explain-text"] + argv)
    err = capsys.readouterr().err
    assert code in (1, 2) and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_benchmark_script_runs_at_a_tiny_size(cache, tmp_path):
  from benchmarks import bench_text_attribution
  result = bench_text_attribution.main(["--quick", "--out", str(tmp_path)])
  table = result["accuracy"]["table"]
  assert set(table) == set(bench_text_attribution.ROWS)
  for row in table.values():
    for v in row.values():
      assert 0.0 <= v["low"] <= v["mean"] <= v["high"] <= 1.0
  for rows in result["out_of_box"].values():
    assert rows["AG c=0.95"]["expected_per_element"] <= 0.05 + 1e-6
    assert rows["SG alpha=0.3"]["per_element"] > rows["AG c=0.95"]["per_element"]
  for v in result["sigma_by_token_kind"].values():  # d / 1.96 <= (range / 2) / 1.96 = 1.28 x SmoothGrad's 0.2 range
    assert 0.0 <= v["mean_sigma_ratio"] <= 0.5 / 1.959964 / 0.2 + 1e-6 and 0.0 <= v["share_on_a_face"] <= 1.0
  assert (tmp_path / "text_attribution.md").read_text().startswith("# Token attribution")


def test_auc_reference():
  from benchmarks.bench_text_attribution import _auc
  from scipy.stats import mannwhitneyu
  rng = np.random.default_rng(0)
  s = rng.integers(0, 5, 30).astype(float)  # with ties
  pos = rng.random(30) < 0.3
  u = mannwhitneyu(s[pos], s[~pos]).statistic
  assert _auc(s, pos) == pytest.approx(u / (pos.sum() * (~pos).sum()))


# ----------------------------------------------------------------------------
# Heat maps.


def test_html_escapes_tokens_and_shows_stderr():
  tokens = ["<script>alert(1)</script>", 'say "hi"', "a&b", "PADTOK"]
  page = _viz.token_heatmap_html(tokens, [1.0, -2.0, 0.0, 5.0], stderr=[0.5, 0.25, 0.0, 0.0],
                                 mask=[True, True, True, False], title="<t>")
  assert "<script>" not in page and "&lt;script&gt;" in page and "&quot;hi&quot;" in page and "a&amp;b" in page
  assert page.count("<span") == 3 and "PADTOK" not in page
  assert 'title="score -2 ± 0.25"' in page
  assert "rgb(64, 64, 255)" in page  # the largest |score| of the real tokens gets the strongest colour
  with pytest.raises(ValueError, match="one score per token"):
    _viz.token_heatmap_html(tokens, [1.0])
  with pytest.raises(ValueError, match="finite"):
    _viz.token_heatmap_html(["a"], [float("nan")])


def test_png_wraps_512_tokens_and_writes_atomically(tmp_path):
  import matplotlib.pyplot as plt
  tokens = [f"tok{i}" for i in range(512)]
  scores = np.sin(np.arange(512.0))
  fig = _viz.token_heatmap_png(tmp_path / "heat.png", tokens, scores, line_width=100)
  texts = [t for t in fig.axes[0].texts]
  assert len(texts) == 512
  rows = {t.get_position()[1] for t in texts}
  cols_end = max(t.get_position()[0] + len(t.get_text()) for t in texts)
  assert cols_end <= 100 and 30 <= len(rows) <= 40  # 512 tokens of 5-7 columns in lines of 100
  assert fig.axes[0].texts[0].get_fontsize() > 8  # readable
  plt.close(fig)
  with pytest.raises(FileExistsError):
    _viz.token_heatmap_png(tmp_path / "heat.png", tokens, scores)
  assert (tmp_path / "heat.png").stat().st_size > 10_000


def test_token_scores_of_a_padded_batch_feed_the_heat_map():
  ids, mask = text.pad_batch([[2, 11, 12], [3]], pad_id=0)
  scores = jnp.array([[1.0, 0.5, -0.5], [2.0, 0.0, 0.0]])
  page = _viz.token_heatmap_html([_demo.VOCAB[i] for i in ids[1]], scores[1], mask=mask[1])
  assert page.count("<span") == 1


def test_explain_text_help(capsys):
  assert main(["explain-text", "--help"]) == 0
  out = capsys.readouterr().out
  assert "examples:" in out and "adaptgrad-jax explain-text " in out.split("examples:")[1] and "--out" in out
  assert main(["--help"]) == 0
  assert "explain-text" in capsys.readouterr().out
