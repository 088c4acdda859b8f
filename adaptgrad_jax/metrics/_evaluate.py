"""One runner: every explainer x every metric over a dataset.

:func:`evaluate` computes each explainer's maps with
:func:`adaptgrad_jax.attribute.attribute` (sharded over the local devices,
resumable checksummed shards when an output directory is given), scores them
with the library's metrics, and returns an :class:`Evaluation`: per-example
scores, means with bootstrap confidence intervals, paired comparisons, and
markdown / CSV / JSON writers and a plot.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import re
import zlib
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adaptgrad_jax import _files
from adaptgrad_jax.metrics import _statistics
from adaptgrad_jax.metrics._complexity import complexity
from adaptgrad_jax.metrics._completeness import completeness
from adaptgrad_jax.metrics._faithfulness import deletion
from adaptgrad_jax.metrics._faithfulness import faithfulness_correlation
from adaptgrad_jax.metrics._faithfulness import insertion
from adaptgrad_jax.metrics._information import PicSkipped
from adaptgrad_jax.metrics._information import XRAI_THRESHOLDS
from adaptgrad_jax.metrics._information import _from_uint8
from adaptgrad_jax.metrics._information import _to_uint8
from adaptgrad_jax.metrics._information import performance_information_curve
from adaptgrad_jax.metrics._information import random_pixel_mask
from adaptgrad_jax.metrics._randomisation import random_logit
from adaptgrad_jax.metrics._robustness import avg_sensitivity
from adaptgrad_jax.metrics._robustness import infidelity
from adaptgrad_jax.metrics._robustness import local_lipschitz_estimate
from adaptgrad_jax.metrics._robustness import max_sensitivity
from adaptgrad_jax.metrics._robustness import relative_input_stability
from adaptgrad_jax.metrics._robustness import relative_output_stability
from adaptgrad_jax.metrics._sparseness import sparseness
from adaptgrad_jax._extras import install_hint

METRIC_KINDS = ("map", "model", "explainer")


class ExampleSkipped(ValueError):
  """Raised by a metric's score function to leave one example out, with the reason.

  :func:`evaluate` counts such examples as skipped (never as a score) and
  reports the count and the first reason. The information level's
  :class:`~adaptgrad_jax.metrics.PicSkipped` (XRAI's filters) is treated the
  same way.
  """


@dataclasses.dataclass(frozen=True)
class Metric:
  """A metric for :func:`evaluate`: a score function and how to call it.

  The protocol has three kinds, by what a score needs besides the map:

  * ``"map"``: ``score(attribution) -> scalar`` scores one map
    (:func:`~adaptgrad_jax.metrics.sparseness`, complexity).
  * ``"model"``: ``score(key, predict_fn, x, attribution, target) -> scalar``
    needs the model (deletion, insertion, faithfulness correlation,
    information level).
  * ``"explainer"``: ``score(key, explain_fn, predict_fn, x, target) ->
    scalar`` needs the explainer itself, ``explain_fn(key, x, target)``, to
    explain perturbed inputs (max-sensitivity, infidelity, random logit...);
    ``predict_fn`` is None unless ``needs_predict_fn``.

  ``x`` is one example (no batch axis), ``target`` its class (a scalar int)
  and ``key`` the example's metric key (see :func:`evaluate`). With
  ``jit=True`` the score must be jax-traceable: it is ``jax.vmap``-ed over
  chunks of examples and ``jax.jit``-ed; with ``jit=False`` it is called on
  one example at a time with concrete arrays and may use numpy, and may raise
  :class:`ExampleSkipped` to leave an example out. A plain callable given to
  :func:`evaluate` is read as ``Metric(fn, "map")``.

  Attributes:
    score: the score function (signature by `kind`).
    kind: ``"map"``, ``"model"`` or ``"explainer"``.
    higher_is_better: True, False, or None (unknown); shown in tables.
    jit: whether `score` can be vmapped and jitted.
    needs_predict_fn: for ``"explainer"`` metrics, whether `score` uses
      ``predict_fn`` (``"model"`` metrics always do).
  """
  score: Callable[..., Any]
  kind: str = "map"
  higher_is_better: bool | None = None
  jit: bool = True
  needs_predict_fn: bool = False

  def __post_init__(self):
    if not callable(self.score):
      raise TypeError(f"Metric.score={self.score!r} must be callable")
    if self.kind not in METRIC_KINDS:
      raise ValueError(f"Metric.kind={self.kind!r} is not a metric kind; "
                       f"choose one of {METRIC_KINDS}")

  @property
  def uses_predict_fn(self) -> bool:
    return self.kind == "model" or self.needs_predict_fn


# ----------------------------------------------------------------------------
# The library's metrics, by name, with their reference defaults.


def _information_level(options: Mapping[str, Any], bounds: Any) -> Metric:
  """Per-image SIC (XRAI's PIC AUC); the median curve over its masks."""
  opts = dict(options)
  masks = opts.pop("masks_per_image", 1)
  fraction = opts.pop("mask_fraction", 0.01)
  opts.setdefault("kind", "softmax")
  opts.setdefault("thresholds", XRAI_THRESHOLDS)
  opts.setdefault("bounds", bounds)
  if opts["bounds"] is None:
    raise ValueError(
        "metric 'information_level' needs the input domain: pass "
        "evaluate(..., bounds=(low, high)) (e.g. models.EFFICIENTNET_LITE_BOUNDS "
        "or (0.0, 1.0)); the image is quantised to uint8 between them")
  if isinstance(masks, bool) or not isinstance(masks, int) or masks < 1:
    raise ValueError(f"information_level option masks_per_image={masks!r} "
                     "must be a positive integer")

  min_pred = opts.get("min_pred_value", 0.8)

  def score(key, predict_fn, x, attribution, target):
    del target  # XRAI's SIC follows the class predicted on the original.
    x, a = np.asarray(x), np.asarray(attribution)
    h, w = x.shape[:2]
    if opts["kind"] == "softmax":
      # XRAI's first filter, checked before the (costly) bokeh images: the
      # same test performance_information_curve makes on the quantised image.
      q = _from_uint8(_to_uint8(np.asarray(x, np.float64), opts["bounds"]), opts["bounds"])
      p0 = float(np.max(np.asarray(predict_fn(jnp.asarray(q[None])))[0]))
      if p0 < min_pred:
        raise ExampleSkipped(
            f"the model's prediction on the original image is {p0:.4f} < "
            f"min_pred_value={min_pred}; skip this image or lower min_pred_value.")
    keys = jax.random.split(key, masks)  # as information_level(key, x[None], ...)
    curves, reason = [], None
    for j in range(masks):
      mask = random_pixel_mask(keys[j], h, w, fraction)
      try:
        curves.append(performance_information_curve(
            x, a, predict_fn, random_mask=mask, **opts))
      except PicSkipped as e:
        reason = reason or str(e)
    if not curves:
      raise ExampleSkipped(reason)
    y = np.median(np.stack([c.curve_y for c in curves]), axis=0)
    return float(np.trapezoid(y, curves[0].curve_x))

  return Metric(score, "model", higher_is_better=True, jit=False)


def _builtin(name: str, options: Mapping[str, Any], *, bounds: Any,
             num_classes: int | None) -> Metric:
  o = dict(options)
  if name == "sparseness":
    return Metric(lambda a: sparseness(a, **o), "map", True)
  if name == "complexity":
    return Metric(lambda a: complexity(a, **o), "map", False)
  if name == "deletion":
    return Metric(lambda k, p, x, a, t: deletion(p, x, a, target=t, **o).auc,
                  "model", False)
  if name == "insertion":
    return Metric(lambda k, p, x, a, t: insertion(p, x, a, target=t, **o).auc,
                  "model", True)
  if name == "faithfulness_correlation":
    return Metric(lambda k, p, x, a, t: faithfulness_correlation(
        k, p, x, a, target=t, **o), "model", True)
  if name == "information_level":
    return _information_level(o, bounds)
  if name in ("max_sensitivity", "avg_sensitivity", "local_lipschitz_estimate"):
    fn = {"max_sensitivity": max_sensitivity, "avg_sensitivity": avg_sensitivity,
          "local_lipschitz_estimate": local_lipschitz_estimate}[name]
    return Metric(lambda k, e, p, x, t: fn(k, e, x, t, **o), "explainer", False)
  if name in ("relative_input_stability", "relative_output_stability"):
    fn = {"relative_input_stability": relative_input_stability,
          "relative_output_stability": relative_output_stability}[name]
    return Metric(lambda k, e, p, x, t: fn(k, e, p, x, t, **o), "explainer",
                  False, needs_predict_fn=True)
  if name == "infidelity":
    return Metric(lambda k, e, p, x, t: infidelity(k, e, p, x, t, target=t, **o),
                  "explainer", False, needs_predict_fn=True)
  if name == "completeness":
    return Metric(lambda k, e, p, x, t: jnp.abs(completeness(
        k, e, p, x, t, target=t, **o)), "explainer", False,
                  needs_predict_fn=True)
  if name == "random_logit":
    o.setdefault("num_classes", num_classes)
    if o["num_classes"] is None:
      raise ValueError("metric 'random_logit' needs the number of classes: "
                       "pass predict_fn (it is read from its output) or "
                       "metric_options={'random_logit': {'num_classes': K}}")
    return Metric(lambda k, e, p, x, t: random_logit(k, e, x, t, **o),
                  "explainer", False)
  raise AssertionError(name)  # pragma: no cover


METRIC_NAMES = (
    "sparseness", "complexity", "deletion", "insertion",
    "faithfulness_correlation", "information_level", "max_sensitivity",
    "avg_sensitivity", "local_lipschitz_estimate", "relative_input_stability",
    "relative_output_stability", "infidelity", "completeness", "random_logit")
"""The metric names :func:`evaluate` resolves (see :func:`evaluate` for what each scores)."""


# ----------------------------------------------------------------------------
# The result.


class SummaryRow(NamedTuple):
  """One (explainer, metric) line of :meth:`Evaluation.summary`.

  Attributes:
    explainer: the explainer's name.
    metric: the metric's name.
    mean: mean over the examples counted (None if none was).
    low: lower end of the bootstrap confidence interval (None if no example).
    high: upper end.
    n: examples counted.
    skipped: examples the metric left out (e.g. XRAI's filters).
    undefined: examples whose score was not finite (left out).
    note: why examples were left out (the first reason), or "".
  """
  explainer: str
  metric: str
  mean: float | None
  low: float | None
  high: float | None
  n: int
  skipped: int
  undefined: int
  note: str


class Comparison(NamedTuple):
  """:meth:`Evaluation.compare`: explainer `a` vs `b` on one metric.

  Attributes:
    a: first explainer.
    b: second explainer.
    metric: the metric.
    test: the :class:`~adaptgrad_jax.metrics.PairedTest` of ``a - b`` on the
      examples both were scored on.
    higher_is_better: the metric's direction (None if unknown).
  """
  a: str
  b: str
  metric: str
  test: _statistics.PairedTest
  higher_is_better: bool | None


def _crc(name: str) -> int:
  return zlib.crc32(name.encode("utf-8"))


def _fmt(v: float | None, digits: int = 4) -> str:
  return "n/a" if v is None else f"{v:.{digits}f}"


@dataclasses.dataclass
class Evaluation:
  """What :func:`evaluate` returns: per-example scores and their summaries.

  Attributes:
    explainers: the explainers' names, in order.
    metrics: the metrics' names, in order.
    scores: ``(explainer, metric) -> (num_examples,)`` float64 scores, NaN
      where an example was skipped or undefined (see `skipped`, `undefined`).
    skipped: ``(explainer, metric) -> (num_examples,)`` bool, examples the
      metric left out (e.g. XRAI's filters).
    reasons: ``(explainer, metric) -> `` the first reason an example was
      left out, or "".
    higher_is_better: metric -> True / False / None.
    num_examples: examples in the data.
    maps: explainer -> its maps (an ``attribute.AttributionResult``).
    key: the PRNG key the bootstrap and the tests use (derived from
      :func:`evaluate`'s key).
    confidence: the confidence level of the intervals.
    num_resamples: bootstrap resamples.
    settings: a JSON-able record of the run's settings.
  """
  explainers: tuple[str, ...]
  metrics: tuple[str, ...]
  scores: dict[tuple[str, str], np.ndarray]
  skipped: dict[tuple[str, str], np.ndarray]
  reasons: dict[tuple[str, str], str]
  higher_is_better: dict[str, bool | None]
  num_examples: int
  maps: dict[str, Any] = dataclasses.field(repr=False)
  key: Any = dataclasses.field(repr=False, default=None)
  confidence: float = 0.95
  num_resamples: int = 2000
  settings: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

  def _check(self, explainer: str, metric: str) -> tuple[str, str]:
    if explainer not in self.explainers:
      raise KeyError(f"explainer {explainer!r} is not one of {self.explainers}")
    if metric not in self.metrics:
      raise KeyError(f"metric {metric!r} is not one of {self.metrics}")
    return explainer, metric

  def counted(self, explainer: str, metric: str) -> np.ndarray:
    """Bool mask of the examples with a finite score."""
    em = self._check(explainer, metric)
    if em not in self.scores:
      return np.zeros(self.num_examples, bool)
    return np.isfinite(self.scores[em])

  def summary_row(self, explainer: str, metric: str) -> SummaryRow:
    """Mean and bootstrap interval of one explainer on one metric."""
    em = self._check(explainer, metric)
    if em not in self.scores:
      return SummaryRow(explainer, metric, None, None, None, 0, 0, 0,
                        "not evaluated (metrics_per_explainer)")
    s = self.scores[em]
    ok = np.isfinite(s)
    skipped = int(self.skipped[em].sum())
    undefined = int((~ok).sum()) - skipped
    note = self.reasons.get(em, "")
    if not ok.any():
      return SummaryRow(explainer, metric, None, None, None, 0, skipped,
                        undefined, note or "no example was scored")
    # One key per metric: every explainer resamples the same examples.
    ci = _statistics.bootstrap_ci(
        jax.random.fold_in(self.key, _crc(metric)), s[ok],
        confidence=self.confidence, num_resamples=self.num_resamples)
    return SummaryRow(explainer, metric, ci.mean, ci.low, ci.high, ci.n,
                      skipped, undefined, note)

  def summary(self) -> list[SummaryRow]:
    """One :class:`SummaryRow` per explainer and metric."""
    return [self.summary_row(e, m) for e in self.explainers for m in self.metrics]

  def compare(self, a: str, b: str, metric: str, *,
              num_permutations: int = 10000) -> Comparison:
    """Paired comparison of explainers `a` and `b` on `metric`.

    Uses the examples both were scored on (the others are left out); see
    :func:`~adaptgrad_jax.metrics.paired_test` for the test (exact sign-flip
    enumeration up to 16 examples, Monte Carlo above).

    Raises:
      KeyError: an unknown explainer or metric.
      ValueError: no example was scored for both.
    """
    for e in (a, b):
      if self._check(e, metric) not in self.scores:
        raise ValueError(f"{e!r} was not evaluated on {metric!r} (see "
                         "metrics_per_explainer); nothing to compare")
    sa, sb = self.scores[(a, metric)], self.scores[(b, metric)]
    both = np.isfinite(sa) & np.isfinite(sb)
    if not both.any():
      raise ValueError(f"no example has a {metric!r} score for both {a!r} and "
                       f"{b!r}; nothing to compare")
    key = jax.random.fold_in(jax.random.fold_in(self.key, _crc(metric)), 1)
    test = _statistics.paired_test(
        key, sa[both], sb[both], confidence=self.confidence,
        num_resamples=self.num_resamples, num_permutations=num_permutations)
    return Comparison(a, b, metric, test, self.higher_is_better.get(metric))

  # --------------------------------------------------------------- writers

  def to_dict(self) -> dict[str, Any]:
    """A JSON-able dict: settings, summary rows and per-example scores (null = not scored)."""
    per_example = {
        e: {m: [None if not np.isfinite(v) else float(v)
                for v in self.scores[(e, m)]]
            for m in self.metrics if (e, m) in self.scores}
        for e in self.explainers}
    return {
        "explainers": list(self.explainers),
        "metrics": list(self.metrics),
        "higher_is_better": dict(self.higher_is_better),
        "num_examples": self.num_examples,
        "confidence": self.confidence,
        "num_resamples": self.num_resamples,
        "summary": [r._asdict() for r in self.summary()],
        "scores": per_example,
        "settings": self.settings,
    }

  def to_markdown(self, *, digits: int = 4) -> str:
    """A markdown table: one row per explainer, ``mean [low, high]`` per metric."""
    pct = f"{100 * self.confidence:g}%"
    arrows = {True: " (higher better)", False: " (lower better)", None: ""}
    head = ["explainer"] + [f"{m}{arrows[self.higher_is_better.get(m)]}"
                            for m in self.metrics]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    notes = []
    for e in self.explainers:
      cells = [e]
      for m in self.metrics:
        r = self.summary_row(e, m)
        if (e, m) not in self.scores:
          cells.append("-")
          continue
        if r.mean is None:
          cells.append("n/a")
        else:
          cell = f"{r.mean:.{digits}f} [{r.low:.{digits}f}, {r.high:.{digits}f}]"
          if r.n < self.num_examples:
            cell += f" (n={r.n})"
          cells.append(cell)
        if r.skipped or r.undefined or r.mean is None:
          notes.append(f"{e} / {m}: {r.n} counted, {r.skipped} skipped, "
                       f"{r.undefined} undefined; {r.note}")
      lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    text += (f"\n\nMean over {self.num_examples} examples [{pct} percentile "
             f"bootstrap interval, {self.num_resamples} resamples].")
    if notes:
      text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return text

  def to_csv(self, *, per_example: bool = False) -> str:
    """CSV text: the summary rows, or with ``per_example`` one row per score."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if per_example:
      w.writerow(["explainer", "metric", "example", "score", "skipped"])
      for e in self.explainers:
        for m in self.metrics:
          if (e, m) not in self.scores:
            continue
          for i, v in enumerate(self.scores[(e, m)]):
            w.writerow([e, m, i, "" if not np.isfinite(v) else repr(float(v)),
                        int(self.skipped[(e, m)][i])])
      return buf.getvalue()
    w.writerow(list(SummaryRow._fields) + ["confidence"])
    for r in self.summary():
      if (r.explainer, r.metric) not in self.scores:
        continue
      w.writerow([("" if v is None else v) for v in r] + [self.confidence])
    return buf.getvalue()

  def write(self, path: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Writes ``path`` + ``.md``, ``.csv`` (summary), ``.scores.csv`` and ``.json``, each atomically.

    Args:
      path: the path without suffix, e.g. ``"results/eval"``; its directory
        is created if missing.

    Returns:
      suffix -> written path.
    """
    base = pathlib.Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    texts = {".md": self.to_markdown() + "\n", ".csv": self.to_csv(),
             ".scores.csv": self.to_csv(per_example=True),
             ".json": json.dumps(self.to_dict(), indent=2) + "\n"}
    out = {}
    for suffix, text in texts.items():
      target = base.with_name(base.name + suffix)
      out[suffix] = _files.atomic_write(target, lambda f, t=text: f.write(t.encode()))
    return out

  def plot(self, path: str | os.PathLike | None = None, *, title: str | None = None):
    """Plots each metric's means with their confidence intervals, one panel per metric.

    Args:
      path: write the figure there (atomically; the format from the suffix),
        or None to only return it.
      title: the figure's title.

    Returns:
      The matplotlib ``Figure``.

    Raises:
      ImportError: matplotlib is missing (the ``plot`` extra).
    """
    try:
      import matplotlib  # pylint: disable=import-outside-toplevel
      if path is not None:
        matplotlib.use("Agg", force=False)
      import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("Evaluation.plot needs matplotlib: " + install_hint("plot")) from e
    k = len(self.metrics)
    fig, axes = plt.subplots(1, k, figsize=(max(4.0, 0.5 * len(self.explainers) + 2) * k, 4),
                             squeeze=False)
    xs = np.arange(len(self.explainers))
    for ax, m in zip(axes[0], self.metrics):
      rows = [self.summary_row(e, m) for e in self.explainers]
      for x, r in zip(xs, rows):
        if r.mean is None:
          continue
        ax.errorbar(x, r.mean, yerr=[[r.mean - r.low], [r.high - r.mean]], fmt="o",
                    capsize=3, color="C0")
      ax.set_xticks(xs)
      ax.set_xticklabels(self.explainers, rotation=60, ha="right", fontsize=8)
      arrow = {True: " (higher better)", False: " (lower better)", None: ""}
      ax.set_title(m + arrow[self.higher_is_better.get(m)], fontsize=9)
      ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"mean and {100 * self.confidence:g}% bootstrap interval "
                 f"over {self.num_examples} examples", fontsize=10)
    fig.tight_layout()
    if path is not None:
      target = pathlib.Path(path)
      fmt = target.suffix.lstrip(".") or "png"
      _files.atomic_write(target, lambda f: fig.savefig(f, format=fmt, dpi=110))
    return fig


# ----------------------------------------------------------------------------
# The runner.


def _check_explainers(explainers) -> dict[str, Callable[..., Any]]:
  if not isinstance(explainers, Mapping) or not explainers:
    raise TypeError(
        f"explainers={explainers!r} must be a non-empty mapping name -> "
        "explain_fn(key, x, target) -> map, e.g. {'SG': sg, 'Grad': lambda "
        "key, x, t: grad(x, t)}")
  out = {}
  for name, fn in explainers.items():
    if not isinstance(name, str) or not name:
      raise TypeError(f"explainers has the key {name!r}; name each explainer "
                      "with a non-empty string")
    if not callable(fn):
      raise TypeError(f"explainers[{name!r}]={fn!r} is not callable; pass "
                      "explain_fn(key, x, target) -> map")
    out[name] = fn
  return out


def _resolve_metrics(metrics, metric_options, bounds, num_classes
                     ) -> dict[str, Metric]:
  if isinstance(metrics, (str, Metric)) or callable(metrics):
    metrics = [metrics]
  if isinstance(metrics, Mapping):
    items = list(metrics.items())
  else:
    try:
      items = [(m if isinstance(m, str) else getattr(getattr(m, "score", m),
                                                     "__name__", None), m)
               for m in metrics]
    except TypeError:
      raise TypeError(f"metrics={metrics!r} must be metric names, Metric "
                      "objects or callables (a list, or a dict name -> "
                      "metric)") from None
  if not items:
    raise ValueError(f"metrics is empty; name at least one, from {METRIC_NAMES}")
  options = dict(metric_options or {})
  for name in options:
    if name not in METRIC_NAMES:
      raise ValueError(f"metric_options names {name!r}, which is not a "
                       f"library metric; options apply to {METRIC_NAMES}")
  out = {}
  for name, spec in items:
    if isinstance(spec, str):
      if spec not in METRIC_NAMES:
        raise ValueError(f"metrics names {spec!r}, which is not a metric of "
                         f"the library; the available ones are {METRIC_NAMES} "
                         "(or pass a Metric / callable)")
      metric = _builtin(spec, options.get(spec, {}), bounds=bounds,
                        num_classes=num_classes)
    elif isinstance(spec, Metric):
      metric = spec
    elif callable(spec):
      metric = Metric(spec, "map")
    else:
      raise TypeError(f"metrics holds {spec!r}; pass a metric name, a Metric "
                      "or a callable score(attribution) -> scalar")
    if not isinstance(name, str) or not name or name == "<lambda>":
      raise ValueError(f"metric {spec!r} has no usable name; pass metrics as a "
                       "dict name -> metric")
    if name in out:
      raise ValueError(f"metric name {name!r} appears twice in metrics")
    out[name] = metric
  return out


def _read_data(data) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(data, tuple) and len(data) == 2 and all(
      hasattr(d, "shape") for d in data):
    xs, ts = np.asarray(data[0]), np.asarray(data[1])
  else:
    if isinstance(data, (np.ndarray, jax.Array)) or isinstance(data, tuple):
      raise TypeError(
          f"data must be a tuple (xs, targets) of arrays with one leading "
          f"example axis, or an iterable of such (xs, targets) batches; got "
          f"{type(data).__name__}")
    try:
      batches = list(data)
    except TypeError:
      raise TypeError(f"data={data!r} must be (xs, targets) arrays or an "
                      "iterable of (xs, targets) batches") from None
    for i, b in enumerate(batches):
      if not (isinstance(b, tuple) and len(b) == 2):
        raise TypeError(f"data's batch {i} is a {type(b).__name__}; each batch "
                        "must be a tuple (xs, targets)")
    if not batches:
      raise ValueError("data is empty: it yielded no batch; pass at least one "
                       "example")
    xs = np.concatenate([np.asarray(b[0]) for b in batches])
    ts = np.concatenate([np.asarray(b[1]).reshape(-1) for b in batches])
  if xs.ndim < 1 or len(xs) == 0:
    raise ValueError(f"data holds no example (xs has shape {xs.shape}); pass "
                     "at least one")
  if ts.shape != (len(xs),):
    raise ValueError(f"data's targets have shape {ts.shape} for {len(xs)} "
                     f"inputs; pass one class index per example, shape "
                     f"({len(xs)},)")
  if ts.dtype.kind not in "iu":
    if ts.dtype.kind == "f" and np.all(np.isfinite(ts)) and np.all(ts == np.round(ts)):
      ts = ts.astype(np.int64)
    else:
      raise ValueError(f"data's targets have dtype {ts.dtype}; pass integer "
                       "class indices")
  if np.any(ts < 0):
    i = int(np.flatnonzero(ts < 0)[0])
    raise ValueError(f"data's targets[{i}] = {ts[i]} is negative; targets are "
                     "class indices in [0, num_classes)")
  if xs.dtype.kind != "f":
    raise ValueError(f"data's inputs have dtype {xs.dtype}; pass floating "
                     "point inputs (already preprocessed for the model)")
  return xs, ts.astype(np.int32)


def _num_classes(predict_fn, xs) -> int:
  try:
    out = jax.eval_shape(predict_fn, jax.ShapeDtypeStruct((1,) + xs.shape[1:], xs.dtype))
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(f"predict_fn cannot be called on a batch of one input of "
                    f"shape {(1,) + xs.shape[1:]}: {e}; it must map a batch "
                    "(B, ...) to class scores (B, num_classes)") from e
  if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 1:
    raise ValueError(f"predict_fn returned {getattr(out, 'shape', out)} for a "
                     "batch of one; it must return class scores (B, num_classes)")
  return int(out.shape[1])


def _check_map_shape(name, fn, key, x, t) -> tuple[int, ...]:
  try:
    out = jax.eval_shape(fn, key, jax.ShapeDtypeStruct(x.shape, x.dtype),
                         jax.ShapeDtypeStruct((), np.int32))
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(
        f"explainers[{name!r}] cannot be called as explain_fn(key, x, target) "
        f"on one input of shape {x.shape}: {type(e).__name__}: {e}. Wrap a "
        "deterministic g(x, target) as lambda key, x, t: g(x, t)") from e
  if not hasattr(out, "shape"):
    raise ValueError(f"explainers[{name!r}] returned {out!r}; it must return "
                     "one map (an array)")
  ok = (tuple(out.shape) == x.shape or
        (x.ndim >= 3 and tuple(out.shape) == x.shape[:-1]))
  if not ok:
    raise ValueError(
        f"explainers[{name!r}] returns maps of shape {tuple(out.shape)} for an "
        f"input of shape {x.shape}; a map must have the input's shape (or "
        "drop only its channel axis)")
  return tuple(out.shape)


def _dir_name(name: str) -> str:
  slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "explainer"
  return f"{slug}-{_crc(name):08x}"


def _chunks(n: int, size: int):
  for lo in range(0, n, size):
    yield lo, min(n, lo + size)


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  if len(a) == size:
    return a
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _batched_score(metric: Metric, explain_fn, predict_fn) -> Callable[..., Any]:
  """``fn(keys, xs, maps, targets) -> scores``, jitted and vmapped over the examples."""
  if metric.kind == "map":
    return jax.jit(jax.vmap(lambda k, x, a, t: metric.score(a)))
  if metric.kind == "model":
    return jax.jit(jax.vmap(lambda k, x, a, t: metric.score(k, predict_fn, x, a, t)))
  p = predict_fn if metric.needs_predict_fn else None
  return jax.jit(jax.vmap(lambda k, x, a, t: metric.score(k, explain_fn, p, x, t)))


def _score_all(metric: Metric, key, explain_fn, predict_fn, xs, ts, maps,
               batch_size: int, compiled: dict[int, Any] | None = None,
               ) -> tuple[np.ndarray, np.ndarray, str]:
  """Per-example scores, skipped mask and first reason, of one metric for one explainer.

  ``compiled`` caches the jitted scores of the metrics that do not call the
  explainer (map and model kinds), so that every explainer reuses one program
  per metric instead of compiling its own.
  """
  n = len(xs)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n))
  scores = np.full(n, np.nan)
  skipped = np.zeros(n, bool)
  reason = ""
  if metric.jit:
    if metric.kind == "explainer" or compiled is None:
      fn = _batched_score(metric, explain_fn, predict_fn)
    else:
      fn = compiled.setdefault(id(metric), _batched_score(metric, explain_fn, predict_fn))
    size = min(batch_size, n)
    for lo, hi in _chunks(n, size):
      idx = np.minimum(np.arange(lo, lo + size), hi - 1)  # the last one repeated
      out = fn(keys[idx], xs[idx], _pad(np.asarray(maps[lo:hi]), size), ts[idx])
      out = np.asarray(out, np.float64)
      if out.shape != (size,):
        raise ValueError(f"a metric returned shape {out.shape[1:]} per example; "
                         "a score must be a scalar")
      scores[lo:hi] = out[:hi - lo]
    return scores, skipped, reason
  for i in range(n):
    try:
      if metric.kind == "map":
        v = metric.score(np.asarray(maps[i]))
      elif metric.kind == "model":
        v = metric.score(keys[i], predict_fn, xs[i], np.asarray(maps[i]), int(ts[i]))
      else:
        p = predict_fn if metric.needs_predict_fn else None
        v = metric.score(keys[i], explain_fn, p, xs[i], int(ts[i]))
    except (ExampleSkipped, PicSkipped) as e:
      skipped[i] = True
      reason = reason or str(e)
      continue
    v = np.asarray(v, np.float64)
    if v.shape != ():
      raise ValueError(f"a metric returned shape {v.shape} for example {i}; "
                       "a score must be a scalar")
    scores[i] = float(v)
  return scores, skipped, reason


def evaluate(
    explainers: Mapping[str, Callable[..., Any]],
    metrics: Sequence[str | Metric | Callable[..., Any]] | Mapping[str, Any],
    data: Any,
    key: jax.Array,
    *,
    predict_fn: Callable[[jax.Array], jax.Array] | None = None,
    bounds: Any = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 32,
    explain_ids: Mapping[str, str] | None = None,
    metrics_per_explainer: Mapping[str, Sequence[str]] | None = None,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> Evaluation:
  """Scores every explainer with every metric on every example of a dataset.

  **Maps.** Each explainer ``explain_fn(key, x, target) -> map`` explains ONE
  example (the library's convention: the key first; wrap a deterministic
  ``g(x, target)`` as ``lambda key, x, t: g(x, t)``) and must return a map of
  the input's shape (or without its channel axis). Its maps are computed by
  :func:`adaptgrad_jax.attribute.attribute`: sharded over the local devices,
  in memory, or, with `out`, as checksummed resumable shards in
  ``out/<explainer>-<crc>/`` under a lock (a second call with the same
  arguments reuses the finished shards and computes only the missing ones; a
  call with another explainer or key is refused, never mixed).

  **Keys.** From `key`: ``k_maps, k_metrics, k_stats = split(key, 3)``.
  Example ``i`` is explained with ``fold_in(k_maps, i)`` by every explainer
  (common random numbers: SG and AG on one example draw the same standard
  normal noise, which makes paired comparisons sharper), and scored by metric
  ``m`` with ``fold_in(fold_in(k_metrics, crc32(m)), i)`` (the same
  perturbations for every explainer). So the scores of an example do not
  depend on `batch_size`, on the other examples or explainers, nor on
  resuming. ``k_stats`` drives the bootstrap and the permutation tests.

  **Metrics** are names of the library's metrics with their reference
  defaults (options through `metric_options`), :class:`Metric` objects, or
  plain callables ``score(attribution) -> scalar``:

  | name | kind | better |
  |---|---|---|
  | ``sparseness`` | map | higher (Gini index) |
  | ``complexity`` | map | lower (entropy) |
  | ``deletion`` | model | lower (AUC) |
  | ``insertion`` | model | higher (AUC) |
  | ``faithfulness_correlation`` | model | higher |
  | ``information_level`` | model | higher (per-image SIC AUC; needs `bounds`, probabilities) |
  | ``max_sensitivity`` | explainer | lower |
  | ``avg_sensitivity`` | explainer | lower |
  | ``local_lipschitz_estimate`` | explainer | lower |
  | ``relative_input_stability`` | explainer | lower (needs `predict_fn`) |
  | ``relative_output_stability`` | explainer | lower (needs `predict_fn`) |
  | ``infidelity`` | explainer | lower (needs `predict_fn`) |
  | ``completeness`` | explainer | lower (``abs(gap)``, needs `predict_fn`) |
  | ``random_logit`` | explainer | lower (SSIM) |

  ``information_level`` scores each image by the AUC of its Softmax
  Information Curve (XRAI's PIC with XRAI's thresholds; the median curve of
  its ``masks_per_image`` seed masks, default 1), equal to
  ``information_level(key_i, x[None], map[None], predict_fn, ...)``; images
  that fail XRAI's filters (prediction below ``min_pred_value``, default
  0.8, ...) are counted as skipped, with the reason, not scored (the
  confidence filter is checked first, on the image alone, so a skipped image
  costs one prediction, not the bokeh images). Scores that
  are not finite are left out and counted as undefined, never averaged.

  Args:
    explainers: mapping name -> ``explain_fn(key, x, target) -> map``.
    metrics: metric names, :class:`Metric` objects or callables, as a list
      (a callable's ``__name__`` names it) or a dict name -> metric.
    data: ``(xs, targets)``: inputs with a leading example axis (already
      preprocessed for the model) and integer class indices, one per
      example; or an iterable of such ``(xs, targets)`` batches (collected
      into memory: the metrics need the inputs again).
    key: a PRNG key (``jax.random.key(seed)``).
    predict_fn: batch ``(B, ...)`` -> class scores ``(B, K)``: needed by the
      ``model`` metrics and some ``explainer`` metrics; probabilities for
      ``information_level``. It also checks the targets' range.
    bounds: ``(low, high)`` of the input domain (``information_level``).
    metric_options: metric name -> keyword options of the library function,
      e.g. ``{"faithfulness_correlation": {"subset_size": 16}}``.
    out: directory for the maps' shards (resumable), or None (in memory).
    batch_size: examples per explainer batch (and per shard) and per metric
      batch.
    explain_ids: explainer name -> an identity string for ``attribute``'s
      resume check, needed when an explainer closes over state that cannot
      be fingerprinted (a Flax module); default: the fingerprint.
    metrics_per_explainer: explainer name -> the metric names to score it
      on (default: every metric); e.g. the information level of the IG
      rows only. Pairs left out read "not evaluated" in the summary.
    confidence: the confidence level of the intervals.
    num_resamples: bootstrap resamples.
    progress: show ``attribute``'s progress bars.
    log: called with one line per finished explainer / metric (None: quiet).
    overwrite: recompute the maps in `out` instead of resuming: each
      explainer's ``attribute`` deletes only the files it writes in its own
      folder (never other files in `out`).

  Returns:
    An :class:`Evaluation`.

  Raises:
    TypeError: explainers that are not a mapping of callables, an explainer
      that cannot be called as ``explain_fn(key, x, target)``, bad `data`.
    ValueError: an unknown metric (the available ones are listed), a metric
      that needs `predict_fn` or `bounds` without one, empty data, targets
      out of range, a map of the wrong shape or non-finite (the explainer
      and the example are named), a bad `batch_size`, `confidence` or
      `num_resamples`.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import adaptgrad_jax as ag
    >>> from adaptgrad_jax import metrics
    >>> w = jax.random.normal(jax.random.key(1), (16, 3))
    >>> logits = lambda x, t: (x @ w)[t]
    >>> grad = jax.grad(logits)
    >>> explainers = {
    ...     "Grad": lambda key, x, t: grad(x, t),
    ...     "SG": ag.smooth_grad(grad, 0.2, 8, bounds=(0.0, 1.0)),
    ... }
    >>> xs = jax.random.uniform(jax.random.key(2), (6, 16))
    >>> res = metrics.evaluate(explainers, ["sparseness"], (xs, np.zeros(6, int)),
    ...                        jax.random.key(0))
    >>> [(r.explainer, r.n) for r in res.summary()]
    [('Grad', 6), ('SG', 6)]
    >>> res.compare("SG", "Grad", "sparseness").test.method
    'exact'
  """
  from adaptgrad_jax import attribute as attribute_lib  # pylint: disable=import-outside-toplevel
  say = log or (lambda _: None)
  explainers = _check_explainers(explainers)
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
  _statistics._check_options(confidence, num_resamples)  # pylint: disable=protected-access
  if explain_ids is not None:
    unknown = set(explain_ids) - set(explainers)
    if unknown:
      raise ValueError(f"explain_ids names {sorted(unknown)}, which are not "
                       f"explainers ({list(explainers)})")
  key = jax.random.key(key) if isinstance(key, int) and not isinstance(key, bool) else key
  if not (isinstance(key, jax.Array) and (
      jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == () or
      key.dtype == jnp.uint32 and key.shape == (2,))):
    raise TypeError(f"key={key!r} must be one PRNG key, e.g. jax.random.key(0)")
  xs, ts = _read_data(data)
  num_classes = None
  if predict_fn is not None:
    if not callable(predict_fn):
      raise TypeError(f"predict_fn={predict_fn!r} must be callable: batch -> "
                      "class scores (B, num_classes)")
    num_classes = _num_classes(predict_fn, xs)
    if np.any(ts >= num_classes):
      i = int(np.flatnonzero(ts >= num_classes)[0])
      raise ValueError(f"data's targets[{i}] = {ts[i]} is out of range: "
                       f"predict_fn gives {num_classes} classes, so targets "
                       f"must lie in [0, {num_classes})")
  resolved = _resolve_metrics(metrics, metric_options, bounds, num_classes)
  for name, metric in resolved.items():
    if metric.uses_predict_fn and predict_fn is None:
      raise ValueError(f"metric {name!r} needs the model: pass "
                       "predict_fn=batch -> class scores (B, num_classes)")
  only = {}
  for e, ms in (metrics_per_explainer or {}).items():
    if e not in explainers:
      raise ValueError(f"metrics_per_explainer names {e!r}, which is not an "
                       f"explainer ({list(explainers)})")
    ms = [ms] if isinstance(ms, str) else list(ms)
    for m in ms:
      if m not in resolved:
        raise ValueError(f"metrics_per_explainer[{e!r}] names {m!r}, which is "
                         f"not in metrics ({list(resolved)})")
    only[e] = set(ms)
  k_maps, k_metrics, k_stats = jax.random.split(key, 3)
  for name, fn in explainers.items():
    _check_map_shape(name, fn, k_maps, xs[0], ts[0])

  root = None if out is None else pathlib.Path(out)
  if root is not None:
    root.mkdir(parents=True, exist_ok=True)
  maps, scores, skipped, reasons = {}, {}, {}, {}
  compiled = {}  # metric -> one jitted score shared by every explainer (map and model kinds)
  for name, fn in explainers.items():
    ident = None if explain_ids is None else explain_ids.get(name)
    res = attribute_lib.attribute(
        fn, k_maps, (xs, ts), out=None if root is None else root / _dir_name(name),
        batch_size=int(batch_size), explain_id=ident,
        settings={"evaluate_explainer": name}, progress=progress,
        overwrite=overwrite)
    for lo, _, block in res.iter_shards():
      finite = np.isfinite(np.asarray(block)).reshape(len(block), -1).all(axis=1)
      if not finite.all():
        raise ValueError(
            f"explainers[{name!r}] returned a non-finite map (NaN or inf) for "
            f"example {lo + int(np.flatnonzero(~finite)[0])}; check the "
            "explainer (a division by zero, an input outside its bounds)")
    maps[name] = res
    say(f"{name}: maps done")
    for mname, metric in resolved.items():
      if name in only and mname not in only[name]:
        continue
      mkey = jax.random.fold_in(k_metrics, _crc(mname))
      s, sk, reason = _score_all(metric, mkey, fn, predict_fn, xs, ts, res,
                                 int(batch_size), compiled)
      bad = ~np.isfinite(s) & ~sk
      if bad.any() and not reason:
        reason = (f"the metric gave a non-finite score for {int(bad.sum())} "
                  f"example(s), first {int(np.flatnonzero(bad)[0])} (see the "
                  "metric's documented degenerate cases); left out")
      scores[(name, mname)], skipped[(name, mname)] = s, sk
      reasons[(name, mname)] = reason
      say(f"{name} / {mname}: {int(np.isfinite(s).sum())} of {len(s)} scored")
  settings = {
      "num_examples": int(len(xs)), "input_shape": list(xs.shape[1:]),
      "batch_size": int(batch_size), "out": None if root is None else str(root),
      "metric_options": {k: {o: repr(v) for o, v in d.items()}
                         for k, d in (metric_options or {}).items()},
      "bounds": None if bounds is None else repr(bounds),
  }
  return Evaluation(
      tuple(explainers), tuple(resolved), scores, skipped, reasons,
      {m: r.higher_is_better for m, r in resolved.items()}, int(len(xs)), maps,
      k_stats, float(confidence), int(num_resamples), settings)
