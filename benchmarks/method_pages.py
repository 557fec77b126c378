"""Refresh the generated "Measured here" block of each docs/methods/<method>.md from a finished bench.

    python benchmarks/method_pages.py runs/bench/quick

See medsemi/bench/method_pages.py.
"""

import sys

from medsemi.bench.method_pages import main

if __name__ == "__main__":
    sys.exit(main())
