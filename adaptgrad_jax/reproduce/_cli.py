"""The command line of the reproductions (``python -m adaptgrad_jax.reproduce ...``)."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Sequence

DEFAULT_OUT = "benchmarks/results"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m adaptgrad_jax.reproduce",
      description="Reproduce the AdaptGrad paper's Table 1, a Table 2 style run with our "
                  "EfficientNet-Lite0, and Section 3.2's inherent-noise experiment.")
  sub = p.add_subparsers(dest="experiment", required=True)

  def common(s):
    s.add_argument("--quick", action="store_true",
                   help="a small, fast version (seconds to a few minutes) to check the pipeline")
    s.add_argument("--seed", type=int, default=None, help="PRNG seed (default 0)")
    s.add_argument("--out", default=None,
                   help=f"write <name>.json and <name>.md into this directory (e.g. {DEFAULT_OUT})")
    s.add_argument("--name", default=None, help="file name stem for --out")

  t1 = sub.add_parser("table1", help="Consistency and Invariance of MNIST MLPs (Table 1)")
  common(t1)
  t1.add_argument("--protocol", choices=("fixed", "released"), default="fixed",
                  help="'released': the authors' released models through their code's pipeline, "
                       "each deviation from a correct pipeline kept and listed (reproduces the "
                       "paper's Table 1; needs --weights-dir); 'fixed' (default): the released "
                       "models on real digits with every deviation corrected (if --weights-dir "
                       "is given) and our own optax-trained models")
  t1.add_argument("--weights-dir", default=None,
                  help="folder with the authors' mlp.pth, random_mlp.pth, bias_mlp.pth")
  t1.add_argument("--skip-ours", action="store_true",
                  help="fixed protocol: measure the released weights only, not our own models")
  t1.add_argument("--no-ladder", action="store_true",
                  help="fixed protocol: skip measuring each correction's effect one at a time")
  t1.add_argument("--json", default=None,
                  help="write the result as JSON to this file (and markdown beside it, .md)")
  t1.add_argument("--mnist", default=None,
                  help="MNIST .npz or directory of IDX files (default: datasets.mnist() lookup)")
  t1.add_argument("--shifted-bounds", choices=("own", "released", "both"), default=None,
                  help="AdaptGrad bounds for the input-shifted model: its own (1, 2) (default), "
                       "the released code's (0, 1), or both")
  t1.add_argument("--epochs", type=int, default=None)
  t1.add_argument("--examples", type=int, default=None, help="test digits explained")
  t1.add_argument("--n", type=int, default=None, help="SG / AG noise samples")
  t1.add_argument("--m", type=int, default=None, help="NoiseGrad parameter samples")

  t2 = sub.add_parser("table2", help="Sparseness / Information Level with EfficientNet-Lite0 "
                                     "on the CC0 / public-domain photos of installed packages")
  common(t2)
  t2.add_argument("--photos", default=None,
                  help="comma-separated photo names (default: all of reproduce.TABLE2_PHOTOS)")
  t2.add_argument("--methods", default=None,
                  help="comma-separated rows (default: all 15 of reproduce.TABLE2_METHODS)")
  t2.add_argument("--n", type=int, default=None, help="SG / AG / S-GI / A-GI noise samples")
  t2.add_argument("--ig-steps", type=int, default=None, help="Integrated Gradients steps")
  t2.add_argument("--sig-steps", type=int, default=None, help="IG steps of S-/A-IG")
  t2.add_argument("--ig-n", type=int, default=None, help="noise samples per IG step (S-/A-IG)")
  t2.add_argument("--m", type=int, default=None, help="NoiseGrad parameter samples (NG)")
  t2.add_argument("--sng-m", type=int, default=None, help="parameter samples of S-/A-NG")
  t2.add_argument("--sng-n", type=int, default=None,
                  help="noise samples per parameter sample of S-/A-NG")
  t2.add_argument("--pic-masks", type=int, default=None, help="PIC random masks per photo")
  t2.add_argument("--no-information-level", action="store_true",
                  help="sparseness only (the PIC costs ~40 s of CPU per photo and IG row)")
  t2.add_argument("--min-pred-value", type=float, default=None,
                  help="XRAI's SIC filter: skip photos predicted with less confidence")
  t2.add_argument("--batch-size", type=int, default=None, help="gradients evaluated at a time")
  t2.add_argument("--maps-dir", default=None,
                  help="keep the maps as resumable shards here (an interrupted run started "
                       "again with the same settings computes only what is missing)")

  t3 = sub.add_parser("inherent-noise", help="out-of-range rates of SG / AG noise (Sec. 3.2)")
  common(t3)
  t3.add_argument("--crops", type=int, default=None, help="random crops per photo")
  t3.add_argument("--n", type=int, default=None, help="noisy copies per image")
  return p


def _override(config, **values):
  return dataclasses.replace(config, **{k: v for k, v in values.items() if v is not None})


def _run_table1(args):
  """Runs Table 1 under ``args.protocol``; returns (result, output name) or (None, None)."""
  from adaptgrad_jax.reproduce import _table1, _table1_released  # pylint: disable=import-outside-toplevel
  if args.protocol == "released":
    if args.weights_dir is None:
      print("--protocol released needs --weights-dir: the folder with the authors' released "
            "mlp.pth, random_mlp.pth and bias_mlp.pth (AiShare-WHU/AdaptGrad, saved_models/).",
            file=sys.stderr)
      return None, None
    base = _table1.Table1Config(num_examples=1000, m=50)
    if args.quick:
      base = dataclasses.replace(base, num_examples=40, m=3)
    config = _override(base, seed=args.seed, num_examples=args.examples, n=args.n, m=args.m)
    result = _table1_released.table1_released_weights(
        args.weights_dir, _table1_released.Pipeline.released(), mnist=args.mnist, config=config)
    return result, "reproduce_table1_released"
  if args.skip_ours and args.weights_dir is None:
    print("--skip-ours leaves nothing to measure without --weights-dir.", file=sys.stderr)
    return None, None
  ours = _table1.QUICK_TABLE1 if args.quick else _table1.Table1Config()
  ours = _override(ours, seed=args.seed, shifted_bounds=args.shifted_bounds, epochs=args.epochs,
                   num_examples=args.examples, n=args.n, m=args.m)
  released = _table1.Table1Config(num_examples=40 if args.quick else 1000,
                                  m=3 if args.quick else 10)
  released = _override(released, seed=args.seed, num_examples=args.examples, n=args.n, m=args.m)
  result = _table1_released.table1_fixed(args.weights_dir, mnist=args.mnist,
                                         released_config=released,
                                         ours_config=None if args.skip_ours else ours,
                                         ladder=not args.no_ladder)
  return result, "reproduce_table1" if args.weights_dir is None else "reproduce_table1_fixed"


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one reproduction from command-line arguments; returns the exit status.

  Example:
    ``main(["inherent-noise", "--quick"])`` prints the out-of-range table.
  """
  args = _parser().parse_args(argv)
  from adaptgrad_jax.reproduce import _inherent_noise, _table2  # pylint: disable=import-outside-toplevel
  if args.experiment == "table1":
    try:
      result, name = _run_table1(args)
    except FileNotFoundError as e:
      print(e, file=sys.stderr)
      return 2
    if result is None:
      return 2
  elif args.experiment == "table2":
    base = _table2.QUICK_TABLE2 if args.quick else _table2.Table2Config()
    photos = None if args.photos is None else tuple(
        p.strip() for p in args.photos.split(",") if p.strip())
    methods = None if args.methods is None else tuple(
        m.strip() for m in args.methods.split(",") if m.strip())
    try:
      config = _override(base, seed=args.seed, photos=photos, methods=methods, n=args.n, ig_steps=args.ig_steps,
                         sig_steps=args.sig_steps, ig_n=args.ig_n, ng_m=args.m, sng_m=args.sng_m, sng_n=args.sng_n,
                         pic_masks=args.pic_masks, min_pred_value=args.min_pred_value,
                         batch_size=args.batch_size,
                         information_level=False if args.no_information_level else None)
    except ValueError as e:
      print(e, file=sys.stderr)
      return 2
    try:
      result = _table2.table2(config, out=args.maps_dir)
    except ImportError as e:
      print(e, file=sys.stderr)
      return 2
    name = "reproduce_table2"
  else:
    base = (_inherent_noise.QUICK_INHERENT_NOISE if args.quick
            else _inherent_noise.InherentNoiseConfig())
    config = _override(base, seed=args.seed, crops_per_photo=args.crops, n=args.n)
    result = _inherent_noise.inherent_noise_experiment(config)
    name = "reproduce_inherent_noise"
  result.print()
  if getattr(args, "json", None):
    from adaptgrad_jax.reproduce import _report  # pylint: disable=import-outside-toplevel
    json_path = pathlib.Path(args.json)
    paths = _report.write_outputs(json_path.parent, json_path.stem, result.to_dict(),
                                  result.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths))
  if args.out:
    from adaptgrad_jax.reproduce import _report  # pylint: disable=import-outside-toplevel
    stem = args.name or (name + ("_quick" if args.quick else ""))
    paths = _report.write_outputs(args.out, stem, result.to_dict(), result.to_markdown())
    if args.experiment == "table2":
      png = pathlib.Path(args.out) / f"{stem}.png"
      try:
        result.plot(png)
        paths = (*paths, png)
      except ImportError as e:
        print(f"no plot: {e}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths))
  return 0


