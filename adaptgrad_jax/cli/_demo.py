"""``adaptgrad-jax demo``: AdaptGrad against SmoothGrad on your screen, offline, in under 2 minutes.

Part 1 (always): the paper's MNIST MLP, trained on the digits embedded in the
package (or loaded from the cache), explains one test digit of each class
with Grad, SG, AG and their GI / IG combinations; the figure goes to
``OUT/mnist.png`` and a Sparseness table (Gini index, higher is sparser) to
the terminal. Part 2 (with ``pip install "adaptgrad-jax[pretrained]"``): the
ImageNet EfficientNet-Lite0 explains the two bundled photos (scikit-image's
CC0 ``chelsea`` and ``coffee``) in a figure like the paper's Figures 1 and 6,
``OUT/photos.png``.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from typing import Any

import numpy as np

from adaptgrad_jax.cli import _errors, _explain, _methods, _mnist, _models, _shared
from adaptgrad_jax.cli._errors import CliError

EPILOG = """\
examples:
  adaptgrad-jax demo                      # writes adaptgrad_demo/mnist.png and photos.png
  adaptgrad-jax demo --out /tmp/demo --overwrite
  adaptgrad-jax demo --quick              # a smaller, faster run (used by the tests)

The MLP is trained once (5 epochs of SGD on the 10,000 embedded digits, about
10 s) and cached in $ADAPTGRAD_JAX_CACHE (default ~/.cache/adaptgrad_jax),
keyed by a hash of its settings. Everything runs offline.
"""

ROWS = ("grad", "smoothgrad", "adaptgrad", "gi", "s-gi", "a-gi", "ig", "s-ig", "a-ig")
ROW_LABELS = ("Grad", "SG", "AG", "GI", "S-GI", "A-GI", "IG(B)", "S-IG(B)", "A-IG(B)")


def add_parser(subparsers, formatter) -> None:
  parser = subparsers.add_parser(
    "demo", help="offline demo: MNIST MLP and bundled photos, figures and a Sparseness table",
    description="Trains (or loads) the paper's MNIST MLP on the embedded digits and explains test digits"
                " with Grad, SmoothGrad, AdaptGrad and their GI / IG combinations; with the pretrained extra,"
                " also the bundled photos with the ImageNet EfficientNet-Lite0. No network needed.",
    epilog=EPILOG, formatter_class=formatter)
  parser.add_argument("--out", default="adaptgrad_demo", type=_errors.output_folder, metavar="DIR",
                      help="output folder (default: ./adaptgrad_demo)")
  parser.add_argument("--overwrite", action="store_true", help="replace existing figures")
  parser.add_argument("--quick", action="store_true",
                      help="smaller settings (2 epochs on 2,000 digits, N=20, no photos), for tests")
  parser.add_argument("--no-photos", action="store_true", help="skip the EfficientNet-Lite0 photo part")
  parser.add_argument("--photo-n", type=_errors.positive_int("--photo-n", "it is N for the photos (10-20 on a CPU)"),
                      default=10, metavar="N", help="noise samples (and IG steps) per photo (default: 10)")
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


def _table(title: str, rows: list[tuple[str, np.ndarray, str]], caption: str):
  from rich.table import Table  # pylint: disable=import-outside-toplevel

  table = Table(title=title, caption=caption)
  table.add_column("method")
  table.add_column("Sparseness (Gini) ↑", justify="right")
  table.add_column("noisy inputs outside the data range", justify="right")
  best = max(float(v.mean()) for _, v, _ in rows)
  for name, values, out_of_range in rows:
    mean = float(values.mean())
    text = f"{mean:.3f} ± {float(values.std()):.3f}" if values.size > 1 else f"{mean:.3f}"
    table.add_row(name, f"[bold]{text}[/bold]" if mean == best else text, out_of_range)
  return table


def _rate(method: str, rates: dict[str, float]) -> str:
  """The out-of-range column: SG-family rows share SG's noise, AG-family rows AG's."""
  if method in ("smoothgrad", "s-gi"):
    return f"{rates['SG']:.1%}"
  if method in ("adaptgrad", "a-gi"):
    return f"{rates['AG']:.1%}"
  return "-"


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
  n = 20 if args.quick else 50
  smooth_options = _methods.Options(n=n)
  ig_options = _methods.Options(n=5 if args.quick else 10, ig_steps=10 if args.quick else 20)
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
    maps = {method: explain(keys, xs, targets) for method, explain in explainers.items()}
    rates = {name: jnp.mean(jax.vmap(
               lambda k, x, rule=rule: ag.out_of_range_rate(k, x, rule(x), n, bounds=bounds).per_element)(keys, xs))
             for name, rule in sigma_rules.items()}
    return maps, rates

  with console.status(f"explaining {count} test digits with {len(ROWS)} methods"):
    maps, rates = all_maps(keys, xs, targets)
    rates = {name: float(value) for name, value in rates.items()}
  seconds = time.perf_counter() - start

  # The figure: one test digit per class (the first of each), methods as rows.
  labels = np.asarray(data.y_test[:count])
  columns = [int(np.flatnonzero(labels == d)[0]) for d in range(10) if np.any(labels == d)]
  if args.quick:
    columns = columns[:5]
  grid = [[np.asarray(maps[m][i]) for i in columns] for m in ROWS]
  figure = out / "mnist.png"
  _shared.write_figure(figure, viz.plot_grid(
    grid, row_labels=list(ROW_LABELS), col_labels=[f"{labels[i]} → {int(targets[i])}" for i in columns],
    images=[np.asarray(xs[i]) for i in columns], cell_size=1.2, dpi=110,
    title=f"MNIST MLP, test accuracy {accuracy:.1%} on {len(data.y_test)} digits (label → explained class)"),
    dpi=110)

  sparseness = {m: _sparseness(maps[m]) for m in ROWS}
  console.print(_table(
    f"Sparseness of {count} MNIST test-digit maps (mean ± std)",
    [(lab, sparseness[m], _rate(m, rates)) for m, lab in zip(ROWS, ROW_LABELS)],
    f"SG alpha=0.2, AG c=0.95, N={n}; IG from a black baseline, {ig_options.ig_steps} steps"
    f" (S-/A-IG: {ig_options.n} noise samples per step)"))
  console.print(f"wrote {figure} ({seconds:.1f} s for the maps)")
  return {
    "model": info, "test_accuracy": accuracy, "test_digits": int(len(data.y_test)), "figure": str(figure),
    "digits": count, "n": n,
    "sparseness": {lab: float(sparseness[m].mean()) for m, lab in zip(ROWS, ROW_LABELS)},
    "out_of_range_per_element": rates, "seconds_maps": round(seconds, 2),
  }


# ----------------------------------------------------------------------------
# Part 2: the bundled photos with EfficientNet-Lite0.


# No ImageNet test set offline: the published figure of the architecture, not a measurement here.
LITE0_ACCURACY = "published ImageNet top-1 75.1%, not measured here"


def _photo_part(args, out: pathlib.Path, console, err_console) -> dict[str, Any] | None:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import viz  # pylint: disable=import-outside-toplevel

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
  bounds = loaded.bounds
  g = jax.grad(f)
  options = ag.cpu.compiler_options()
  grad = jax.jit(g, compiler_options=options)
  # One compiled program for SG and AG (sigma is an input) and one for IG, S-IG and A-IG.
  smoother = jax.jit(_shared.sigma_input_smoother(g, n), compiler_options=options)
  mixed_ig = jax.jit(_shared.mixed_integrated_gradients(g, n, 1, bounds=bounds), compiler_options=options)
  key = jax.random.key(args.seed)
  rows: dict[str, list[np.ndarray]] = {m: [] for m in ROWS}
  with console.status(f"explaining {len(names)} photos at 224x224 with N={n} (about {1 + 5 * n} gradients each)"):
    for i, x in enumerate(xs):
      t = int(predicted[i])
      k = jax.random.fold_in(key, i)
      grad_map = grad(x, t)
      sg_map = smoother(k, x, ag.smoothgrad_sigma(0.2, bounds=bounds), t)
      ag_map = smoother(k, x, ag.adaptive_sigma(x, 0.95, bounds=bounds), t)
      for name, value in (("grad", grad_map), ("smoothgrad", sg_map), ("adaptgrad", ag_map)):
        rows[name].append(np.asarray(value))
      # GI multiplies the (smoothed) gradient by the input: gradient_x_input(...) with the same key.
      for name, value in (("gi", grad_map), ("s-gi", sg_map), ("a-gi", ag_map)):
        rows[name].append(np.asarray(value * x))
      for name, w in (("ig", (0.0, 0.0)), ("s-ig", (0.0, 1.0)), ("a-ig", (1.0, 0.0))):
        rows[name].append(np.asarray(mixed_ig(jax.random.fold_in(k, 7), x, jnp.asarray(w), t)))
    rates = {
      name: float(np.mean([float(ag.out_of_range_rate(jax.random.fold_in(key, i), x, sigma_of(x), n,
                                                      bounds=bounds).per_element) for i, x in enumerate(xs)]))
      for name, sigma_of in (("SG", lambda x: ag.smoothgrad_sigma(0.2, bounds=bounds)),
                             ("AG", lambda x: ag.adaptive_sigma(x, 0.95, bounds=bounds)))}
  seconds = time.perf_counter() - start
  figure = out / "photos.png"
  _shared.write_figure(figure, viz.plot_grid(
    [rows[m] for m in ROWS], row_labels=list(ROW_LABELS),
    col_labels=[f"{nm}: {loaded.class_name(int(c))} ({float(p[c]):.2f})" for nm, c, p in zip(names, predicted, probs)],
    images=[loaded.display(np.asarray(x)) for x in xs], cell_size=2.2, dpi=100,
    title=f"EfficientNet-Lite0 ({LITE0_ACCURACY}), N={n}"), dpi=100)
  sparseness = {m: _sparseness(jnp.stack(rows[m])) for m in ROWS}
  console.print(_table(
    "Sparseness of the photo maps (mean over the 2 photos)",
    [(lab, sparseness[m], _rate(m, rates)) for m, lab in zip(ROWS, ROW_LABELS)],
    f"N={n} noise samples; IG from a black baseline, {n} steps, 1 noise sample per step"))
  console.print(f"wrote {figure} ({seconds:.1f} s for the photos, including compilation)")
  return {
    "figure": str(figure), "n": n, "out_of_range_per_element": rates, "predictions": {
      nm: {"class": int(c), "name": loaded.class_name(int(c)), "probability": float(p[c])}
      for nm, c, p in zip(names, predicted, probs)},
    "sparseness": {lab: float(sparseness[m].mean()) for m, lab in zip(ROWS, ROW_LABELS)},
    "seconds": round(seconds, 2),
  }


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
  identity = {"command": "demo", "quick": args.quick, "photos": photos, "photo_n": args.photo_n, "seed": args.seed}
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
