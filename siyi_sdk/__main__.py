"""``python -m siyi_sdk``: the ``siyi`` command (see `siyi_sdk.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
