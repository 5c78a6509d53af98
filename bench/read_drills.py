"""How long reading the example drill files takes in a fresh interpreter, and which cloud SDKs and
drivers it loads (issue 24: each family's schema is pure, so reading a drill loads none).

    python bench/read_drills.py [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = """
import glob, sys
from drdrill.providers.spec import load_spec
specs = [load_spec(f) for f in sorted(glob.glob({drills!r}))]
print(len(specs), len([m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'azure', 'google', 'psycopg')]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    code = CODE.format(drills=str(ROOT / "drills" / "*.yaml"))
    for run in range(args.runs):
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        print(f"run {run + 1}: {out[0]} drill files read in {time.monotonic() - started:.2f} s; SDK/driver modules loaded: {out[1]}")


if __name__ == "__main__":
    main()
