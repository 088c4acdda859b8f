"""Builds ``adaptgrad_jax/data/mnist_subset.npz`` from full MNIST.

Run from the repository root::

    python -m adaptgrad_jax.datasets._build_subset ../shared/data/mnist.npz

Selection (deterministic, no randomness): for each digit class, the first
``per_class_train`` (1,000) training and ``per_class_test`` (200) test images
in the canonical file order, kept in file order. The archive stores the uint8
images, uint8 labels and the original indices (``train_index``,
``test_index``), compressed with ``np.savez_compressed``.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np

from adaptgrad_jax.datasets import _mnist

DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "mnist_subset.npz"


def select_balanced(labels: np.ndarray, per_class: int) -> np.ndarray:
  """Indices of the first ``per_class`` examples of each class, in file order."""
  labels = np.asarray(labels)
  picks = []
  for c in range(10):
    idx = np.flatnonzero(labels == c)
    if idx.size < per_class:
      raise ValueError(f"class {c} has only {idx.size} examples < {per_class}.")
    picks.append(idx[:per_class])
  return np.sort(np.concatenate(picks))


def build(source: str | os.PathLike, out: str | os.PathLike = DEFAULT_OUT,
          per_class_train: int = 1000, per_class_test: int = 200) -> pathlib.Path:
  data = _mnist.mnist(source, dtype="uint8")
  tr = select_balanced(data.y_train, per_class_train)
  te = select_balanced(data.y_test, per_class_test)
  out = pathlib.Path(out)
  np.savez_compressed(
      out,
      x_train=data.x_train[tr, ..., 0], y_train=data.y_train[tr].astype(np.uint8),
      x_test=data.x_test[te, ..., 0], y_test=data.y_test[te].astype(np.uint8),
      train_index=tr.astype(np.int32), test_index=te.astype(np.int32))
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("source", help="full MNIST: .npz or directory of IDX files")
  parser.add_argument("--out", default=str(DEFAULT_OUT))
  parser.add_argument("--per-class-train", type=int, default=1000)
  parser.add_argument("--per-class-test", type=int, default=200)
  args = parser.parse_args(argv)
  out = build(args.source, args.out, args.per_class_train, args.per_class_test)
  print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
