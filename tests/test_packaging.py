"""The wheel carries what the package needs at run time and nothing else.

Builds the wheel offline (``python -m build --wheel --no-isolation``, so the
installed setuptools is used and nothing is downloaded) into a temporary
folder and reads its file list. Skips, saying why, where ``build`` is not
installed (it is in the ``test`` extra).
"""

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Files the package reads at run time (models.imagenet_classes, models.load_photo, datasets.mnist_embedded).
REQUIRED = (
    "adaptgrad_jax/py.typed",
    "adaptgrad_jax/data/imagenet_classes.txt",
    "adaptgrad_jax/data/mnist_subset.npz",
    "adaptgrad_jax/data/MNIST_LICENSE.md",
    "adaptgrad_jax/data/photos/chelsea.png",
    "adaptgrad_jax/data/photos/coffee.png",
    "adaptgrad_jax/data/photos/README.md",
    "adaptgrad_jax/__init__.py",
    "adaptgrad_jax/cli/__init__.py",
)
FORBIDDEN_PREFIXES = ("tests/", "benchmarks/", "docs/", "examples/", "results/", ".ci/", "site/")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
  pytest.importorskip("build", reason="`build` is in the test extra: pip install -e '.[test]'")
  out = tmp_path_factory.mktemp("dist")
  work = tmp_path_factory.mktemp("work")
  # Build from a copy of the sources so the in-tree build/ and egg-info of other runs cannot leak in.
  src = work / "src"
  ignore = __import__("shutil").ignore_patterns(
      "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "site", ".git", "tests", "benchmarks", "docs",
      "examples", ".benchmarks")
  __import__("shutil").copytree(ROOT, src, ignore=ignore)
  result = subprocess.run(
      [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
      capture_output=True, text=True, timeout=300,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  wheels = list(out.glob("adaptgrad_jax-*.whl"))
  assert len(wheels) == 1, wheels
  with zipfile.ZipFile(wheels[0]) as wheel:
    return wheel.namelist()


def test_wheel_carries_the_package_data(wheel_names):
  missing = [name for name in REQUIRED if name not in wheel_names]
  assert not missing, f"the wheel lacks {missing}: check [tool.setuptools.package-data] in pyproject.toml"
  # Every data file in the source tree is shipped.
  data = ROOT / "adaptgrad_jax" / "data"
  for path in data.rglob("*"):
    if path.is_file() and "__pycache__" not in path.parts:
      name = path.relative_to(ROOT).as_posix()
      assert name in wheel_names, f"{name} is not in the wheel"


def test_wheel_carries_nothing_else(wheel_names):
  stray = [n for n in wheel_names if n.startswith(FORBIDDEN_PREFIXES) or "__pycache__" in n or n.endswith(".pyc")]
  assert not stray, f"the wheel should not carry {stray[:10]}"
  top = {name.split("/")[0] for name in wheel_names}
  assert top <= {"adaptgrad_jax"} | {n for n in top if n.endswith(".dist-info")}, top
  # Every module of the source package is in the wheel (no subpackage forgotten by packages.find).
  for path in (ROOT / "adaptgrad_jax").rglob("*.py"):
    name = path.relative_to(ROOT).as_posix()
    assert name in wheel_names, f"{name} is not in the wheel"


def test_wheel_metadata(wheel_names):
  dist_info = [n for n in wheel_names if n.endswith(".dist-info/METADATA")]
  assert dist_info
  assert any(n.endswith(".dist-info/entry_points.txt") for n in wheel_names)
