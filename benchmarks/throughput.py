"""Training throughput of the fast (device-side) data path vs the SSL4MIS-style DataLoader path.

    python benchmarks/throughput.py --device cuda --batch 24 --amp --channels-last --out runs/bench/throughput

Same as `medsemi bench --throughput ...`; see medsemi/bench/throughput.py and docs/benchmarks.md.
"""

import sys

from medsemi.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
