"""``adaptgrad-jax evaluate``: every method x every metric over photos, an image folder or MNIST digits.

The command is a thin front end of :func:`adaptgrad_jax.metrics.evaluate`:
it loads the model and the examples as ``explain`` does, builds one
explainer per ``--methods`` name with the CLI's method registry
(``cli/_methods.py``) and the method options of ``explain`` (the same
argument definitions, taken from ``explain``'s parser), and writes the
runner's markdown, CSV, JSON and plot into ``--out``, printing the summary
table.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pathlib
import time
from typing import Any

import numpy as np

from adaptgrad_jax.cli import _errors, _explain, _methods, _models, _shared
from adaptgrad_jax.cli._errors import CliError, UsageError

EPILOG = """\
examples:
  adaptgrad-jax evaluate --out eval/
      Grad, SG and AG (N=50) of the bundled photos (scikit-image's chelsea
      and coffee) with the offline EfficientNet-Lite0, scored by sparseness,
      deletion and insertion
  adaptgrad-jax evaluate --mnist --examples 100 --methods smoothgrad,adaptgrad,ig,a-ig --n 20 --ig-steps 20 --out eval/
      100 embedded MNIST test digits with the demo's MLP (trained once, cached)
  adaptgrad-jax evaluate photos/ --methods sg,ag --metrics sparseness,max_sensitivity --n 10 --out eval/
      every image of a folder
  adaptgrad-jax evaluate --mnist --metrics deletion,faithfulness_correlation \
      --metric-option deletion.num_steps=28 --out eval/

outputs: OUT/evaluation.md (the table: mean [95% bootstrap interval] per
method and metric), OUT/evaluation.csv (the same rows), OUT/evaluation.scores.csv
(one score per example), OUT/evaluation.json (settings, summary, scores),
OUT/evaluation.png (the means with their intervals), OUT/evaluate.json (the
record of the run) and OUT/maps/ (the maps, as adaptgrad_jax.attribute's
checksummed shards).

Resumable: an interrupted run continues where it stopped when run again (the
finished maps are reused); a finished run is not redone. Other settings on a
used --out are refused unless --overwrite, which replaces only evaluate's own
files (evaluation.*, evaluate.json and the shards of OUT/maps/<method>-<crc>/
folders it wrote); other files in OUT and OUT/maps are kept. Keys: example i is explained with
fold_in(k_maps, i) by every method (the same noise for SG and AG) and scored
by metric m with the same perturbations for every method (see
adaptgrad_jax.metrics.evaluate). Deletion, insertion, faithfulness
correlation and the information level read softmax probabilities (--scores
logits reads the logits instead).
"""

RECORD = "evaluate.json"
BASENAME = "evaluation"
OUTPUTS = tuple(BASENAME + s for s in (".md", ".csv", ".scores.csv", ".json", ".png"))
MAPS = "maps"
DEFAULT_METHODS = "grad,smoothgrad,adaptgrad"
DEFAULT_METRICS = "sparseness,deletion,insertion"
MNIST_EXAMPLES = 100

# explain's option groups that evaluate shares (the definitions, not copies).
_SHARED_GROUPS = ("model", "smoothing (paper defaults)", "Monte Carlo precision",
                  "integrated gradients and NoiseGrad", "the IG family and CAM")
# Options of information_level that evaluate() reads besides the library function's.
_INFORMATION_LEVEL_OPTIONS = ("masks_per_image", "mask_fraction")


def _explain_groups() -> list:
  """``explain``'s argument groups of the method options, from a parser built by ``explain`` itself."""
  holder = argparse.ArgumentParser(add_help=False)
  subparsers = holder.add_subparsers()
  _explain.add_parser(subparsers, argparse.HelpFormatter)
  groups = [g for g in subparsers.choices["explain"]._action_groups  # pylint: disable=protected-access
            if g.title in _SHARED_GROUPS]
  if len(groups) != len(_SHARED_GROUPS):  # pragma: no cover - a renamed group in explain
    raise AssertionError(f"explain's option groups changed: {[g.title for g in groups]}")
  return groups


def add_parser(subparsers, formatter) -> None:
  parser = subparsers.add_parser(
    "evaluate", help="score methods with metrics over photos, an image folder or MNIST digits",
    description="Scores every --methods explanation method with every --metrics metric over the bundled photos"
                " (EfficientNet-Lite0, offline), your images, or the embedded MNIST test digits (--mnist, the"
                " demo's MLP), with adaptgrad_jax.metrics.evaluate: means with bootstrap confidence intervals,"
                " written as markdown, CSV, JSON and a plot.",
    epilog=EPILOG, formatter_class=formatter)
  parser.add_argument(
    "inputs", nargs="*", metavar="IMAGE_OR_DIR",
    help="image files and/or folders of images (default: the bundled photos, or with --mnist the embedded digits)")
  group = parser.add_argument_group("what to evaluate")
  group.add_argument(
    "--methods", default=DEFAULT_METHODS, metavar="A,B,...",
    help=f"comma-separated methods of explain's --method: {', '.join(_methods.METHODS)} (aliases sg, ag, gbp,"
         f" grad-cam++, gradientshap; default: {DEFAULT_METHODS})")
  group.add_argument(
    "--metrics", default=DEFAULT_METRICS, metavar="A,B,...",
    help=f"comma-separated metrics of adaptgrad_jax.metrics.evaluate: {', '.join(_metric_names())} (default:"
         f" {DEFAULT_METRICS})")
  group.add_argument(
    "--metric-option", action="append", default=[], metavar="METRIC.NAME=VALUE", dest="metric_options",
    help="a keyword option of a metric's library function, e.g. deletion.num_steps=28 or"
         " faithfulness_correlation.subset_size=32 (repeat for more; VALUE is a number, true/false, or text)")
  group.add_argument("--mnist", action="store_true",
                     help="evaluate on the embedded MNIST test digits with --model mlp (the demo's MLP by default)")
  group.add_argument(
    "--examples", type=_errors.positive_int("--examples", "it is the number of examples to evaluate"),
    default=None, metavar="K",
    help=f"evaluate the first K examples only (default: all inputs; with --mnist {MNIST_EXAMPLES})")
  group.add_argument(
    "--scores", choices=("probabilities", "logits"), default="probabilities",
    help="what the model metrics (deletion, insertion, faithfulness correlation...) read: softmax probabilities"
         " (default) or logits; the information level needs probabilities")
  group.add_argument(
    "--example-batch", type=_errors.positive_int("--example-batch", "it is the number of examples explained at once"),
    default=None, metavar="B",
    help="examples explained (and scored) at once, per shard of OUT/maps (default: 32 for mlp, 2 for ImageNet"
         " models; lower it to bound memory; results do not change)")
  for shared in _explain_groups():
    mine = parser.add_argument_group(shared.title, shared.description)
    for action in shared._group_actions:  # pylint: disable=protected-access
      mine._add_action(action)  # pylint: disable=protected-access  # as argparse's parents= does
  _explain.add_output_options(parser, "adaptgrad_evaluate")
  parser.set_defaults(run=run, model=None)  # None: mlp with --mnist, else efficientnet_lite0


def _metric_names() -> tuple[str, ...]:
  from adaptgrad_jax.metrics import METRIC_NAMES  # pylint: disable=import-outside-toplevel

  return METRIC_NAMES


# ----------------------------------------------------------------------------
# The command line, checked before any work.


def _names(text: str, option: str) -> list[str]:
  names = [part.strip() for part in text.split(",")]
  if not text.strip() or any(not n for n in names):
    raise UsageError(f"{option} {text!r} holds an empty name; pass comma-separated names, e.g. {option}"
                     f" {DEFAULT_METHODS if option == '--methods' else DEFAULT_METRICS}")
  return names


def parse_methods(text: str) -> list[str]:
  """``--methods`` as canonical registry names, in order; unknown names and repeats are usage errors."""
  methods = [_methods.canonical(name) for name in _names(text, "--methods")]
  for i, m in enumerate(methods):
    if m in methods[:i]:
      raise UsageError(f"--methods names {m} twice ({text}); name each method once")
  return methods


def parse_metrics(text: str) -> list[str]:
  """``--metrics`` as the runner's metric names, in order."""
  known = _metric_names()
  metrics = _names(text, "--metrics")
  for i, m in enumerate(metrics):
    if m not in known:
      raise UsageError(f"unknown metric {m!r}; choose from: {', '.join(known)}")
    if m in metrics[:i]:
      raise UsageError(f"--metrics names {m} twice ({text}); name each metric once")
  return metrics


def _value(text: str) -> Any:
  lowered = text.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  if lowered in ("none", "null"):
    return None
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def parse_metric_options(items: list[str], metrics: list[str]) -> dict[str, dict[str, Any]]:
  """``--metric-option METRIC.NAME=VALUE`` items as ``{metric: {name: value}}``, each name checked."""
  from adaptgrad_jax import metrics as metrics_lib  # pylint: disable=import-outside-toplevel

  options: dict[str, dict[str, Any]] = {}
  for item in items:
    head, eq, text = item.partition("=")
    metric, dot, name = head.strip().partition(".")
    if not (eq and dot and metric and name.strip()):
      raise UsageError(f"--metric-option {item!r} is not METRIC.NAME=VALUE; e.g. --metric-option"
                       " deletion.num_steps=28")
    name = name.strip()
    if metric not in metrics:
      raise UsageError(f"--metric-option {item!r} is for {metric!r}, which --metrics does not name"
                       f" ({', '.join(metrics)})")
    allowed = _option_names(metrics_lib, metric)
    if name not in allowed:
      raise UsageError(f"--metric-option {item!r}: {metric} has no option {name!r}; its options are"
                       f" {', '.join(allowed) or 'none'}")
    if name in options.get(metric, {}):
      raise UsageError(f"--metric-option gives {metric}.{name} twice; give it once")
    options.setdefault(metric, {})[name] = _value(text)
  return options


# What the runner passes itself (the target, the bounds), what it fixes (the reduction of the sensitivities,
# the random mask of the information level) and functions, which a command line cannot give.
_NOT_OPTIONS = ("target", "reduce", "random_mask", "perturb_fn", "pic_kwargs")


def _option_names(metrics_lib, metric: str) -> list[str]:
  """The keyword options ``--metric-option`` may set: those of the function the runner calls."""
  if metric in ("max_sensitivity", "avg_sensitivity"):  # sensitivity(..., reduce="max" / "mean")
    fn = metrics_lib.sensitivity
  elif metric == "information_level":  # one curve per image, then its area
    fn = metrics_lib.performance_information_curve
  else:
    fn = getattr(metrics_lib, metric)
  params = inspect.signature(fn).parameters
  names = {p for p, v in params.items() if v.kind == v.KEYWORD_ONLY and p not in _NOT_OPTIONS}
  if metric == "information_level":
    names |= set(_INFORMATION_LEVEL_OPTIONS)
  return sorted(names)


def _model_name(args: argparse.Namespace) -> str:
  if args.mnist:
    if args.inputs:
      raise UsageError(f"--mnist evaluates the embedded MNIST digits and takes no IMAGE_OR_DIR ({args.inputs[0]});"
                       " leave out --mnist to evaluate your images, or the images to evaluate the digits")
    if args.model not in (None, "mlp"):
      raise UsageError(f"--mnist evaluates MNIST digits with --model mlp, not --model {args.model}; leave --model"
                       " out")
    return "mlp"
  return args.model or "efficientnet_lite0"


def _data_source(args: argparse.Namespace, spec) -> tuple[str, list]:
  """``(kind, items)``: ``("files", paths)``, ``("photos", names)`` or ``("mnist", indices)``.

  ``--examples K`` beyond what there is is refused here, before ``--out`` is locked or touched.
  """
  if args.inputs:
    kind, items, what = "files", _explain.unique_inputs(_models.expand_inputs(args.inputs)), "images"
  elif spec.family == "mnist":
    from adaptgrad_jax import datasets  # pylint: disable=import-outside-toplevel

    count = len(datasets.mnist_embedded().x_test)
    kind, items, what = "mnist", list(range(count)), "embedded MNIST test digits"
    if not args.examples:
      return kind, items[:MNIST_EXAMPLES]
  else:
    kind, items, what = "photos", list(_models._imagenet().PHOTOS), "bundled photos"  # pylint: disable=protected-access
  if args.examples and args.examples > len(items):
    raise UsageError(f"--examples {args.examples}: there are {len(items)} {what}; pass at most {len(items)}")
  return kind, items[:args.examples] if args.examples else items


def run_identity(args, methods, metrics, metric_options, model, kind, items, example_batch) -> dict:
  """What decides the results: a rerun with the same identity may continue an interrupted run."""
  weights = args.weights
  if weights not in (None, "random", "download", "pretrained"):
    weights = _shared.file_identity(weights)
  if kind == "files":
    data = [_shared.file_identity(p) for p in items]
  elif kind == "mnist":
    data = {"embedded_mnist_test_digits": len(items)}
  else:
    data = items
  identity = {
    "command": "evaluate", "methods": methods, "metrics": metrics, "metric_options": metric_options,
    "model": model, "weights": weights, "target": args.target, "seed": args.seed,
    "options": dict(vars(_explain.options_from(args))), "scores": args.scores, "example_batch": example_batch,
    "data": {kind: data},
  }
  return json.loads(json.dumps(identity))  # as read back from evaluate.json


# ----------------------------------------------------------------------------
# The command.


def run(args: argparse.Namespace, console, err_console) -> int:
  methods = parse_methods(args.methods)
  metrics = parse_metrics(args.metrics)
  metric_options = parse_metric_options(args.metric_options, metrics)
  options = _explain.options_from(args)
  for method in methods:
    _methods.check_options(method, options)
  if args.scores == "logits" and "information_level" in metrics:
    raise UsageError("--metrics information_level reads softmax probabilities (XRAI's SIC); leave out --scores"
                     " logits")
  model = _model_name(args)
  spec = _models.spec_for(model)
  # Checked before --out is created (the model itself loads under its lock).
  _explain.check_target(args.target, _models.LoadedModel(spec, None, (None, None), "",
                                                          _models._class_names(spec)))  # pylint: disable=protected-access
  if args.weights not in (None, "random", "download", "pretrained"):
    _models._weights_file(spec, args.weights)  # pylint: disable=protected-access  # a missing file: usage error
  _errors.require_plotting("evaluate")
  kind, items = _data_source(args, spec)
  out = pathlib.Path(args.out).expanduser()
  if out.exists() and not out.is_dir():
    raise UsageError(f"--out {args.out} is a file; pass a folder")
  if args.inputs:
    _explain.check_out_is_not_an_input(out, args.inputs)
    _shared.check_images(items, grayscale=spec.grayscale, short_side=_shared.resize_short_side(spec))
  example_batch = args.example_batch or (32 if spec.family == "mnist" else 2)
  identity = run_identity(args, methods, metrics, metric_options, model, kind, items, example_batch)
  names = list(OUTPUTS) + [RECORD]
  _shared.check_no_links(out, [out / MAPS] + [out / MAPS / _map_folder(m) for m in methods])
  with _shared.locked_output(out):
    _shared.remove_stale_temporaries(out, names)
    record = None if args.overwrite else _shared.read_record(out / RECORD)
    if record is not None and record.get("run") != identity:
      recorded = record.get("run")
      diff = _shared.differences(recorded, identity) if isinstance(recorded, dict) else []
      what = f"differs in {', '.join(diff)}" if diff else "was written by another command or version"
      raise CliError(f"{out / RECORD} records another run ({what}); pass --overwrite to replace that run's files"
                     " (other files are kept), or choose another --out")
    if record is None and not args.overwrite:
      existing = [out / n for n in OUTPUTS + (MAPS,) if (out / n).exists() or (out / n).is_symlink()]
      if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise CliError(
          f"{existing[0]} already exists{more}, and no {RECORD} there records the run that wrote it; choose another"
          " --out, or pass --overwrite to replace evaluate's own files there (other files are kept)")
    if record is not None and record.get("complete") is True and all((out / n).exists() for n in OUTPUTS):
      console.print(f"nothing to do: the evaluation in {out} is complete ({out / RECORD}); --overwrite computes"
                    " it again")
      _print_summary(console, record.get("summary") or [], record.get("title", "evaluation"))
      return _errors.EXIT_OK
    stale = _stale_map_folders(out, methods) if args.overwrite else []
    return _run_locked(args, console, err_console, methods, metrics, metric_options, options, spec, kind, items,
                       out, identity, example_batch, resumed=record is not None, stale=stale)


def _map_folder(method: str) -> str:
  """The folder of OUT/maps that holds ``method``'s shards (as metrics.evaluate names it)."""
  from adaptgrad_jax.metrics import _evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel

  return evaluate_lib._dir_name(_methods.label(method))  # pylint: disable=protected-access


def _stale_map_folders(out: pathlib.Path, methods: list[str]) -> list[pathlib.Path]:
  """With --overwrite: the OUT/maps folders of the recorded earlier run's methods that this run does not compute.

  Only folders that ``evaluate.json`` says an earlier evaluate wrote (by their names); their own files are
  deleted later, once this run's checks have passed (see ``attribute``'s ``remove_output``).
  """
  try:
    record = _shared.read_record(out / RECORD)
  except CliError:  # unreadable: it names no folder of ours
    return []
  recorded = (record or {}).get("run")
  earlier = recorded.get("methods") if isinstance(recorded, dict) else None
  if not isinstance(earlier, list):
    return []
  keep = {_map_folder(m) for m in methods}
  stale = []
  for method in earlier:
    try:
      folder = _map_folder(_methods.canonical(method)) if isinstance(method, str) else None
    except CliError:  # a method this version no longer knows
      continue
    if folder and folder not in keep and (out / MAPS / folder).is_dir():
      stale.append(out / MAPS / folder)
  return stale


def _load_examples(kind: str, items: list, loaded) -> np.ndarray:
  if kind == "files":
    return np.stack([loaded.preprocess(_shared.read_image(p, grayscale=loaded.spec.grayscale)) for p in items])
  if kind == "photos":
    imagenet = _models._imagenet()  # pylint: disable=protected-access
    return np.stack([loaded.preprocess(imagenet.load_photo(name)) for name in items])
  from adaptgrad_jax import datasets  # pylint: disable=import-outside-toplevel

  digits = datasets.mnist_embedded().x_test
  return np.asarray(digits[:len(items)], np.float32)


def _explainer(method: str, f, loaded, options, param_fn, x_shape):
  """``explain_fn(key, x, target) -> map`` of the input's shape (CAM's (H, W, 1) maps lose their axis)."""
  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  model = loaded.module if method in _methods.MODEL_METHODS else None
  explainer = _methods.build(method, f, loaded.bounds, options,
                             param_fn=param_fn() if method.endswith("ng") else None, model=model)
  _methods.check_model(method, options, x_shape, model=model)
  squeeze = x_shape[-1] != 1

  def explain_fn(key, x, target):
    value = explainer(key, x, target)
    if isinstance(value, ag.Estimate):  # --rtol: the Monte Carlo mean of the Estimate
      value = value.value
    if squeeze and value.ndim == x.ndim and value.shape[-1] == 1:
      value = value[..., 0]  # CAM: (H, W, 1) -> (H, W), the input without its channel axis
    return value

  return explain_fn


def _run_locked(args, console, err_console, methods, metrics, metric_options, options, spec, kind, items, out,
                identity, example_batch, *, resumed, stale=()):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax import metrics as metrics_lib  # pylint: disable=import-outside-toplevel

  loaded = _models.load(spec.name, args.weights)
  _explain.check_target(args.target, loaded)
  xs = _load_examples(kind, items, loaded)
  f, logits_fn, param_fn = _explain.model_functions(loaded)
  logits = jax.jit(logits_fn)
  if args.target == "predicted":
    targets = np.concatenate([np.asarray(jnp.argmax(logits(xs[i:i + example_batch]), axis=-1))
                              for i in range(0, len(xs), example_batch)]).astype(np.int32)
  else:
    targets = np.full(len(xs), int(args.target), np.int32)
  labels = {m: _methods.label(m) for m in methods}
  explainers = {labels[m]: _explainer(m, f, loaded, options, param_fn, xs.shape[1:]) for m in methods}
  weights = identity["weights"]
  explain_ids = {labels[m]: json.dumps({"method": m, "model": spec.name, "weights": weights,
                                        "options": identity["options"]}, sort_keys=True) for m in methods}
  if args.scores == "logits":
    predict_fn = logits_fn
  else:
    predict_fn = lambda batch: jax.nn.softmax(logits_fn(batch), axis=-1)  # noqa: E731
  what = (f"{len(items)} image(s)" if kind == "files" else f"{len(items)} embedded MNIST test digit(s)"
          if kind == "mnist" else f"the bundled photo(s) {', '.join(items)}")
  err_console.print(
    f"{', '.join(labels.values())} x {', '.join(metrics)} on {what} with {spec.name} ({loaded.weights})"
    + ("; continuing an interrupted run" if resumed else ""))
  from adaptgrad_jax.attribute import _resume  # pylint: disable=import-outside-toplevel

  for folder in stale:  # --overwrite: the earlier run's maps of methods not computed now (their files only)
    _resume.remove_output(folder)
  _shared.write_json(out / RECORD, {
    "complete": False, "run": identity,
    "note": "running or interrupted: run the same command again to continue (finished maps are reused)"})
  start = time.perf_counter()
  evaluation = metrics_lib.evaluate(
    explainers, metrics, (xs, targets), jax.random.key(args.seed), predict_fn=predict_fn, bounds=loaded.bounds,
    metric_options=metric_options, out=out / MAPS, batch_size=example_batch, explain_ids=explain_ids,
    log=err_console.print, overwrite=bool(args.overwrite))
  title = f"{spec.name} on {what}: mean [{100 * evaluation.confidence:g}% bootstrap interval]"
  written = evaluation.write(out / BASENAME)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  figure = evaluation.plot(out / f"{BASENAME}.png", title=title)
  plt.close(figure)
  seconds = time.perf_counter() - start
  summary = [_row(r) for r in evaluation.summary()]
  _shared.write_json(out / RECORD, {
    "complete": True, "run": identity, "title": title, "model": spec.name, "weights": loaded.weights,
    "methods": {labels[m]: m for m in methods}, "metrics": metrics,
    "targets": targets.tolist(), "files": sorted(p.name for p in written.values()) + [f"{BASENAME}.png"],
    "seconds": round(seconds, 2), "summary": summary})
  _print_summary(console, summary, title)
  written = _shared.written_files(out)
  maps = sum(1 for p in written if p.parent != pathlib.Path(os.path.abspath(out)))
  console.print(f"wrote {len(written)} files to {out} in {seconds:.1f} s: {', '.join(OUTPUTS)}, {RECORD} and"
                f" {maps} in {MAPS}/" + (" (maps of an earlier run reused)" if resumed else ""))
  return _errors.EXIT_OK


def _row(r) -> dict:
  return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in r._asdict().items()}


def _number(value: float) -> str:
  """4 decimals, or 3 significant digits for magnitudes below 0.001 (infidelity's 1e-6 is not 0.0000)."""
  return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"


def _print_summary(console, summary: list[dict], title: str) -> None:
  """The summary as a table, one line per method and metric (readable at any number of metrics)."""
  from rich.table import Table  # pylint: disable=import-outside-toplevel

  pct = title.rsplit("[", 1)[-1].split(" ")[0] if "[" in title else "95%"
  table = Table(title=title)
  table.add_column("method")
  table.add_column("metric", no_wrap=True, min_width=max([len(r["metric"]) for r in summary] or [6]))
  table.add_column("mean", justify="right", no_wrap=True)
  table.add_column(f"{pct} interval", justify="right", no_wrap=True)
  table.add_column("n", justify="right")
  notes = []
  previous = None
  for r in summary:
    method = r["explainer"] if r["explainer"] != previous else ""
    previous = r["explainer"]
    counted = f"{r['n']}" + (f" ({r['skipped']} skipped)" if r.get("skipped") else "") + (
        f" ({r['undefined']} undefined)" if r.get("undefined") else "")
    if r.get("mean") is None:
      table.add_row(method, r["metric"], "n/a", "", counted)
    else:
      table.add_row(method, r["metric"], _number(r["mean"]), f"[{_number(r['low'])}, {_number(r['high'])}]",
                    counted)
    if r.get("note"):
      notes.append(f"{r['explainer']} / {r['metric']}: {r['note']}")
  console.print(table)
  for note in dict.fromkeys(notes):
    console.print(f"note: {note}")
