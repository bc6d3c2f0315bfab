"""``python -m yolojax MODE KEY=VALUE ...``: the ``yolojax`` command (see :mod:`yolojax.cli`)."""

import sys

from yolojax.cli import main

if __name__ == "__main__":
    sys.exit(main())
