"""imgpipe with the test engine ``bare`` (this folder) among its engines: ``--engine bare``."""

import os
import sys

import imgpipe.engines

imgpipe.engines.__path__.append(os.path.dirname(os.path.abspath(__file__)))

from imgpipe.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
