"""Report figures (PNG, matplotlib Agg): Dice box plots, validation Dice per round, Dice vs tumour volume.

Every function writes one PNG and returns its path; the plotted numbers come from the same per-case
values as the tables (:func:`plgg_fl.report.tables.model_values`).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from plgg_fl.report.tables import model_values  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P"]
DPI = 110


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def dice_boxplot(per_case: dict, sites: list[str], methods: list[str], path: Path) -> Path:
    """One panel per test set; a box per method (median, IQR, whiskers 1.5 IQR) with every case as a dot."""
    fig, axes = plt.subplots(1, len(sites), figsize=(max(4.0, 1.1 * len(methods) + 1.5) * len(sites), 3.8),
                             squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    for ax, site in zip(axes[0], sites):
        ms = [m for m in methods if (site, m) in per_case]
        data = [list(model_values(per_case[(site, m)], "dice").values()) for m in ms]
        if ms:
            ax.boxplot(data, showfliers=False, widths=0.55, medianprops={"color": "black"})
            for i, (m, vals) in enumerate(zip(ms, data)):
                ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(vals)), vals, s=14,
                           color=COLORS[methods.index(m) % len(COLORS)], alpha=0.8, zorder=3)
            ax.set_xticks(range(1, len(ms) + 1), ms, rotation=20)
        ax.set_title(f"{site} (n={len(data[0]) if data else 0})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice (per case)")
    fig.suptitle("Dice per method and test set")
    return _save(fig, path)


def val_dice_rounds(round_metrics: list[dict], path: Path, metric: str = "val_dice") -> Path:
    """One panel per federated stage (training job); a line per site: ``metric`` of the global model the
    site received at the start of each round, measured on the site's validation split."""
    n = max(1, len(round_metrics))
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, grid = plt.subplots(nrow, ncol, figsize=(3.7 * ncol, 2.9 * nrow + 0.6), squeeze=False, sharey=True)
    axes = [list(grid.flat)]
    for ax in axes[0][n:]:
        ax.set_visible(False)
    sites = sorted({s for st in round_metrics for r in st["rounds"] for s in r["sites"]})
    for ax, st in zip(axes[0], round_metrics):
        for j, site in enumerate(sites):
            pts = [(r["round"], r["sites"][site].get(metric, math.nan)) for r in st["rounds"] if site in r["sites"]]
            pts = [(x, y) for x, y in pts if y is not None and not math.isnan(y)]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker=MARKERS[j % len(MARKERS)], color=COLORS[j % len(COLORS)], label=site)
        ax.set_title(f"{st['method']}: {st['job']}", fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.grid(alpha=0.3)
        rounds = [r["round"] for r in st["rounds"]]
        if rounds:
            ax.set_xticks(sorted(set(rounds)))
    axes[0][0].set_ylabel("validation Dice (global model)")
    if not round_metrics:
        axes[0][0].text(0.5, 0.5, "no federated rounds recorded", ha="center", transform=axes[0][0].transAxes)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.suptitle("Validation Dice per round, per site and federated stage")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    return _save(fig, path)


def dice_vs_volume(per_case: dict, sites: list[str], methods: list[str], path: Path) -> Path:
    """Per-case Dice against the reference tumour volume (ml; mean over references), colour = method,
    marker = test set, log x axis."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (site, method), rows in sorted(per_case.items(), key=lambda kv: (methods.index(kv[0][1]) if kv[0][1] in methods else 99)):
        if site not in sites:
            continue
        dice, vol = model_values(rows, "dice"), model_values(rows, "vol_ref_ml")
        keys = sorted(dice)
        ax.scatter([max(vol[k], 1e-3) for k in keys], [dice[k] for k in keys], s=22,
                   color=COLORS[methods.index(method) % len(COLORS)] if method in methods else "grey",
                   marker=MARKERS[sites.index(site) % len(MARKERS)], alpha=0.8, label=f"{method} · {site}")
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500) if lo <= t <= hi]
    if ticks:
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("reference tumour volume (ml, log scale)")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.set_title("Dice against tumour volume")
    return _save(fig, path)


def learning_curve(rows: list[dict], path: Path) -> Path:
    """One panel per test set: median Dice (pooled over seeds) against training cases, a line per method,
    bars spanning the per-seed medians. ``rows``: :func:`plgg_fl.report.study.curve_rows`."""
    sites = list(dict.fromkeys(r["site"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(sites), figsize=(4.6 * len(sites), 3.6), squeeze=False, sharey=True)
    for ax, site in zip(axes[0], sites):
        for i, m in enumerate(methods):
            pts = sorted((r["train_cases"], r["pooled"]["median"], r["spread"]["min"], r["spread"]["max"])
                         for r in rows if r["site"] == site and r["method"] == m)
            if not pts:
                continue
            x, y, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
            err = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
            ax.errorbar(x + (i - (len(methods) - 1) / 2) * 0.15, y, yerr=np.nan_to_num(err), label=m, capsize=3,
                        color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)], lw=1.4, ms=5)
        ax.set_title(site)
        ax.set_xlabel("training cases")
        ax.set_xticks(sorted({r["train_cases"] for r in rows}))
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("median Dice (pooled over seeds)")
    axes[0][-1].legend(loc="lower right", fontsize=9)
    fig.suptitle("Data-limited curve")
    return _save(fig, path)
