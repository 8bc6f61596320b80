"""Request bodies shaped exactly as Label Studio 1.23 sends them to an ML backend."""
from __future__ import annotations

import itertools

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Cat" background="#FF0000"/>
    <Label value="Dog" background="#0000FF"/>
  </BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="Cat" smart="true" background="#FF0000" showInline="true"/>
    <Label value="Dog" smart="true" background="#0000FF" showInline="true"/>
  </KeyPointLabels>
</View>"""

_ids = itertools.count(1)


def keypoint(x: float, y: float, label: str, positive: bool | None = True, original_size=(120, 90),
             from_name: str = "tag2", to_name: str = "image") -> dict:
    """One smart keypoint of ``context.result``: x, y in percent; ``positive=None`` leaves the
    ``is_positive`` flag out (as older frontends do)."""
    item = {
        "original_width": original_size[0], "original_height": original_size[1], "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.8333, "keypointlabels": [label], "labels": [label]},
        "id": f"kp{next(_ids)}", "from_name": from_name, "to_name": to_name, "type": "keypointlabels",
        "origin": "manual",
    }
    if positive is not None:
        item["is_positive"] = positive
    return item


def task(task_id: int, image_url: str, project: int = 1) -> dict:
    return {"id": task_id, "data": {"image": image_url}, "meta": {}, "created_at": "2026-11-25T14:00:00.000000Z",
            "updated_at": "2026-11-25T14:00:00.000000Z", "is_labeled": False, "overlap": 1, "inner_id": task_id,
            "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
            "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": project,
            "updated_by": None, "file_upload": None, "comment_authors": [], "annotations": [], "predictions": []}


def predict_body(tasks: list, results: list | None, project: str = "1.1764000000",
                 config: str = CONFIG, model_version: str | None = None) -> dict:
    """POST /predict; ``results=None`` is a plain pre-annotation request (no context)."""
    params = {"login": None, "password": None}
    if results is not None:
        params["context"] = {"result": results}
    return {"tasks": tasks, "model_version": model_version, "project": project, "label_config": config,
            "params": params}


def setup_body(project: str = "1.1764000000", config: str = CONFIG) -> dict:
    return {"project": project, "schema": config, "hostname": "http://localhost:8080",
            "access_token": "0123456789abcdef", "model_version": None, "extra_params": None}


def clicks_at(pixels, height: int, width: int, label: str = "Cat") -> list[dict]:
    """Keypoints on the centres of pixels [(row, col, positive)] of an HxW image."""
    return [keypoint((c + 0.5) / width * 100, (r + 0.5) / height * 100, label, p, (width, height))
            for r, c, p in pixels]
