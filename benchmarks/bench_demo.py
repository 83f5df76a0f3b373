"""`plgg-fl demo` wall time and peak memory on this machine, as a ratio to the 10-minute target.

    python benchmarks/bench_demo.py [--out /tmp/bench_demo] [--config demo]

Runs the demo in a subprocess (in ``--out``; the cohort is synthesized there on first use, so a
fresh ``--out`` times everything a new user waits for, cohort included) and reports wall time, the
peak of the *whole process tree's* resident memory (the demo, the NVFlare simulator and every site
process together, sampled every 0.5 s with psutil), the largest single process (``ru_maxrss`` of
the children) and the machine's load average before and after.
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

import psutil

TARGET_S = 600.0


def tree_rss_mb(root: psutil.Process) -> float:
    """Summed RSS (MB) of ``root`` and all its live descendants."""
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/bench_demo", help="working folder (runs/ goes there)")
    p.add_argument("--config", default="demo")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with open(out / "demo.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "plgg_fl.cli", "demo", "--config", args.config], cwd=out,
                                stdout=log, stderr=subprocess.STDOUT)
        root, peak_tree = psutil.Process(proc.pid), 0.0
        while proc.poll() is None:
            try:
                peak_tree = max(peak_tree, tree_rss_mb(root))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.5)
    rc = proc.returncode
    wall = time.perf_counter() - t0
    peak_one = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    res = {"rc": rc, "wall_s": round(wall, 1), "ratio_to_target": round(wall / TARGET_S, 3),
           "peak_tree_rss_mb": round(peak_tree), "peak_single_process_rss_mb": round(peak_one),
           "loadavg_before": load0, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count(),
           "log": str(out / "demo.log")}
    print(f"plgg-fl demo: {wall:.0f} s = {res['ratio_to_target']} x the 600 s target; peak memory of the whole "
          f"process tree {peak_tree:.0f} MB (largest single process {peak_one:.0f} MB); rc {rc}")
    print(json.dumps(res, indent=2))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
