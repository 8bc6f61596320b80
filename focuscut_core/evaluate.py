"""Robot-user evaluation (the RITM / FocusCut protocol), FocusCut modes and peers side by side.

    python -m focuscut_core.evaluate DATASET_DIR [--weights W] [--modes global,focus,pfs,fast_pfs]
        [--peers grabcut] [--max-clicks 20] [--stop-iou 0.9] [--skip K] [--every E] [--limit N] [--view-size PX]
        [--flip none|global|all]
        [--out report.json] [--plot curve.png]
    python -m focuscut_core.evaluate --merge shard1.json shard2.json --out report.json

For every image the robot clicks at the deepest pixel of the largest error (see
``clicks.next_robot_click``) up to ``max_clicks`` times; after each click IoU, boundary IoU and
ASSD are recorded, and the seconds the method took. NoC@85/90 is the first click reaching the
IoU (``max_clicks`` if never), NoF the images that never do.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .clicks import next_robot_click
from .data import list_samples, load_sample
from .metrics import assd, boundary_iou, iou, noc
from .peers import GrabCutSession
from .predictor import Predictor
from .session import FLIPS, MODES, InferenceConfig, Session

THRESHOLDS = (0.85, 0.90)


def robot_run(start, image: np.ndarray, gt: np.ndarray, max_clicks: int = 20, stop_iou: float | None = None) -> dict:
    """Clicks of the robot user on one image. ``start(image)`` returns an object whose
    ``add_click(click)`` returns the HxW bool mask. Returns per-click lists of IoU, BIoU, ASSD
    (``max_clicks`` long), and the seconds and clicks of the clicks actually made. With
    ``stop_iou`` the robot stops clicking once the IoU reaches it (the curves then hold their
    last values: NoC at thresholds up to ``stop_iou`` is unchanged, and it costs far less)."""
    segmenter = start(image)
    pred = np.zeros(gt.shape, bool)
    clicked = np.zeros(gt.shape, bool)
    record = {"iou": [], "biou": [], "assd": [], "seconds": [], "clicks": []}
    for _ in range(max_clicks):
        done = stop_iou is not None and bool(record["iou"]) and record["iou"][-1] >= stop_iou
        click = None if done else next_robot_click(pred, gt, clicked)
        if click is not None:  # else no error is left, or the robot is satisfied: the mask stays
            clicked[click.pixel()] = True
            t0 = time.perf_counter()
            pred = segmenter.add_click(click)
            record["seconds"].append(time.perf_counter() - t0)
            record["clicks"].append(click.to_list())
        record["iou"].append(iou(pred, gt))
        record["biou"].append(boundary_iou(pred, gt))
        record["assd"].append(assd(pred, gt))
    return record


def summarise(records: list[dict], max_clicks: int) -> dict:
    """Dataset figures from per-image records: NoC/NoF at 85 and 90, mean curves, SPC."""
    ious = np.array([r["iou"] for r in records])
    out = {"n": len(records)}
    for thr in THRESHOLDS:
        nocs = [noc(r["iou"], thr, max_clicks) for r in records]
        tag = int(round(thr * 100))
        out[f"noc{tag}"] = float(np.mean(nocs))
        out[f"nof{tag}"] = int(sum(not any(v >= thr for v in r["iou"]) for r in records))
    out["miou_per_click"] = ious.mean(axis=0).round(4).tolist()
    out["biou_per_click"] = np.array([r["biou"] for r in records]).mean(axis=0).round(4).tolist()
    out["assd_per_click"] = np.array([r["assd"] for r in records]).mean(axis=0).round(3).tolist()
    seconds = [s for r in records for s in r["seconds"]]
    out["spc"] = float(np.mean(seconds)) if seconds else 0.0
    return out


def evaluate_samples(predictor: Predictor, samples: list, config: InferenceConfig = InferenceConfig(),
                     max_clicks: int = 20, stop_iou: float | None = None) -> dict:
    """FocusCut on in-memory [(image HxWx3 uint8, mask HxW uint8)] pairs: ``summarise``'s dict
    (``stop_iou`` as in ``robot_run``)."""
    start = lambda image: Session(predictor, image, config)  # noqa: E731
    return summarise([robot_run(start, image, gt, max_clicks, stop_iou) for image, gt in samples], max_clicks)


def methods_for(predictor: Predictor | None, modes, peers, config: InferenceConfig = InferenceConfig()) -> dict:
    """Name -> start(image) for each FocusCut mode (``config`` in that mode) and each peer."""
    methods = {}
    for mode in modes:
        methods[f"focuscut:{mode}"] = lambda image, c=replace(config, mode=mode): Session(predictor, image, c)
    if "grabcut" in peers:
        methods["grabcut"] = GrabCutSession
    return methods


def evaluate_dataset(predictor: Predictor | None, dataset: Path, modes=("fast_pfs",), peers=("grabcut",),
                     max_clicks: int = 20, limit: int | None = None, log=sys.stderr,
                     stop_iou: float | None = None, skip: int = 0, every: int = 1,
                     config: InferenceConfig = InferenceConfig()) -> dict:
    """Every method on every image of ``dataset`` (the shared layout; after the first ``skip``
    objects, every ``every``-th, at most ``limit``), in one run; FocusCut modes use ``config``."""
    samples = list_samples(dataset)[skip:][::every][:limit]
    methods = methods_for(predictor, modes, peers, config)
    records = {name: [] for name in methods}
    for i, sample in enumerate(samples, 1):
        image, gt = load_sample(sample)
        for name, start in methods.items():
            records[name].append(robot_run(start, image, gt, max_clicks, stop_iou) | {"image": sample.name})
        if log:
            log.write(f"\r{i}/{len(samples)} images")
            log.flush()
    if log:
        log.write("\n")
    inference = None
    if modes:  # the settings every mode ran with, view sizes as the network sets them
        inference = {k: v for k, v in asdict(config.sized_for(predictor.input_size)).items() if k != "mode"}
    return report_of(str(dataset), max_clicks, stop_iou, getattr(predictor, "version", None), records, inference)


def report_of(dataset: str, max_clicks: int, stop_iou: float | None, weights: str | None, records: dict,
              inference: dict | None = None) -> dict:
    """The JSON report of per-image records {method: [robot_run record + "image"]}; ``inference``:
    the FocusCut modes' InferenceConfig settings other than the mode."""
    return {
        "dataset": dataset, "max_clicks": max_clicks, "stop_iou": stop_iou, "weights": weights, "inference": inference,
        "methods": {name: summarise(recs, max_clicks) for name, recs in records.items()},
        "per_image": {name: [{"image": r["image"], "iou": [float(v) for v in r["iou"]],  # exact: NoC compares it
                              "biou": [round(v, 4) for v in r["biou"]], "assd": [round(v, 3) for v in r["assd"]],
                              "seconds": [round(v, 4) for v in r["seconds"]]} for r in recs]
                      for name, recs in records.items()},
    }


def merge_reports(reports: list[dict]) -> dict:
    """One report from reports of disjoint parts of a dataset (same methods and settings)."""
    first = reports[0]
    for other in reports[1:]:
        if any(other.get(k) != first.get(k) for k in ("dataset", "max_clicks", "stop_iou", "weights", "inference")) \
                or set(other["per_image"]) != set(first["per_image"]):
            raise ValueError("reports differ in dataset, settings, weights or methods: cannot merge")
    records = {name: [r for rep in reports for r in rep["per_image"][name]] for name in first["per_image"]}
    images = [r["image"] for r in next(iter(records.values()))]
    if len(set(images)) != len(images):
        raise ValueError("reports overlap: an image occurs twice")
    return report_of(first["dataset"], first["max_clicks"], first["stop_iou"], first["weights"], records,
                     first.get("inference"))


def paired_noc_gap(ours: list[dict], theirs: list[dict], threshold: float, max_clicks: int,
                   resamples: int = 10000, seed: int = 0) -> dict:
    """How many fewer clicks ``ours`` needs than ``theirs`` on the same images (per-image records
    in the same order): the mean NoC gap (theirs - ours; > 0: ours is better), its 95 % paired
    bootstrap interval, and the images where ours needs fewer / more / as many clicks."""
    if [r["image"] for r in ours] != [r["image"] for r in theirs]:
        raise ValueError("the two methods' records are not of the same images in the same order")
    gap = np.array([noc(t["iou"], threshold, max_clicks) - noc(o["iou"], threshold, max_clicks)
                    for o, t in zip(ours, theirs)], float)
    means = gap[np.random.default_rng(seed).integers(0, gap.size, (resamples, gap.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"gap": float(gap.mean()), "ci95": [float(low), float(high)], "fewer": int((gap > 0).sum()),
            "more": int((gap < 0).sum()), "same": int((gap == 0).sum())}


def peer_comparisons(report: dict) -> list[str]:
    """One line per (FocusCut mode, peer) pair of a report: the paired NoC@90 gap."""
    names = list(report["per_image"])
    lines = []
    for ours in (n for n in names if n.startswith("focuscut:")):
        for theirs in (n for n in names if not n.startswith("focuscut:")):
            c = paired_noc_gap(report["per_image"][ours], report["per_image"][theirs], 0.90, report["max_clicks"])
            verdict = ("clearly fewer" if c["ci95"][0] > 0 else "clearly more" if c["ci95"][1] < 0
                       else "no clear difference")
            lines.append(f"{ours} vs {theirs}: {c['gap']:+.2f} clicks fewer to 90 % IoU on average (95 % paired "
                         f"bootstrap {c['ci95'][0]:+.2f}..{c['ci95'][1]:+.2f}: {verdict}); fewer on {c['fewer']} "
                         f"images, more on {c['more']}, as many on {c['same']}")
    return lines


def format_table(report: dict) -> str:
    """A Markdown table of a report's methods."""
    head = "| method | NoC@85 | NoC@90 | NoF@85 | NoF@90 | mIoU@1 | mIoU@5 | BIoU@5 | ASSD@5 | s/click |"
    lines = [head, "|" + "---|" * 10]
    for name, m in report["methods"].items():
        at = lambda key, k: m[key][min(k, len(m[key])) - 1]  # noqa: E731
        lines.append(f"| {name} | {m['noc85']:.2f} | {m['noc90']:.2f} | {m['nof85']} | {m['nof90']} | "
                     f"{at('miou_per_click', 1):.3f} | {at('miou_per_click', 5):.3f} | "
                     f"{at('biou_per_click', 5):.3f} | {at('assd_per_click', 5):.2f} | {m['spc']:.3f} |")
    return "\n".join(lines)


def plot_curves(report: dict, path: Path) -> None:
    """mIoU against the number of clicks, one line per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, m in report["methods"].items():
        curve = m["miou_per_click"]
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU")
    ax.set_title(f"{Path(report['dataset']).name}: mIoU vs clicks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m focuscut_core.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, nargs="?", help="a folder with images/ and masks/")
    parser.add_argument("--weights", type=Path, help="weights file (default: the shipped model)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    parser.add_argument("--peers", default="grabcut", help="comma-separated peers (grabcut) or ''")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--limit", type=int, help="only the first N objects (after --skip)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N objects (shards run in parallel)")
    parser.add_argument("--every", type=int, default=1, help="only every N-th object (after --skip)")
    parser.add_argument("--view-size", type=int, help="global view short side and focus view side, px "
                        "(default: the network's training crop size)")
    parser.add_argument("--flip", choices=FLIPS, default=InferenceConfig.flip,
                        help="test-time flip: views also run mirrored, averaged (default: %(default)s)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="REPORT",
                        help="merge reports of disjoint shards into --out instead of evaluating")
    parser.add_argument("--stop-iou", type=float, help="the robot stops once a mask reaches this IoU "
                        "(NoC/NoF at lower thresholds are unchanged; curves hold their last value)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("evaluation.json"))
    parser.add_argument("--plot", type=Path, help="mIoU-vs-clicks PNG (default: beside --out)")
    args = parser.parse_args(argv)
    if args.merge:
        try:
            report = merge_reports([json.loads(p.read_text()) for p in args.merge])
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"--merge: {exc}")
        return _write(report, args.out, args.plot)
    if args.dataset is None or not (args.dataset / "masks").is_dir():
        parser.error(f"{args.dataset} has no masks/ folder")
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    if args.every < 1 or (args.view_size is not None and args.view_size < 32):
        parser.error("--every must be at least 1 and --view-size at least 32 (px)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .weights import load_predictor

    predictor = load_predictor(args.weights, args.device) if modes else None
    peers = [p for p in args.peers.split(",") if p]
    report = evaluate_dataset(predictor, args.dataset, modes, peers, args.max_clicks, args.limit,
                              stop_iou=args.stop_iou, skip=args.skip, every=args.every,
                              config=InferenceConfig(short_side=args.view_size, focus_size=args.view_size,
                                                     flip=args.flip))
    return _write(report, args.out, args.plot)


def _write(report: dict, out: Path, plot: Path | None) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    plot = plot or out.with_suffix(".png")
    plot_curves(report, plot)
    print(format_table(report))
    for line in peer_comparisons(report):
        print(line)
    flip = (report.get("inference") or {}).get("flip", "none")
    print(f"\nweights: {report['weights']}; flip: {flip}; report: {out}; plot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
