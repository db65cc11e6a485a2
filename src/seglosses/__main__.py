"""``python -m seglosses``: the ``seglosses`` command (needs the ``lab`` extra)."""

import sys

from seglosses.lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
