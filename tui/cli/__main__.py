"""`python -m tui.cli ...`, as the tests, the benchmarks and the launcher's children run the command line."""
import sys

from . import main

sys.exit(main())
