"""Table 1 with the authors' released MNIST models, under the released or a corrected pipeline.

:func:`table1_released_weights` explains test digits with the three released
models (:mod:`adaptgrad_jax.reproduce._released`) and measures Consistency and
Invariance as the paper's code does (``"no_abs"`` scaling, Spearman, mean
|rho| with NaN dropped). A :class:`Pipeline` says which of the released code's
behaviours to keep: ``Pipeline.released()`` reproduces the paper's Table 1,
``Pipeline()`` corrects every one, and :func:`correction_ladder` corrects them
one at a time to measure each one's effect.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax.reproduce import _released
from adaptgrad_jax.reproduce import _report
from adaptgrad_jax.reproduce._released import Pipeline
from adaptgrad_jax.reproduce._table1 import (METHODS, PAPER_TABLE1, RELEASED_SHIFTED_AG_BOUNDS,
                                             Table1Config, explain_all, table1_explainers)

__all__ = ("FixedTable1Result", "LADDER", "ReleasedTable1Result", "correction_ladder", "table1_fixed",
           "table1_released_weights")


class ReleasedTable1Result(NamedTuple):
  """What :func:`table1_released_weights` returns.

  Attributes:
    consistency: method -> mean |Spearman|, plain vs random-label model.
    invariance: method -> mean |Spearman|, plain model on x vs shifted model
      on its own input for x.
    pipeline: the :class:`Pipeline` run.
    accuracy: role -> accuracy on all 10,000 real test digits (the shifted
      model on x + 1), a check that the weights were read right.
    num_digits: distinct test digits explained.
    config: the settings.
    seconds: wall time.
  """
  consistency: dict[str, float]
  invariance: dict[str, float]
  pipeline: Pipeline
  accuracy: dict[str, float]
  num_digits: int
  config: dict[str, Any]
  seconds: float

  @property
  def protocol(self) -> str:
    if self.pipeline == Pipeline.released():
      return "released"
    return "fixed" if self.pipeline == Pipeline() else "partly corrected"

  def rows(self) -> list[list[Any]]:
    return [["Consistency (released weights) ↓", *(self.consistency.get(m) for m in METHODS)],
            ["Consistency (paper)", *(PAPER_TABLE1["consistency"][m] for m in METHODS)],
            ["Invariance (released weights) ↑", *(self.invariance.get(m) for m in METHODS)],
            ["Invariance (paper)", *(PAPER_TABLE1["invariance"][m] for m in METHODS)]]

  def settings_line(self) -> str:
    c = self.config
    acc = ", ".join(f"{k} {v:.1%}" for k, v in self.accuracy.items())
    return (f"The authors' released MNIST models ({self.protocol} pipeline); real-digit test "
            f"accuracy: {acc}. {self.num_digits} distinct test digits, SG alpha {c['alpha']}, "
            f"AG c {c['c']}, n {c['n']}, NG m {c['m']} (sigma {c['ng_sigma']}); seed {c['seed']}; "
            f"{self.seconds:.0f} s.")

  def deviation_lines(self) -> list[str]:
    lines = [f"- {d}" for d in self.pipeline.deviations()]
    return lines or ["- none: every deviation of the released pipeline is corrected"]

  def to_markdown(self) -> str:
    return (_report.markdown_table(["", *METHODS], self.rows()) + "\n\n" + self.settings_line()
            + "\n\nDeviations from a correct pipeline kept in this run:\n\n"
            + "\n".join(self.deviation_lines()))

  def to_dict(self) -> dict[str, Any]:
    return {"protocol": self.protocol, "consistency": self.consistency,
            "invariance": self.invariance, "paper": PAPER_TABLE1,
            "deviations": self.pipeline.deviations(),
            "pipeline": dataclasses.asdict(self.pipeline),
            "not_correctable": _released.NOT_CORRECTABLE,
            "num_digits": self.num_digits, "accuracy": self.accuracy, "config": self.config,
            "seconds": self.seconds}

  def print(self) -> None:
    _report.print_rich_table(f"Table 1 with the released models ({self.protocol} pipeline)",
                             ["", *METHODS], self.rows(), caption=self.settings_line())
    print("Deviations from a correct pipeline kept in this run:")
    print("\n".join(self.deviation_lines()))


def _mnist_uint8(mnist: Any):
  from adaptgrad_jax import datasets  # pylint: disable=import-outside-toplevel
  if mnist is None or isinstance(mnist, (str, bytes)) or hasattr(mnist, "__fspath__"):
    return datasets.mnist(mnist, dtype="uint8")
  x_test = np.asarray(mnist.x_test)
  if x_test.dtype != np.uint8:  # datasets.MNIST in [0, 1]
    x_test = np.round(x_test * 255.0).astype(np.uint8)
  return mnist._replace(x_test=x_test)


def explained_digits(pipeline: Pipeline, num_examples: int, seed: int) -> np.ndarray:
  """Indices of the test digits explained (sorted, distinct).

  With ``pipeline.with_replacement`` the released draw (951 distinct of 1000
  for seed 0); otherwise ``num_examples`` distinct digits from the same seed.
  """
  if pipeline.with_replacement:
    return np.unique(_released.released_indices(num_examples, seed))
  return np.sort(np.random.RandomState(seed).choice(10000, num_examples, replace=False))


def table1_released_weights(
    weights_dir: Any,
    pipeline: Pipeline = Pipeline.released(),
    *,
    mnist: Any = None,
    config: Table1Config = Table1Config(num_examples=1000, m=50),
    chunk: int = 8,
    log: Callable[[str], None] | None = print,
) -> ReleasedTable1Result:
  """Consistency and Invariance of the released models under a :class:`Pipeline`.

  Args:
    weights_dir: the folder with ``mlp.pth``, ``random_mlp.pth`` and
      ``bias_mlp.pth``.
    pipeline: which released behaviours to keep (default: all, the paper's
      Table 1).
    mnist: an .npz / IDX folder path or a ``datasets.MNIST`` (test split used).
    config: n, m, alpha, c, NoiseGrad's sigma, the number of draws
      (``num_examples``: 1000 in the released script) and the seed (0 in the
      released script; it also seeds the noise here).
    chunk: digits per jitted call.
    log: where to report progress (None: silent).

  Returns:
    A :class:`ReleasedTable1Result`.

  Raises:
    FileNotFoundError: a released file or MNIST is missing.

  References:
    Zhou et al., "AdaptGrad", NeurIPS 2025, Table 1; the authors' code
    (AiShare-WHU/AdaptGrad, ``experiments/get_salience_mnist.py``,
    ``get_correlation.py``, ``saliency.py``).
  """
  from adaptgrad_jax import flax_adapters, metrics  # pylint: disable=import-outside-toplevel
  say = log or (lambda _: None)
  start = time.perf_counter()
  output = "softmax" if pipeline.softmax_saliency else "logits"
  released = _released.load_released_models(weights_dir, output=output)
  data = _mnist_uint8(mnist)
  x_test = np.asarray(data.x_test).reshape(len(data.x_test), 28, 28)
  y_test = np.asarray(data.y_test)
  accuracy = {}
  for role, model in released.items():
    real = _released.released_inputs(x_test, _released.RELEASED_SHIFT[role], garbled=False)
    pred = np.asarray(jnp.argmax(model(jnp.asarray(real)), axis=-1))
    accuracy[role] = float(np.mean(pred == y_test))
  say("real-digit test accuracy: " + ", ".join(f"{k} {v:.2%}" for k, v in accuracy.items()))

  idx = explained_digits(pipeline, config.num_examples, config.seed)
  digits = x_test[idx]
  f, _ = flax_adapters.nnx_param_fn(released["plain"])  # the model's own output row
  g = jax.grad(f)
  key = jax.random.key(config.seed)
  cache: dict[Any, Any] = {}
  by_bounds: dict[Any, Any] = {}
  maps = {}
  for i, (role, model) in enumerate(released.items()):
    shift = _released.RELEASED_SHIFT[role]
    bounds = (shift, shift + 1.0)
    ag_bounds = RELEASED_SHIFTED_AG_BOUNDS if (shift and pipeline.shared_bounds) else bounds
    if (bounds, ag_bounds) not in by_bounds:
      by_bounds[(bounds, ag_bounds)] = table1_explainers(
          g, config, bounds, ag_bounds=ag_bounds, include_clean=pipeline.include_clean,
          inert_noisegrad=pipeline.inert_noisegrad)
    inputs = jnp.asarray(_released.released_inputs(digits, shift, garbled=pipeline.garbled_inputs))
    _, params = flax_adapters.nnx_param_fn(model)
    targets = flax_adapters.resolve_targets(model, inputs, "predicted")
    maps[role] = explain_all(by_bounds[(bounds, ag_bounds)], config.methods,
                             jax.random.fold_in(key, i), inputs, params, targets, chunk, cache)
    say(f"{role} model explained ({time.perf_counter() - start:.0f} s)")
  consistency = {m: float(metrics.consistency(maps["plain"][m], maps["random_label"][m]))
                 for m in config.methods}
  invariance = {m: float(metrics.invariance(maps["plain"][m], maps["shifted"][m]))
                for m in config.methods}
  cfg = dataclasses.asdict(config)
  cfg["methods"] = list(config.methods)
  for unused in ("epochs", "learning_rate", "batch_size", "hidden", "train_size",
                 "shifted_bounds", "chunk"):
    cfg.pop(unused, None)
  return ReleasedTable1Result(consistency, invariance, pipeline, accuracy, int(len(idx)), cfg,
                              time.perf_counter() - start)


LADDER = ("garbled_inputs", "softmax_saliency", "shared_bounds", "include_clean",
          "with_replacement", "inert_noisegrad")
"""The order in which :func:`correction_ladder` corrects the released behaviours."""


def correction_ladder(
    weights_dir: Any,
    *,
    mnist: Any = None,
    config: Table1Config = Table1Config(num_examples=1000, methods=("Grad", "SG", "AG")),
    steps: tuple[str, ...] = LADDER,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
  """Corrects the released pipeline one behaviour at a time (cumulatively) and measures each step.

  Returns:
    One dict per step: ``{"corrected": flag, "description": what it
    corrects, "consistency": {...}, "invariance": {...}}``, the first step
    being the released pipeline itself (``"corrected": None``).
  """
  pipeline = Pipeline.released()
  out = []
  for flag in (None, *steps):
    if flag is not None:
      pipeline = dataclasses.replace(pipeline, **{flag: False})
    res = table1_released_weights(weights_dir, pipeline, mnist=mnist, config=config, log=None)
    out.append({"corrected": flag,
                "description": _released.DEVIATIONS[flag] if flag else "the released pipeline",
                "consistency": res.consistency, "invariance": res.invariance,
                "num_digits": res.num_digits})
    if log:
      log(f"corrected {flag}: consistency "
          + ", ".join(f"{k} {v:.4f}" for k, v in res.consistency.items()) + "; invariance "
          + ", ".join(f"{k} {v:.4f}" for k, v in res.invariance.items())
          + f" ({res.seconds:.0f} s)")
  return out


class FixedTable1Result(NamedTuple):
  """What :func:`table1_fixed` returns: released weights corrected, the ladder, and our models.

  Attributes:
    released: the released weights on real digits with every correction
      (None without a weights folder).
    ladder: :func:`correction_ladder`'s steps (None without a weights folder).
    ours: our optax-trained models (:func:`adaptgrad_jax.reproduce.table1`),
      or None when not measured.
  """
  released: ReleasedTable1Result | None
  ladder: list[dict[str, Any]] | None
  ours: Any

  def to_dict(self) -> dict[str, Any]:
    out = {"protocol": "fixed", "paper": PAPER_TABLE1}
    if self.released is not None:
      out["released_weights"] = self.released.to_dict()
      out["released_weights"]["corrections"] = [_released.DEVIATIONS[f]
                                                for f in self.released.pipeline.corrections()]
      out["correction_ladder"] = self.ladder
    if self.ours is not None:
      out["ours"] = self.ours.to_dict()
    top = self.ours if self.ours is not None else self.released
    out["consistency"], out["invariance"] = top.consistency, top.invariance
    return out

  def side_by_side(self) -> list[list[Any]]:
    rows = []
    for metric in ("consistency", "invariance"):
      rows.append([f"{metric.capitalize()}: paper (released pipeline)",
                   *(PAPER_TABLE1[metric][m] for m in METHODS)])
      if self.released is not None:
        rows.append([f"{metric.capitalize()}: released weights, real digits, corrected",
                     *(getattr(self.released, metric).get(m) for m in METHODS)])
      if self.ours is not None:
        rows.append([f"{metric.capitalize()}: our models",
                     *(getattr(self.ours, metric).get(m) for m in METHODS)])
    return rows

  def ladder_rows(self) -> list[list[Any]]:
    rows = []
    for step in self.ladder or []:
      name = step["corrected"] or "released pipeline"
      rows.append([name, *(step["consistency"].get(m) for m in ("Grad", "SG", "AG")),
                   *(step["invariance"].get(m) for m in ("Grad", "SG", "AG"))])
    return rows

  LADDER_HEADER = ("corrected (cumulative)", "Cons. Grad", "Cons. SG", "Cons. AG", "Inv. Grad",
                   "Inv. SG", "Inv. AG")

  def to_markdown(self) -> str:
    parts = [_report.markdown_table(["", *METHODS], self.side_by_side())]
    if self.ladder:
      parts.append("Each correction of the released pipeline, applied cumulatively "
                   "(released weights):\n\n" + _report.markdown_table(self.LADDER_HEADER,
                                                                     self.ladder_rows()))
    if self.released is not None:
      parts.append(self.released.settings_line())
    if self.ours is not None:
      parts.append(self.ours.settings_line())
    return "\n\n".join(parts)

  def print(self) -> None:
    _report.print_rich_table("Table 1: paper, released weights corrected, our models",
                             ["", *METHODS], self.side_by_side())
    if self.ladder:
      _report.print_rich_table("Corrections of the released pipeline (cumulative)",
                               self.LADDER_HEADER, self.ladder_rows())
    if self.released is not None:
      print(self.released.settings_line())
    if self.ours is not None:
      print(self.ours.settings_line())


def table1_fixed(
    weights_dir: Any,
    *,
    mnist: Any = None,
    released_config: Table1Config = Table1Config(num_examples=1000, m=10),
    ours_config: Table1Config | None = Table1Config(),
    ladder: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> FixedTable1Result:
  """The corrected Table 1: released weights on real digits (with the ladder) and our models.

  Args:
    weights_dir: the released models' folder, or None to measure our models only.
    mnist: MNIST (path or ``datasets.MNIST``).
    released_config: settings of the released-weights run.
    ours_config: settings of our models (:func:`adaptgrad_jax.reproduce.table1`);
      None skips them.
    ladder: also measure each correction's effect on Grad, SG and AG.
    progress: training progress bars.
    log: progress lines (None: silent).
  """
  from adaptgrad_jax.reproduce._table1 import table1  # pylint: disable=import-outside-toplevel
  released = steps = None
  if weights_dir is not None:
    if ladder:
      steps = correction_ladder(
          weights_dir, mnist=mnist, log=log,
          config=dataclasses.replace(released_config, methods=("Grad", "SG", "AG")),
          steps=tuple(f for f in LADDER if f != "inert_noisegrad"))
    released = table1_released_weights(weights_dir, Pipeline(), mnist=mnist,
                                       config=released_config, log=log)
  ours = None
  if ours_config is not None:
    ours = table1(ours_config, mnist=mnist, progress=progress, log=log)
  return FixedTable1Result(released, steps, ours)
