"""Does the network follow its clicks? The robot user clicks in the global view; after every
click (from the 2nd on) we check whether the pixel under that click now has the click's class,
and how much the mask moved. A network that learned objectness but not the clicks scores low on
"negative clicks obeyed" (issue #4; the browser test of #7 needs it).

    python benchmarks/click_response.py [--weights W ...] [--limit 20] [--clicks 6] [--mode global]

Prints one row per weights file: the share of positive and of negative clicks whose own pixel
ends on their side, the mean probability under them before and after, and mIoU at the last click.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from focuscut_core import InferenceConfig, Session, next_robot_click  # noqa: E402
from focuscut_core.data import data_root, list_samples, load_sample  # noqa: E402
from focuscut_core.metrics import iou  # noqa: E402
from focuscut_core.weights import load_predictor  # noqa: E402


def click_response(predictor, samples, clicks: int, config: InferenceConfig) -> dict:
    """{"pos"|"neg": [(obeyed, p before, p after)], "iou": [IoU at the last click]} over ``samples``
    [(image HxWx3 uint8, gt HxW uint8)]; p is the probability at the click's pixel."""
    out = {"pos": [], "neg": [], "iou": []}
    for image, gt in samples:
        session = Session(predictor, image, config)
        clicked = np.zeros(gt.shape, bool)
        for index in range(clicks):
            click = next_robot_click(session.mask, gt, clicked)
            if click is None:
                break
            clicked[click.pixel()] = True
            before = float(session.probabilities[click.pixel()])
            session.add_click(click)
            after = float(session.probabilities[click.pixel()])
            if index:
                out["pos" if click.is_positive else "neg"].append(((after >= 0.5) == click.is_positive, before, after))
        out["iou"].append(iou(session.mask, gt))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, nargs="*", default=[None], help="default: the shipped file")
    parser.add_argument("--dataset", type=Path, default=data_root() / "grabcut")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--clicks", type=int, default=6)
    parser.add_argument("--mode", default="global")
    args = parser.parse_args(argv)
    samples = [load_sample(s) for s in list_samples(args.dataset)[: args.limit]]
    print(f"{args.dataset.name}, {len(samples)} images, {args.clicks} robot clicks, mode {args.mode}\n")
    print("| weights | positive clicks obeyed | p before -> after | negative clicks obeyed | p before -> after | mIoU@last |")
    print("|---|---|---|---|---|---|")
    for weights in args.weights:
        predictor = load_predictor(weights, "cpu")
        result = click_response(predictor, samples, args.clicks, InferenceConfig(mode=args.mode))
        cells = []
        for kind in ("pos", "neg"):
            rows = np.array(result[kind], float).reshape(-1, 3)
            share = f"{rows[:, 0].mean():.0%} of {len(rows)}" if len(rows) else "none"
            cells += [share, f"{rows[:, 1].mean():.2f} -> {rows[:, 2].mean():.2f}" if len(rows) else ""]
        print(f"| {predictor.version} | " + " | ".join(cells) + f" | {np.mean(result['iou']):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
