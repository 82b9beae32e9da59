"""Run every benchmark in bench/ in turn (`make bench`); each prints its device and its ratios to the peers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = (
    ["gradcam.py", "--device", "cpu"],
    ["gradcam.py", "--device", "cuda"],  # prints "no GPU" and exits 0 without one
    ["cooccurrence.py"],
    ["subgroups.py"],
    ["sharded.py"],
    ["importers.py"],
    ["strategies.py"],
    ["rarity.py"],
)


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for bench in BENCHES:
        print(f"\n=== bench/{' '.join(bench)}", flush=True)
        if subprocess.run([sys.executable, str(here / bench[0]), *bench[1:]]).returncode != 0:
            failed.append(bench[0])
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
