"""Model versions on disk: atomic publish, kept history, rollback (API and CLI), unwritable dirs."""
import json
import os
import subprocess
import sys

import pytest
import torch

from backend import publish
from focuscut_core import load_predictor, load_weights
from focuscut_core.weights import DEFAULT_WEIGHTS
from services import ROOT


@pytest.fixture(scope="module")
def net():
    return load_weights(DEFAULT_WEIGHTS)[0]


def manifest(model_dir, project="7"):
    return json.loads((model_dir / project / "manifest.json").read_text())


def test_publish_keeps_every_version_and_names_them_in_order(tmp_path, net):
    assert publish.read_manifest(tmp_path, "7") == {"project": "7", "current": None, "versions": []}
    v1 = publish.publish(tmp_path, "7", net, parent="imagenet-init", metrics={"noc90_after": 5.0})
    with torch.no_grad():
        next(net.parameters()).add_(0.5)
    v2 = publish.publish(tmp_path, "7", net, parent=v1)
    assert (v1, v2) == ("7-v1", "7-v2")
    m = manifest(tmp_path)
    assert m["current"] == "7-v2" and [v["version"] for v in m["versions"]] == ["7-v1", "7-v2"]
    assert m["versions"][0]["metrics"] == {"noc90_after": 5.0} and m["versions"][1]["parent"] == "7-v1"
    for entry in m["versions"]:
        assert load_predictor(tmp_path / "7" / entry["file"]).version == entry["version"]
    first = next(load_weights(tmp_path / "7/versions/7-v1.pt")[0].parameters())
    second = next(load_weights(tmp_path / "7/versions/7-v2.pt")[0].parameters())
    assert not torch.equal(first, second)
    assert not [p for p in (tmp_path / "7").rglob(".*") if p.name != ".lock"]  # no temporary files left


def test_rollback_walks_back_and_to_any_kept_version(tmp_path, net):
    for parent in ("base", "7-v1", "7-v2"):
        publish.publish(tmp_path, "7", net, parent=parent)
    assert publish.rollback(tmp_path, "7") == "7-v2"
    assert publish.rollback(tmp_path, "7") == "7-v1"
    assert publish.rollback(tmp_path, "7") is None  # the shipped default weights
    with pytest.raises(publish.PublishError, match="already uses the default"):
        publish.rollback(tmp_path, "7")
    assert publish.rollback(tmp_path, "7", "7-v3") == "7-v3"
    with pytest.raises(publish.PublishError, match="no version '7-v9'"):
        publish.rollback(tmp_path, "7", "7-v9")
    assert manifest(tmp_path)["current"] == "7-v3" and len(manifest(tmp_path)["versions"]) == 3
    with pytest.raises(publish.PublishError, match="no published versions"):
        publish.rollback(tmp_path, "8")
    with pytest.raises(publish.PublishError, match="numeric"):
        publish.rollback(tmp_path, "../etc")


def test_cli_rollback_and_list(tmp_path, net):
    publish.publish(tmp_path, "7", net, parent="base")
    publish.publish(tmp_path, "7", net, parent="7-v1")
    env = {**os.environ, "FOCUSCUT_MODEL_DIR": str(tmp_path)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "backend.publish", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    done = cli("rollback", "--project", "7", "--version", "7-v1")
    assert done.returncode == 0 and "7-v1" in done.stdout, done.stderr
    assert manifest(tmp_path)["current"] == "7-v1"
    listed = cli("list", "--project", "7")
    assert json.loads(listed.stdout)["current"] == "7-v1"
    bad = cli("rollback", "--project", "7", "--version", "7-v5")
    assert bad.returncode == 1 and "no version '7-v5'" in bad.stderr and "Traceback" not in bad.stderr


def test_unwritable_model_dir_keeps_the_old_version(tmp_path, net):
    publish.publish(tmp_path, "7", net, parent="base")
    before = (tmp_path / "7/manifest.json").read_bytes()
    versions = tmp_path / "7" / "versions"
    # a real write failure that also holds for root: the versions folder is not a folder
    versions.rename(tmp_path / "kept")
    versions.write_text("not a directory")
    with pytest.raises(publish.PublishError, match="could not write model version 7-v2.*stays 7-v1"):
        publish.publish(tmp_path, "7", net, parent="7-v1")
    assert (tmp_path / "7/manifest.json").read_bytes() == before
