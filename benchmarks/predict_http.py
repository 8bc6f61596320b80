"""End-to-end seconds per click over HTTP, as Label Studio sees them, for 1-megapixel images.

    python benchmarks/predict_http.py [--images 124080,106024 | --images 8] [--clicks 6] [--sequences 3]
        [--configs live,redis,memory,off] [--out benchmarks/results/predict_http.json]

A real gunicorn serves the backend; a loopback HTTP server plays Label Studio's /data/upload/.
A robot user (focuscut_core.next_robot_click on a GrabCut ground truth, resized to ~1 MP) clicks
``--clicks`` times per sequence, ``--sequences`` times on each of ``--images`` (GrabCut ids, or N for
the first N ids in sorted order); one server per configuration serves every image; each click is one /predict with every click so far, exactly as
Label Studio sends them. Four configurations:

    live    the default: Redis, and the worker's live sessions (FOCUSCUT_LIVE_SESSIONS=8): the n-th
            click continues the same in-memory session, its resized views and focus crops included
    redis   session states in Redis only (the n-th click restores the stored state's bytes)
    memory  session states in the worker's LRU only
    off     FOCUSCUT_SESSION_CACHE=off: every request replays all its clicks

Each sequence uses a new task id (no session hits across sequences). The table pools every
image's clicks but the first request of each server (model load and cold fetch); the JSON also
has each image's own figures. The server's
X-FocusCut-Stats header splits each request into fetch, network passes, other session work
(click maps, resizing, state (de)serialisation) and RLE encoding. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from focuscut_core import Click, next_robot_click  # noqa: E402
from image_server import image_server, png_bytes  # noqa: E402
from ls_payloads import keypoint, predict_body, task  # noqa: E402
from services import gunicorn_server, redis_server  # noqa: E402
from label_studio_sdk.converter.brush import decode_rle  # noqa: E402

DATA = Path(os.environ.get("FOCUSCUT_DATA_DIR", ROOT.parent / "shared" / "data")) / "grabcut"


def image_ids(spec: str) -> list[str]:
    """'124080,106024' as it is; 'N': the first N GrabCut ids in sorted order."""
    if spec.isdigit():
        return sorted(p.stem for p in (DATA / "masks").glob("*.png"))[:int(spec)]
    return [i for i in spec.split(",") if i]


def one_megapixel(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A GrabCut image and its mask, resized to about 1,000,000 pixels."""
    image = Image.open(DATA / "images" / f"{image_id}.jpg").convert("RGB")
    mask = Image.open(DATA / "masks" / f"{image_id}.png")
    scale = (1_000_000 / (image.width * image.height)) ** 0.5
    size = (round(image.width * scale), round(image.height * scale))
    return np.asarray(image.resize(size, Image.BICUBIC)), np.asarray(mask.resize(size, Image.NEAREST))


def run_sequence(url: str, task_id: int, upload: str, image: np.ndarray, gt: np.ndarray, n_clicks: int) -> list[dict]:
    """One robot-user sequence: [{click, e2e_s, **server stats}] per request."""
    h, w = gt.shape
    pred = np.zeros((h, w), bool)
    clicked = np.zeros((h, w), bool)
    points, rows = [], []
    for k in range(n_clicks):
        click = next_robot_click(pred, gt, clicked) or Click(h / 2, w / 2, True)
        r, c = click.pixel()
        clicked[r, c] = True
        points.append(keypoint((c + 0.5) / w * 100, (r + 0.5) / h * 100, "Cat", click.is_positive, (w, h)))
        start = time.perf_counter()
        resp = requests.post(url + "/predict", json=predict_body([task(task_id, upload)], points), timeout=600)
        e2e = time.perf_counter() - start
        resp.raise_for_status()
        stats = json.loads(resp.headers["X-FocusCut-Stats"])
        region = resp.json()["results"][0]["result"][0]
        pred = decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 127
        rows.append({"click": k + 1, "e2e_s": e2e, **stats})
    return rows


def summarise(rows: list[dict]) -> dict:
    def pct(key, q):
        return float(np.percentile([r.get(key, 0.0) for r in rows], q))

    out = {"requests": len(rows)}
    for key in ("e2e_s", "fetch_s", "net_s", "session_s", "rle_s", "total_s", "steps", "net_calls"):
        out[key] = {"p50": pct(key, 50), "p95": pct(key, 95)}
    other = [r["session_s"] - r["net_s"] for r in rows]
    out["other_session_s"] = {"p50": float(np.percentile(other, 50)), "p95": float(np.percentile(other, 95))}
    http = [r["e2e_s"] - r["total_s"] for r in rows]
    out["http_overhead_s"] = {"p50": float(np.percentile(http, 50)), "p95": float(np.percentile(http, 95))}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="124080", help="GrabCut ids, comma-separated, or N: the first N")
    parser.add_argument("--clicks", type=int, default=6)
    parser.add_argument("--sequences", type=int, default=3)
    parser.add_argument("--threads", default="2", help="OMP/torch threads of the gunicorn worker")
    parser.add_argument("--configs", default="live,redis,memory,off")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict_http.json"))
    args = parser.parse_args()

    images = {i: one_megapixel(i) for i in image_ids(args.images)}
    uploads = {i: f"/data/upload/1/{i}.png" for i in images}
    results = {"images": {i: {"height": im.shape[0], "width": im.shape[1]} for i, (im, _) in images.items()},
               "clicks": args.clicks, "sequences": args.sequences, "machine": platform.platform(),
               "cpu_count": os.cpu_count(), "omp_threads": args.threads, "configs": {}}
    files = {uploads[i]: png_bytes(im) for i, (im, _) in images.items()}
    with image_server(files) as ls, redis_server() as redis_url:
        for n_config, name in enumerate(args.configs.split(",")):
            tmp = Path(tempfile.mkdtemp(prefix="focuscut-bench-"))
            env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": "bench", "OMP_NUM_THREADS": args.threads,
                   "FOCUSCUT_CACHE_DIR": str(tmp / "images"), "FOCUSCUT_MODEL_DIR": str(tmp / "models"),
                   "REDIS_URL": redis_url if name in ("live", "redis") else "",
                   "FOCUSCUT_LIVE_SESSIONS": "8" if name == "live" else "0",
                   "FOCUSCUT_SESSION_CACHE": "off" if name == "off" else "on"}
            rows = []
            with gunicorn_server(env=env, workers=1, threads=1) as g:
                for n_image, (image_id, (image, gt)) in enumerate(images.items()):
                    for s in range(args.sequences):
                        # task ids of their own: no configuration continues another's stored sessions
                        task_id = 100_000 * (n_config + 1) + 100 * n_image + s
                        seq = run_sequence(g.url, task_id, uploads[image_id], image, gt, args.clicks)
                        rows += [{**r, "image": image_id, "sequence": s} for r in seq]
                        print(f"{name}: {image_id} sequence {s + 1}/{args.sequences}: "
                              + " ".join(f"{r['e2e_s']:.2f}" for r in seq) + " s", flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
            cold, warm = rows[0], rows[1:]
            results["configs"][name] = {
                "rows": rows, "all": summarise(warm),
                "first_request": {"e2e_s": cold["e2e_s"], "fetch_s": cold["fetch_s"]},
                "last_click": summarise([r for r in warm if r["click"] == args.clicks]),
                "by_image": {i: summarise([r for r in warm if r["image"] == i]) for i in images}}
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")


def print_table(results: dict):
    sizes = ", ".join(f"{i} {d['height']}x{d['width']}" for i, d in results["images"].items())
    print(f"\n{len(results['images'])} images of ~1 MP ({sizes}), {results['clicks']} clicks x "
          f"{results['sequences']} sequences each, seconds per click (p50 / p95), pooled; the first "
          "request of each server excluded (model load + cold fetch)")
    head = ("cache", "e2e", "fetch", "network", "other session", "rle", "http+json", "steps", f"e2e click {results['clicks']}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    cell = lambda d: f"{d['p50']:.3f} / {d['p95']:.3f}"  # noqa: E731
    for name, res in results["configs"].items():
        a, last = res["all"], res["last_click"]
        print(f"| {name} | {cell(a['e2e_s'])} | {cell(a['fetch_s'])} | {cell(a['net_s'])} | "
              f"{cell(a['other_session_s'])} | {cell(a['rle_s'])} | {cell(a['http_overhead_s'])} | "
              f"{a['steps']['p50']:.0f} / {a['steps']['p95']:.0f} | {cell(last['e2e_s'])} |")
    if len(results["images"]) > 1:
        print("\n| cache | image | e2e | network |\n|---|---|---|---|")
        for name, res in results["configs"].items():
            for image_id, a in res["by_image"].items():
                print(f"| {name} | {image_id} | {cell(a['e2e_s'])} | {cell(a['net_s'])} |")
    for name, res in results["configs"].items():
        f = res["first_request"]
        print(f"first request ({name}): {f['e2e_s']:.2f} s end to end, of which fetch {f['fetch_s']:.3f} s")


if __name__ == "__main__":
    main()
