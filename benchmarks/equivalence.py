"""Do optimisations change the masks? The robot user clicks with the reference (eager torch,
paper settings); the same clicks are replayed through the candidate; the IoU between the two
masks after every click is reported (the bar: >= 0.99).

    python benchmarks/equivalence.py [--weights W] [--limit 50] [--clicks 20] [--mode fast_pfs]
        [--candidate-runtime onnx] [--candidate-max-focus-points N] [--candidate-focus-reuse 0|TOL]
        [--out benchmarks/results/equivalence.json]

The reference never reuses focus results; the candidate reuses them as ``--candidate-focus-reuse``
says (``InferenceConfig.focus_reuse_tolerance``; default 0: only on identical inputs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from focuscut_core import InferenceConfig, Session, next_robot_click  # noqa: E402
from focuscut_core.data import data_root, list_samples, load_sample  # noqa: E402
from focuscut_core.weights import load_predictor  # noqa: E402


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--dataset", type=Path, default=data_root() / "grabcut")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--mode", default="fast_pfs")
    parser.add_argument("--candidate-runtime", default="onnx")
    parser.add_argument("--candidate-max-focus-points", type=int)
    parser.add_argument("--candidate-focus-reuse", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "equivalence.json")
    args = parser.parse_args(argv)
    reference = load_predictor(args.weights, "cpu", "torch")
    candidate = load_predictor(args.weights, "cpu", args.candidate_runtime)
    ref_config = InferenceConfig(mode=args.mode, focus_reuse_tolerance=None)
    cand_config = InferenceConfig(mode=args.mode, max_focus_points=args.candidate_max_focus_points,
                                  focus_reuse_tolerance=args.candidate_focus_reuse)
    ious, points, re_run = [], 0, 0
    for sample in list_samples(args.dataset)[: args.limit]:
        image, gt = load_sample(sample)
        ref, cand = Session(reference, image, ref_config), Session(candidate, image, cand_config)
        clicked = np.zeros(gt.shape, bool)
        for _ in range(args.clicks):
            click = next_robot_click(ref.mask, gt, clicked)
            if click is None:
                break
            clicked[click.pixel()] = True
            ious.append(mask_iou(ref.add_click(click), cand.add_click(click)))
            points += cand.focus_runs[0]
            re_run += cand.focus_runs[1]
        print(f"{sample.name}: min IoU so far {min(ious):.4f}", file=sys.stderr)
    report = {"weights": reference.version, "mode": args.mode, "candidate_runtime": args.candidate_runtime,
              "candidate_max_focus_points": args.candidate_max_focus_points,
              "candidate_focus_reuse": args.candidate_focus_reuse, "clicks_compared": len(ious),
              "candidate_focus_points": points, "candidate_focus_re_run": re_run,
              "iou_min": min(ious), "iou_mean": float(np.mean(ious)), "iou_p01": float(np.percentile(ious, 1)),
              "share_at_least_0.99": float(np.mean(np.array(ious) >= 0.99))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
