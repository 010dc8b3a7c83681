"""The artifact store: ``artifacts/<id>/`` holds generated media and ``manifest.json``.

The id is a content hash of everything that determines the output (engine and its code
version, model bytes, request, inputs, output settings, runtime, package versions), so
asking again for the same thing finds the same folder. Artifacts are written whole or not
at all (see atomic.py). Ids are ids: only the store's own syntax (hex) is accepted, never a
path or a pattern, and every file a manifest names must stay inside its folder. This module
knows folders and manifests (manifest.py); it does not know engines.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harmonia.atomic import discard, install, staging_dir
from harmonia.errors import ArtifactError
from harmonia.hashing import sha256_file
from harmonia.manifest import Manifest, OutputRecord
from harmonia.safeload import load_json
from harmonia.workbench import Workbench

MANIFEST_FILE = "manifest.json"
ID_HEX = 16
MIN_PREFIX = 4
_ID = re.compile(rf"^[0-9a-f]{{{MIN_PREFIX},{ID_HEX}}}$")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

Output = OutputRecord  # one media file of an artifact, as its manifest records it


@dataclass(frozen=True)
class Artifact:
    """An artifact folder and its typed manifest."""

    id: str
    path: Path
    manifest: Manifest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def created(self) -> str:
        return self.manifest.created

    @property
    def model(self) -> str:
        return self.manifest.model.name

    @property
    def seed(self) -> int | None:
        return self.manifest.seed

    @property
    def outputs(self) -> tuple[OutputRecord, ...]:
        return self.manifest.outputs

    def file(self, output: OutputRecord | str) -> Path:
        """The path of one of the artifact's files (an output, or a relative path it records)."""
        return safe_file(self.path, output.path if isinstance(output, OutputRecord) else output)

    def audio_outputs(self) -> tuple[OutputRecord, ...]:
        return tuple(o for o in self.outputs if o.media == "audio")


def check_id(artifact: Any) -> str:
    """An artifact id or a prefix of one (4-16 lowercase hex digits); ArtifactError for anything else."""
    if not isinstance(artifact, str) or not _ID.match(artifact):
        raise ArtifactError(
            f"{artifact!r} is not an artifact id: ids are {MIN_PREFIX} to {ID_HEX} hex digits (0-9, a-f), "
            "e.g. 5f0c8a4b. Run 'harmonia artifacts list' to see them."
        )
    return artifact


def safe_file(folder: Path, relative: Any) -> Path:
    """``folder/relative``, refusing any path that would leave the folder (absolute, '..', links out)."""
    if (
        not isinstance(relative, str)
        or not relative
        or relative.startswith(("/", "\\"))
        or "\x00" in relative
    ):
        raise ArtifactError(f"{folder}: file path {relative!r} in the manifest is not a relative path.")
    path = folder / relative
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        raise ArtifactError(
            f"{folder}: file path {relative!r} in the manifest leaves the artifact folder; "
            "the manifest is corrupt or was tampered with. Regenerate the artifact (--force)."
        ) from None
    return path


def artifact_id(identity: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what determines the output, cut to 16 hex digits."""
    canon = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()[:ID_HEX]


def _parse(folder: Path) -> Artifact:
    path = folder / MANIFEST_FILE
    try:
        data = load_json(
            path,
            str(path),
            max_bytes=MAX_MANIFEST_BYTES,
            error=ArtifactError,
            fix="Regenerate the artifact (--force).",
        )
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc}). Regenerate the artifact (--force).") from None
    manifest = Manifest.from_json(data, str(path))
    if manifest.id != folder.name:
        raise ArtifactError(
            f"{path} names id {manifest.id!r}, not its folder's. Regenerate the artifact (--force)."
        )
    for rel in [o.path for o in manifest.outputs] + [i.file for i in manifest.inputs.values()]:
        safe_file(folder, rel)
    return Artifact(id=manifest.id, path=folder, manifest=manifest)


def load_artifact(wb: Workbench, artifact: str) -> Artifact:
    """The artifact with this id, or the only one whose id starts with it (at least 4 hex digits)."""
    root = wb.artifacts_dir
    check_id(artifact)
    if (root / artifact / MANIFEST_FILE).is_file():
        return _parse(root / artifact)
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    matches = sorted(n for n in names if n.startswith(artifact) and (root / n / MANIFEST_FILE).is_file())
    if len(matches) == 1:
        return _parse(root / matches[0])
    if len(matches) > 1:
        raise ArtifactError(
            f"'{artifact}' matches {len(matches)} artifacts ({', '.join(matches[:5])}); give more of the id."
        )
    raise ArtifactError(f"No artifact '{artifact}' in {root}. Run 'harmonia artifacts list' to see the ids.")


def find_artifact(wb: Workbench, artifact_id_: str) -> Artifact | None:
    """The complete artifact with exactly this id, or None."""
    folder = wb.artifacts_dir / check_id(artifact_id_)
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


def intact(artifact: Artifact) -> bool:
    """Every output and kept input the manifest names is on disk with its recorded sha256."""
    recorded = artifact.manifest.files
    for rel in [o.path for o in artifact.outputs] + [i.file for i in artifact.manifest.inputs.values()]:
        path = artifact.path / rel
        if not path.is_file() or (rel in recorded and sha256_file(path) != recorded[rel]):
            return False
    return True


def children(wb: Workbench, artifact_id_: str) -> list[Artifact]:
    """Every artifact that names this one as a parent, newest first."""
    return [a for a in list_artifacts(wb) if any(p.id == artifact_id_ for p in a.manifest.parents)]


def write_artifact(
    wb: Workbench,
    artifact_id_: str,
    write_files: Callable[[Path], Manifest],
) -> Artifact:
    """Write an artifact whole: ``write_files(folder)`` writes the media and returns the manifest.

    The manifest's ``files`` entry is filled with the sha256 of every file written, then
    ``manifest.json`` is written and the folder renamed into place (replacing an older
    one with the same id). An exception anywhere leaves no folder that looks whole.
    """
    staging = staging_dir(wb.artifacts_dir, check_id(artifact_id_))
    try:
        manifest = write_files(staging)
        files = {
            str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
        }
        manifest = replace(manifest, files=files)
        (staging / MANIFEST_FILE).write_text(
            json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        final = wb.artifacts_dir / artifact_id_
        install(staging, final)
    finally:
        discard(staging)
    return _parse(final)
