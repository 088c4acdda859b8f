"""``python -m adaptgrad_jax.reproduce table1|table2|inherent-noise [--quick] [...]``.

``table1 --protocol released --weights-dir DIR --mnist PATH --json OUT`` runs the
authors' released models through their code's pipeline (the paper's Table 1);
``--protocol fixed`` (the default) corrects it and adds our own models.
"""

import sys

from adaptgrad_jax.reproduce._cli import main

if __name__ == "__main__":
  sys.exit(main())
