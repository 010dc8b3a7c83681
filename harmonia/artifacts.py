"""The artifact store: ``artifacts/<id>/`` holds generated media and ``manifest.json``.

The id is a content hash of everything that determines the output (model bytes, request,
seed, inputs, output format, runtime), so asking again for the same thing finds the same
folder. Artifacts are written whole or not at all (see atomic.py). This module knows
folders and manifests; it does not know engines.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmonia.atomic import install, staging_dir
from harmonia.errors import ArtifactError
from harmonia.hashing import sha256_file
from harmonia.workbench import Workbench

MANIFEST_SCHEMA = "harmonia.manifest/1"
MANIFEST_FILE = "manifest.json"
ID_HEX = 16


@dataclass(frozen=True)
class Output:
    """One media file of an artifact, as its manifest records it."""

    path: str  # relative to the artifact folder
    sha256: str
    sample_rate: int
    channels: int
    duration_s: float
    prompt: str | None


@dataclass(frozen=True)
class Artifact:
    """An artifact folder and its manifest.

    ``manifest`` is the parsed manifest.json (schema harmonia.manifest/1); the fields
    above it are the ones every tool needs.
    """

    id: str
    path: Path
    kind: str
    created: str
    model: str
    seed: int | None
    outputs: tuple[Output, ...]
    manifest: dict[str, Any]

    def file(self, output: Output) -> Path:
        return self.path / output.path


def artifact_id(identity: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what determines the output, cut to 16 hex digits."""
    canon = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()[:ID_HEX]


def _parse(folder: Path) -> Artifact:
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} cannot be read ({exc}). Regenerate the artifact (--force).") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise ArtifactError(f"{path} is not a {MANIFEST_SCHEMA} manifest. Regenerate the artifact (--force).")
    try:
        outputs = tuple(
            Output(o["path"], o["sha256"], o["sample_rate"], o["channels"], o["duration_s"], o.get("prompt"))
            for o in manifest["outputs"]
        )
        return Artifact(
            id=manifest["id"],
            path=folder,
            kind=manifest["kind"],
            created=manifest["created"],
            model=manifest["model"]["name"],
            seed=manifest.get("seed"),
            outputs=outputs,
            manifest=manifest,
        )
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} lacks field {exc}. Regenerate the artifact (--force).") from None


def load_artifact(wb: Workbench, artifact: str) -> Artifact:
    """The artifact with this id, or the only one whose id starts with it (at least 4 characters)."""
    root = wb.artifacts_dir
    if (root / artifact / MANIFEST_FILE).is_file():
        return _parse(root / artifact)
    matches = sorted(
        p.name for p in root.glob(f"{artifact}*") if len(artifact) >= 4 and (p / MANIFEST_FILE).is_file()
    )
    if len(matches) == 1:
        return _parse(root / matches[0])
    if len(matches) > 1:
        raise ArtifactError(
            f"'{artifact}' matches {len(matches)} artifacts ({', '.join(matches[:5])}); give more of the id."
        )
    raise ArtifactError(f"No artifact '{artifact}' in {root}. Run 'harmonia artifacts list' to see the ids.")


def find_artifact(wb: Workbench, artifact_id_: str) -> Artifact | None:
    """The complete artifact with exactly this id, or None."""
    folder = wb.artifacts_dir / artifact_id_
    if not (folder / MANIFEST_FILE).is_file():
        return None
    try:
        return _parse(folder)
    except ArtifactError:
        return None


def list_artifacts(wb: Workbench) -> list[Artifact]:
    """Every complete artifact, newest first (hidden staging folders and unreadable ones are skipped)."""
    root = wb.artifacts_dir
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.name.startswith(".") or not (folder / MANIFEST_FILE).is_file():
            continue
        try:
            found.append(_parse(folder))
        except ArtifactError:
            continue
    return sorted(found, key=lambda a: (a.created, a.id), reverse=True)


def write_artifact(
    wb: Workbench,
    artifact_id_: str,
    write_files: Callable[[Path], dict[str, Any]],
) -> Artifact:
    """Write an artifact whole: ``write_files(folder)`` writes the media and returns the manifest.

    The manifest's ``files`` entry is filled with the sha256 of every file written, then
    ``manifest.json`` is written and the folder renamed into place (replacing an older
    one with the same id).
    """
    staging = staging_dir(wb.artifacts_dir, artifact_id_)
    try:
        manifest = write_files(staging)
        manifest["files"] = {
            str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
        }
        (staging / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        final = wb.artifacts_dir / artifact_id_
        install(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _parse(final)
