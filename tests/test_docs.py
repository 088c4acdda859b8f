"""The documentation cannot drift from the code: every ```python block of README.md and docs/ runs.

Blocks with ``>>>`` prompts run as doctests (their printed output is compared);
other blocks are executed in a fresh namespace, in a temporary working
directory. Shell commands belong in ```bash blocks, which are not run. Also:
every public name is in the API reference, and the README stays a front page.
"""

import doctest
import importlib
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

# Modules whose public names (``__all__``) must each have a ``::: module.name`` entry in docs/api/.
API_MODULES = (
    "adaptgrad_jax",
    "adaptgrad_jax.cpu",
    "adaptgrad_jax.metrics",
    "adaptgrad_jax.models",
    "adaptgrad_jax.weights",
    "adaptgrad_jax.attribute",
    "adaptgrad_jax.viz",
    "adaptgrad_jax.flax_adapters",
    "adaptgrad_jax.equinox_adapters",
    "adaptgrad_jax.text",
)


def _blocks():
  for path in DOC_FILES:
    text = path.read_text(encoding="utf-8")
    for match in _FENCE.finditer(text):
      line = text.count("\n", 0, match.start()) + 2  # first line of code, 1-based
      yield pytest.param(path, line, match.group(1), id=f"{path.relative_to(ROOT)}:{line}")


@pytest.fixture
def docs_env(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("ADAPTGRAD_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  return tmp_path


@pytest.mark.parametrize("path, line, source", list(_blocks()))
def test_code_block_runs(path, line, source, docs_env):
  name = f"{path.relative_to(ROOT)}:{line}"
  if re.search(r"^\s*>>> ", source, re.MULTILINE):
    test = doctest.DocTestParser().get_doctest(source, {"__name__": "__docs__"}, name, str(path), line - 1)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    runner.run(test, out=failures.append)
    assert runner.failures == 0, f"{name}: doctest failed\n" + "".join(failures)
    assert test.examples, name
  else:
    namespace = {"__name__": "__docs__"}
    exec(compile(source, name, "exec"), namespace)  # noqa: S102: the docs' own examples


def test_every_page_has_code_or_is_reference():
  """Guards the extraction itself: the pages with examples do have python blocks."""
  found = {p.relative_to(ROOT).as_posix() for p, *_ in (b.values for b in _blocks())}
  for page in ("README.md", "docs/transforms.md", "docs/bounds.md", "docs/batching.md", "docs/models.md",
               "docs/metrics.md", "docs/scale-out.md"):
    assert page in found, f"{page} has no ```python block (or the fence regex broke)"


def _api_entries() -> set[str]:
  entries = set()
  for page in (ROOT / "docs" / "api").glob("*.md"):
    entries |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.MULTILINE))
  return entries


@pytest.mark.parametrize("module_name", API_MODULES)
def test_every_public_name_is_in_the_api_reference(module_name):
  module = importlib.import_module(module_name)
  entries = _api_entries()
  assert module_name in entries, f"docs/api/ has no '::: {module_name}' (the module's own docstring)"
  missing = [
      name for name in module.__all__
      if f"{module_name}.{name}" not in entries and not (module_name == "adaptgrad_jax" and name == "cpu")
  ]
  assert not missing, f"add '::: {module_name}.<name>' to the page in docs/api/ for: {missing}"


def test_every_api_entry_exists():
  for entry in sorted(_api_entries()):
    module_name, _, name = entry.rpartition(".")
    if entry in API_MODULES:
      importlib.import_module(entry)
      continue
    module = importlib.import_module(module_name)
    assert hasattr(module, name), f"docs/api/ documents {entry}, which does not exist"
    assert name in module.__all__, f"docs/api/ documents {entry}, which is not public (__all__)"


def test_readme_is_a_front_page():
  text = (ROOT / "README.md").read_text(encoding="utf-8")
  assert len(text.splitlines()) <= 200
  # The test command CI runs is the README's (there in two lines: under `set -e` a failing `a` in `a && b`
  # would not stop the script).
  ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
  install, test = 'pip install torch==2.13.0 -e ".[test]"', "python -m pytest -q -n 2 --dist loadfile"
  assert f"{install} && {test}" in text and install in ci and test in ci
  assert 'pip install -e ".[all]" && adaptgrad-jax demo' in text
  for word in ("issue ", "session", "our machines"):
    assert word not in text.lower(), f"README mentions {word!r}: development history belongs elsewhere"
  # Relative links (README is outside the MkDocs tree, so the site build does not check them).
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
    if "://" not in target:
      assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_doctests_are_part_of_the_test_command():
  tomllib = pytest.importorskip("tomllib")  # Python 3.11+

  config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
  assert "adaptgrad_jax" in config["testpaths"] and "--doctest-modules" in config["addopts"]


def test_no_stale_readme_copies():
  assert not (ROOT / "docs" / "readme").exists() or not os.listdir(ROOT / "docs" / "readme")
