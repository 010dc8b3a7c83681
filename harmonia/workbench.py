"""The workbench: its root folder, its params.yaml, and where snapshots and artifacts live.

A workbench is the nearest folder, from the working directory upward, that holds
``params.yaml`` (or the folder named by ``HARMONIA_ROOT``). ``models/``, ``datasets/``,
``artifacts/`` and Harmonia's private state (``.harmonia/``) are resolved from it, so a
notebook in ``notebooks/`` and the CLI at the root see the same files.

This module knows the shape of params.yaml; it knows nothing about the hub or hashing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harmonia.errors import ParamsError, UnknownSnapshotError, WorkbenchNotFoundError
from harmonia.safeload import load_yaml

Kind = Literal["model", "dataset"]
KINDS: tuple[Kind, ...] = ("model", "dataset")
PARAMS_FILE = "params.yaml"
ROOT_ENV = "HARMONIA_ROOT"
# Pickled weights (torch.save, pickle; ``*.th`` is audiocraft's MBD checkpoint): fetched only with
# --allow-pickle or an entry's ``allow_pickle: true``, loaded only from a verified snapshot.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.ckpt", "*.pth", "*.th", "*.pkl", "*.pickle")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# Sections of settings (name -> value); models/datasets are checked entry by entry instead.
SETTINGS_SECTIONS = ("music", "pipeline", "prompt_sets", "evaluate", "samples", "songs", "video", "text")
_SPEC_KEYS = {
    "repo",
    "revision",
    "allow_patterns",
    "ignore_patterns",
    "engine",
    "license",
    "builder",
    "seed",
    "description",
    "allow_pickle",  # load pickled weights (audiocraft's checkpoints) from this verified snapshot
    # other snapshots an audiocraft model reads (their names in models:): its T5, its MBD decoder
    "text_encoder",
    "mbd",
    # a model served by an OpenAI-compatible server instead of a snapshot (the text engine)
    "endpoint",
    "served_model",
    "timeout_s",
    "api_key_env",
}
_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")
# Fields that hold one word or line of text, and how messages describe them.
_TEXT_FIELDS = {
    "builder": "a tiny builder name such as 'musicgen'",
    "engine": "an engine name such as 'musicgen'",
    "license": "a license id such as 'mit' or 'cc-by-nc-4.0'",
    "description": "one line of text",
    "served_model": "the model name the server knows, such as 'Qwen/Qwen2.5-0.5B-Instruct'",
}
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_API_KEY_ENV = "HARMONIA_TEXT_API_KEY"


def plural(kind: Kind) -> str:
    """'model' -> 'models', the folder and params.yaml section of that kind."""
    return f"{kind}s"


@dataclass(frozen=True)
class SnapshotSpec:
    """One entry of params.yaml's ``models:`` or ``datasets:`` section."""

    # identity
    name: str
    kind: Kind
    # where it comes from: a hub repo at a revision, or a tiny builder with a seed
    repo: str | None = None
    revision: str | None = None
    builder: str | None = None
    seed: int | None = None
    # which files of the repo to take (huggingface_hub glob patterns)
    allow_patterns: tuple[str, ...] | None = None
    ignore_patterns: tuple[str, ...] = ()
    # what it is for
    engine: str | None = None
    license: str | None = None
    allow_pickle: bool = False  # its pickled weights may be loaded (after verification); audiocraft needs it
    # other models this one reads, by their names in models: (audiocraft: its T5 text encoder, and
    # the Multi-Band Diffusion decoder of `--decoder mbd`); verified like it, part of every id they touch
    text_encoder: str | None = None
    mbd: str | None = None
    # or no snapshot at all: a model answered by an OpenAI-compatible server at this base URL
    endpoint: str | None = None
    served_model: str | None = None  # the model name sent to the server
    timeout_s: float = DEFAULT_TIMEOUT_S  # per request
    api_key_env: str = DEFAULT_API_KEY_ENV  # the variable (environment, then .env) holding the key

    @property
    def synthetic(self) -> bool:
        """True for snapshots built in code by a tiny builder rather than fetched."""
        return self.builder is not None

    @property
    def remote(self) -> bool:
        """True for a model served by an endpoint: nothing to fetch, build or verify."""
        return self.endpoint is not None


@dataclass(frozen=True)
class Workbench:
    """A workbench root and its parsed params.yaml.

    Example:
        >>> wb = Workbench.open()  # doctest: +SKIP
        >>> wb.snapshot_dir("model", "musicgen-small")  # doctest: +SKIP
        PosixPath('/work/models/musicgen-small')
    """

    root: Path
    params: dict[str, Any]

    @classmethod
    def open(cls, start: str | os.PathLike[str] | None = None) -> Workbench:
        """Find the workbench root from ``start`` (default: the working directory) and load it."""
        root = find_root(start)
        return cls(root=root, params=load_params(root / PARAMS_FILE))

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def state_dir(self) -> Path:
        """Harmonia's private, git- and DVC-ignored state (verification records)."""
        return self.root / ".harmonia"

    def kind_dir(self, kind: Kind) -> Path:
        return self.root / plural(kind)

    def snapshot_dir(self, kind: Kind, name: str) -> Path:
        return self.kind_dir(kind) / check_name(kind, name)

    def specs(self, kind: Kind) -> dict[str, SnapshotSpec]:
        """Every snapshot of this kind that params.yaml declares, by name."""
        section = self.params.get(plural(kind)) or {}
        return {name: _parse_spec(kind, name, entry) for name, entry in section.items()}

    def spec(self, kind: Kind, name: str) -> SnapshotSpec:
        """The declared snapshot ``name``; an error listing the known names if there is none."""
        specs = self.specs(kind)
        if name not in specs:
            known = ", ".join(sorted(specs)) or "(none)"
            raise UnknownSnapshotError(
                f"Unknown {kind} '{name}'. Known {plural(kind)}: {known}. "
                f"Add it under '{plural(kind)}:' in {self.root / PARAMS_FILE} or pick one of those."
            )
        return specs[name]


def find_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The workbench root: ``HARMONIA_ROOT`` if set, else the nearest folder up with params.yaml."""
    env = os.environ.get(ROOT_ENV)
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / PARAMS_FILE).is_file():
            raise WorkbenchNotFoundError(
                f"{ROOT_ENV}={env} has no {PARAMS_FILE}. Point {ROOT_ENV} at a workbench "
                f"(a folder with {PARAMS_FILE}) or unset it."
            )
        return root
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder
    raise WorkbenchNotFoundError(
        f"No Harmonia workbench found: no {PARAMS_FILE} in {here} or any folder above it, and "
        f"{ROOT_ENV} is not set. Run the command inside a workbench (a folder with "
        f"{PARAMS_FILE}) or set {ROOT_ENV}=/path/to/workbench."
    )


def load_params(path: Path) -> dict[str, Any]:
    """Parse params.yaml (size, encoding, nesting and aliases limited) and check its shape.

    Every error is one line naming the field, the value and the fix (:class:`ParamsError`).
    """
    try:
        params = load_yaml(path, PARAMS_FILE, error=ParamsError)
    except FileNotFoundError:
        raise ParamsError(
            f"{path} does not exist. Create it or run the command inside a workbench."
        ) from None
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ParamsError(
            f"{PARAMS_FILE} must be a mapping of sections at the top level, got {_a(params)} ({params!r:.60}). "
            "See the README's params.yaml section."
        )
    for kind in KINDS:
        section = params.get(plural(kind))
        if section is not None and not isinstance(section, dict):
            raise ParamsError(
                f"{PARAMS_FILE}: '{plural(kind)}' must map names to entries, got {_a(section)} "
                f"({section!r:.60}). See the README's params.yaml section."
            )
        for name, entry in (section or {}).items():
            _parse_spec(kind, name, entry)
    for section in SETTINGS_SECTIONS:
        check_section(params, section)
    return params


def check_section(params: dict[str, Any], section: str) -> dict[str, Any]:
    """The settings section ``section`` of params.yaml (empty if absent); an error unless it is a mapping.

    Example:
        >>> check_section({"music": {"duration_s": 5.0}}, "music")
        {'duration_s': 5.0}
        >>> check_section({"music": [1, 2]}, "music")
        Traceback (most recent call last):
        ...
        harmonia.errors.ParamsError: params.yaml: 'music' must be a mapping of settings, got a list ([1, 2]). See the README's params.yaml section.
    """
    value = params.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParamsError(
            f"{PARAMS_FILE}: '{section}' must be a mapping of settings, got {_a(value)} ({value!r:.60}). "
            "See the README's params.yaml section."
        )
    return value


def _a(value: Any) -> str:
    """'a list', 'a string', ...: how messages name a value's type."""
    names = {
        list: "a list",
        dict: "a mapping",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "nothing",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def check_name(kind: Kind, name: str) -> str:
    """A snapshot name is a plain folder name: letters, digits, '.', '_' and '-'."""
    if not isinstance(name, str) or not _NAME.match(name) or name in {".", ".."}:
        raise ParamsError(
            f"{kind} name must be 1-100 letters, digits, '.', '_' or '-' and start with a letter "
            f"or digit, got {name!r}."
        )
    return name


def _parse_spec(kind: Kind, name: str, entry: Any) -> SnapshotSpec:
    where = f"params.yaml: {plural(kind)}.{name}"
    check_name(kind, name)
    if not isinstance(entry, dict):
        raise ParamsError(
            f"{where} must be a mapping with 'repo' or 'builder', got {_a(entry)} ({entry!r:.60}). "
            "Fix the entry in params.yaml."
        )
    unknown = set(entry) - _SPEC_KEYS
    if unknown:
        raise ParamsError(
            f"{where} has unknown keys {sorted(unknown, key=str)}; allowed: {sorted(_SPEC_KEYS)}."
        )
    for key, what in _TEXT_FIELDS.items():
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip() or "\n" in value):
            raise ParamsError(
                f"{where}.{key} must be {what}, got {_a(value)} ({value!r:.60}). Fix the entry in params.yaml."
            )
    repo, builder, endpoint = entry.get("repo"), entry.get("builder"), entry.get("endpoint")
    if sum(x is not None for x in (repo, builder, endpoint)) != 1:
        raise ParamsError(
            f"{where} needs exactly one of 'repo' (a hub repo), 'builder' (a tiny builder) or "
            "'endpoint' (an OpenAI-compatible server's base URL)."
        )
    remote = _parse_remote(where, entry) if endpoint is not None else {}
    if repo is not None and (not isinstance(repo, str) or not _REPO.match(repo)):
        raise ParamsError(f"{where}.repo must be 'owner/name', got {repo!r}.")
    revision = entry.get("revision")
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ParamsError(f"{where}.revision must be a branch, tag or 40-hex commit, got {revision!r}.")
    allow_pickle = entry.get("allow_pickle", False)
    if not isinstance(allow_pickle, bool):
        raise ParamsError(f"{where}.allow_pickle must be true or false, got {allow_pickle!r}.")
    for key in ("text_encoder", "mbd"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not _NAME.match(value) or value == name):
            raise ParamsError(
                f"{where}.{key} must name another model of models: (e.g. t5-base), got {value!r:.60}. "
                "Fix the entry in params.yaml."
            )
    seed = entry.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ParamsError(f"{where}.seed must be an integer >= 0, got {seed!r}.")
    return SnapshotSpec(
        name=name,
        kind=kind,
        repo=repo,
        revision=revision,
        builder=builder,
        seed=seed,
        allow_patterns=_patterns(where, "allow_patterns", entry.get("allow_patterns")),
        ignore_patterns=_patterns(where, "ignore_patterns", entry.get("ignore_patterns")) or (),
        engine=entry.get("engine"),
        license=entry.get("license"),
        allow_pickle=allow_pickle,
        text_encoder=entry.get("text_encoder"),
        mbd=entry.get("mbd"),
        **remote,
    )


def _parse_remote(where: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The fields of a model served by an endpoint, checked (no key is ever read from params.yaml)."""
    endpoint = entry["endpoint"]
    if not isinstance(endpoint, str) or not _URL.match(endpoint):
        raise ParamsError(
            f"{where}.endpoint must be the server's base URL, such as 'http://127.0.0.1:8000/v1', "
            f"got {endpoint!r:.80}."
        )
    if entry.get("served_model") is None:
        raise ParamsError(
            f"{where} has an endpoint but no 'served_model': name the model the server should answer "
            "with (its /v1/models lists them)."
        )
    timeout = entry.get("timeout_s", DEFAULT_TIMEOUT_S)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
        raise ParamsError(f"{where}.timeout_s must be seconds in (0, 3600], got {timeout!r}.")
    key_env = entry.get("api_key_env", DEFAULT_API_KEY_ENV)
    if not isinstance(key_env, str) or not _ENV_NAME.match(key_env):
        raise ParamsError(
            f"{where}.api_key_env must name an environment variable (such as {DEFAULT_API_KEY_ENV}), "
            f"got {key_env!r:.60}; the key itself goes in the environment or .env, never in params.yaml."
        )
    for key in ("repo", "revision", "allow_patterns", "ignore_patterns", "builder", "seed"):
        if key in entry:
            raise ParamsError(f"{where}.{key} makes no sense for a model served by an endpoint; remove it.")
    return {
        "endpoint": endpoint.rstrip("/"),
        "served_model": entry["served_model"],
        "timeout_s": float(timeout),
        "api_key_env": key_env,
    }


def _patterns(where: str, key: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ParamsError(f"{where}.{key} must be a list of glob patterns, got {value!r}.")
    return tuple(value)
