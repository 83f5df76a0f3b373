"""What differential privacy and payload quantization cost: stepwise Dice on the demo cohort with no
filter, NVFlare's percentile filter, its SVT filter at several privacy levels, and NVFlare's float16
ModelQuantizer on the sites' results, measured in the same run on the same stage-1 model.

    python benchmarks/bench_dp.py [--out /tmp/bench_dp] [--config demo] [--seed 0] [--only NAME ...]

One pipeline run per setting (method ``stepwise`` only). The first, ``none``, trains stage 1 as the
demo does; every other setting starts stages 2 and 3 from that run's stage-1 model (config field
``pretrained``), with the setting's stage options on both federated stages: a privacy filter on every
training result (:mod:`plgg_fl.fl.privacy`: on the difference from the received global model), or the
``quantize`` option (site -> server payloads). Prints per setting the
median Dice on each test set (per-case Dice; the experts' mean where a case has several), its
difference from ``none`` with a paired Wilcoxon test over the test cases, and wall time; writes
``OUT/dp_cost.json``. The filters' noise is drawn from numpy's global generator, unseeded (as a site
runs them), so repeated runs of a noisy setting differ.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

#: name -> (stage option ``privacy`` or None, what it is). Fixed before any run; never tuned on results.
#: A dict with a ``quantize`` key sets that stage option instead (bench_fl.py measures its bytes).
SETTINGS = {
    "none": (None, "no privacy filter"),
    "percentile_p10": ({"kind": "percentile", "percentile": 10, "gamma": 0.01},
                       "percentile: drop the 10 % smallest |diff|, clip 0.01/step (NVFlare default)"),
    "percentile_p90": ({"kind": "percentile", "percentile": 90, "gamma": 0.01},
                       "percentile: send only the 10 % largest |diff|, clip 0.01/step"),
    "svt_brats18": ({"kind": "svt", "fraction": 0.1, "epsilon": 0.1, "noise_var": 0.1, "gamma": 1e-5, "tau": 1e-6},
                    "SVT at NVFlare's default arguments: 10 % sent, clip 1e-5/step, noise scale 2e-4/step"),
    "svt_f50_nv1": ({"kind": "svt", "fraction": 0.5, "epsilon": 1.0, "noise_var": 1.0, "gamma": 1e-3, "tau": 1e-6},
                    "SVT: 50 % sent, clip 1e-3/step, noise scale 2e-3/step (more noise)"),
    "svt_f50_nv10": ({"kind": "svt", "fraction": 0.5, "epsilon": 1.0, "noise_var": 10.0, "gamma": 1e-3, "tau": 1e-6},
                     "SVT: 50 % sent, clip 1e-3/step, noise scale 2e-4/step (less noise)"),
    # added after the first five had run (none of the SVT settings above cost <= 0.02): weaker still
    "svt_f90_nv100": ({"kind": "svt", "fraction": 0.9, "epsilon": 1.0, "noise_var": 100.0, "gamma": 1e-3, "tau": 1e-6},
                      "SVT: 90 % sent, clip 1e-3/step, noise scale 2e-5/step (least noise)"),
    # issue 16 (payloads), not a privacy setting
    "quantize_fp16": ({"quantize": "float16"}, "no privacy filter; sites send float16 (NVFlare ModelQuantizer)"),
}


def run_setting(name: str, privacy, base: dict, out: Path, seed: int, pretrained: Path | None) -> float:
    from plgg_fl.pipeline.config import config_from_dict
    from plgg_fl.pipeline.run import Pipeline

    data = json.loads(json.dumps(base))
    data.update(name=name, methods=["stepwise"])
    data["train"] = {**(data.get("train") or {}), "seed": seed}
    if pretrained is not None:
        data["pretrained"] = str(pretrained)
    option = dict(privacy) if privacy and "quantize" in privacy else {"privacy": privacy}
    for stage in ("finetune", "decoder"):
        data["stages"][stage] = {**data["stages"][stage], **option}
    cfg = config_from_dict(data, f"bench_dp ({name})", name)
    t = time.perf_counter()
    Pipeline(cfg, out_root=out, printer=lambda s: print(f"  [{name}] {s}", flush=True), overwrite=True).run()
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/bench_dp")
    p.add_argument("--config", default="demo")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0, as the demo)")
    p.add_argument("--only", nargs="+", choices=list(SETTINGS), help="run these settings (and none) only")
    args = p.parse_args(argv)
    from plgg_fl.engine.metrics import describe, paired_wilcoxon
    from plgg_fl.pipeline.cli import find_config
    from plgg_fl.pipeline.config import read_yaml
    from plgg_fl.report.collect import load_run
    from plgg_fl.report.tables import model_values

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = read_yaml(find_config(args.config))
    base["cohort"] = {**base["cohort"], "dir": str(Path(base["cohort"]["dir"]).resolve())}
    names = ["none", *[n for n in SETTINGS if n != "none" and (not args.only or n in args.only)]]
    load0, t0, walls = os.getloadavg(), time.perf_counter(), {}
    for name in names:
        privacy = SETTINGS[name][0]
        stage1 = out / "none" / "checkpoints" / "stage1_brats_pretrain.pt"
        print(f"[bench_dp] {name}: {SETTINGS[name][1]}", flush=True)
        walls[name] = run_setting(name, privacy, base, out, args.seed, None if name == "none" else stage1)
    results = {}
    dice = {n: load_run(out / n) for n in names}
    sites = dice["none"].sites
    for name in names:
        row = {"privacy": SETTINGS[name][0], "what": SETTINGS[name][1], "wall_s": round(walls[name], 1)}
        for site in sites:
            vals = model_values(dice[name].per_case[(site, "stepwise")], "dice")
            ref = model_values(dice["none"].per_case[(site, "stepwise")], "dice")
            d = describe(vals.values())
            row[site] = {"median": d["median"], "q1": d["q1"], "q3": d["q3"], "n": d["n"],
                         "delta_median": d["median"] - describe(ref.values())["median"],
                         "wilcoxon_vs_none": paired_wilcoxon(vals, ref) if name != "none" else None}
        results[name] = row
    res = {"config": args.config, "seed": args.seed, "cpus": os.cpu_count(), "loadavg_before": load0,
           "loadavg_after": os.getloadavg(), "wall_s": round(time.perf_counter() - t0, 1), "settings": results}
    (out / "dp_cost.json").write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
    print(f"\nstepwise median Dice per test set, training seed {args.seed}, config {args.config} "
          f"({os.cpu_count()} CPUs; load {load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after)")
    head = f"{'setting':16s}" + "".join(f"{s:>12s} {'delta':>7s} {'p':>6s}" for s in sites) + f"{'wall s':>8s}"
    print(head + "\n" + "-" * len(head))
    for name, row in results.items():
        cells = ""
        for s in sites:
            w = row[s]["wilcoxon_vs_none"]
            pv = "" if w is None else f"{w['p_value']:.3f}"
            cells += f"{row[s]['median']:12.3f} {row[s]['delta_median']:+7.3f} {pv:>6s}"
        print(f"{name:16s}{cells}{row['wall_s']:8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
