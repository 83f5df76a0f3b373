"""`plgg-fl demo` wall time and peak memory on this machine, as a ratio to the 10-minute target.

    python benchmarks/bench_demo.py [--out /tmp/bench_demo] [--config demo]

Runs the demo in a subprocess (in ``--out``; the cohort is synthesized there on first use, so run it
twice to time the pipeline without synthesis) and reports wall time, the largest resident set of
any process it started (``ru_maxrss`` of the children) and the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 600.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/bench_demo", help="working folder (runs/ goes there)")
    p.add_argument("--config", default="demo")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "plgg_fl.cli", "demo", "--config", args.config], cwd=out,
                         stdout=open(out / "demo.log", "w", encoding="utf-8"), stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    res = {"rc": rc, "wall_s": round(wall, 1), "ratio_to_target": round(wall / TARGET_S, 3),
           "peak_rss_mb": round(peak_mb), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
           "cpus": os.cpu_count(), "log": str(out / "demo.log")}
    print(f"plgg-fl demo: {wall:.0f} s = {res['ratio_to_target']} x the 600 s target; peak RSS {peak_mb:.0f} MB; rc {rc}")
    print(json.dumps(res, indent=2))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
