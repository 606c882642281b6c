import sys

from werkfluss.cli.main import main

sys.exit(main())
