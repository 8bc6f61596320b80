"""Model versions of a project on disk: publish a fine-tuned network, roll back, list (write side).

Layout (read by ``backend.registry``)::

    <model_dir>/<project>/versions/<version>.pt    a focuscut_core.save_weights file
    <model_dir>/<project>/manifest.json            {"project", "current", "versions": [...]}

Publishing is atomic and ordered: the weights file is written to a temporary name, fsynced and
renamed; only then is the manifest rewritten the same way (tmp, fsync, rename, fsync of the
directory). A process killed at any point leaves either the old manifest (and at most a stray
temporary file that no manifest names) or the new one: a half-written model is never current.
Earlier versions are kept, so ``rollback`` can make any of them current again.

Command line::

    python -m backend.publish list --project 3
    python -m backend.publish rollback --project 3 [--version 3-v1]   # default: the previous one
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from focuscut_core import save_weights

MANIFEST = "manifest.json"


class PublishError(RuntimeError):
    """A version could not be published or selected; the manifest is unchanged."""


def project_dir(model_dir: str | Path, project: str) -> Path:
    if not (str(project).isascii() and str(project).isdigit()):
        raise PublishError(f"project must be a numeric Label Studio id, got {project!r}")
    return Path(model_dir) / str(project)


def read_manifest(model_dir: str | Path, project: str) -> dict:
    """The project's manifest, or an empty one (current None: the shipped default weights)."""
    path = project_dir(model_dir, project) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"project": str(project), "current": None, "versions": []}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(pdir: Path, manifest: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=pdir)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, pdir / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(pdir)


@contextlib.contextmanager
def _locked(pdir: Path):
    """Serialise writers of one project (two workers finishing at once) with a flock."""
    try:
        pdir.mkdir(parents=True, exist_ok=True)
        fh = open(pdir / ".lock", "a")
    except OSError as exc:
        raise PublishError(f"model directory {pdir} is not writable: {exc}") from exc
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _next_version(project: str, manifest: dict) -> str:
    numbers = [int(v["version"].rsplit("-v", 1)[1]) for v in manifest["versions"]]
    return f"{project}-v{max(numbers, default=0) + 1}"


def publish(model_dir: str | Path, project: str, net, parent: str | None, metrics: dict | None = None) -> str:
    """Store ``net`` as the project's next version, make it current, return its name ("<id>-v<n>")."""
    pdir = project_dir(model_dir, project)
    with _locked(pdir):
        manifest = read_manifest(model_dir, project)
        version = _next_version(str(project), manifest)
        rel = f"versions/{version}.pt"
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            save_weights(pdir / rel, net, meta={"version": version, "parent": parent, "project": str(project)})
            _fsync_dir(pdir / "versions")
            entry = {"version": version, "file": rel, "created": created, "parent": parent,
                     "metrics": dict(metrics or {})}
            _write_manifest(pdir, {**manifest, "project": str(project), "current": version,
                                   "versions": manifest["versions"] + [entry]})
        except OSError as exc:
            raise PublishError(f"could not write model version {version} under {pdir}: {exc}; "
                               f"the current version stays {manifest['current']}") from exc
    return version


def rollback(model_dir: str | Path, project: str, version: str | None = None) -> str | None:
    """Make ``version`` current (default: the version published before the current one; before
    the first one, None = the shipped default weights). Returns the new current version."""
    pdir = project_dir(model_dir, project)
    if not (pdir / MANIFEST).exists():
        raise PublishError(f"project {project} has no published versions")
    with _locked(pdir):
        manifest = read_manifest(model_dir, project)
        names = [v["version"] for v in manifest["versions"]]
        if version is None:
            if manifest["current"] is None:
                raise PublishError(f"project {project} already uses the default weights")
            index = names.index(manifest["current"])
            version = names[index - 1] if index > 0 else None
        elif version not in names:
            raise PublishError(f"project {project} has no version {version!r}; it has {names}")
        elif not (pdir / f"versions/{version}.pt").is_file():
            raise PublishError(f"the weights file of {version} is missing under {pdir}")
        try:
            _write_manifest(pdir, {**manifest, "current": version})
        except OSError as exc:
            raise PublishError(f"could not write the manifest under {pdir}: {exc}") from exc
    return version


def main(argv: list[str] | None = None) -> int:
    from backend import settings

    parser = argparse.ArgumentParser(prog="python -m backend.publish", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "rollback"):
        p = sub.add_parser(name)
        p.add_argument("--project", required=True)
        p.add_argument("--model-dir", default=None, help="default: $FOCUSCUT_MODEL_DIR")
        if name == "rollback":
            p.add_argument("--version", default=None)
    args = parser.parse_args(argv)
    model_dir = args.model_dir or settings.load().model_dir
    try:
        if args.command == "list":
            print(json.dumps(read_manifest(model_dir, args.project), indent=1))
        else:
            print(f"project {args.project}: current version is now "
                  f"{rollback(model_dir, args.project, args.version) or 'the default weights'}")
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
