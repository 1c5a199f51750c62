"""``python -m vdiffdeblur`` (and ``accelerate launch -m vdiffdeblur``): the ``vdiffdeblur`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
