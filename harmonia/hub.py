"""Fetching snapshots from the Hugging Face hub, pinned, checksummed and all-or-nothing.

``fetch`` resolves the requested revision to its 40-hex commit, lists the repo's files with
their sizes and checksums (the hub's LFS sha256, or git's blob id for small files),
downloads the selected files with ``huggingface_hub.snapshot_download`` into a hidden
staging folder, checks every downloaded byte against the hub's checksums, writes
``inventory.json`` and only then renames the folder into place. Any failure removes the
staging folder, so ``models/NAME`` is either the old snapshot or the new one.

The token comes from ``HF_TOKEN`` / ``HUGGINGFACE_HUB_TOKEN`` in the environment or in the
workbench's ``.env``; it is passed to huggingface_hub and never printed, logged or written.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
from dotenv import dotenv_values
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import filter_repo_objects

from harmonia.atomic import discard, install
from harmonia.errors import FetchError
from harmonia.hashing import git_blob_sha1, hash_files
from harmonia.inventory import FileEntry, Inventory, Source, read_inventory, write_inventory
from harmonia.snapshots import how_to_get, record_hashed, staging_dir, verify
from harmonia.tracking import RECORD_FILE, locked_commit
from harmonia.workbench import PICKLE_PATTERNS, Kind, Workbench, plural

TOKEN_VARIABLES = ("HF_TOKEN", "HUGGINGFACE_HUB_TOKEN")
# What counts as weights when pickles are left out: a selection with none of these is only
# README and metadata, which no engine can load.
WEIGHT_PATTERNS = ("*.safetensors", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.npz", *PICKLE_PATTERNS)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
HUB_CACHE_FOLDER = ".cache"  # snapshot_download(local_dir=...) writes .cache/huggingface/ there


@dataclass(frozen=True)
class FetchResult:
    """What a fetch left in place."""

    name: str
    kind: Kind
    path: Path
    inventory: Inventory
    reused: bool  # True when the snapshot at that commit was already present and verified
    pickle_consent: str | None = None  # "--allow-pickle" or "allow_pickle: true" when pickles were taken
    notes: tuple[str, ...] = ()  # one line each, for the user (e.g. the revision came from snapshots.lock)

    @property
    def pickles(self) -> tuple[str, ...]:
        """The pickled files this snapshot holds."""
        return tuple(f.path for f in self.inventory.files if _is_pickle(f.path))


def _is_pickle(path: str) -> bool:
    return bool(list(filter_repo_objects([path], allow_patterns=list(PICKLE_PATTERNS))))


def _find_token(root: Path) -> tuple[str, str] | None:
    """(where, token): the environment first, then ``root/.env``."""
    for var in TOKEN_VARIABLES:
        if os.environ.get(var):
            return f"environment {var}", os.environ[var]
    env_file = root / ".env"
    if env_file.is_file():
        values = dotenv_values(env_file)
        for var in TOKEN_VARIABLES:
            if values.get(var):
                return f".env {var}", values[var]
    return None


def resolve_token(root: Path) -> str | None:
    """The hub token from the environment, else from ``root/.env``; None when there is none."""
    found = _find_token(root)
    return found[1] if found else None


def token_source(root: Path) -> str | None:
    """Where the token comes from ("environment HF_TOKEN", ".env HF_TOKEN"), never its value."""
    found = _find_token(root)
    return found[0] if found else None


def fetch(
    wb: Workbench,
    kind: Kind,
    name: str,
    revision: str | None = None,
    allow_pickle: bool = False,
    endpoint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FetchResult:
    """Download a declared snapshot at a pinned commit into ``models/NAME`` (or ``datasets/NAME``).

    Args:
        wb: the workbench (params.yaml says which repo and revision ``name`` is).
        kind: "model" or "dataset".
        name: a name declared in params.yaml.
        revision: a branch, tag or commit overriding params.yaml. Without it, an entry whose
            revision is not a 40-hex commit (``main``) is fetched at the commit snapshots.lock
            records for the same repo, when it records one, so every machine gets the same bytes.
        allow_pickle: also download pickled weights (:data:`PICKLE_PATTERNS`); an entry whose
            params.yaml says ``allow_pickle: true`` gets them without it (the researcher's consent).
        endpoint: the hub's URL (default: ``HF_ENDPOINT`` or https://huggingface.co).
        progress: called as ``progress(bytes_just_hashed, bytes_to_hash)`` while checking.

    Returns:
        A :class:`FetchResult`.

    Raises:
        FetchError: one sentence saying what went wrong and what to do; nothing is left behind.

    Example:
        >>> fetch(Workbench.open(), "model", "musicgen-small")  # doctest: +SKIP
    """
    # 1. Check inputs.
    spec = wb.spec(kind, name)
    if spec.synthetic:
        raise FetchError(
            f"{kind.capitalize()} '{name}' is built in code, not fetched. Run: {how_to_get(spec, kind, name)}"
        )
    if spec.remote:
        raise FetchError(
            f"Model '{name}' is served by {spec.endpoint}, not fetched: there are no weights to download. "
            "Generate with it directly."
        )
    assert spec.repo is not None
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    if constants.HF_HUB_OFFLINE:
        raise FetchError(
            f"HF_HUB_OFFLINE=1 is set, so {spec.repo} cannot be downloaded. Run the fetch with "
            f"HF_HUB_OFFLINE=0 (e.g. 'HF_HUB_OFFLINE=0 harmonia {plural(kind)} fetch {name}')."
        )
    requested = asked = revision or spec.revision or "main"
    notes: list[str] = []
    if revision is None and not _COMMIT.match(requested):
        pinned = locked_commit(wb, kind, name, spec.repo, requested=requested)
        if pinned is not None:
            notes.append(
                f"revision {requested}: using the commit {RECORD_FILE} records ({pinned[:12]}…); "
                f"pass --revision {requested} to move to the newest"
            )
            requested = pinned
    consent = "--allow-pickle" if allow_pickle else "allow_pickle: true" if spec.allow_pickle else None
    token = resolve_token(wb.root)
    api = HfApi(endpoint=endpoint, token=token)
    ignore = list(spec.ignore_patterns) + ([] if consent else list(PICKLE_PATTERNS))
    allow = list(spec.allow_patterns) if spec.allow_patterns else None
    context = _Context(spec.repo, kind, name, requested, endpoint, sent_token=token is not None)

    # 2. Resolve the revision to a commit and list the files with the hub's checksums.
    with context.translated_errors():
        commit = api.repo_info(spec.repo, repo_type=kind, revision=requested).sha
        assert commit is not None
        tree = {
            f.path: f
            for f in api.list_repo_tree(spec.repo, repo_type=kind, revision=commit, recursive=True)
            if isinstance(f, RepoFile)
        }
    wanted = sorted(filter_repo_objects(tree, allow_patterns=allow, ignore_patterns=ignore))
    if not wanted:
        raise FetchError(
            f"No file of {spec.repo}@{commit[:12]} matches allow_patterns={allow} with "
            f"ignore_patterns={ignore}. Fix the patterns for {name} in params.yaml"
            + ("" if consent else " (or pass --allow-pickle if it only has pickled weights)")
            + "."
        )
    if kind == "model" and not consent:
        with_pickles = filter_repo_objects(tree, allow_patterns=allow, ignore_patterns=spec.ignore_patterns)
        left_out = sorted(set(with_pickles) - set(wanted))
        if left_out and not list(filter_repo_objects(wanted, allow_patterns=list(WEIGHT_PATTERNS))):
            raise FetchError(
                f"{spec.repo}@{commit[:12]} has only pickled weights ({', '.join(left_out[:3])}"
                f"{', …' if len(left_out) > 3 else ''}) and without them {name} would hold only "
                f"{', '.join(wanted[:3])}: pass --allow-pickle, or set allow_pickle: true for {name} in "
                "params.yaml, to take them. Nothing was written."
            )

    # 3. Nothing to do when that commit's files are already here and intact.
    final = wb.snapshot_dir(kind, name)
    existing = _existing(wb, kind, name, final)
    if existing is not None and existing.source.revision == commit and sorted(existing.by_path()) == wanted:
        return FetchResult(name, kind, final, existing, True, consent, tuple(notes))

    # 4. Download into a staging folder, check every byte, write the inventory, move it in place.
    staging = staging_dir(wb, kind, name)
    try:
        with context.translated_errors():
            snapshot_download(
                spec.repo,
                repo_type=kind,
                revision=commit,
                local_dir=staging,
                allow_patterns=allow,
                ignore_patterns=ignore,
                token=token,
                endpoint=endpoint,
            )
        shutil.rmtree(staging / HUB_CACHE_FOLDER, ignore_errors=True)
        files = _check_download(staging, {p: tree[p] for p in wanted}, context, progress)
        inventory = Inventory(
            name=name,
            kind=kind,
            source=Source(
                type="huggingface",
                repo=spec.repo,
                repo_type=kind,
                revision=commit,
                requested_revision=asked,  # what was asked for, even when the lock's commit was used
            ),
            license=spec.license,
            files=files,
        )
        write_inventory(staging, inventory)
        install(staging, final)
    finally:
        discard(staging)
    record_hashed(wb, kind, name, inventory)
    return FetchResult(name, kind, final, inventory, False, consent, tuple(notes))


def _existing(wb: Workbench, kind: Kind, name: str, final: Path) -> Inventory | None:
    """The current snapshot's inventory if it is present and passes a fast verify."""
    if not final.is_dir():
        return None
    try:
        if verify(wb, kind, name).ok:
            return read_inventory(final)
    except (OSError, ValueError):
        pass
    return None


def _check_download(
    staging: Path,
    expected: dict[str, RepoFile],
    context: _Context,
    progress: Callable[[int, int], None] | None,
) -> tuple[FileEntry, ...]:
    """sha256 of every downloaded file, checked against the hub (LFS sha256 or git blob id)."""
    on_disk = sorted(
        str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file() and not p.is_symlink()
    )
    if on_disk != sorted(expected):
        missing = sorted(set(expected) - set(on_disk))
        extra = sorted(set(on_disk) - set(expected))
        raise context.broken(f"the download is incomplete (missing {missing[:3]}, unexpected {extra[:3]})")
    total = sum(expected[p].size for p in on_disk)
    tick = None if progress is None else lambda n: progress(n, total)
    digests = hash_files((staging / p for p in on_disk), progress=tick)
    files = []
    for rel in on_disk:
        info, sha = expected[rel], digests[str(staging / rel)]
        size = (staging / rel).stat().st_size
        if size != info.size:
            raise context.broken(f"{rel} has {size} bytes, the hub says {info.size}")
        if info.lfs is not None and sha != info.lfs.sha256:
            raise context.broken(f"{rel} does not match the hub's sha256 ({info.lfs.sha256[:12]}…)")
        if info.lfs is None and info.blob_id and git_blob_sha1(staging / rel) != info.blob_id:
            raise context.broken(f"{rel} does not match the hub's git blob id ({info.blob_id[:12]}…)")
        files.append(FileEntry(rel, size, sha))
    return tuple(files)


@dataclass(frozen=True)
class _Context:
    """What a fetch error message needs to say where and what to do."""

    repo: str
    kind: Kind
    name: str
    revision: str
    endpoint: str
    sent_token: bool

    def broken(self, why: str) -> FetchError:
        return FetchError(
            f"The download of {self.repo} failed its checks: {why}. Nothing was kept; run "
            f"'harmonia {plural(self.kind)} fetch {self.name}' again."
        )

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Turn huggingface_hub and network exceptions into one FetchError sentence each."""
        try:
            yield
        except FetchError:
            raise
        except Exception as exc:
            raise self.error_for(exc) from None

    def error_for(self, exc: Exception) -> FetchError:

        again = f"then run 'harmonia {plural(self.kind)} fetch {self.name}' again"
        token_hint = (
            "the token in HF_TOKEN cannot read it: use a token of an account that has access"
            if self.sent_token
            else "no token was sent: put HF_TOKEN=hf_... in .env (or the environment)"
        )
        if isinstance(exc, GatedRepoError):
            return FetchError(
                f"{self.repo} is gated and {token_hint}, accept its terms at {self.endpoint}/"
                f"{'datasets/' if self.kind == 'dataset' else ''}{self.repo}, {again}."
            )
        if isinstance(exc, RevisionNotFoundError):
            return FetchError(
                f"{self.repo} has no revision '{self.revision}'. Fix 'revision' for {self.name} in "
                "params.yaml (a branch, tag or 40-hex commit) or pass --revision."
            )
        status = (
            exc.response.status_code if isinstance(exc, HfHubHTTPError) and exc.response is not None else None
        )
        if isinstance(exc, RepositoryNotFoundError) or status in (401, 403):
            return FetchError(
                f"{self.repo} was not found on {self.endpoint}, or it is private and {token_hint}. "
                f"Check 'repo' for {self.name} in params.yaml, {again}."
            )
        if isinstance(exc, OfflineModeIsEnabled):
            return FetchError(
                f"HF_HUB_OFFLINE=1 is set, so {self.repo} cannot be downloaded: unset it, {again}."
            )
        if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout) or (
            isinstance(exc, LocalEntryNotFoundError) and isinstance(exc.__cause__, httpx2.ConnectError)
        ):
            return FetchError(
                f"Could not reach the hub at {self.endpoint}: check the network (or HF_ENDPOINT), {again}."
            )
        if isinstance(exc, httpx2.TransportError | LocalEntryNotFoundError | OSError):
            return FetchError(
                f"The download of {self.repo} broke off ({type(exc).__name__}). Nothing was kept; "
                f"check the network, {again}."
            )
        if status is not None:
            return FetchError(
                f"The hub at {self.endpoint} answered HTTP {status} for {self.repo}; {again} later."
            )
        return FetchError(f"Fetching {self.repo} failed ({type(exc).__name__}: {exc}); {again}.")
