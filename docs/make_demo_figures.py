"""Regenerates the demo's figures and numbers in the docs from one run of ``adaptgrad-jax demo``.

    python docs/make_demo_figures.py          # the demo with its defaults (a few minutes on 2 CPU cores)

runs the demo into a temporary folder and writes, from what it wrote:

* ``docs/demo.png`` (the README's figure: the photos) and ``docs/demo_mnist.png``;
* ``docs/demo.json``, the demo's own summary (settings, Sparseness, relative errors, times);
* the marked blocks of ``docs/idea.md`` (the Sparseness / error table) and ``docs/cli.md`` (the run's
  settings and time), rendered from that summary.

``tests/test_cli.py`` runs it with ``--quick --docs DIR`` (MNIST only, into a copy of the pages) and
checks that the committed blocks are the committed ``demo.json`` rendered, and that ``demo.json``
records the settings the demo has now: change the demo, and the test asks for this command.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import sys
import tempfile

from adaptgrad_jax.cli import _demo  # pylint: disable=protected-access

DOCS = pathlib.Path(__file__).resolve().parent
FIGURES = {"mnist.png": "demo_mnist.png", "photos.png": "demo.png"}
LABELS = _demo.ROW_LABELS


def _percent(value) -> str:
  """The demo's caption format for a relative error; "deterministic" for a map without one."""
  return "deterministic" if value is None else _demo._percent(float(value))


def _rate(part: dict, label: str) -> str:
  """The out-of-range column, as the demo's printed table has it."""
  return _demo._rate(_demo.ROWS[LABELS.index(label)], part["out_of_range_per_element"])


def table_markdown(summary: dict) -> str:
  """The table of ``docs/idea.md``: Sparseness, relative error and out-of-range rate per method."""
  mnist, photos = summary["mnist"], summary.get("photos")
  head = (f"| method | MNIST Sparseness ({mnist['digits']} digits) | MNIST rel. error (median) |"
          " noisy pixels outside [0, 1] |")
  rule = "|---|---|---|---|"
  if photos:
    names = ", ".join(photos["photos"])
    head += f" photos Sparseness ({len(photos['photos'])} photos) | photos rel. error ({names}) |" \
            " noisy pixels outside the range |"
    rule += "---|---|---|"
  lines = [head, rule]
  for label in LABELS:
    row = (f"| {label} | {mnist['sparseness'][label]:.3f} ± {mnist['sparseness_std'][label]:.3f} |"
           f" {_percent(mnist['relative_error_median'][label])} | {_rate(mnist, label)} |")
    if photos:
      errors = photos["relative_error"][label]
      error = "deterministic" if errors is None else ", ".join(_percent(e) for e in errors)
      row += (f" {photos['sparseness'][label]:.3f} ± {photos['sparseness_std'][label]:.3f} | {error} |"
              f" {_rate(photos, label)} |")
    lines.append(row)
  settings = (f"MNIST: {mnist['settings']}, test accuracy {mnist['test_accuracy']:.1%}; N = {mnist['n']},"
              f" IG {mnist['ig_steps']} steps ({mnist['ig_n']} noise samples per step)")
  if photos:
    predictions = "; ".join(f"{name}: {p['name']} (p = {p['probability']:.2f})"
                            for name, p in photos["predictions"].items())
    settings += (f". Photos: SG and AG by {photos['estimator_text']}; IG {photos['ig_steps']} steps"
                 f" ({photos['ig_n']} noise samples per step); EfficientNet-Lite0 predicts {predictions}")
  return "\n".join(lines) + f"\n\n{settings}. Seed {summary['seed']}.\n"


def run_markdown(summary: dict) -> str:
  """The recorded run of ``docs/cli.md``: what ran and how long it took."""
  mnist, photos = summary["mnist"], summary.get("photos")
  text = (f"The recorded run ([`docs/demo.json`](demo.json), seed {summary['seed']}) took"
          f" {summary['seconds']:.0f} s in all: the MNIST maps {mnist['seconds_maps']:.0f} s (after training or"
          " loading the MLP)")
  if photos:
    text += f", the photos {photos['seconds']:.0f} s including compilation"
  return text + ".\n"


BLOCKS = {"idea.md": ("demo-table", table_markdown), "cli.md": ("demo-run", run_markdown)}


def replace_block(text: str, name: str, body: str, page: str) -> str:
  """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` replaced by ``body``."""
  pattern = re.compile(rf"(<!-- {re.escape(name)}[^>]*-->\n)(.*?)(<!-- /{re.escape(name)} -->)", re.S)
  if not pattern.search(text):
    raise ValueError(f"{page} has no block <!-- {name} --> ... <!-- /{name} -->")
  return pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)


def block(text: str, name: str) -> str:
  """The body of the block ``name`` in ``text``."""
  found = re.search(rf"<!-- {re.escape(name)}[^>]*-->\n(.*?)<!-- /{re.escape(name)} -->", text, re.S)
  if found is None:
    raise ValueError(f"no block <!-- {name} --> ... <!-- /{name} -->")
  return found.group(1)


def publish(demo_out: pathlib.Path, docs: pathlib.Path) -> dict:
  """Copies the demo's figures into ``docs`` and renders its summary into the pages' blocks."""
  summary = json.loads((demo_out / "demo.json").read_text())
  if not summary.get("complete"):
    raise ValueError(f"{demo_out / 'demo.json'} records an unfinished demo; run it to the end first")
  for source, target in FIGURES.items():
    if (demo_out / source).exists():
      shutil.copyfile(demo_out / source, docs / target)
  (docs / "demo.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
  for page, (name, render) in BLOCKS.items():
    path = docs / page
    path.write_text(replace_block(path.read_text(), name, render(summary), page))
  return summary


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--docs", type=pathlib.Path, default=DOCS, help="the docs folder to write (default: docs/)")
  parser.add_argument("--quick", action="store_true", help="the demo's --quick (MNIST only; for the tests)")
  parser.add_argument("--render-only", action="store_true",
                      help="only render the pages' blocks again from DOCS/demo.json (after a change to this script)")
  args = parser.parse_args(argv)
  if args.render_only:
    summary = json.loads((args.docs / "demo.json").read_text())
    for page, (name, render) in BLOCKS.items():
      path = args.docs / page
      path.write_text(replace_block(path.read_text(), name, render(summary), page))
    return 0
  from adaptgrad_jax.cli import main as cli  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "demo"
    code = cli(["demo", "--out", str(out)] + (["--quick"] if args.quick else []))
    if code:
      return code
    publish(out, args.docs)
  print(f"wrote the demo's figures, demo.json and the blocks of {', '.join(BLOCKS)} in {args.docs}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
