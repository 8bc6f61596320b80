"""The robot-user evaluator end to end on GrabCut images, with a random-weight model and the GrabCut peer."""
import json

import numpy as np
import pytest

from core_fixtures import blob_image, tiny_predictor
from focuscut_core.data import data_root, list_samples, load_sample
from focuscut_core.evaluate import (evaluate_dataset, evaluate_samples, main, paired_noc_gap, peer_comparisons,
                                    robot_run, summarise)
from focuscut_core.network import FocusCutNet, NetworkSpec
from focuscut_core.peers import GrabCutSession
from focuscut_core.session import InferenceConfig
from focuscut_core.weights import save_weights

GRABCUT = data_root() / "grabcut"


class Oracle:
    """A segmenter that answers the ground truth after its 2nd click (to check the bookkeeping)."""

    def __init__(self, gt):
        self.gt, self.n = gt, 0

    def add_click(self, click):
        self.n += 1
        return self.gt == 255 if self.n >= 2 else np.zeros(self.gt.shape, bool)


def test_robot_run_and_summary_bookkeeping():
    _, gt = blob_image()
    record = robot_run(lambda image: Oracle(gt), np.zeros(gt.shape + (3,), np.uint8), gt, max_clicks=5)
    assert record["iou"] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert len(record["clicks"]) == 2  # no error left after click 2: the robot stops clicking
    summary = summarise([record, dict(record, iou=[0.0] * 5)], max_clicks=5)
    assert summary["noc90"] == pytest.approx((2 + 5) / 2) and summary["nof90"] == 1
    assert summary["miou_per_click"][:2] == [0.0, 0.5]


class Improving:
    """Half the object at click 1, then the object less its bottom 3 rows (IoU >= 0.9, never 1)."""

    def __init__(self, gt):
        self.gt, self.n = gt, 0

    def add_click(self, click):
        self.n += 1
        mask = (self.gt == 255).copy()
        rows = np.flatnonzero(mask.any(axis=1))
        if self.n == 1:
            mask[: (rows[0] + rows[-1]) // 2] = False
        else:
            mask[rows[-1] - 2:] = False
        return mask


def test_stop_iou_stops_clicking_without_changing_noc():
    image, gt = blob_image()
    full = robot_run(lambda im: Improving(gt), image, gt, max_clicks=6)
    stopped = robot_run(lambda im: Improving(gt), image, gt, max_clicks=6, stop_iou=0.9)
    assert len(full["clicks"]) == 6 and len(stopped["clicks"]) == 2
    assert stopped["iou"] == full["iou"] and 0.9 <= full["iou"][1] < 1
    assert summarise([stopped], 6)["noc90"] == summarise([full], 6)["noc90"] == 2


def test_grabcut_peer_segments_a_clear_blob():
    image, gt = blob_image(60, 80)
    from focuscut_core.clicks import Click
    from focuscut_core.metrics import iou

    mask = GrabCutSession(image).add_click(Click(30.5, 40.5, True))
    assert iou(mask, gt) > 0.8


def test_evaluate_samples_shape():
    image, gt = blob_image()
    summary = evaluate_samples(tiny_predictor(), [(image, gt)], InferenceConfig(short_side=96, focus_size=96), max_clicks=3)
    assert summary["n"] == 1 and 1 <= summary["noc90"] <= 3 and len(summary["miou_per_click"]) == 3


@pytest.mark.skipif(not GRABCUT.is_dir(), reason="shared GrabCut data not present")
def test_evaluate_cli_on_grabcut_images_with_random_weights(tmp_path, capsys):
    weights = save_weights(tmp_path / "random.pt", FocusCutNet(NetworkSpec()), {"version": "random-test"})
    out = tmp_path / "report.json"
    code = main([str(GRABCUT), "--weights", str(weights), "--modes", "global,fast_pfs", "--peers", "grabcut",
                 "--max-clicks", "3", "--limit", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"focuscut:global", "focuscut:fast_pfs", "grabcut"}
    for m in report["methods"].values():
        assert m["n"] == 2 and 1 <= m["noc90"] <= 3 and len(m["miou_per_click"]) == 3
        assert all(0 <= v <= 1 for v in m["miou_per_click"]) and m["spc"] > 0
    assert report["weights"] == "random-test"
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "| grabcut |" in table and "NoC@90" in table


@pytest.mark.skipif(not GRABCUT.is_dir(), reason="shared GrabCut data not present")
def test_evaluate_dataset_gives_identical_results_twice():
    report_a = evaluate_dataset(tiny_predictor(), GRABCUT, modes=("global",), peers=(), max_clicks=2, limit=1, log=None)
    report_b = evaluate_dataset(tiny_predictor(), GRABCUT, modes=("global",), peers=(), max_clicks=2, limit=1, log=None)
    iou = lambda report: {m: [r["iou"] for r in recs] for m, recs in report["per_image"].items()}  # noqa: E731
    assert iou(report_a) == iou(report_b)


@pytest.mark.skipif(not GRABCUT.is_dir(), reason="shared GrabCut data not present")
def test_shards_merge_into_the_report_of_one_run(tmp_path):
    run = dict(modes=("global",), peers=(), max_clicks=2, log=None)
    whole = evaluate_dataset(tiny_predictor(), GRABCUT, limit=2, **run)
    shards = [evaluate_dataset(tiny_predictor(), GRABCUT, skip=k, limit=1, **run) for k in (0, 1)]
    for k, shard in enumerate(shards):
        (tmp_path / f"{k}.json").write_text(json.dumps(shard))
    assert main(["--merge", str(tmp_path / "0.json"), str(tmp_path / "1.json"), "--out", str(tmp_path / "m.json")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert [r["image"] for r in merged["per_image"]["focuscut:global"]] == \
        [r["image"] for r in whole["per_image"]["focuscut:global"]]
    for key in ("noc85", "noc90", "nof90", "miou_per_click"):
        assert merged["methods"]["focuscut:global"][key] == whole["methods"]["focuscut:global"][key]
    with pytest.raises(SystemExit):  # the same shard twice overlaps
        main(["--merge", str(tmp_path / "0.json"), str(tmp_path / "0.json"), "--out", str(tmp_path / "x.json")])


@pytest.mark.skipif(not GRABCUT.is_dir(), reason="shared GrabCut data not present")
def test_grabcut_set_loads_with_ignore_band():
    samples = list_samples(GRABCUT)
    assert len(samples) == 50
    values = set()
    for s in samples[:10]:
        image, gt = load_sample(s)
        assert image.shape[:2] == gt.shape
        values |= set(np.unique(gt).tolist())
    assert values <= {0, 128, 255} and {0, 255} <= values


def _records(nocs):
    """Per-image records whose IoU first reaches 0.95 at click ``n`` (20: never)."""
    return [{"image": str(i), "iou": [0.5] * (n - 1) + [0.95] * (20 - n + 1) if n < 20 else [0.5] * 20}
            for i, n in enumerate(nocs)]


def test_paired_noc_gap_counts_images_and_brackets_the_mean():
    gap = paired_noc_gap(_records([1, 1, 1, 3]), _records([2, 3, 4, 3]), 0.9, 20)
    assert gap["gap"] == pytest.approx(1.5)
    assert (gap["fewer"], gap["more"], gap["same"]) == (3, 0, 1)
    assert 0.0 <= gap["ci95"][0] <= 1.5 <= gap["ci95"][1] <= 3.0
    with pytest.raises(ValueError, match="same images"):
        paired_noc_gap(_records([1, 2]), _records([1, 2])[::-1], 0.9, 20)


def test_peer_comparisons_say_whether_the_gap_is_clear():
    clear = {"max_clicks": 20, "per_image": {"focuscut:global": _records([1] * 10), "grabcut": _records([5] * 10)}}
    mixed = {"max_clicks": 20, "per_image": {"focuscut:global": _records([1, 9] * 5), "grabcut": _records([5] * 10)}}
    line, = peer_comparisons(clear)
    assert line.startswith("focuscut:global vs grabcut: +4.00 clicks fewer") and "clearly fewer" in line
    assert "fewer on 10 images, more on 0" in line
    assert "no clear difference" in peer_comparisons(mixed)[0]


def test_cli_takes_every_nth_object_at_a_chosen_view_size(tmp_path):
    weights = save_weights(tmp_path / "random.pt", FocusCutNet(NetworkSpec()), {"version": "random-test"})
    out = tmp_path / "r.json"
    assert main([str(GRABCUT), "--weights", str(weights), "--modes", "global", "--peers", "", "--max-clicks", "1",
                 "--every", "20", "--view-size", "64", "--flip", "global", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [r["image"] for r in report["per_image"]["focuscut:global"]]
    assert names == [s.name for s in list_samples(GRABCUT)[::20]]
    assert (report["inference"]["short_side"], report["inference"]["flip"]) == (64, "global")
    with pytest.raises(SystemExit):
        main([str(GRABCUT), "--every", "0"])
    with pytest.raises(SystemExit):
        main([str(GRABCUT), "--flip", "vertical"])
