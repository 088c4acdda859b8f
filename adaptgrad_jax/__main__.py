"""``python -m adaptgrad_jax``: the ``adaptgrad-jax`` command line."""

from adaptgrad_jax.cli import main

if __name__ == "__main__":
  raise SystemExit(main())
