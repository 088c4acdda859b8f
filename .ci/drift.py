"""Lists the resolved versions that differ from the last tested set (``.ci/run`` calls it; informational).

Usage: ``python .ci/drift.py TESTED_CONSTRAINTS RESOLVED_FREEZE``.
"""

import pathlib
import re
import sys


def pins(path):
  """``name==version`` lines of a requirements file -> {normalised name: version without local label}."""
  out = {}
  for line in pathlib.Path(path).read_text().splitlines():
    m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;+]+)", line.strip())
    if m:
      out[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
  return out


def main(tested_path, resolved_path):
  tested_file = pathlib.Path(tested_path)
  tested = pins(tested_file) if tested_file.exists() else {}
  now = pins(resolved_path)
  lines = [f"  {k}: tested {tested[k]}, now {now[k]}" for k in sorted(tested) if k in now and now[k] != tested[k]]
  lines += [f"  {k}: not in the tested set, now {now[k]}" for k in sorted(now) if k not in tested]
  if lines:
    print(f"versions that differ from {tested_file} (the last set that passed):", *lines, sep="\n")
  else:
    print(f"every resolved version is the one in {tested_file}")


if __name__ == "__main__":
  main(*sys.argv[1:])
