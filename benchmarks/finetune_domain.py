"""Does learning from a customer's corrections help? One image domain stands in for a Label
Studio project: N of its images, with every object mask as a brush annotation, are served as the
project's Label Studio 1.23 export on loopback; the real fit job runs in a real ``rq worker``
(real Redis): it holds out one task in four, fine-tunes on the rest, and measures the robot user's
NoC before and after on the held-out tasks.

    python benchmarks/finetune_domain.py --domain /work/shared/data/train/pennfudan \
        --train 32 --max-seconds 180 --clicks 8 [--holdout K] [--weights W] [--out result.json]

Prints and writes: N (annotations, masks), the job's wall time and steps, and NoC@85/90 and mIoU
per click before and after on the job's held-out tasks (one in four of the project, never trained
on); with --holdout K also on K further images of the domain outside the project.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the loopback Label Studio export server and the real services

from ls_export_server import LabelStudioExport, brush_result, export_server, make_task, png_bytes  # noqa: E402
from services import launched, redis_server  # noqa: E402

from focuscut_core import InferenceConfig, load_predictor  # noqa: E402
from focuscut_core.data import list_samples, load_sample  # noqa: E402
from focuscut_core.evaluate import evaluate_samples  # noqa: E402

PROJECT = 42
TOKEN = "benchmark-token-0001"


def by_image(domain: Path) -> dict[str, list]:
    """Image id -> its object samples (one mask file each)."""
    groups: dict[str, list] = {}
    for sample in list_samples(domain):
        groups.setdefault(sample.image.stem, []).append(sample)
    return groups


def project_export(images: list[list]) -> LabelStudioExport:
    """The project: one task per image, one brush region per object mask."""
    state = LabelStudioExport(TOKEN)
    for task_id, samples in enumerate(images, 1):
        image, _ = load_sample(samples[0])
        name = f"{task_id:08x}-{samples[0].image.stem}.png"
        state.files[f"/data/upload/{PROJECT}/{name}"] = png_bytes(image)
        regions = [brush_result(np.where(load_sample(s)[1] == 255, 255, 0).astype(np.uint8), region_id=f"r{k}")
                   for k, s in enumerate(samples)]
        state.tasks.setdefault(PROJECT, []).append(make_task(task_id, PROJECT, name, regions))
    return state


def evaluate(weights: Path | None, pairs: list, mode: str, clicks: int) -> dict:
    predictor = load_predictor(weights, device="cpu")
    t0 = time.monotonic()
    summary = evaluate_samples(predictor, pairs, InferenceConfig(mode=mode), max_clicks=clicks)
    return {"version": predictor.version, "noc85": summary["noc85"], "noc90": summary["noc90"],
            "nof90": summary["nof90"], "n": summary["n"], "seconds": round(time.monotonic() - t0, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domain", type=Path, default=Path("/work/shared/data/train/pennfudan"))
    parser.add_argument("--train", type=int, default=32, help="images annotated in the project (N)")
    parser.add_argument("--holdout", type=int, default=0,
                        help="extra images outside the project evaluated before/after (0: only the job's own "
                             "held-out tasks, one in four of the project)")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="fine-tuning budget of the job")
    parser.add_argument("--weights", type=Path, default=None, help="default weights (else the shipped ones)")
    parser.add_argument("--eval-mode", default="global", help="robot-user evaluation mode (global is cheapest)")
    parser.add_argument("--clicks", type=int, default=20, help="robot clicks per mask (the NoC cap)")
    parser.add_argument("--job-eval-samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    groups = by_image(args.domain)
    ids = sorted(groups)
    np.random.default_rng(args.seed).shuffle(ids)
    project_images = [groups[i] for i in ids[:args.train]]
    held_pairs = [load_sample(groups[i][0]) for i in ids[args.train:args.train + args.holdout]]
    weights = args.weights or (Path(os.environ["FOCUSCUT_WEIGHTS"]) if os.environ.get("FOCUSCUT_WEIGHTS") else None)

    from backend import fit_queue, settings as settings_module
    from rq.job import Job

    model_dir = Path(tempfile.mkdtemp(prefix="focuscut-bench-"))
    state = project_export(project_images)
    with redis_server() as redis_url, export_server(state) as ls_url:
        env = {"REDIS_URL": redis_url, "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": TOKEN,
               "FOCUSCUT_MODEL_DIR": str(model_dir), "FOCUSCUT_CACHE_DIR": str(model_dir / ".cache"),
               "FOCUSCUT_DEVICE": "cpu", "FOCUSCUT_TRAIN_MAX_STEPS": "100000",
               "FOCUSCUT_TRAIN_MAX_SECONDS": str(args.max_seconds), "FOCUSCUT_TRAIN_EVAL_MODE": args.eval_mode,
               "FOCUSCUT_TRAIN_EVAL_SAMPLES": str(args.job_eval_samples), "FOCUSCUT_TRAIN_EVAL_CLICKS": str(args.clicks),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        if weights:
            env["FOCUSCUT_WEIGHTS"] = str(weights)
        os.environ.update(env)
        conn = fit_queue.connect(redis_url)
        job_id = fit_queue.request_training(conn, str(PROJECT), "START_TRAINING", settings_module.load())["job_id"]
        t0 = time.monotonic()
        with launched("worker", "--burst", env=env) as worker:
            worker.proc.wait(3600)
        wall = time.monotonic() - t0
        job = Job.fetch(job_id, connection=conn)
        status = fit_queue.job_status(job)
    if status["state"] != "finished":
        print(json.dumps(status, indent=1, default=str), worker.log()[-3000:], sep="\n")
        return 1
    result = status["result"]
    job_seconds = (job.ended_at - job.started_at).total_seconds()
    print(f"job {job_id}: {result}", flush=True)
    new_weights = model_dir / str(PROJECT) / "versions" / f"{result['version']}.pt" if result["published"] else None
    before = evaluate(weights, held_pairs, args.eval_mode, args.clicks) if held_pairs else None
    after = evaluate(new_weights, held_pairs, args.eval_mode, args.clicks) if held_pairs and new_weights else None
    report = {
        "domain": args.domain.name, "weights": str(weights or "shipped default"),
        "annotations": len(project_images), "masks": sum(len(g) for g in project_images),
        "extra_holdout_images": len(held_pairs),
        "eval_mode": args.eval_mode, "max_clicks": args.clicks,
        "job": {"id": job_id, "seconds": round(job_seconds, 1), "wall_seconds_with_worker_start": round(wall, 1),
                "steps": result.get("steps"), "train_seconds": result.get("train_seconds"),
                "published": result["published"], "version": result.get("version"),
                "skipped": result.get("skipped"), "samples_train": result.get("samples_train"),
                "holdout_masks": result.get("samples_holdout"),
                **{k: result.get(k) for k in ("noc85_before", "noc85_after", "noc90_before", "noc90_after",
                                              "miou_per_click_before", "miou_per_click_after")}},
        "extra_holdout_before": before, "extra_holdout_after": after, "cpu_threads": env["OMP_NUM_THREADS"],
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
