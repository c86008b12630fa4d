"""``python -m rfscope.probe ARGS`` is ``rfscope probe ARGS`` (handy under ``torchrun -m``)."""

import sys

from rfscope.cli import main

if __name__ == "__main__":
    sys.exit(main(["probe", *sys.argv[1:]], prog_name="rfscope probe"))
