import sys

from werkfluss.cli import main

sys.exit(main())
