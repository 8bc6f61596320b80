"""Do optimisations change the masks? The robot user clicks with the reference (eager torch,
paper settings); the same clicks are replayed through the candidate; the IoU between the two
masks after every click is reported (the bar: >= 0.99).

    python benchmarks/equivalence.py [--weights W] [--limit 50] [--clicks 20] [--mode fast_pfs]
        [--candidate-runtime onnx] [--candidate-max-focus-points N] [--candidate-focus-reuse 0|TOL]
        [--reference-checkout DIR] [--megapixels MP] [--out benchmarks/results/equivalence.json]

The reference never reuses focus results; the candidate reuses them as ``--candidate-focus-reuse``
says (``InferenceConfig.focus_reuse_tolerance``; default 0: only on identical inputs).

``--reference-checkout DIR`` makes the reference another checkout of the project (say a
``git worktree`` of the commit before a change), run in a subprocess with DIR's ``focuscut_core``
and the candidate's runtime: the comparison is then of code, not of runtimes. ``--megapixels``
resizes every image (and mask) to that size first, for changes that show on large images.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from focuscut_core import Click, InferenceConfig, Session, next_robot_click  # noqa: E402
from focuscut_core.data import data_root, list_samples, load_sample  # noqa: E402
from focuscut_core.weights import DEFAULT_WEIGHTS, load_predictor  # noqa: E402
from speed import resize_to_megapixels  # noqa: E402


# The reference checkout's robot run, in a process of its own: its focuscut_core is imported
# first, so this file's imports below find that package already loaded.
REFERENCE_RUN = """
import json, sys
args = json.loads(sys.argv[1])
sys.path.insert(0, args["checkout"])
import focuscut_core
print("reference:", focuscut_core.__file__, file=sys.stderr)
sys.path.insert(0, args["benchmarks"])
from equivalence import record_reference
record_reference(args)
"""


def reference_checkout_runs(checkout: Path, pairs: list, weights: Path | None, runtime: str, mode: str,
                            clicks: int) -> list:
    """[(clicks, masks)] of the robot user on each (image, gt) with ``checkout``'s code and this
    checkout's weights file (``weights`` or the default)."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **{f"{k}{i}": a for i, pair in enumerate(pairs) for k, a in zip(("image", "gt"), pair)})
        args = {"checkout": str(checkout.resolve()), "benchmarks": str(Path(__file__).resolve().parent),
                "weights": str(weights or DEFAULT_WEIGHTS), "runtime": runtime, "mode": mode, "clicks": clicks,
                "inputs": str(inputs), "out": str(Path(tmp) / "out.npz")}
        subprocess.run([sys.executable, "-c", REFERENCE_RUN, json.dumps(args)], check=True, cwd=tmp)
        out = np.load(args["out"])
        return [(out[f"clicks{i}"], out[f"masks{i}"]) for i in range(len(pairs))]


def record_reference(args: dict) -> None:
    """The reference side of ``reference_checkout_runs`` (run by REFERENCE_RUN)."""
    predictor = load_predictor(args["weights"], "cpu", args["runtime"])
    config = InferenceConfig(mode=args["mode"], focus_reuse_tolerance=None)
    inputs, out = np.load(args["inputs"]), {}
    for i in range(len(inputs.files) // 2):
        gt = inputs[f"gt{i}"]
        clicks, masks = robot_run(predictor, config, inputs[f"image{i}"], gt, args["clicks"])
        out[f"clicks{i}"] = np.array(clicks, float).reshape(-1, 3)
        out[f"masks{i}"] = np.array(masks, bool).reshape(-1, *gt.shape)
    np.savez_compressed(args["out"], **out)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def robot_run(predictor, config: InferenceConfig, image: np.ndarray, gt: np.ndarray, n_clicks: int):
    """(clicks as [y, x, positive] rows, the mask after each) of the robot user on one image."""
    session, clicked, clicks, masks = Session(predictor, image, config), np.zeros(gt.shape, bool), [], []
    for _ in range(n_clicks):
        click = next_robot_click(session.mask, gt, clicked)
        if click is None:
            break
        click = Click.from_list(click.to_list())  # plain floats, as replayed (older Clicks kept numpy's)
        clicked[click.pixel()] = True
        masks.append(session.add_click(click))
        clicks.append(click.to_list())
    return clicks, masks


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
    parser.add_argument("--reference-checkout", type=Path, help="another checkout whose code is the reference")
    parser.add_argument("--megapixels", type=float, help="resize every image to about this size first")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "equivalence.json")
    args = parser.parse_args(argv)
    candidate = load_predictor(args.weights, "cpu", args.candidate_runtime)
    cand_config = InferenceConfig(mode=args.mode, max_focus_points=args.candidate_max_focus_points,
                                  focus_reuse_tolerance=args.candidate_focus_reuse)
    samples = list_samples(args.dataset)[: args.limit]
    pairs = [resize_to_megapixels(*load_sample(s), args.megapixels) if args.megapixels else load_sample(s)
             for s in samples]
    if args.reference_checkout:
        runs = reference_checkout_runs(args.reference_checkout, pairs, args.weights, args.candidate_runtime,
                                       args.mode, args.clicks)
    else:
        reference = load_predictor(args.weights, "cpu", "torch")
        runs = [robot_run(reference, InferenceConfig(mode=args.mode, focus_reuse_tolerance=None), *pair, args.clicks)
                for pair in pairs]
    ious, points, re_run = [], 0, 0
    for sample, (image, _), (clicks, masks) in zip(samples, pairs, runs):
        cand = Session(candidate, image, cand_config)
        for click, mask in zip(clicks, masks):
            ious.append(mask_iou(mask, cand.add_click(Click.from_list(list(click)))))
            points += cand.focus_runs[0]
            re_run += cand.focus_runs[1]
        print(f"{sample.name}: min IoU so far {min(ious):.4f}", file=sys.stderr)
    report = {"weights": candidate.version, "mode": args.mode, "candidate_runtime": args.candidate_runtime,
              "reference": str(args.reference_checkout or "eager torch, this checkout"), "megapixels": args.megapixels,
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
