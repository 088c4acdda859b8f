"""``adaptgrad-jax convergence`` (maps vs N) and ``confidence`` (maps vs c) for one image.

``convergence`` reproduces the paper's Figures 2 and 5: rows SmoothGrad and
AdaptGrad, columns the number of noise samples N. The maps for every N are
running means over ONE sequence of max(N) samples per method (the N = 10
column averages the first 10 samples of the N = 100 column), so the figure
shows one estimate converging, as in the paper. ``confidence`` reproduces
Figure 4: AdaptGrad for each confidence level c, with the same noise draws
``z_j`` for every c (only sigma changes), so the columns differ by c alone.

``convergence`` also plots the relative error of SG and AG against N: the
library's reported ``relative_error`` of an N-sample estimate
(``return_stderr=True``) with a band, next to the error measured against the
largest-N map (``OUT/<image>_convergence_error.png``).

Both write ``OUT/<image>_<kind>.npz`` (the maps, the input and the run's
settings, as JSON in ``settings``) and then ``OUT/<image>_<kind>.png``, each
atomically, under the lock of ``OUT``: an interrupted run leaves whole files
only and the same command continues it; the same command after a finished run
does nothing; other settings are refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import time
from typing import Iterator, NamedTuple, Optional

import numpy as np

from adaptgrad_jax.cli import _errors, _explain, _models, _shared
from adaptgrad_jax.cli._errors import UsageError

CONVERGENCE_EPILOG = """\
examples:
  adaptgrad-jax convergence cat.jpg --out figures/
      SG and AG of the predicted class with the offline EfficientNet-Lite0 at
      N = 1, 10, 20, 50, 100; writes figures/cat_convergence.png and .npz
  adaptgrad-jax convergence digit.png --model mlp --ns 1,5,10,50 --batch-size 25 --out figures/

The maps for N < max(N) are running means over the first N of the same
max(N) samples (one converging estimate, as in the paper's Figures 2 and 5).
OUT/<image>_convergence_error.png plots, for SG and AG, the relative error
||stderr|| / ||map|| (adaptgrad_jax.relative_error) that the library reports
for an N-sample map (return_stderr=True, its own key, sum(N) more gradients
per method), with a band up to the expected error against the max(N) map, and
the error measured against that map; the .npz holds the numbers.
Files are written atomically under a lock of --out; the same command after an
interruption continues, after a finished run does nothing (--overwrite redoes it).
"""

CONFIDENCE_EPILOG = """\
examples:
  adaptgrad-jax confidence cat.jpg --out figures/
      AdaptGrad at c = 0.5, 0.8, 0.9, 0.95, 0.99, 0.999 (the paper's Figure 4)
      with N = 50; writes figures/cat_confidence.png and .npz
  adaptgrad-jax confidence cat.jpg --cs 0.9,0.95,0.99 --n 20 --sigma-rule exact --out figures/

Every c uses the same noise draws z_j (sigma_i(c) * z_j), so the columns
differ by c alone. Larger c means smaller sigma: less inherent noise, more of
the gradient's own noise; the paper recommends c = 0.95.
Files are written atomically under a lock of --out; the same command after an
interruption continues, after a finished run does nothing (--overwrite redoes it).
"""


def _common(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("image", metavar="IMAGE", help="the image to explain")
  _explain.add_model_options(parser)


def add_parsers(subparsers, formatter) -> None:
  conv = subparsers.add_parser(
    "convergence", help="SmoothGrad and AdaptGrad maps vs the number of samples N (Figures 2, 5)",
    description="Maps of SmoothGrad and AdaptGrad for growing numbers of noise samples N, as a PNG grid.",
    epilog=CONVERGENCE_EPILOG, formatter_class=formatter)
  _common(conv)
  conv.add_argument("--ns", type=_errors.int_list("--ns", "each N is a number of noise samples"),
                    default=[1, 10, 20, 50, 100], metavar="N,N,...",
                    help="the sample counts, the columns (default: 1,10,20,50,100)")
  _explain.add_smoothing_options(conv, n_default=100)
  conv.set_defaults(run=run_convergence)
  _explain.add_output_options(conv, "adaptgrad_figures")

  conf = subparsers.add_parser(
    "confidence", help="AdaptGrad maps vs the confidence level c (Figure 4)",
    description="AdaptGrad maps for several confidence levels c, as a PNG grid.",
    epilog=CONFIDENCE_EPILOG, formatter_class=formatter)
  _common(conf)
  conf.add_argument("--cs", type=_errors.float_list("--cs", _errors.confidence),
                    default=[0.5, 0.8, 0.9, 0.95, 0.99, 0.999], metavar="C,C,...",
                    help="the confidence levels, the columns (default: 0.5,0.8,0.9,0.95,0.99,0.999)")
  _explain.add_smoothing_options(conf, n_default=50, with_c=False)
  conf.set_defaults(run=run_confidence)
  _explain.add_output_options(conf, "adaptgrad_figures")


def _image_path(args) -> pathlib.Path:
  path = pathlib.Path(args.image).expanduser()
  if not path.is_file():
    raise UsageError(f"{args.image}: no such image file")
  return path


def _prepare(args, path: pathlib.Path):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  spec = _models.spec_for(args.model)
  loaded = _models.load(args.model, args.weights)
  _explain.check_target(args.target, loaded)
  x = loaded.preprocess(_shared.read_image(path, grayscale=spec.grayscale))
  f, logits_fn, _ = _explain.model_functions(loaded)
  predicted, probs = _explain.predictions(logits_fn, x[None])
  target = int(predicted[0]) if args.target == "predicted" else int(args.target)
  return loaded, jnp.asarray(x), jax.grad(f), target, float(probs[0, target])


def _settings(args, path: pathlib.Path, kind: str) -> str:
  """The run's identity as JSON, stored in the .npz: a rerun with it continues or does nothing."""
  skip = {"run", "out", "overwrite", "debug", "image", "command"}
  values = {k: v for k, v in sorted(vars(args).items()) if k not in skip}
  if values.get("weights") not in (None, "random", "download", "pretrained"):
    values["weights"] = _shared.file_identity(values["weights"])
  return json.dumps({"command": kind, "image": _shared.file_identity(path), **values}, sort_keys=True)


def _recorded_settings(npz: pathlib.Path) -> Optional[str]:
  try:
    with np.load(npz, allow_pickle=False) as data:
      return str(data["settings"]) if "settings" in data.files else None
  except Exception:  # pylint: disable=broad-except  # unreadable: not ours to replace without --overwrite
    return None


class _Claim(NamedTuple):
  out: pathlib.Path
  png: pathlib.Path
  npz: pathlib.Path
  settings: str
  done: bool  # a finished run with the same settings: nothing to do
  extra: tuple = ()  # further PNGs, written between the .npz and the main .png


@contextlib.contextmanager
def _claim(args, kind: str, extra: tuple = ()) -> Iterator[_Claim]:
  """Checks the image and the outputs, and holds the lock of ``--out`` meanwhile.

  The .npz (written first) carries the settings: with the same settings, an
  .npz without its .png is an interrupted run to continue, both files a
  finished one; anything else is refused unless ``--overwrite``.
  """
  _errors.require_plotting(args.command)
  path = _image_path(args)
  spec = _models.spec_for(args.model)
  _shared.check_images([path], grayscale=spec.grayscale, short_side=_shared.resize_short_side(spec))
  out = pathlib.Path(args.out).expanduser()
  png, npz = out / f"{path.stem}_{kind}.png", out / f"{path.stem}_{kind}.npz"
  more = tuple(out / f"{path.stem}_{name}.png" for name in extra)
  settings = _settings(args, path, kind)
  _shared.check_output_names([png.name, npz.name] + [p.name for p in more])
  with _shared.locked_output(out):
    _shared.remove_stale_temporaries(out, [png.name, npz.name] + [p.name for p in more])
    ours = not args.overwrite and npz.exists() and _recorded_settings(npz) == settings
    if not ours:
      _explain.check_outputs([png, npz, *more], args.overwrite)
    yield _Claim(out, png, npz, settings, ours and png.exists() and all(p.exists() for p in more), more)


def _save(claim: _Claim, figure, dpi: int, extra_figures=(), **arrays) -> None:
  """The .npz first (it records the settings), then the extra PNGs, the main PNG last: all there = done."""
  _shared.write_npz(claim.npz, settings=np.asarray(claim.settings), **arrays)
  for path, extra in extra_figures:
    _shared.write_figure(path, extra, dpi=dpi)
  _shared.write_figure(claim.png, figure, dpi=dpi)


def _nothing_to_do(console, claim: _Claim) -> int:
  console.print(f"nothing to do: {claim.png} and {claim.npz} hold this run already; --overwrite computes it again")
  return _errors.EXIT_OK


def _title(loaded, target, prob, extra):
  return f"{loaded.spec.name}: class {target} {loaded.class_name(target)} (p = {prob:.2f}); {extra}"


_DPI = 150


def _error_curves(args, loaded, x, grad_fn, target, ns, references, options):
  """Per method: the library's estimate at each N with ``return_stderr=True``, its reported relative error
  (``ag.relative_error``) and its measured error against the largest-N map of the grid (``references``)."""
  import jax  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

  builders = {
    "SG": lambda n: ag.smooth_grad(grad_fn, args.alpha, n, bounds=loaded.bounds, batch_size=args.batch_size,
                                   return_stderr=True),
    "AG": lambda n: ag.adapt_smooth(grad_fn, args.c, n, bounds=loaded.bounds, sigma_rule=args.sigma_rule,
                                    batch_size=args.batch_size, return_stderr=True),
  }
  curves = {}
  for i, (name, build) in enumerate(builders.items()):
    reference = np.asarray(references[name], np.float64)
    reported, measured, samples = [], [], []
    for n in ns:
      # Its own key (independent of the grid's samples), so the measured error is that of an n-sample map.
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(args.seed), 100 + i), n)
      est = jax.jit(build(n), compiler_options=options)(key, x, target)
      reported.append(float(ag.relative_error(est)))
      value = np.asarray(est.value, np.float64)
      measured.append(float(np.linalg.norm(value - reference) / max(np.linalg.norm(reference), 1e-30)))
      samples.append(int(est.num_samples))
    curves[name] = {"reported": np.asarray(reported), "measured": np.asarray(measured), "samples": np.asarray(samples)}
  return curves


def error_figure(ns, curves, title: str):
  """Relative error vs N (log-log): the reported ``||stderr|| / ||map||`` with its band, and the measured error.

  The band runs from the reported error r(N) (the expected distance to the exact
  smoothed map) to sqrt(r(N)^2 + r(N_max)^2), the expected distance to the
  largest-N reference, itself a Monte Carlo estimate; the measured error against
  that reference should lie near the band's upper edge.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg", force=False)
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  figure = Figure(figsize=(6.4, 4.2))
  ax = figure.add_subplot()
  colours = {"SG": "tab:blue", "AG": "tab:orange"}
  ns = np.asarray(ns, np.float64)
  for name, curve in curves.items():
    r = curve["reported"]
    upper = np.sqrt(r ** 2 + r[-1] ** 2)
    ax.plot(ns, r, "--", color=colours[name], label=f"{name}: reported ||stderr|| / ||map||")
    ax.fill_between(ns, r, upper, color=colours[name], alpha=0.2, label=f"{name}: + error of the N={int(ns[-1])} reference")
    ax.plot(ns, curve["measured"], "o-", color=colours[name], label=f"{name}: measured vs the N={int(ns[-1])} map")
  if len(ns) > 1:
    ax.plot(ns, curves["AG"]["reported"][0] * np.sqrt(ns[0] / ns), ":", color="grey", label="1 / sqrt(N)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("noise samples N")
  ax.set_ylabel("relative L2 error of the map")
  ax.set_title(title, fontsize=9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)
  figure.tight_layout()
  return figure


def run_convergence(args, console, err_console) -> int:
  import jax  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import viz  # pylint: disable=import-outside-toplevel

  ns = sorted(set(args.ns))
  with _claim(args, "convergence", extra=("convergence_error",)) as claim:
    if claim.done:
      return _nothing_to_do(console, claim)
    path = _image_path(args)
    loaded, x, grad_fn, target, prob = _prepare(args, path)
    n_max = max(ns)
    start = time.perf_counter()
    options = ag.cpu.compiler_options()
    smoother = jax.jit(_shared.sigma_input_smoother(grad_fn, n_max, batch_size=args.batch_size, per_sample=True),
                       compiler_options=options)
    sigmas = {
      "SG": ag.smoothgrad_sigma(args.alpha, bounds=loaded.bounds),
      "AG": ag.adaptive_sigma(x, args.c, bounds=loaded.bounds, rule=args.sigma_rule),
    }
    rows = {}
    with console.status(f"SG and AG with {n_max} samples each on {path.name}"):
      for i, (name, sigma) in enumerate(sigmas.items()):
        _, samples = smoother(jax.random.fold_in(jax.random.key(args.seed), i), x, sigma, target)
        rows[name] = [np.asarray(m) for m in _shared.cumulative_means(samples, ns)]
    with console.status(f"standard errors of SG and AG at N = {', '.join(map(str, ns))}"):
      curves = _error_curves(args, loaded, x, grad_fn, target, ns, {k: v[-1] for k, v in rows.items()}, options)
    title = _title(loaded, target, prob, f"SG alpha={args.alpha}, AG c={args.c}")
    figure = viz.plot_grid([rows["SG"], rows["AG"]], row_labels=["SG", "AG"], col_labels=[f"N={k}" for k in ns],
                           images=loaded.display(np.asarray(x)), title=title, dpi=_DPI)
    errors = error_figure(ns, curves, title)
    _save(claim, figure, _DPI, extra_figures=[(claim.extra[0], errors)], ns=np.asarray(ns), sg=np.stack(rows["SG"]),
          ag=np.stack(rows["AG"]), image=np.asarray(x),
          **{f"{name.lower()}_{what}": values for name, curve in curves.items() for what, values in curve.items()})
  for name, curve in curves.items():
    console.print(f"{name} relative error (reported / measured vs N={n_max}): " + ", ".join(
      f"N={n} {r:.3f}/{m:.3f}" for n, r, m in zip(ns, curve["reported"], curve["measured"])))
  console.print(f"wrote {claim.png}, {claim.extra[0]} and {claim.npz} in {time.perf_counter() - start:.1f} s "
                f"(class {target} {loaded.class_name(target)}, p = {prob:.2f})")
  return _errors.EXIT_OK


def run_confidence(args, console, err_console) -> int:
  import jax  # pylint: disable=import-outside-toplevel

  import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel
  from adaptgrad_jax import viz  # pylint: disable=import-outside-toplevel

  cs = list(dict.fromkeys(args.cs))
  with _claim(args, "confidence") as claim:
    if claim.done:
      return _nothing_to_do(console, claim)
    path = _image_path(args)
    loaded, x, grad_fn, target, prob = _prepare(args, path)
    start = time.perf_counter()
    smoother = jax.jit(_shared.sigma_input_smoother(grad_fn, args.n, batch_size=args.batch_size),
                       compiler_options=ag.cpu.compiler_options())
    key = jax.random.key(args.seed)
    maps = []
    with console.status(f"AG with {args.n} samples at {len(cs)} confidence levels on {path.name}"):
      for c in cs:
        sigma = ag.adaptive_sigma(x, c, bounds=loaded.bounds, rule=args.sigma_rule)
        maps.append(np.asarray(smoother(key, x, sigma, target)))
    figure = viz.plot_grid([maps], row_labels=["AG"], col_labels=[f"c={c:g}" for c in cs],
                           images=loaded.display(np.asarray(x)),
                           title=_title(loaded, target, prob, f"N={args.n}, {args.sigma_rule} sigma rule"), dpi=_DPI)
    _save(claim, figure, _DPI, cs=np.asarray(cs), ag=np.stack(maps), image=np.asarray(x))
  console.print(f"wrote {claim.png} and {claim.npz} in {time.perf_counter() - start:.1f} s "
                f"(class {target} {loaded.class_name(target)}, p = {prob:.2f})")
  return _errors.EXIT_OK
