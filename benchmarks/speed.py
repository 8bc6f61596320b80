"""Seconds per click and peak memory of every inference mode at several image sizes, with the
OpenCV GrabCut peer on the same robot clicks for a side-by-side ratio.

    python benchmarks/speed.py [--weights W] [--sizes 0.3,1,4,12] [--modes global,focus,pfs,fast_pfs]
        [--images 3] [--clicks 6] [--grabcut-max-mp 4] [--focus-reuse 0|off|TOL] [--flip none|global|all]
        [--device cpu]
        [--out benchmarks/results/speed-cpu.json]

Images are GrabCut images (and their masks) resized to each size in megapixels; a robot user
(``next_robot_click``) makes the clicks. The first click of each sequence includes the one-off
whole-image pass and is reported apart ("first"); "p50" and "p95" are over the later clicks.
Peak memory: the process's resident set (sampled every 5 ms) during each mode, minus the
resident set before it; on a GPU also torch's peak allocated memory. Prints a Markdown table
and writes JSON. Run it on a quiet machine: other busy processes distort every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from focuscut_core import FLIPS, MODES, InferenceConfig, Session, next_robot_click  # noqa: E402
from focuscut_core.data import data_root, list_samples, load_sample  # noqa: E402
from focuscut_core.peers import GrabCutSession  # noqa: E402
from focuscut_core.weights import load_predictor  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set in a thread; ``peak`` is the largest seen since start."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def resized_pair(sample, megapixels: float) -> tuple[np.ndarray, np.ndarray]:
    return resize_to_megapixels(*load_sample(sample), megapixels)


def resize_to_megapixels(image: np.ndarray, gt: np.ndarray, megapixels: float) -> tuple[np.ndarray, np.ndarray]:
    """The image (area or cubic) and its mask (nearest) resized to about ``megapixels``."""
    scale = (megapixels * 1e6 / (gt.shape[0] * gt.shape[1])) ** 0.5
    size = (max(1, round(gt.shape[1] * scale)), max(1, round(gt.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, size, interpolation=interpolation), cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST)


def robot_sequence(start, image, gt, n_clicks: int, clicks=None, focus_runs=None) -> tuple[list, list[float]]:
    """Times of ``n_clicks`` robot clicks (or of the given ``clicks``) on a new segmenter; each
    click's (focus points, re-run) is appended to ``focus_runs`` when given."""
    segmenter = start(image)
    mask = np.zeros(gt.shape, bool)
    clicked = np.zeros(gt.shape, bool)
    made, times = [], []
    for k in range(n_clicks if clicks is None else len(clicks)):
        click = next_robot_click(mask, gt, clicked) if clicks is None else clicks[k]
        if click is None:
            break
        clicked[click.pixel()] = True
        t0 = time.perf_counter()
        mask = segmenter.add_click(click)
        times.append(time.perf_counter() - t0)
        made.append(click)
        if focus_runs is not None:
            focus_runs.append(segmenter.focus_runs)
    return made, times


def stats(times: list[float]) -> dict:
    later = [t for seq in times for t in seq[1:]]
    firsts = [seq[0] for seq in times if seq]
    return {
        "first": float(np.mean(firsts)) if firsts else None,
        "p50": float(np.percentile(later, 50)) if later else None,
        "p95": float(np.percentile(later, 95)) if later else None,
        "mean": float(np.mean(later)) if later else None,
        "clicks": len(later) + len(firsts),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--sizes", default="0.3,1,4,12", help="megapixels, comma-separated")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=6)
    parser.add_argument("--grabcut-max-mp", type=float, default=4.0, help="skip the peer above this size")
    parser.add_argument("--max-focus-points", type=int, help="InferenceConfig.max_focus_points")
    parser.add_argument("--focus-reuse", default="0",
                        help="InferenceConfig.focus_reuse_tolerance: a share of changed crop pixels, or off")
    parser.add_argument("--flip", choices=FLIPS, default=InferenceConfig.flip, help="InferenceConfig.flip")
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed-cpu.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = load_predictor(args.weights, args.device)
    cuda = predictor.device.type == "cuda"
    samples = list_samples(data_root() / "grabcut")[: args.images]
    rows = []
    for mp in [float(s) for s in args.sizes.split(",")]:
        pairs = [resized_pair(s, mp) for s in samples]
        clicks_by_image = {}
        for mode in args.modes.split(","):
            config = InferenceConfig(mode=mode, max_focus_points=args.max_focus_points, flip=args.flip,
                                     focus_reuse_tolerance=None if args.focus_reuse == "off" else float(args.focus_reuse))
            start = lambda image, c=config: Session(predictor, image, c)  # noqa: E731
            robot_sequence(start, *pairs[0], 2)  # warm-up
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times, runs = [], []
            with PeakRSS() as rss:
                for i, (image, gt) in enumerate(pairs):
                    made, t = robot_sequence(start, image, gt, args.clicks, focus_runs=runs)
                    times.append(t)
                    clicks_by_image.setdefault(i, made)
            row = {"mp": mp, "size": list(pairs[0][1].shape), "method": f"focuscut:{mode}", **stats(times),
                   "rss_peak_mb": (rss.peak - rss.base) / 2**20,
                   "focus_points": int(sum(n for n, _ in runs)), "focus_re_run": int(sum(k for _, k in runs))}
            if cuda:
                row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            rows.append(row)
            print(f"{mp} MP {mode}: p50 {row['p50']:.3f} s", file=sys.stderr)
        if mp <= args.grabcut_max_mp:
            times = []
            with PeakRSS() as rss:
                for i, (image, gt) in enumerate(pairs):
                    times.append(robot_sequence(GrabCutSession, image, gt, 0, clicks_by_image[i])[1])
            rows.append({"mp": mp, "size": list(pairs[0][1].shape), "method": "grabcut", **stats(times),
                         "rss_peak_mb": (rss.peak - rss.base) / 2**20})
    fast = {r["mp"]: r["p50"] for r in rows if r["method"] == "focuscut:fast_pfs"}
    for r in rows:
        r["vs_fast_pfs"] = r["p50"] / fast[r["mp"]] if fast.get(r["mp"]) and r["p50"] else None
    device = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    report = {"device": device, "weights": predictor.version, "torch": torch.__version__,
              "images": args.images, "clicks": args.clicks, "focus_reuse": args.focus_reuse, "flip": args.flip,
              "max_focus_points": args.max_focus_points, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"device: {device}; weights: {predictor.version}\n")
    print(f"focus reuse: {args.focus_reuse}; max focus points: {args.max_focus_points or 'all'}; flip: {args.flip}\n")
    print("| MP | method | first click s | p50 s | p95 s | peak RSS MB | p50 / fast PFS | focus crops re-run |"
          + (" GPU MB |" if cuda else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in rows:
        ratio = f"{r['vs_fast_pfs']:.2f}" if r["vs_fast_pfs"] else "-"
        rerun = f"{r['focus_re_run']}/{r['focus_points']}" if r.get("focus_points") else "-"
        gpu = f" {r['gpu_peak_mb']:.0f} |" if cuda and "gpu_peak_mb" in r else (" - |" if cuda else "")
        print(f"| {r['mp']} | {r['method']} | {r['first']:.3f} | {r['p50']:.3f} | {r['p95']:.3f} | "
              f"{r['rss_peak_mb']:.0f} | {ratio} | {rerun} |{gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
