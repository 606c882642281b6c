import sys

from werkfluss.cli.main import main

sys.exit(main(prog="python -m werkfluss"))
