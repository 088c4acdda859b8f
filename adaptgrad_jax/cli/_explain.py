"""``adaptgrad-jax explain``: saliency maps of your own images, as .npy and PNG overlays."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import time
from typing import Optional

import numpy as np

from adaptgrad_jax.cli import _errors, _methods, _models, _shared
from adaptgrad_jax.cli._errors import CliError, UsageError

EPILOG = """\
examples:
  adaptgrad-jax explain photo.jpg --method adaptgrad --out maps/
      AdaptGrad (c=0.95, N=50) of the predicted class with the offline
      EfficientNet-Lite0; writes maps/photo_adaptgrad.npy and .png
  adaptgrad-jax explain photos/ --model resnet50 --weights download --method a-ig --n 10 --ig-steps 20 --out maps/
      every image of a folder, torchvision ResNet-50 weights fetched once and cached
  adaptgrad-jax explain digit.png --model mlp --method smoothgrad --target 3 --out maps/
  adaptgrad-jax explain photo.jpg --method a-grad-cam --n 20 --out maps/
      AdaptGrad-smoothed Grad-CAM at EfficientNet-Lite0's last MBConv block
      (--layer _blocks, the default); a wrong --layer lists the layers
  adaptgrad-jax explain photo.jpg --method a-eg --n 10 --ig-steps 20 --out maps/
      A-EG: Expected Gradients with baselines drawn uniformly within the
      input bounds (--eg-baselines uniform) and AdaptGrad's gradient

outputs: OUT/<image>_<method>.npy is the raw map in the model's input layout
(H, W, C) and input space (after preprocessing); OUT/<image>_<method>.png is
the map (absolute value, channel sum, 99th-percentile clipping) blended over
the preprocessed image; OUT/explain.json records the settings and predictions.
Folders go through adaptgrad_jax.attribute (resumable shards in OUT/shards).

Files sharing a name (cat.png, sub/cat.png) are named by their path from
their common folder (cat_*, sub_cat_*); names that still collide are refused.
Every file is written atomically: an interrupted run (Ctrl-C, a full disk)
leaves only whole files, and running the same command again continues where
it stopped (explain.json records the run; a finished run is not redone).
Different settings on a used --out are refused unless --overwrite. A second
command on the same --out while one runs is refused (OUT/.adaptgrad-jax.lock).
Images: 16-bit and float grey keep their range; transparency is composited
over black.
"""


# ----------------------------------------------------------------------------
# Options shared with the sweeps.


def add_model_options(parser: argparse.ArgumentParser, *, default_model: str = "efficientnet_lite0") -> None:
  group = parser.add_argument_group("model")
  group.add_argument(
    "--model", default=default_model, metavar="NAME",
    help=f"one of {', '.join(_models.model_names())} (default: {default_model}, ImageNet weights offline"
         ' with the "pretrained" extra; mlp: the demo\'s MNIST MLP)')
  group.add_argument(
    "--weights", metavar="PATH|download|random",
    help="a checkpoint (.pth, .pt, .safetensors, .npz; for mlp also a training.save_model folder);"
         " 'download' fetches torchvision's file with adaptgrad_jax.weights.pretrained(NAME) (needs network);"
         " 'random' explains an untrained model")
  group.add_argument(
    "--target", type=_errors.target, default="predicted", metavar="INT|predicted",
    help="the class to explain (default: predicted, the argmax of the clean logits)")


def add_smoothing_options(parser: argparse.ArgumentParser, *, n_default: int = 50, with_c: bool = True) -> None:
  group = parser.add_argument_group("smoothing (paper defaults)")
  if with_c:
    group.add_argument("--c", type=_errors.confidence, default=0.95,
                       help="AdaptGrad's confidence level in (0, 1) (default: 0.95)")
  group.add_argument("--n", type=_errors.positive_int("--n", "it is the number of noise samples N; the paper uses 50"),
                     default=n_default, help=f"noise samples N (default: {n_default})")
  group.add_argument("--alpha", type=_errors.noise_level, default=0.2,
                     help="SmoothGrad's noise level sigma / (x_max - x_min) (default: 0.2)")
  group.add_argument("--sigma-rule", choices=("two_sided", "eq13", "exact"), default="two_sided",
                     help="AdaptGrad's sigma rule (default: two_sided, the released code's)")
  group.add_argument(
    "--batch-size", type=_errors.positive_int("--batch-size", "it is the number of noise samples evaluated at once"),
    default=None, metavar="B",
    help="evaluate B noise samples (or path points) at a time to bound memory; results do not change"
         " (default: all at once)")
  group.add_argument("--seed", type=_errors.seed, default=0, help="PRNG seed (default: 0)")


def add_precision_options(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("Monte Carlo precision")
  group.add_argument(
    "--rtol", type=_errors.relative_tolerance, default=None, metavar="R",
    help="smoothgrad / adaptgrad: sample in chunks of --batch-size (required) until the map's relative error"
         " ||stderr|| / ||map|| is at most R (in (0, 1), e.g. 0.05) or --n samples are used; prints the samples"
         " used per image (default: always --n samples)")
  add_estimator_option(group)
  group.add_argument(
    "--noise", choices=_methods.NOISE_SCHEMES, default="iid",
    help="the input noise: iid (default), antithetic pairs (eps, -eps; --n even), orthogonal blocks or lhs"
         " (Latin hypercube replicates of 8; --n a multiple of 8); all unbiased for the same Gaussian smoothing")


def add_estimator_option(group) -> None:
  """``--estimator mc|smooth-diff|moments``: how SG's and AG's smoothed gradient is computed."""
  group.add_argument(
    "--estimator", choices=tuple(_methods.ESTIMATORS), default="mc",
    help="how smoothgrad, adaptgrad and their s-/a-gi, s-/a-ig compositions compute the smoothed gradient: "
         + "; ".join(f"{k}: {v}" for k, v in _methods.ESTIMATORS.items()) + " (default: mc; docs/precision.md)")


def add_output_options(parser: argparse.ArgumentParser, default: Optional[str]) -> None:
  group = parser.add_argument_group("output")
  if default is None:
    group.add_argument("--out", required=True, type=_errors.output_folder, metavar="DIR",
                       help="output folder (created if missing)")
  else:
    group.add_argument("--out", default=default, type=_errors.output_folder, metavar="DIR",
                       help=f"output folder (default: {default})")
  group.add_argument("--overwrite", action="store_true",
                     help="replace existing outputs (without it, an interrupted run continues)")


def _blur_sigma(text: str) -> float:
  """``--blur-sigma``: a finite number of pixels > 0."""
  try:
    value = float(text)
  except ValueError:
    value = float("nan")
  if not (np.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"--blur-sigma {text!r} must be a number of pixels > 0; PAIR's Blur IG uses 50")
  return value


def add_parser(subparsers, formatter) -> None:
  parser = subparsers.add_parser(
    "explain", help="explain your images: .npy maps and PNG overlays",
    description="Explains images with Grad, SmoothGrad, AdaptGrad or their GI / IG / NG combinations, the IG"
                " family (Expected Gradients, Blur IG, Guided IG, IDGI), Grad-CAM, Grad-CAM++, guided backprop"
                " and Guided Grad-CAM (each with S- and A- variants), writing the raw map (.npy) and a PNG"
                " overlay per image.",
    epilog=EPILOG, formatter_class=formatter)
  parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
  parser.add_argument(
    "--method", default="adaptgrad", metavar="NAME",
    help=f"one of {', '.join(_methods.METHODS)} (sg, ag, gradientshap, gbp, grad-cam++ accepted; default:"
         " adaptgrad). S- and A- prefixes are SmoothGrad and AdaptGrad composed with the method (its gradient"
         " replaced by the smoothed one; docs/transforms.md). eg is Expected Gradients / GradientSHAP; CAM maps"
         " are upsampled bilinearly to (H, W, 1). All compositions are defined; read them as follows:"
         " s-/a-guided-ig smooth the gradient that also steers Guided IG's path, so every key gives another path"
         " (a randomised Guided IG, not Guided IG with a less noisy integrand), and their ig-steps x n gradients"
         " run one step after the other; s-/a-idgi smooth only the direction of each step (the map still sums to"
         " f(x) - f(baseline)); s-/a-grad-cam(-pp) average the layer gradient over noisy inputs, activations of"
         " the clean input (s-grad-cam-pp is SmoothGrad-CAM++); guided backprop changes only ReLUs (as Captum),"
         " so models without ReLUs (efficientnet_lite0, convnext*, vit*) are refused for it")
  add_model_options(parser)
  add_smoothing_options(parser)
  add_precision_options(parser)
  group = parser.add_argument_group("integrated gradients and NoiseGrad")
  group.add_argument("--baseline", choices=("black", "white"), default="black",
                     help="IG, Guided IG and IDGI baseline: the lower (black) or upper (white) bound of the input; the paper's"
         " IG(B), IG(W)")
  group.add_argument("--ig-steps", type=_errors.positive_int("--ig-steps", "Captum and the paper use 50"),
                     default=50, help="path points of IG, Blur IG, Guided IG and IDGI, baseline draws of EG; their"
                                      " S- / A- variants cost ig-steps x n gradients (default: 50)")
  group.add_argument("--ng-samples", type=_errors.positive_int("--ng-samples", "NoiseGrad uses 10 or more"),
                     default=10, help="NoiseGrad parameter samples M; S-NG / A-NG cost M x n (default: 10)")
  group.add_argument("--ng-sigma", type=_errors.noise_level, default=0.2,
                     help="NoiseGrad's multiplicative parameter noise N(1, sigma^2) (default: 0.2)")
  group = parser.add_argument_group("the IG family and CAM")
  group.add_argument(
    "--layer", default=None, metavar="NAME",
    help="grad-cam, grad-cam-pp, guided-grad-cam (and their s-/a-): the layer, a dotted attribute path (default:"
         f" the model's last convolutional block; {_methods.DEFAULT_LAYERS_HELP}); a wrong name lists the layers")
  group.add_argument(
    "--eg-baselines", default="uniform", metavar="uniform|PATH",
    help="eg, s-eg, a-eg: where the --ig-steps baselines are drawn from: uniform (default: every element"
         " uniformly within the model's input bounds, per channel) or a .npy of shape (m, H, W, C) in the model's"
         " input space (rows drawn uniformly, e.g. preprocessed training images)")
  group.add_argument(
    "--blur-sigma", type=_blur_sigma,
    default=50.0, help="blur-ig: the Gaussian blur, in pixels, at the end of the path (default: 50, PAIR's)")
  add_output_options(parser, None)
  parser.add_argument(
    "--devices", type=_errors.positive_int("--devices", "it is the number of local devices to shard images over"),
    default=None, metavar="N",
    help="shard images over N local devices with adaptgrad_jax.attribute (default for folders: all)")
  parser.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> _methods.Options:
  return _methods.Options(
    c=getattr(args, "c", 0.95), n=args.n, alpha=args.alpha, sigma_rule=args.sigma_rule, batch_size=args.batch_size,
    baseline=getattr(args, "baseline", "black"), ig_steps=getattr(args, "ig_steps", 50),
    ng_samples=getattr(args, "ng_samples", 10), ng_sigma=getattr(args, "ng_sigma", 0.2),
    rtol=getattr(args, "rtol", None), noise=getattr(args, "noise", "iid"), layer=getattr(args, "layer", None),
    eg_baselines=getattr(args, "eg_baselines", "uniform"), blur_sigma=getattr(args, "blur_sigma", 50.0),
    estimator=getattr(args, "estimator", "mc"))


# ----------------------------------------------------------------------------
# Model -> functions.


def model_functions(loaded: _models.LoadedModel):
  """``(f, logits_fn, param_fn)``: f(x, target), logits_fn(xs), (f_params, params)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax import flax_adapters  # pylint: disable=import-outside-toplevel

  f = flax_adapters.nnx_target_fn(loaded.module)
  graphdef, state = nnx.split(flax_adapters.eval_view(loaded.module))

  def logits_fn(xs):
    return nnx.merge(graphdef, state)(xs)

  return f, logits_fn, (lambda: flax_adapters.nnx_param_fn(loaded.module))


def check_target(target, loaded: _models.LoadedModel) -> None:
  if isinstance(target, int) and loaded.class_names and target >= len(loaded.class_names):
    raise UsageError(
      f"--target {target} is out of range: {loaded.spec.name} has {len(loaded.class_names)} classes (0 to"
      f" {len(loaded.class_names) - 1})")


def make_explain_one(method: str, loaded: _models.LoadedModel, options: _methods.Options, target):
  """``explain_one(key, x) -> (map, target)`` for one preprocessed input."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  f, logits_fn, param_fn = model_functions(loaded)
  if options.rtol is None:  # the map's standard error where the library has it (free for Monte Carlo maps)
    options = dataclasses.replace(options, return_stderr=True)
  stacked = options.rtol is None and _methods.has_stderr(method, options)
  needs_params = _methods.canonical(method).endswith("ng")
  model = loaded.module if _methods.canonical(method) in _methods.MODEL_METHODS else None
  explainer = _methods.build(method, f, loaded.bounds, options, param_fn=param_fn() if needs_params else None,
                             model=model)
  size = loaded.spec.size
  _methods.check_model(method, options, (size, size, 1 if loaded.spec.grayscale else 3), model=model)

  def explain_one(key, x):
    if target == "predicted":  # the clean input's class, chosen once, not per noisy sample
      t = jnp.argmax(logits_fn(x[None])[0]).astype(jnp.int32)
    else:
      t = jnp.asarray(target, jnp.int32)
    out = explainer(key, x, t)
    if stacked:  # one array (attribute() stores one per input): the map and its stderr, split by split_error
      return jnp.stack([out.value, out.stderr.astype(out.value.dtype)])
    return out

  return explain_one, logits_fn


def split_error(method: str, options: _methods.Options, output) -> tuple[np.ndarray, Optional[float]]:
  """``(map, relative error)`` of an ``explain_one`` output; the error is None for a map without one."""
  output = np.asarray(output)
  if options.rtol is not None or not _methods.has_stderr(method, dataclasses.replace(options, return_stderr=True)):
    return output, None
  value, stderr = output[0], output[1]
  size = float(np.linalg.norm(value.astype(np.float64)))
  error = float(np.linalg.norm(stderr.astype(np.float64)))
  return value, (error / size if size > 0 else (float("inf") if error > 0 else 0.0))


def error_kind(method: str, options: _methods.Options) -> str:
  """What the error column says for a map without a relative error."""
  return "deterministic" if _methods.is_deterministic(method, options) else "not estimated"


def predictions(logits_fn, xs) -> tuple[np.ndarray, np.ndarray]:
  import jax  # pylint: disable=import-outside-toplevel

  probs = np.asarray(jax.nn.softmax(logits_fn(xs), axis=-1))
  return probs.argmax(-1), probs


# ----------------------------------------------------------------------------
# Output files.


def unique_inputs(paths: list[pathlib.Path]) -> list[pathlib.Path]:
  """The inputs without repeats of the same file (a folder and a file in it, or a file named twice)."""
  seen, unique = set(), []
  for p in paths:
    key = p.resolve()
    if key not in seen:
      seen.add(key)
      unique.append(p)
  return unique


def output_stems(paths: list[pathlib.Path]) -> list[str]:
  """One distinct output stem per input, checked before any work.

  A file's stem (``cat`` for ``cat.png``) names its outputs; files sharing a
  stem (compared case-insensitively, as on macOS and Windows) are named by
  their path from their common folder instead, ``_`` for ``/``
  (``cat.png, sub/cat.png`` -> ``cat, sub_cat``). Stems that still collide
  (``cat.png, cat.jpg``) are a :class:`UsageError` naming both inputs.

  Example:
    >>> import pathlib
    >>> output_stems([pathlib.Path(p) for p in ("cat.png", "sub/cat.png", "cat-2.png")])
    ['cat', 'sub_cat', 'cat-2']
  """
  resolved = [pathlib.Path(os.path.abspath(p)) for p in paths]
  stems = [p.stem for p in paths]
  groups: dict[str, list[int]] = {}
  for i, p in enumerate(paths):
    groups.setdefault(p.stem.casefold(), []).append(i)
  for members in groups.values():
    if len(members) > 1:
      common = pathlib.Path(os.path.commonpath([str(resolved[i].parent) for i in members]))
      for i in members:
        stems[i] = "_".join(resolved[i].relative_to(common).with_suffix("").parts)
  owner: dict[str, int] = {}
  for i, stem in enumerate(stems):
    j = owner.setdefault(stem.casefold(), i)
    if j != i:
      raise UsageError(
        f"{paths[j]} and {paths[i]} would both write {stem}_<method>.npy and .png; rename one, or explain"
        " them into different --out folders")
  return stems


def check_outputs(files: list[pathlib.Path], overwrite: bool) -> None:
  existing = [f for f in files if f.exists()]
  if existing and not overwrite:
    more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
    raise CliError(f"{existing[0]} already exists{more}; pass --overwrite to replace, or choose another --out")


def check_out_is_not_an_input(out: pathlib.Path, inputs: list[str]) -> None:
  """Overlays written into an input folder would become inputs of the next run."""
  target = pathlib.Path(os.path.abspath(out))
  for item in inputs:
    folder = pathlib.Path(item).expanduser()
    if folder.is_dir() and pathlib.Path(os.path.abspath(folder)) == target:
      raise UsageError(f"--out {out} is also an input folder; its PNG overlays would become inputs of the next"
                       " run: choose another --out")


def save_map(path_npy: pathlib.Path, path_png: pathlib.Path, attribution: np.ndarray, image01: np.ndarray) -> None:
  """The raw map (.npy), then the overlay (.png), each written atomically; both exist = this image is done."""
  from adaptgrad_jax import viz  # pylint: disable=import-outside-toplevel

  _shared.write_npy(path_npy, np.asarray(attribution, np.float32))
  _shared.write_png(path_png, viz.overlay(image01, np.asarray(attribution), alpha=0.5))


RECORD = "explain.json"


def run_identity(args: argparse.Namespace, method: str, paths: list[pathlib.Path], stems: list[str]) -> dict:
  """What decides the maps: a rerun with the same identity may continue an interrupted run."""
  weights = args.weights
  if weights not in (None, "random", "download", "pretrained"):
    weights = _shared.file_identity(weights)
  identity = {
    "command": "explain", "method": method, "model": args.model, "weights": weights, "target": args.target,
    "seed": args.seed, "options": dict(vars(options_from(args))),
    "images": [_shared.file_identity(p) for p in paths], "stems": stems,
  }
  return json.loads(json.dumps(identity))  # as read back from explain.json


def done_images(out: pathlib.Path, identity: dict, names: list[tuple[str, str]],
                overwrite: bool) -> tuple[set[int], bool]:
  """``(done, finished)``: the images an earlier run with the same identity wrote, and whether it ended.

  Raises:
    CliError: when OUT holds outputs of another run (or of no recorded run)
      and ``overwrite`` is False.
  """
  if overwrite:
    return set(), False
  record = _shared.read_record(out / RECORD)
  if record is None:
    check_outputs([out / name for pair in names for name in pair], overwrite=False)
    return set(), False
  if record.get("run") != identity:
    diff = _shared.differences(record.get("run") or {}, identity) if isinstance(record.get("run"), dict) else []
    what = f"differs in {', '.join(diff)}" if diff else "was written by another command or version"
    raise CliError(f"{out / RECORD} records another run ({what}); pass --overwrite to replace its outputs,"
                   " or choose another --out")
  done = {i for i, (npy, png) in enumerate(names) if (out / npy).exists() and (out / png).exists()}
  return done, record.get("complete") is True


def progress_bar(console, total: int, description: str):
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn  # pylint: disable=import-outside-toplevel

  return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False), total, description


# ----------------------------------------------------------------------------
# The command.


def run(args: argparse.Namespace, console, err_console) -> int:
  method = _methods.canonical(args.method)
  _methods.check_options(method, options_from(args))
  if args.rtol is not None and args.devices is not None:
    raise UsageError("--rtol explains image by image (each stops on its own) and cannot shard over --devices;"
                     " leave one of them out")
  _errors.require_plotting("explain")
  paths = unique_inputs(_models.expand_inputs(args.inputs))
  out = pathlib.Path(args.out).expanduser()
  if out.exists() and not out.is_dir():
    raise UsageError(f"--out {args.out} is a file; pass a folder")
  check_out_is_not_an_input(out, args.inputs)
  _shared.check_no_links(out, [out / "shards"])  # folders: attribute's shards, deleted by --overwrite
  stems = output_stems(paths)
  spec = _models.spec_for(args.model)
  import jax  # pylint: disable=import-outside-toplevel

  devices = jax.local_devices()
  if args.devices is not None and args.devices > len(devices):
    raise UsageError(
      f"--devices {args.devices}: only {len(devices)} local device(s) ({devices[0].platform}); on CPU,"
      f" XLA_FLAGS=--xla_force_host_platform_device_count={args.devices} simulates more")
  # Decodes all: a bad image fails before any output.
  _shared.check_images(paths, grayscale=spec.grayscale, short_side=_shared.resize_short_side(spec))
  identity = run_identity(args, method, paths, stems)
  names = [(f"{s}_{method}.npy", f"{s}_{method}.png") for s in stems]
  all_names = [name for pair in names for name in pair] + [RECORD]
  _shared.check_output_names(all_names)
  with _shared.locked_output(out):
    _shared.remove_stale_temporaries(out, all_names)
    done, finished = done_images(out, identity, names, args.overwrite)
    if finished and len(done) == len(paths):
      console.print(f"nothing to do: the {len(paths)} {method} map(s) in {out} are complete ({out / RECORD});"
                    " --overwrite computes them again")
      return _errors.EXIT_OK
    return _run_locked(args, console, err_console, method, paths, names, out, spec, devices, identity, done)


def _run_locked(args, console, err_console, method, paths, names, out, spec, devices, identity, done):
  """The work, under the lock of ``out``: maps of the images not in ``done``, then the record."""
  import jax  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax.cpu import compiler_options as cpu_compiler_options  # pylint: disable=import-outside-toplevel

  options = options_from(args)
  from_folder = any(pathlib.Path(i).expanduser().is_dir() for i in args.inputs)
  loaded = _models.load(args.model, args.weights)
  check_target(args.target, loaded)
  explain_one, logits_fn = make_explain_one(method, loaded, options, args.target)
  resumed = f"; {len(done)} already done, continuing" if done else ""
  err_console.print(
    f"{_methods.label(method)} with {spec.name} ({loaded.weights}); {len(paths)} image(s),"
    f" {_methods.cost(method, options)} gradient evaluation(s) each{resumed}")
  earlier = (_shared.read_record(out / RECORD) or {}) if done else {}
  _shared.write_json(out / RECORD, {
    "complete": False, "run": identity,
    "note": "running or interrupted: an image whose .npy and .png both exist is done; run the same command"
            " again to continue"})
  key = jax.random.key(args.seed)
  start = time.perf_counter()

  def load_x(path):
    return loaded.preprocess(_shared.read_image(path, grayscale=spec.grayscale))

  use_attribute = (from_folder or args.devices is not None) and options.rtol is None
  if use_attribute:
    maps = _explain_sharded(explain_one, key, paths, load_x, out, args, devices)
  else:
    maps = None
    jitted = jax.jit(explain_one, compiler_options=cpu_compiler_options())
  records = []
  precision: dict[int, dict] = {}
  errors: dict[int, Optional[float]] = {}
  progress, total, description = progress_bar(err_console, len(paths), "explaining" if maps is None else "writing")
  with progress:
    task = progress.add_task(description, total=total)
    for i, (path, (npy, png)) in enumerate(zip(paths, names)):
      x = load_x(path)
      if i not in done:
        if maps is None:
          attribution = jitted(jax.random.fold_in(key, i), x)
          if options.rtol is not None:  # an ag.Estimate: the map, its stderr and the samples used
            import adaptgrad_jax as ag  # pylint: disable=import-outside-toplevel

            precision[i] = {"samples": int(attribution.num_samples),
                            "relative_error": float(ag.relative_error(attribution))}
            err_console.print(f"{path.name}: {precision[i]['samples']} of {options.n} samples, relative error"
                              f" {precision[i]['relative_error']:.3f} (--rtol {options.rtol:g})")
            attribution = attribution.value
          else:
            attribution, errors[i] = split_error(method, options, attribution)
          attribution = np.asarray(attribution)
        else:
          attribution, errors[i] = split_error(method, options, maps[i])
        if not np.all(np.isfinite(attribution)):
          raise CliError(f"the {method} map of {path} holds NaN or inf; try --method grad to check the model")
        save_map(out / npy, out / png, attribution, loaded.display(x))
      predicted, probs = predictions(logits_fn, x[None])
      target = int(predicted[0]) if args.target == "predicted" else int(args.target)
      records.append({
        "image": str(path), "npy": npy, "png": png,
        "predicted": int(predicted[0]), "predicted_name": loaded.class_name(int(predicted[0])),
        "probability": float(probs[0, predicted[0]]), "target": target, "target_name": loaded.class_name(target),
      })
      if options.rtol is not None:  # images done by an earlier run keep what that run recorded
        records[-1].update(precision.get(i) or _earlier_precision(earlier, path))
      elif i in errors:
        records[-1]["relative_error"] = errors[i]
      else:
        records[-1]["relative_error"] = _earlier_precision(earlier, path, "relative_error")["relative_error"]
      progress.update(task, advance=1)
  elapsed = time.perf_counter() - start
  summary = {
    "complete": True, "run": identity,
    "method": method, "label": _methods.label(method), "model": spec.name, "weights": loaded.weights,
    "options": {k: v for k, v in vars(options).items()}, "seed": args.seed, "target": args.target,
    "key_per_image": "jax.random.fold_in(jax.random.key(seed), index)",
    **({"precision": "samples: gradient evaluations used (the clean one included) until the relative error"
                     " ||stderr|| / ||map|| (adaptgrad_jax.relative_error) reached rtol or n were used"}
       if options.rtol is not None else
       {"relative_error": "||stderr|| / ||map|| of each map (adaptgrad_jax.relative_error, from return_stderr=True);"
                          f" null: {error_kind(method, options)}"}), "seconds": round(elapsed, 2),
    "images": records,
  }
  _shared.write_json(out / RECORD, summary)
  _print_table(console, records, method, error_kind(method, options))
  written = len(_shared.written_files(out))
  console.print(f"wrote {written} file{'' if written == 1 else 's'} to {out} in {elapsed:.1f} s"
                + (f" ({len(done)} image(s) done by an earlier run)" if done else ""))
  return _errors.EXIT_OK


def _earlier_precision(record: dict, path: pathlib.Path, field: str = "samples") -> dict:
  """The samples and relative error an earlier run recorded for ``path`` (None when not recorded)."""
  for image in record.get("images") or []:
    if isinstance(image, dict) and image.get("image") == str(path) and field in image:
      return {"samples": image.get("samples"), "relative_error": image.get("relative_error")}
  return {"samples": None, "relative_error": None}


def _explain_sharded(explain_one, key, paths, load_x, out, args, devices):
  """Folders: adaptgrad_jax.attribute over a mesh of local devices, resumable shards in OUT/shards."""
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel

  from adaptgrad_jax.attribute import attribute  # pylint: disable=import-outside-toplevel

  count = args.devices or len(devices)
  mesh = Mesh(np.asarray(devices[:count]), ("data",))
  batch = count

  def batches():
    for i in range(0, len(paths), batch):
      yield np.stack([load_x(p) for p in paths[i:i + batch]])

  with_stderr = dataclasses.replace(options_from(args), return_stderr=True)
  stderr = "/map+stderr" if _methods.has_stderr(args.method, with_stderr) else ""
  explain_id = (f"{args.method}/{args.model}/{args.weights}/target={args.target}{stderr}/"
                f"{json.dumps(vars(options_from(args)), sort_keys=True)}")
  return attribute(explain_one, key, batches(), out=out / "shards", batch_size=batch, num_examples=len(paths),
                   mesh=mesh, explain_id=explain_id, overwrite=args.overwrite)


def _print_table(console, records, method, no_error: str = "deterministic") -> None:
  from rich.table import Table  # pylint: disable=import-outside-toplevel

  table = Table(title=f"{_methods.label(method)} maps")
  table.add_column("image")
  table.add_column("predicted (probability)")
  table.add_column("explained class")
  with_samples = any("samples" in r for r in records)
  if with_samples:
    table.add_column("samples (rel. error)")
  else:
    table.add_column("rel. error")
  table.add_column("overlay")
  for r in records:
    explained = str(r["target"]) if r["target_name"] == str(r["target"]) else f"{r['target']} {r['target_name']}"
    row = [pathlib.Path(r["image"]).name, f"{r['predicted_name']} ({r['probability']:.2f})", explained]
    if with_samples:
      row.append("earlier run" if r.get("samples") is None else f"{r['samples']} ({r['relative_error']:.3f})")
    elif r.get("relative_error") is not None:
      row.append(f"{r['relative_error']:.1%}")
    else:
      row.append(no_error)
    table.add_row(*row, r["png"])
  console.print(table)
