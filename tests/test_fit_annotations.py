"""Label Studio export -> training samples, through the SDK and the image fetcher, against a
loopback server speaking Label Studio 1.23's export format."""
import json
from pathlib import Path

import numpy as np
import pytest

from backend import annotations
from backend.images import ImageFetcher
from ls_export_server import LabelStudioExport, brush_result, export_server, make_task, synthetic_object

TOKEN = "test-token-123"


@pytest.fixture
def project_export(tmp_path):
    state = LabelStudioExport(TOKEN)
    for task_id in range(1, 5):
        state.add(7, task_id, *synthetic_object(task_id))
    with export_server(state) as url:
        yield state, url, ImageFetcher(label_studio_url=url, api_key=TOKEN, cache_dir=tmp_path / "cache")


def test_export_becomes_samples_with_the_drawn_masks(project_export):
    state, url, fetcher = project_export
    tasks = annotations.fetch_export(url, TOKEN, "7")
    assert [t["id"] for t in tasks] == [1, 2, 3, 4]
    data = annotations.build_samples(tasks, fetcher.load)
    assert data.annotations == 4 and not data.skipped
    for sample in data.samples:
        image, mask = synthetic_object(sample.task)
        assert sample.image.shape == (96, 128, 3) and sample.image.dtype == np.uint8
        np.testing.assert_array_equal(sample.image, image)
        np.testing.assert_array_equal(sample.mask, mask)


def test_bad_annotations_are_skipped_and_counted(project_export):
    state, url, fetcher = project_export
    image, mask = synthetic_object(9)
    broken = brush_result(mask)
    broken["value"]["rle"] = broken["value"]["rle"][:40]  # truncated RLE
    wrong_size = brush_result(mask[:50])
    state.tasks[7] += [
        make_task(10, 7, "missing.png", [brush_result(mask)]),  # image answers 404
        make_task(11, 7, "00000001-image1.png", [broken, wrong_size, brush_result(np.zeros_like(mask))]),
        make_task(12, 7, "00000001-image1.png", [brush_result(mask)], was_cancelled=True),
        make_task(13, 7, "00000001-image1.png", [{"type": "keypointlabels", "value": {"x": 5, "y": 5}}]),
    ]
    data = annotations.build_samples(annotations.fetch_export(url, TOKEN, "7"), fetcher.load)
    assert len(data.samples) == 4
    assert data.skipped == {"image_unavailable": 1, "corrupt_rle": 1, "size_mismatch": 1, "empty_mask": 1,
                            "no_brush_region": 1}
    assert data.annotations == 7  # the cancelled one is not an annotation to learn from


def test_latest_annotation_of_a_task_wins():
    old = make_task(1, 7, "a.png", [], annotation_id=1, updated_at="2026-11-25T10:00:00.000000Z")["annotations"][0]
    new = make_task(1, 7, "a.png", [], annotation_id=2, updated_at="2026-11-25T11:00:00.000000Z")["annotations"][0]
    assert annotations.latest_annotation({"annotations": [new, old]})["id"] == 2
    assert annotations.latest_annotation({"annotations": [{**new, "was_cancelled": True}, old]})["id"] == 1


def test_wrong_token_is_an_error_not_an_empty_project(project_export):
    state, url, fetcher = project_export
    with pytest.raises(Exception, match="401"):
        annotations.fetch_export(url, "wrong-token", "7")


def test_holdout_is_stable_and_never_empty_with_two_tasks():
    samples = [annotations.Sample(t, np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)) for t in range(1, 41)]
    train, held = annotations.split(samples)
    assert {s.task for s in held} == {t for t in range(1, 41) if annotations.is_holdout(t)}
    assert 4 <= len(held) <= 16 and not {s.task for s in train} & {s.task for s in held}
    two = [s for s in samples if not annotations.is_holdout(s.task)][:2]
    train, held = annotations.split(two)
    assert len(train) == 1 and len(held) == 1


def test_served_export_has_the_shape_of_a_real_label_studio_1_23_export():
    """tests/data/ls_1_23_2_export.json was recorded from Label Studio 1.23.2 by
    test_fit_labelstudio.py (FOCUSCUT_RECORD_EXPORT=1): a task annotated with synthetic_object(1)."""
    recorded = json.loads((Path(__file__).parent / "data" / "ls_1_23_2_export.json").read_text())[0]
    ours = make_task(1, 1, "x.png", [brush_result(synthetic_object(1)[1])])
    assert set(recorded) == set(ours)
    assert set(recorded["annotations"][0]) == set(ours["annotations"][0])
    assert set(recorded["annotations"][0]["result"][0]) == set(ours["annotations"][0]["result"][0])
    np.testing.assert_array_equal(annotations.decode_region(recorded["annotations"][0]["result"][0]),
                                  synthetic_object(1)[1])
    assert annotations.task_image_url(recorded).startswith("/data/upload/1/")


def test_samples_are_downscaled_as_they_are_read(project_export):
    state, url, fetcher = project_export
    data = annotations.build_samples(annotations.fetch_export(url, TOKEN, "7"), fetcher.load, max_side=64)
    for sample in data.samples:
        assert sample.image.shape == (48, 64, 3) and sample.mask.shape == (48, 64)
        assert set(np.unique(sample.mask)) == {0, 255}
        np.testing.assert_array_equal(sample.mask, synthetic_object(sample.task)[1][::2, ::2])
