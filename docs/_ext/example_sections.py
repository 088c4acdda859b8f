"""A griffe extension for the API reference: the house style's ``Example:`` is Google's ``Examples:``.

griffe's Google parser knows the plural only; without this, an ``Example:`` block
would render as prose (``>>>`` as quotes) instead of a highlighted doctest.
"""

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
  """Renames ``Example:`` section headers to ``Examples:`` before docstrings are parsed."""

  def on_instance(self, *, obj, **kwargs) -> None:
    del kwargs
    docstring = getattr(obj, "docstring", None)
    if docstring is not None and "Example:" in docstring.value:
      docstring.value = _EXAMPLE.sub(r"\1Examples:", docstring.value)
