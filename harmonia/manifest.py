"""The artifact manifest: a typed, versioned record of how every output was made.

``manifest.json`` (schema ``harmonia.manifest/2``) records the request, the seed, the model
(repo, revision, inventory digest, licence), the engine and its code version, package
versions, runtime, timings, every output file with its sha256 and media facts, the inputs
kept in the artifact, the **parents** (artifacts it was made from, by id and the sha256 of
the file used) and the licences of every model behind it. :class:`Manifest` is that record
as frozen dataclasses; ``from_json`` also reads the schema-1 manifests written before
engines had kinds (music only), so old artifacts keep working.

This module knows the record's shape; it does not know engines, media writing or folders.
"""

from __future__ import annotations

import re
import types
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from harmonia.errors import ArtifactError

SCHEMA = "harmonia.manifest/2"
LEGACY_SCHEMA = "harmonia.manifest/1"  # music only, before kinds, lineage and licences
IDENTITY_SCHEMA = "harmonia.identity/2"
NON_COMMERCIAL = re.compile(r"(^|[-_ ])(nc|noncommercial|non-commercial)([-_ ]|$)", re.IGNORECASE)


def non_commercial(license_id: str | None) -> bool:
    """Whether a licence id forbids commercial use (CC-BY-NC-4.0, CC-BY-NC-SA, ...)."""
    return bool(license_id) and bool(NON_COMMERCIAL.search(str(license_id)))


@dataclass(frozen=True)
class ModelRecord:
    """The snapshot behind an artifact."""

    name: str
    repo: str | None  # hub repo, or None for a model built in code
    revision: str | None  # the resolved 40-hex commit
    source: str  # "huggingface" or "synthetic"
    builder: str | None
    seed: int | None  # a synthetic model's seed
    inventory_digest: str
    license: str | None = None

    @property
    def non_commercial(self) -> bool:
        return non_commercial(self.license)


@dataclass(frozen=True)
class EngineRecord:
    """The engine that made the artifact, its code version and what it reports of the run."""

    name: str
    code_version: int
    details: dict[str, Any] = field(default_factory=dict)  # the engine's describe() + result details


@dataclass(frozen=True)
class ParentRecord:
    """An artifact this one was made from: which file of it, with which bytes, in which role."""

    id: str
    file: str  # relative to the parent's folder
    sha256: str
    role: str  # the request field it fed: "melody", "continuation", "source", "soundtrack", "text"
    kind: str  # the parent's kind


@dataclass(frozen=True)
class InputRecord:
    """A media input kept inside the artifact (``inputs/ROLE.ext``) so it reproduces on its own."""

    role: str
    file: str  # relative to the artifact folder
    sha256: str  # of the kept file's source bytes (the request's identity of the input)
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    source: str | None = None  # the path it was read from, if any
    parent: str | None = None  # the parent artifact's id, if it came from one


@dataclass(frozen=True)
class LicenseRecord:
    """The licence of one model behind the artifact (its own, or a parent's)."""

    model: str
    license: str | None
    via: str | None = None  # None: this artifact's own model; else the parent artifact's id

    @property
    def non_commercial(self) -> bool:
        return non_commercial(self.license)


@dataclass(frozen=True)
class RuntimeRecord:
    """Where and how it ran."""

    device: str
    dtype: str
    threads: int
    precision: str = "exact"
    seeding: str = "torch.manual_seed(seed) on a forked RNG, per request"
    deterministic_algorithms: bool = False
    platform: str = ""
    machine: str = ""
    cpu: str = ""
    # the vector code torch's CPU kernels dispatch to here (torch.backends.cpu.get_cpu_capability():
    # AVX512, AVX2, ...): another one rounds some of torch's own arithmetic differently
    torch_cpu: str = ""
    paths: dict[str, str] = field(default_factory=dict)  # fast paths taken (part of the id; replayed)
    choices: dict[str, str] = field(default_factory=dict)  # how each was chosen (measured, cached, ...)


@dataclass(frozen=True)
class Timings:
    load_s: float
    generate_s: float
    write_s: float
    steps: int
    steps_per_s: float | None
    real_time_factor: float | None  # seconds of media per second of compute; None for text


@dataclass(frozen=True)
class OutputSettings:
    """How media are written: the audio format and an optional loudness target."""

    format: str = "wav"  # "wav" (32-bit float) or "flac" (24-bit)
    normalize_lufs: float | None = None


@dataclass(frozen=True)
class OutputRecord:
    """One output file: its bytes' sha256, what it is, and its facts by media type."""

    path: str  # relative to the artifact folder
    sha256: str
    media: str  # "audio", "video" or "text"
    prompt: str | None = None  # what it was made from (the take's prompt), if any
    preview: str | None = None  # a picture of it (waveform/spectrogram, poster frame)
    # audio (and a video's soundtrack)
    sample_rate: int | None = None
    channels: int | None = None
    frames: int | None = None
    duration_s: float | None = None
    peak: float | None = None
    peak_dbfs: float | None = None
    loudness_lufs: float | None = None
    # video
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frame_count: int | None = None
    # text
    characters: int | None = None


@dataclass(frozen=True)
class Manifest:
    """The whole manifest of one artifact.

    Example:
        >>> m = Manifest.from_json(json.loads(Path("artifacts/ID/manifest.json").read_text()))  # doctest: +SKIP
        >>> m.kind, m.model.name, [p.id for p in m.parents]  # doctest: +SKIP
        ('music', 'tiny-musicgen', [])
    """

    id: str
    kind: str
    created: str
    engine: EngineRecord
    model: ModelRecord
    request: dict[str, Any]  # the engine's JSON form of the request (inputs point at inputs/)
    seed: int | None
    packages: dict[str, str]
    runtime: RuntimeRecord
    timings: Timings
    output: OutputSettings
    outputs: tuple[OutputRecord, ...]
    inputs: dict[str, InputRecord] = field(default_factory=dict)
    parents: tuple[ParentRecord, ...] = ()
    licenses: tuple[LicenseRecord, ...] = ()
    ideas: list[dict] | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # what the id hashes
    files: dict[str, str] = field(default_factory=dict)  # every file's sha256 (filled on write)
    schema: str = SCHEMA

    @property
    def non_commercial(self) -> bool:
        """True when any model behind the artifact (its own or a parent's) is non-commercial."""
        return any(lic.non_commercial for lic in self.licenses) or self.model.non_commercial

    @property
    def licence_unknown(self) -> tuple[str, ...]:
        """The models behind the artifact whose licence was not recorded (schema 1 did not record it)."""
        return tuple(lic.model for lic in self.licenses if not lic.license)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = {k: asdict(v) for k, v in self.inputs.items()}
        data["outputs"] = [_compact(asdict(o)) for o in self.outputs]
        order = ("schema", "id", "kind", "created")
        return {**{k: data[k] for k in order}, **{k: v for k, v in data.items() if k not in order}}

    @classmethod
    def from_json(cls, data: Any, origin: str = "manifest.json") -> Manifest:
        """Parse a schema-2 manifest, or convert a schema-1 (music) one; ArtifactError if neither."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{origin} is not a JSON object. Regenerate the artifact (--force).")
        schema = data.get("schema")
        try:
            if schema == SCHEMA:
                return cls(
                    id=_str(data["id"]),
                    kind=_str(data["kind"]),
                    created=_str(data["created"]),
                    engine=_typed(EngineRecord, data["engine"]),
                    model=_typed(ModelRecord, data["model"]),
                    request=_dict(data["request"]),
                    seed=data.get("seed"),
                    packages=_dict(data["packages"]),
                    runtime=_typed(RuntimeRecord, data["runtime"]),
                    timings=_typed(Timings, data["timings"]),
                    output=_typed(OutputSettings, data["output"]),
                    outputs=tuple(_typed(OutputRecord, o) for o in data["outputs"]),
                    inputs={k: _typed(InputRecord, v) for k, v in _dict(data.get("inputs") or {}).items()},
                    parents=tuple(_typed(ParentRecord, p) for p in data.get("parents") or ()),
                    licenses=tuple(_typed(LicenseRecord, x) for x in data.get("licenses") or ()),
                    ideas=data.get("ideas"),
                    identity=_dict(data.get("identity") or {}),
                    files=_dict(data.get("files") or {}),
                )
            if schema == LEGACY_SCHEMA:
                return _from_legacy(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{origin} lacks or mistypes field {exc}. Regenerate the artifact (--force)."
            ) from None
        raise ArtifactError(
            f"{origin} has schema {schema!r}; this Harmonia reads {SCHEMA} and {LEGACY_SCHEMA}. "
            "Regenerate the artifact (--force) or upgrade Harmonia."
        )


def _compact(entry: dict[str, Any]) -> dict[str, Any]:
    """An output entry without the fields of other media types (None)."""
    keep = {"path", "sha256", "media", "prompt"}
    return {k: v for k, v in entry.items() if v is not None or k in keep}


def _typed(cls: type, data: Any) -> Any:
    """A record dataclass from a JSON object: unknown keys are refused, missing required ones too."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} (expected an object, got {type(data).__name__})")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise KeyError(f"{cls.__name__}.{sorted(unknown)[0]} (unknown)")
    hints = get_type_hints(cls)
    for name, value in data.items():
        if not _fits(value, hints[name]):
            raise TypeError(f"{cls.__name__}.{name} (got {type(value).__name__} {value!r:.40})")
    return cls(**data)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a record field's annotation (str, int, float, bool, dict, X | None)."""
    if isinstance(hint, types.UnionType) or get_origin(hint) is Union:
        return any(_fits(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = get_origin(hint) or hint
    if origin is dict:
        return isinstance(value, dict)
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    return isinstance(value, origin) if isinstance(origin, type) else True


def _dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"(expected an object, got {type(value).__name__})")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"(expected a string, got {type(value).__name__})")
    return value


def _from_legacy(data: dict[str, Any]) -> Manifest:
    """A schema-1 manifest (MusicGen music, before kinds) as a schema-2 :class:`Manifest`."""
    engine = dict(data["engine"])
    name = engine.pop("name")
    model = ModelRecord(**{k: data["model"].get(k) for k in ("name", "repo", "revision", "source", "builder", "seed", "inventory_digest")})  # fmt: skip
    inputs = {}
    for role, kept in (data.get("inputs") or {}).items():
        if kept:
            inputs[role] = InputRecord(
                role=role,
                file=kept["file"],
                sha256=kept["sha256"],
                sample_rate=kept.get("sample_rate"),
                channels=kept.get("channels"),
                duration_s=kept.get("duration_s"),
                source=kept.get("source"),
            )
    outputs = tuple(
        OutputRecord(
            path=o["path"],
            sha256=o["sha256"],
            media="audio",
            prompt=o.get("prompt"),
            preview=o.get("preview"),
            **{
                k: o.get(k)
                for k in (
                    "sample_rate",
                    "channels",
                    "frames",
                    "duration_s",
                    "peak",
                    "peak_dbfs",
                    "loudness_lufs",
                )
            },
        )
        for o in data["outputs"]
    )
    runtime = dict(data["runtime"])
    if runtime.get("device") == "cpu" and runtime.get("precision", "exact") == "exact":
        runtime["paths"] = {"few_row_products": "matmul"}  # schema 1 always ran W @ x.T there
    return Manifest(
        id=data["id"],
        kind=data["kind"],
        created=data["created"],
        engine=EngineRecord(name, 1, engine),
        model=model,
        request=data["request"],
        seed=data.get("seed"),
        packages=data["packages"],
        runtime=RuntimeRecord(
            **{k: runtime[k] for k in runtime if k in {f.name for f in fields(RuntimeRecord)}}
        ),
        timings=_typed(Timings, data["timings"]),
        output=_typed(OutputSettings, data["output"]),
        outputs=outputs,
        inputs=inputs,
        licenses=(LicenseRecord(model.name, None),),  # schema 1 did not record licences
        ideas=data.get("ideas"),
        identity=data.get("identity") or {},
        files=data.get("files") or {},
        schema=LEGACY_SCHEMA,
    )
