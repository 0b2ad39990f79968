"""``python -m salmap`` runs the command line."""

import sys

from salmap.cli import main

if __name__ == "__main__":
    sys.exit(main())
