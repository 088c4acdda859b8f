"""The command line of the reproductions (``python -m adaptgrad_jax.reproduce ...``)."""

from __future__ import annotations

import argparse
import dataclasses
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
  t1.add_argument("--mnist", default=None,
                  help="MNIST .npz or directory of IDX files (default: datasets.mnist() lookup)")
  t1.add_argument("--shifted-bounds", choices=("own", "released", "both"), default=None,
                  help="AdaptGrad bounds for the input-shifted model: its own (1, 2) (default), "
                       "the released code's (0, 1), or both")
  t1.add_argument("--epochs", type=int, default=None)
  t1.add_argument("--examples", type=int, default=None, help="test digits explained")
  t1.add_argument("--n", type=int, default=None, help="SG / AG noise samples")
  t1.add_argument("--m", type=int, default=None, help="NoiseGrad parameter samples")

  t2 = sub.add_parser("table2", help="Sparseness / Information Level with EfficientNet-Lite0")
  common(t2)
  t2.add_argument("--n", type=int, default=None, help="SG / AG noise samples")
  t2.add_argument("--ig-steps", type=int, default=None, help="Integrated Gradients steps")
  t2.add_argument("--ig-n", type=int, default=None, help="noise samples per IG step (S-/A-IG)")
  t2.add_argument("--m", type=int, default=None, help="NoiseGrad parameter samples")
  t2.add_argument("--pic-masks", type=int, default=None, help="PIC random masks per photo")
  t2.add_argument("--batch-size", type=int, default=None, help="gradients evaluated at a time")

  t3 = sub.add_parser("inherent-noise", help="out-of-range rates of SG / AG noise (Sec. 3.2)")
  common(t3)
  t3.add_argument("--crops", type=int, default=None, help="random crops per photo")
  t3.add_argument("--n", type=int, default=None, help="noisy copies per image")
  return p


def _override(config, **values):
  return dataclasses.replace(config, **{k: v for k, v in values.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one reproduction from command-line arguments; returns the exit status.

  Example:
    ``main(["inherent-noise", "--quick"])`` prints the out-of-range table.
  """
  args = _parser().parse_args(argv)
  from adaptgrad_jax.reproduce import _inherent_noise, _table1, _table2  # pylint: disable=import-outside-toplevel
  if args.experiment == "table1":
    base = _table1.QUICK_TABLE1 if args.quick else _table1.Table1Config()
    config = _override(base, seed=args.seed, shifted_bounds=args.shifted_bounds,
                       epochs=args.epochs, num_examples=args.examples, n=args.n, m=args.m)
    try:
      result = _table1.table1(config, mnist=args.mnist)
    except FileNotFoundError as e:
      print(e, file=sys.stderr)
      return 2
    name = "reproduce_table1"
  elif args.experiment == "table2":
    base = _table2.QUICK_TABLE2 if args.quick else _table2.Table2Config()
    config = _override(base, seed=args.seed, n=args.n, ig_steps=args.ig_steps, ig_n=args.ig_n,
                       m=args.m, pic_masks=args.pic_masks, batch_size=args.batch_size)
    try:
      result = _table2.table2(config)
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
  if args.out:
    from adaptgrad_jax.reproduce import _report  # pylint: disable=import-outside-toplevel
    stem = args.name or (name + ("_quick" if args.quick else ""))
    paths = _report.write_outputs(args.out, stem, result.to_dict(), result.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths))
  return 0


