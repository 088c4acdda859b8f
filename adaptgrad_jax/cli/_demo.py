"""``adaptgrad-jax demo``: AdaptGrad against SmoothGrad on your screen, offline, in a few minutes.

Part 1 (always): the paper's MNIST MLP, trained on the digits embedded in the
package (or loaded from the cache), explains one test digit of each class
with Grad, SG, AG and their GI / IG combinations; the figure goes to
``OUT/mnist.png`` and a Sparseness table (Gini index, higher is sparser) to
the terminal. Part 2 (with the ``pretrained`` extra installed): the
ImageNet EfficientNet-Lite0 explains the two bundled photos (scikit-image's
CC0 ``chelsea`` and ``coffee``) in a figure like the paper's Figures 1 and 6,
``OUT/photos.png``, with SG and AG by smoothed differentiation (``--estimator``;
Monte Carlo maps at a CPU's budget are mostly sampling noise there). Every map's
relative error ``||stderr|| / ||map||`` is printed and written under it.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from typing import Any

import numpy as np

from adaptgrad_jax.cli import _errors, _explain, _methods, _mnist, _models, _shared
from adaptgrad_jax.cli._errors import CliError

def _epilog() -> str:
  """The help's examples and the MLP's training, formatted from the settings it trains with."""
  import textwrap  # pylint: disable=import-outside-toplevel

  about = textwrap.fill(
    f"The MLP is trained once ({_mnist.describe(_mnist.DEMO_SETTINGS)}) and cached in $ADAPTGRAD_JAX_CACHE"
    " (default ~/.cache/adaptgrad_jax), keyed by a hash of its settings. Everything runs offline. Next to"
    " every smoothed map the tables and figure captions give its relative error ||stderr|| / ||map||"
    " (adaptgrad_jax.relative_error): the share of the map that is sampling noise, bias not included.", 78)
  return f"""\
examples:
  adaptgrad-jax demo                      # writes adaptgrad_demo/mnist.png and photos.png
  adaptgrad-jax demo --out /tmp/demo --overwrite
  adaptgrad-jax demo --quick              # a smaller, faster run (used by the tests)

{about}
"""


MNIST_N = 50  # noise samples per MNIST map (S-/A-IG: 10 per path point)
# The photos: how SG and AG are computed (--estimator, --photo-n) and the IG rows (Monte Carlo, 2 samples per
# step, so that each map has a standard error).
# Monte Carlo maps of Lite0 at N = 10 are about 90% noise (rel. error 0.87-0.97 measured by the demo itself);
# smoothed differentiation's 64 forwards + 1 backward leave about a quarter (its bias comes on top).
PHOTO_ESTIMATOR = "smooth-diff"
PHOTO_N = 64
PHOTO_BATCH = 16  # noisy forwards evaluated at once (memory)
PHOTO_IG_STEPS, PHOTO_IG_N = 10, 2
ESTIMATOR_TEXT = {
  "mc": lambda n: f"Monte Carlo, N={n} gradients",
  "smooth-diff": lambda n: f"smoothed differentiation (ag.smooth_diff), N={n} forwards + 1 backward",
  "moments": lambda n: "moment propagation (ag.moment_smooth), deterministic",
}
ERROR_TEXT = {
  "mc": "its Monte Carlo relative error ||stderr|| / ||map||",
  "smooth-diff": "its Monte Carlo relative error ||stderr|| / ||map|| (jackknife; smooth_diff's bias comes on top)",
  "moments": "its Monte Carlo relative error (moment propagation draws no noise: deterministic, biased)",
}
ROWS = ("grad", "smoothgrad", "adaptgrad", "gi", "s-gi", "a-gi", "ig", "s-ig", "a-ig")
ROW_LABELS = ("Grad", "SG", "AG", "GI", "S-GI", "A-GI", "IG(B)", "S-IG(B)", "A-IG(B)")


def add_parser(subparsers, formatter) -> None:
  parser = subparsers.add_parser(
    "demo", help="offline demo: MNIST MLP and bundled photos, figures and a Sparseness table",
    description="Trains (or loads) the paper's MNIST MLP on the embedded digits and explains test digits"
                " with Grad, SmoothGrad, AdaptGrad and their GI / IG combinations; with the pretrained extra,"
                " also the bundled photos with the ImageNet EfficientNet-Lite0. No network needed.",
    epilog=_epilog(), formatter_class=formatter)
  parser.add_argument("--out", default="adaptgrad_demo", type=_errors.output_folder, metavar="DIR",
                      help="output folder (default: ./adaptgrad_demo)")
  parser.add_argument("--overwrite", action="store_true", help="replace existing figures")
  parser.add_argument("--quick", action="store_true",
                      help="smaller settings (2 epochs on 2,000 digits, N=20, no photos), for tests")
  parser.add_argument("--no-photos", action="store_true", help="skip the EfficientNet-Lite0 photo part")
  parser.add_argument("--photo-n", type=_errors.positive_int("--photo-n", "it is N for the photos (10-20 on a CPU)"),
                      default=PHOTO_N, metavar="N",
                      help=f"noise samples per SG / AG photo map (default: {PHOTO_N})")
  parser.add_argument("--estimator", choices=tuple(_methods.ESTIMATORS), default=PHOTO_ESTIMATOR,
                      help="how the photos' SG and AG maps are computed: "
                           + "; ".join(f"{k}: {v}" for k, v in _methods.ESTIMATORS.items())
                           + f" (default: {PHOTO_ESTIMATOR}). MNIST uses Monte Carlo (N={MNIST_N})")
  parser.add_argument("--seed", type=_errors.seed, default=0, help="PRNG seed (default: 0)")
  parser.add_argument("--no-cache", action="store_true", help="train the MLP even if a cached one exists")
  parser.set_defaults(run=run)


def _enable_compilation_cache() -> None:
  """Reuses compiled XLA programs across demo runs (second runs start faster)."""
  import jax  # pylint: disable=import-outside-toplevel

  try:
    if not jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", str(_models.cache_root() / "xla"))
  except Exception:  # pylint: disable=broad-except  # an optional speed-up only
    pass


def _sparseness(maps) -> np.ndarray:
  import jax  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax import metrics  # pylint: disable=import-outside-toplevel

  return np.asarray(jax.vmap(metrics.sparseness)(maps))


def _table(title: str, rows: list[tuple[str, np.ndarray, str, str]], caption: str):
  from rich.table import Table  # pylint: disable=import-outside-toplevel

  table = Table(title=title, caption=caption)
  table.add_column("method")
  table.add_column("Sparseness (Gini) ↑", justify="right")
  table.add_column("rel. error", justify="right")
  table.add_column("noisy inputs outside the data range", justify="right")
  best = max(float(v.mean()) for _, v, _, _ in rows)
  for name, values, error, out_of_range in rows:
    mean = float(values.mean())
    text = f"{mean:.3f} ± {float(values.std()):.3f}" if values.size > 1 else f"{mean:.3f}"
    table.add_row(name, f"[bold]{text}[/bold]" if mean == best else text, error, out_of_range)
  return table


def _rate(method: str, rates: dict[str, float]) -> str:
  """The out-of-range column: SG-family rows share SG's noise, AG-family rows AG's."""
  if method in ("smoothgrad", "s-gi"):
    return f"{rates['SG']:.1%}"
  if method in ("adaptgrad", "a-gi"):
    return f"{rates['AG']:.1%}"
  return "-"


def _percent(value: float) -> str:
  """A relative error for a caption: 2 significant digits, as a percentage."""
  pct = 100.0 * value
  if not np.isfinite(pct):
    return "inf"
  return f"{pct:.2g}%" if pct < 1 else f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def _error_text(errors: np.ndarray | None, *, median: bool) -> str:
  """The table's error column: 'deterministic', one value, or the median (and range) over maps."""
  if errors is None:
    return "deterministic"
  errors = np.asarray(errors, np.float64)
  if median and errors.size > 1:
    return (f"{_percent(float(np.median(errors)))} median"
            f" ({_percent(float(errors.min()))}-{_percent(float(errors.max()))})")
  return ", ".join(_percent(float(e)) for e in errors)


def _caption(error: float | None) -> str:
  return "deterministic" if error is None else f"rel. error {_percent(error)}"


def relative_errors(estimate) -> np.ndarray:
  """``||stderr|| / ||map||`` per map of a batch of :class:`ag.Estimate` (the leading axis)."""
  import jax  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  return np.asarray(jax.vmap(ag.relative_error)(estimate))


# ----------------------------------------------------------------------------
# Part 1: MNIST.


def _mnist_part(args, out: pathlib.Path, console, err_console) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import datasets, flax_adapters, viz  # pylint: disable=import-outside-toplevel

  settings = _mnist.QUICK_SETTINGS if args.quick else _mnist.DEMO_SETTINGS
  model, info, accuracy = _mnist.trained_mlp(settings, use_cache=not args.no_cache, log=err_console.print)
  console.print(f"[bold]MNIST[/bold]: {info}")
  data = datasets.mnist_embedded()
  count = 20 if args.quick else 100
  xs = jnp.asarray(data.x_test[:count])
  targets = flax_adapters.resolve_targets(model, xs, "predicted")
  f = flax_adapters.nnx_target_fn(model)
  bounds = (0.0, 1.0)
  n = 20 if args.quick else MNIST_N
  smooth_options = _methods.Options(n=n, return_stderr=True)
  ig_options = _methods.Options(n=5 if args.quick else 10, ig_steps=10 if args.quick else 20, return_stderr=True)
  key = jax.random.key(args.seed)
  keys = jax.random.split(key, count)
  start = time.perf_counter()
  explainers = {
    method: jax.vmap(_methods.build(method, f, bounds, ig_options if "ig" in method else smooth_options))
    for method in ROWS
  }
  # Section 3.2: how many noisy copies leave [0, 1]; SG's fixed sigma vs AG's adaptive one.
  sigma_rules = {"SG": lambda x: ag.smoothgrad_sigma(0.2, bounds=bounds),
                 "AG": lambda x: ag.adaptive_sigma(x, 0.95, bounds=bounds)}

  @jax.jit
  def all_maps(keys, xs, targets):  # one compiled program for every row (compiling 9 costs 2x more)
    maps, errors = {}, {}
    for method, explain in explainers.items():
      result = explain(keys, xs, targets)
      if isinstance(result, ag.Estimate):  # a Monte Carlo map: its stderr is free
        maps[method], errors[method] = result.value, jax.vmap(ag.relative_error)(result)
      else:
        maps[method] = result
    rates = {name: jnp.mean(jax.vmap(
               lambda k, x, rule=rule: ag.out_of_range_rate(k, x, rule(x), n, bounds=bounds).per_element)(keys, xs))
             for name, rule in sigma_rules.items()}
    return maps, errors, rates

  with console.status(f"explaining {count} test digits with {len(ROWS)} methods"):
    maps, errors, rates = all_maps(keys, xs, targets)
    rates = {name: float(value) for name, value in rates.items()}
    errors = {method: np.asarray(value, np.float64) for method, value in errors.items()}
  seconds = time.perf_counter() - start

  # The figure: one test digit per class (the first of each), methods as rows.
  labels = np.asarray(data.y_test[:count])
  columns = [int(np.flatnonzero(labels == d)[0]) for d in range(10) if np.any(labels == d)]
  if args.quick:
    columns = columns[:5]
  grid = [[np.asarray(maps[m][i]) for i in columns] for m in ROWS]
  captions = [[_percent(float(errors[m][i])) if m in errors else None for i in columns] for m in ROWS]
  figure = out / "mnist.png"
  _shared.write_figure(figure, viz.plot_grid(
    grid, row_labels=list(ROW_LABELS), col_labels=[f"{labels[i]} → {int(targets[i])}" for i in columns],
    images=[np.asarray(xs[i]) for i in columns], cell_size=1.2, dpi=110, cell_labels=captions, colorbar=True,
    title=f"MNIST MLP, test accuracy {accuracy:.1%} on {len(data.y_test)} digits (label → explained class);"
          f" SG alpha=0.2, AG c=0.95, N={n}. Under each smoothed map: its Monte Carlo relative error"
          " ||stderr|| / ||map||"),
    dpi=110)

  sparseness = {m: _sparseness(maps[m]) for m in ROWS}
  console.print(_table(
    f"Sparseness of {count} MNIST test-digit maps (mean ± std)",
    [(lab, sparseness[m], _error_text(errors.get(m), median=True), _rate(m, rates))
     for m, lab in zip(ROWS, ROW_LABELS)],
    f"SG alpha=0.2, AG c=0.95, N={n}; IG from a black baseline, {ig_options.ig_steps} steps"
    f" (S-/A-IG: {ig_options.n} noise samples per step); relative error: ||stderr|| / ||map|| per map"))
  console.print(f"wrote {figure} ({seconds:.1f} s for the maps)")
  return {
    "model": info, "settings": _mnist.describe(settings), "test_accuracy": accuracy,
    "test_digits": int(len(data.y_test)), "figure": figure.name, "digits": count, "n": n,
    "ig_steps": ig_options.ig_steps, "ig_n": ig_options.n,
    "sparseness": {lab: float(sparseness[m].mean()) for m, lab in zip(ROWS, ROW_LABELS)},
    "sparseness_std": {lab: float(sparseness[m].std()) for m, lab in zip(ROWS, ROW_LABELS)},
    "relative_error_median": {lab: (float(np.median(errors[m])) if m in errors else None)
                              for m, lab in zip(ROWS, ROW_LABELS)},
    "out_of_range_per_element": rates, "seconds_maps": round(seconds, 2),
  }


# ----------------------------------------------------------------------------
# Part 2: the bundled photos with EfficientNet-Lite0.


# No ImageNet test set offline: the published figure of the architecture, not a measurement here.
LITE0_ACCURACY = "published ImageNet top-1 75.1%, not measured here"


def _sigma_smoother(g, n: int):
  """``smoothed(key, x, sigma, t) -> ag.Estimate``: SG or AG by the sigma passed (one compile for both)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  def grad_pair(xs, t):
    return g(xs[0], t), jnp.zeros_like(xs[1])

  smoothed = ag.gaussian_smooth(grad_pair, lambda xs: (xs[1], jnp.zeros_like(xs[1])), n, return_stderr=True)

  def run(key, x, sigma, t):
    est = smoothed(key, (x, jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape)), t)
    return ag.Estimate(est.value[0], est.stderr[0], est.num_samples)

  return run


def _mixed_ig(g, n_steps: int, n: int, bounds):
  """``ig(key, x, w, t) -> ag.Estimate``: IG, S-IG, A-IG by ``w = (w_ag, w_sg)`` (cli._shared's, with stderr)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  sg_sigma = ag.smoothgrad_sigma(0.2, bounds=bounds)

  def sigma_fn(xw):
    x, w = xw
    return (w[0] * ag.adaptive_sigma(x, 0.95, bounds=bounds) + w[1] * jnp.asarray(sg_sigma, x.dtype),
            jnp.zeros_like(w))

  def grad_pair(xw, t):
    return g(xw[0], t), jnp.zeros_like(xw[1])

  inner = ag.gaussian_smooth(grad_pair, sigma_fn, n, return_stderr=True)

  def start(xw):
    return (jnp.broadcast_to(jnp.asarray(bounds[0], xw[0].dtype), xw[0].shape), xw[1])

  ig = ag.integrated_gradients(inner, n_steps, baseline=start, stochastic=True)

  def run(key, x, w, t):
    est = ig(key, (x, jnp.asarray(w, x.dtype)), t)
    return ag.Estimate(est.value[0], est.stderr[0], est.num_samples)

  return run


def _photo_part(args, out: pathlib.Path, console, err_console) -> dict[str, Any] | None:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  try:
    loaded = _models.load("efficientnet_lite0")
  except (CliError, ImportError) as err:
    console.print(f"[yellow]skipping the photos[/yellow]: {_errors.one_line(str(err))}")
    return None
  imagenet = _models._imagenet()  # pylint: disable=protected-access
  names = list(imagenet.PHOTOS)
  xs = jnp.asarray(np.stack([loaded.preprocess(imagenet.load_photo(p)) for p in names]))
  f, logits_fn, _ = _explain.model_functions(loaded)
  predicted, probs = _explain.predictions(jax.jit(logits_fn), xs)
  console.print(f"[bold]photos[/bold]: EfficientNet-Lite0, {loaded.weights} ({LITE0_ACCURACY})")
  for name, cls, p in zip(names, predicted, probs):
    console.print(f"[bold]{name}[/bold]: EfficientNet-Lite0 predicts {loaded.class_name(int(cls))}"
                  f" (class {int(cls)}, p = {float(p[cls]):.2f})")

  n = args.photo_n
  estimator = args.estimator
  ig_steps, ig_n = PHOTO_IG_STEPS, PHOTO_IG_N
  bounds = loaded.bounds
  g = jax.grad(f)
  options = ag.cpu.compiler_options()
  grad = jax.jit(g, compiler_options=options)
  if estimator == "mc":  # one compiled program for SG and AG (sigma is an input)
    smoother = jax.jit(_sigma_smoother(g, n), compiler_options=options)
    smoothed = {"smoothgrad": lambda k, x, t: smoother(k, x, ag.smoothgrad_sigma(0.2, bounds=bounds), t),
                "adaptgrad": lambda k, x, t: smoother(k, x, ag.adaptive_sigma(x, 0.95, bounds=bounds), t)}
  else:  # the one-backward-pass estimators, built as `explain --estimator` builds them
    one_pass = _methods.Options(n=n, estimator=estimator, return_stderr=True, batch_size=min(n, PHOTO_BATCH))
    smoothed = {m: jax.jit(_methods.build(m, f, bounds, one_pass), compiler_options=options)
                for m in ("smoothgrad", "adaptgrad")}
  # One compiled program for IG, S-IG and A-IG (Monte Carlo at every path point).
  mixed_ig = jax.jit(_mixed_ig(g, ig_steps, ig_n, bounds), compiler_options=options)
  key = jax.random.key(args.seed)
  rows: dict[str, list[np.ndarray]] = {m: [] for m in ROWS}
  errors: dict[str, list[float]] = {}

  def keep(name, value, stderr=None):
    rows[name].append(np.asarray(value))
    if stderr is not None:
      errors.setdefault(name, []).append(float(np.linalg.norm(np.asarray(stderr, np.float64))
                                               / max(np.linalg.norm(np.asarray(value, np.float64)), 1e-30)))

  def parts(result):
    return (result.value, result.stderr) if isinstance(result, ag.Estimate) else (result, None)

  with console.status(f"explaining {len(names)} photos at 224x224: SG and AG by {ESTIMATOR_TEXT[estimator](n)},"
                      f" IG {ig_steps} steps x {ig_n} samples"):
    for i, x in enumerate(xs):
      t = int(predicted[i])
      k = jax.random.fold_in(key, i)
      grad_map = grad(x, t)
      sg_map, sg_err = parts(smoothed["smoothgrad"](k, x, t))
      ag_map, ag_err = parts(smoothed["adaptgrad"](k, x, t))
      keep("grad", grad_map)
      keep("smoothgrad", sg_map, sg_err)
      keep("adaptgrad", ag_map, ag_err)
      # GI multiplies the (smoothed) gradient by the input, its stderr by |x|: gradient_x_input(...).
      keep("gi", grad_map * x)
      keep("s-gi", sg_map * x, None if sg_err is None else sg_err * jnp.abs(x))
      keep("a-gi", ag_map * x, None if ag_err is None else ag_err * jnp.abs(x))
      for name, w in (("ig", (0.0, 0.0)), ("s-ig", (0.0, 1.0)), ("a-ig", (1.0, 0.0))):
        est = mixed_ig(jax.random.fold_in(k, 7), x, jnp.asarray(w), t)
        keep(name, est.value, None if name == "ig" else est.stderr)
    rates = {
      name: float(np.mean([float(ag.out_of_range_rate(jax.random.fold_in(key, i), x, sigma_of(x), n,
                                                      bounds=bounds).per_element) for i, x in enumerate(xs)]))
      for name, sigma_of in (("SG", lambda x: ag.smoothgrad_sigma(0.2, bounds=bounds)),
                             ("AG", lambda x: ag.adaptive_sigma(x, 0.95, bounds=bounds)))}
  seconds = time.perf_counter() - start
  figure = out / "photos.png"
  captions = [[_caption(errors[m][j] if m in errors else None) for j in range(len(names))] for m in ROWS]
  _shared.write_figure(figure, photo_figure(
    [rows[m] for m in ROWS], captions,
    [f"{nm}: {loaded.class_name(int(c))} ({float(p[c]):.2f})" for nm, c, p in zip(names, predicted, probs)],
    [loaded.display(np.asarray(x)) for x in xs],
    f"EfficientNet-Lite0 ({LITE0_ACCURACY}); SG alpha=0.2, AG c=0.95 by {ESTIMATOR_TEXT[estimator](n)};"
    f" S-/A-IG: {ig_steps} steps x {ig_n} Monte Carlo samples. Under each map: {ERROR_TEXT[estimator]}"), dpi=100)
  sparseness = {m: _sparseness(jnp.stack(rows[m])) for m in ROWS}
  console.print(_table(
    f"Sparseness of the photo maps (mean over the {len(names)} photos)",
    [(lab, sparseness[m], _error_text(errors.get(m), median=False), _rate(m, rates))
     for m, lab in zip(ROWS, ROW_LABELS)],
    f"SG, AG (and S-/A-GI) by {ESTIMATOR_TEXT[estimator](n)}; IG from a black baseline, {ig_steps} steps,"
    f" {ig_n} noise samples per step; rel. error for {', '.join(names)}: {ERROR_TEXT[estimator]}"))
  console.print(f"wrote {figure} ({seconds:.1f} s for the photos, including compilation)")
  return {
    "figure": figure.name, "n": n, "estimator": estimator, "estimator_text": ESTIMATOR_TEXT[estimator](n),
    "ig_steps": ig_steps, "ig_n": ig_n, "photos": names, "out_of_range_per_element": rates,
    "predictions": {
      nm: {"class": int(c), "name": loaded.class_name(int(c)), "probability": float(p[c])}
      for nm, c, p in zip(names, predicted, probs)},
    "sparseness": {lab: float(sparseness[m].mean()) for m, lab in zip(ROWS, ROW_LABELS)},
    "sparseness_std": {lab: float(sparseness[m].std()) for m, lab in zip(ROWS, ROW_LABELS)},
    "relative_error": {lab: errors.get(m) for m, lab in zip(ROWS, ROW_LABELS)},
    "seconds": round(seconds, 2),
  }


def photo_figure(rows: list[list[np.ndarray]], captions: list[list[str]], photo_labels: list[str],
                 images: list[np.ndarray], title: str):
  """The photo figure: methods across, photos down, a caption under each map and a colour bar."""
  from adaptgrad_jax import viz  # pylint: disable=import-outside-toplevel

  return viz.plot_grid(rows, row_labels=list(ROW_LABELS), col_labels=photo_labels, images=images,
                       cell_labels=captions, colorbar=True, transpose=True, cell_size=1.6, dpi=100, title=title)


def run(args: argparse.Namespace, console, err_console) -> int:
  """Runs the demo under the lock of ``--out``; every file is written atomically.

  ``demo.json`` is written first (``complete: false``) and last (the
  summary): the same command after an interrupted run continues (replacing
  that run's figures); a finished run, other settings or files of unknown
  origin are refused unless ``--overwrite``.
  """
  start = time.perf_counter()
  out = pathlib.Path(args.out).expanduser()
  _errors.require_plotting("demo")
  if out.exists() and not out.is_dir():
    raise _errors.UsageError(f"--out {args.out} is a file; pass a folder")
  photos = not (args.quick or args.no_photos)
  files = [out / "mnist.png", out / "demo.json"] + ([out / "photos.png"] if photos else [])
  identity = {"command": "demo", "quick": args.quick, "photos": photos, "photo_n": args.photo_n,
              "estimator": args.estimator, "seed": args.seed}
  if photos:
    _methods.check_options("adaptgrad", _methods.Options(n=args.photo_n, estimator=args.estimator))
  with _shared.locked_output(out):
    _shared.remove_stale_temporaries(out, [f.name for f in files])
    record = None if args.overwrite else _shared.read_record(out / "demo.json")
    interrupted = record is not None and record.get("run") == identity and record.get("complete") is False
    if not interrupted:
      _explain.check_outputs(files, args.overwrite)
    _shared.write_json(out / "demo.json", {"complete": False, "run": identity})
    _enable_compilation_cache()
    summary: dict[str, Any] = {"complete": False, "run": identity, "quick": args.quick, "seed": args.seed}
    summary["mnist"] = _mnist_part(args, out, console, err_console)
    if photos:
      summary["photos"] = _photo_part(args, out, console, err_console)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["complete"] = True
    _shared.write_json(out / "demo.json", summary)
  console.print(f"demo finished in {summary['seconds']:.0f} s; figures in {out}/")
  return _errors.EXIT_OK
