"""``python -m adaptgrad_jax.reproduce table1|table2|inherent-noise [--quick] [...]``."""

import sys

from adaptgrad_jax.reproduce._cli import main

if __name__ == "__main__":
  sys.exit(main())
