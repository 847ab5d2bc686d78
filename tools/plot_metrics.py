#!/usr/bin/env python
"""Plot loss curves and evaluation AP over iterations from a metrics.json.

    python tools/plot_metrics.py output/.../metrics.json -o plot.png
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_backbone.utils.cli import ToolError, ToolInputNotFound, run_tool  # noqa: E402


def plot_metrics(metrics_path: str, out_path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resnet_backbone.utils.events import read_metrics

    if not os.path.isfile(metrics_path):
        raise ToolInputNotFound(f"metrics file '{metrics_path}' does not exist (or is not a file); give the "
                                "metrics.json of a training run (in its OUTPUT_DIR)")
    lines = read_metrics(metrics_path)
    if not lines:
        raise ToolError(f"{metrics_path}: no metrics records (an empty or unreadable metrics.json)")
    loss_keys = sorted({k for m in lines for k in m if k == "total_loss" or k.startswith("loss")})
    ap_keys = sorted({k for m in lines for k in m if "/" in k and k.split("/")[-1] in
                      ("AP", "AP50", "AP75", "hmean", "precision", "recall")})
    fig, axes = plt.subplots(1, 2 if ap_keys else 1, figsize=(12 if ap_keys else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    for k in loss_keys:
        pts = [(m["iteration"], m[k]) for m in lines if isinstance(m.get(k), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=k, linewidth=2.0 if k == "total_loss" else 1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("training losses")
    ax.grid(alpha=0.3)
    if loss_keys:
        ax.legend(fontsize=8)
    if ap_keys:
        ax = axes[0][1]
        for k in ap_keys:
            pts = [(m["iteration"], m[k]) for m in lines if isinstance(m.get(k), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=k)
        ax.set_xlabel("iteration")
        ax.set_ylabel("metric")
        ax.set_title("evaluation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description="Plot losses and AP from metrics.json.")
    p.add_argument("metrics", help="path to metrics.json")
    p.add_argument("-o", "--output", default="", help="output PNG (default: next to metrics.json)")
    args = p.parse_args(argv)
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.metrics)), "metrics.png")
    plot_metrics(args.metrics, out)
    print(f"Wrote {out}")
    return out


if __name__ == "__main__":
    sys.exit(run_tool(main))
