"""Generation and reproduction for every kind: an engine plus the artifact store, the one path
that the CLI, the notebooks, the widgets and the pipelines all take.

``generate`` checks the whole request (no model loaded yet), computes the artifact id from
everything that determines the output, returns the existing artifact when there is one (a
cache hit), and otherwise loads (or reuses) the engine, generates, and writes the artifact
whole. Inputs may come from other artifacts (:class:`From`): they become the new
artifact's parents. ``reproduce`` regenerates an artifact from its manifest and says
whether the bytes are identical or how far they drifted, and why they might have.

The path never branches on a kind: the engine class (from params.yaml's ``engine:``) says
what it makes, and each take is written by the writer of its media type (media.py).
"""

from __future__ import annotations

import math
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from harmonia.artifacts import Artifact, artifact_id, check_id, find_artifact, load_artifact, write_artifact
from harmonia.audio import Audio, read_audio, write_audio
from harmonia.calibration import cpu_model
from harmonia.engines import engine_class
from harmonia.engines.base import (
    TORCH_LOCK,
    Cancel,
    Progress,
    Runtime,
    check_seed,
    choose_seed,
    open_snapshot,
)
from harmonia.errors import ArtifactError, AudioError, RequestError
from harmonia.hashing import sha256_file
from harmonia.inventory import Inventory, utc_now
from harmonia.manifest import (
    IDENTITY_SCHEMA,
    LEGACY_SCHEMA,
    EngineRecord,
    InputRecord,
    LicenseRecord,
    Manifest,
    ModelRecord,
    OutputSettings,
    ParentRecord,
    RuntimeRecord,
    Timings,
)
from harmonia.media import WRITER_VERSION, check_output, write_take
from harmonia.prompts import Idea, canonical_prompt
from harmonia.workbench import Workbench

PACKAGES = (
    "harmonia",
    "torch",
    "transformers",
    "huggingface_hub",
    "safetensors",
    "tokenizers",
    "numpy",
    "soundfile",
    "soxr",
    "pyloudnorm",
)
# Those that can change the bytes of any artifact: numpy (arrays), soundfile and libsndfile
# (WAV/FLAC writing), soxr (resampling inputs), pyloudnorm (loudness targets); each engine adds its own.
WRITER_PACKAGES = ("numpy", "soundfile", "libsndfile", "soxr", "pyloudnorm")
LEGACY_PACKAGES = ("torch", "transformers", "numpy", "soundfile")  # what schema-1 ids covered
_engines: dict[tuple, Any] = {}


@dataclass(frozen=True)
class From:
    """An input taken from another artifact: its id (or a unique prefix) and which of its files.

    Example:
        >>> MusicRequest("more of this", duration_s=8, continuation=From("5f0c8a4b"))  # doctest: +SKIP
    """

    artifact: str
    file: str | None = None  # default: its first audio output


@dataclass(frozen=True)
class Generated:
    """The artifact a generation produced or found."""

    artifact: Artifact
    cached: bool  # True: an identical request had already been made; nothing was generated
    result: Any | None  # the engine's result (None on a cache hit)


@dataclass(frozen=True)
class OutputDrift:
    """How one regenerated output compares with the stored one."""

    path: str
    identical: bool  # same sha256
    max_abs_diff: float  # audio only (0 for identical text, inf for differing text)
    snr_db: float  # inf when identical


@dataclass(frozen=True)
class Reproduction:
    """The verdict of `harmonia reproduce`."""

    artifact_id: str
    outputs: tuple[OutputDrift, ...]
    differences: tuple[str, ...]  # what differs between then and now (packages, device, model, parents)

    @property
    def identical(self) -> bool:
        return all(o.identical for o in self.outputs)

    def summary(self) -> str:
        if self.identical:
            return f"{self.artifact_id}: identical ({len(self.outputs)} outputs, same sha256)"
        worst = max(self.outputs, key=lambda o: o.max_abs_diff)
        return (
            f"{self.artifact_id}: drifted: max abs difference {worst.max_abs_diff:.3g}, "
            f"SNR {worst.snr_db:.1f} dB ({worst.path})"
        )


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "libsndfile": sf.__libsndfile_version__}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _version(name: str, known: dict[str, str]) -> str:
    if name not in known:
        try:
            known[name] = version(name)
        except PackageNotFoundError:
            known[name] = "not installed"
    return known[name]


def engine_for(wb: Workbench, model: str) -> Any:
    """The engine class that runs a model: params.yaml's ``engine:`` for it (never guessed)."""
    spec = wb.spec("model", model)
    if spec.engine is None:
        raise RequestError(
            f"Model '{model}' has no 'engine' in params.yaml; set it (e.g. engine: musicgen) so Harmonia "
            "knows which engine runs it."
        )
    return engine_class(spec.engine)


def load_engine(
    wb: Workbench,
    model: str,
    runtime: Runtime | None = None,
    inventory: Inventory | None = None,
    **settings: Any,
) -> Any:
    """Load a model's engine, reusing the last one loaded with the same snapshot and settings.

    ``inventory``: the snapshot's inventory when the caller has just verified it (saves a second
    verification); otherwise the snapshot is verified here.
    """
    cls = engine_for(wb, model)
    return _load(wb, cls, model, (runtime or Runtime(**settings)).resolved(), inventory)


def _load(wb: Workbench, cls, model: str | None, runtime: Runtime, inventory: Inventory | None) -> Any:
    """The engine ``cls`` for ``model`` (None: an engine without weights), reused when already loaded."""
    with TORCH_LOCK:
        if model is None:
            key = (str(wb.root), cls.name, None, runtime)
        else:
            if inventory is None:
                _, _, inventory = open_snapshot(wb, model, cls.name)
            key = (str(wb.root), model, inventory.digest, runtime)
        if key not in _engines:
            _engines.clear()  # one model in memory at a time
            _engines[key] = cls.load(wb, model, runtime)
        return _engines[key]


def uses_model(cls) -> bool:
    """Whether an engine runs a model snapshot (the slicer, for one, has no weights)."""
    return getattr(cls, "uses_model", True)


def prompts_from_ideas(ideas: Sequence[Idea]) -> tuple[str, ...]:
    """The canonical prompt of each idea (see harmonia.prompts)."""
    return tuple(canonical_prompt(idea) for idea in ideas)


def generate(
    wb: Workbench,
    model: str,
    request: Any,
    *,
    ideas: Sequence[Idea] | None = None,
    fmt: str = "wav",
    normalize_lufs: float | None = None,
    force: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    precision: str = "exact",
    previews: bool = True,
) -> Generated:
    """Generate into the artifact store (or find the identical artifact already there).

    Args:
        wb: the workbench.
        model: a model name from params.yaml (e.g. "musicgen-small", "tiny-musicgen"); its
            ``engine:`` says which engine runs it and so what kind of artifact this is.
        request: the engine's request (e.g. :class:`~harmonia.engines.musicgen.MusicRequest`).
            Media inputs may be files, :class:`~harmonia.audio.Audio`, or :class:`From` an
            artifact (which becomes a parent). With ``ideas``, its prompts are the ideas'
            canonical prompts.
        ideas: one :class:`~harmonia.prompts.Idea` per prompt; the manifest keeps them.
        fmt: audio format, "wav" (32-bit float, exact) or "flac" (24-bit).
        normalize_lufs: loudness target in LUFS (e.g. -14), with a -1 dBFS peak guard; None keeps
            the model's levels.
        force: regenerate even when the artifact exists.
        progress: ``progress(done, total)`` per step; raising stops the generation and nothing
            is written.
        cancel: a ``threading.Event`` (or a function returning True) that stops the generation
            at its next step; nothing is written.
        device, dtype, threads, precision: where and how the engine runs (see
            :class:`~harmonia.engines.base.Runtime`); recorded and part of the id.
        previews: also write a picture per audio output (waveform and spectrogram).

    Returns:
        :class:`Generated` with the artifact, whether it was a cache hit, and the result.

    Example:
        >>> wb = Workbench.open()  # doctest: +SKIP
        >>> done = generate(wb, "tiny-musicgen", MusicRequest("calm piano", duration_s=4, seed=1))  # doctest: +SKIP
        >>> done.artifact.path  # doctest: +SKIP
        PosixPath('/work/artifacts/5f0c8a4b2d1e9f37')
    """
    return _make(
        wb, engine_for(wb, model), model, request, ideas=ideas, fmt=fmt, normalize_lufs=normalize_lufs,
        force=force, progress=progress, cancel=cancel, device=device, dtype=dtype, threads=threads,
        precision=precision, previews=previews,
    )  # fmt: skip


def derive(
    wb: Workbench,
    engine: str,
    request: Any,
    *,
    force: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    previews: bool = False,
) -> Generated:
    """Make an artifact with an engine that runs no model (e.g. "slicer": audio -> sample pack).

    The same path as :func:`generate` (checks, id, cache hit, atomic write, manifest, parents,
    ``reproduce``), without a snapshot: the id covers the engine, its code version, the request,
    the inputs' bytes and parents, and the packages that change its bytes.

    Example:
        >>> derive(wb, "slicer", SliceRequest(source=From("5f0c8a4b"), zip=True)).artifact.kind  # doctest: +SKIP
        'pack'
    """
    from harmonia.engines import engine_class

    cls = engine_class(engine)
    if uses_model(cls):
        raise RequestError(
            f"engine {engine!r} runs a model; call generate() with one of its models instead of derive()."
        )
    return _make(
        wb, cls, None, request, ideas=None, fmt="wav", normalize_lufs=None, force=force, progress=progress,
        cancel=cancel, device="cpu", dtype=None, threads=1, precision="exact", previews=previews,
    )  # fmt: skip


def _make(
    wb: Workbench, cls, model: str | None, request: Any, *, ideas, fmt, normalize_lufs, force, progress, cancel,
    device, dtype, threads, precision, previews,
) -> Generated:  # fmt: skip
    """The one path of :func:`generate` and :func:`derive` (``model`` None: an engine without weights)."""
    # 1. Check what needs no model: output settings, runtime, ideas; fix the seed.
    output = check_output(OutputSettings(fmt, normalize_lufs))
    runtime = Runtime(device, dtype, threads, precision).resolved()
    cls.check_runtime(runtime)  # before the snapshot's verification reads every byte
    if not isinstance(request, cls.request_type):
        raise RequestError(
            f"{f'model {model!r}' if model else 'this'} runs the {cls.name} engine, which takes a "
            f"{cls.request_type.__name__}, "
            f"not a {type(request).__name__}. Pick a {cls.kind} request or another model."
        )
    if ideas is not None:
        ideas = tuple(ideas)
        if not ideas:
            raise RequestError("ideas must not be empty: give one idea per prompt.")
        request = replace(request, prompts=prompts_from_ideas(ideas))
    if hasattr(request, "seed"):  # a request without one (a slice) has no randomness
        request = replace(request, seed=choose_seed() if request.seed is None else check_seed(request.seed))

    # 2. Read the inputs (files or other artifacts) and check the whole request against the snapshot.
    path, inventory = None, None
    if model is not None:
        _, path, inventory = open_snapshot(wb, model, cls.name)
    digest = inventory.digest if inventory is not None else None
    inputs, parents = {}, {}
    for role in cls.request_type.INPUTS:
        inputs[role], parents[role] = resolve_input(wb, getattr(request, role), role)
    request = cls.check(replace(request, **inputs), path)

    # 3. The id: engine, model bytes, request, inputs' bytes and parents, output settings, runtime, packages.
    identity = _identity(cls, digest, request, inputs, parents, output, runtime)
    new_id = artifact_id(identity)
    if not force:
        for candidate in (
            new_id,
            _legacy_id(cls, digest, request, inputs, parents, output, runtime) if model else None,
        ):
            if candidate and (existing := find_artifact(wb, candidate)) is not None:
                return Generated(existing, cached=True, result=None)

    # 4. Load (or reuse) the engine and generate; the lock keeps torch's global state ours.
    with TORCH_LOCK:
        engine = _load(wb, cls, model, runtime, inventory)
        result = engine.generate(request, progress=progress, cancel=cancel)

    # 5. Write the artifact whole: media, kept inputs, previews, manifest.
    started = time.perf_counter()

    def write(folder: Path) -> Manifest:
        outputs = tuple(write_take(folder, i, take, output, previews) for i, take in enumerate(result.takes))
        kept = {
            role: _keep_input(folder, role, clip, parents[role])
            for role, clip in result.inputs.items()
            if clip is not None
        }
        return _manifest(
            new_id, identity, cls, engine, result, ideas, kept, parents, outputs, output, wb,
            time.perf_counter() - started,
        )  # fmt: skip

    artifact = write_artifact(wb, new_id, write)
    return Generated(artifact, cached=False, result=result)


def resolve_input(wb: Workbench, value: Any, role: str) -> tuple[Audio | None, ParentRecord | None]:
    """An input as audio, and its parent when it comes from an artifact.

    ``value``: None, :class:`~harmonia.audio.Audio`, a file path, :class:`From`, or a string
    that is no file but an artifact id (``ID`` or ``ID/take-1.wav``).
    """
    if value is None or isinstance(value, Audio):
        return value, None
    if isinstance(value, str | Path) and not isinstance(value, From):
        text = str(value)
        if not Path(text).exists() and re.fullmatch(r"[0-9a-f]{4,16}(/[\w.\-/]+)?", text):
            artifact, _, file = text.partition("/")
            value = From(artifact, file or None)
        else:
            return read_audio(text, role), None
    if not isinstance(value, From):
        raise RequestError(
            f"{role} must be an audio file, an Audio, or an artifact (From(id)), got {type(value).__name__}."
        )
    parent = load_artifact(wb, check_id(value.artifact))
    audio = parent.audio_outputs()
    if value.file is None:
        if not audio:
            raise AudioError(
                f"{role}: artifact {parent.id} is a {parent.kind} artifact with no audio output; "
                "give an artifact that holds audio."
            )
        chosen = audio[0]
    else:
        chosen = next((o for o in parent.outputs if o.path == value.file), None)
        if chosen is None or chosen.media != "audio":
            names = ", ".join(o.path for o in audio) or "none"
            raise AudioError(
                f"{role}: artifact {parent.id} has no audio file {value.file!r}; its audio: {names}."
            )
    clip = read_audio(parent.file(chosen), role)
    if clip.sha256 != chosen.sha256:
        raise ArtifactError(
            f"{role}: {parent.id}/{chosen.path} no longer matches its manifest's sha256 (changed after "
            "writing); regenerate that artifact (harmonia reproduce) before using it."
        )
    return clip, ParentRecord(parent.id, chosen.path, chosen.sha256, role, parent.kind)


def reproduce(
    wb: Workbench, artifact: str, progress: Progress | None = None, cancel: Cancel | None = None
) -> Reproduction:
    """Regenerate an artifact from its manifest and compare it with the stored files.

    Nothing is written to the artifact store. The verdict is "identical" (every fresh
    output has the sha256 the manifest records, and so has the stored file) or the drift
    from the stored file: the largest absolute sample difference and the SNR. Differences
    that may explain a drift (packages, device, model, engine code, parents) are listed.

    Example:
        >>> reproduce(Workbench.open(), "5f0c8a4b").summary()  # doctest: +SKIP
        '5f0c8a4b2d1e9f37: identical (1 outputs, same sha256)'
    """
    # 1. Read the manifest and rebuild the request, its inputs from the artifact's own copies.
    stored = load_artifact(wb, artifact)
    m = stored.manifest
    cls = engine_class(m.engine.name)
    inputs = {role: read_audio(stored.file(kept.file), role) for role, kept in m.inputs.items()}
    request = cls.request_type.from_json(m.request, inputs)

    # 2. Note what differs between then and now.
    differences = []
    now_packages = package_versions()
    for name, then in m.packages.items():
        if name in now_packages and now_packages[name] != then:
            differences.append(f"{name} {then} -> {now_packages[name]}")
    if cls.code_version != m.engine.code_version:
        differences.append(f"engine {cls.name} code version {m.engine.code_version} -> {cls.code_version}")
    for parent in m.parents:
        found = find_artifact(wb, parent.id)
        if found is None:
            differences.append(
                f"parent {parent.id} ({parent.role}) is missing; the kept copy of its file was used"
            )
        elif (
            not found.path.joinpath(parent.file).is_file()
            or sha256_file(found.file(parent.file)) != parent.sha256
        ):
            differences.append(
                f"parent {parent.id} ({parent.role}) has changed since; the kept copy was used"
            )
    device = m.runtime.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        differences.append("device cuda -> cpu (no GPU here)")
        device = "cpu"

    # 3. Regenerate with the recorded settings and render the outputs the same way.
    runtime = Runtime(device, m.runtime.dtype, m.runtime.threads, m.runtime.precision)
    with TORCH_LOCK:
        if not uses_model(cls):
            engine = _load(wb, cls, None, runtime.resolved(), None)
        else:
            engine = load_engine(wb, m.model.name, runtime)
        if uses_model(cls) and engine.loaded.inventory.digest != m.model.inventory_digest:
            differences.append(f"model {m.model.name} snapshot changed (inventory digest differs)")
        result = engine.generate(request, progress=progress, cancel=cancel)
    with tempfile.TemporaryDirectory(prefix="harmonia-reproduce-") as tmp:
        fresh = [write_take(Path(tmp), i, take, m.output, False) for i, take in enumerate(result.takes)]
        drifts = []
        for then, now in zip(m.outputs, fresh, strict=True):
            kept = stored.file(then.path)
            if sha256_file(kept) != then.sha256:
                differences.append(
                    f"stored {then.path} no longer matches its manifest sha256 (changed after writing)"
                )
            same = then.sha256 == now.sha256 == sha256_file(kept)
            drifts.append(_drift(then.path, same, kept, Path(tmp) / now.path, then.media))
    return Reproduction(stored.id, tuple(drifts), tuple(differences))


# -- helpers -----------------------------------------------------------------------------------
def _inputs_json(inputs: dict[str, Audio | None]) -> dict[str, dict | None]:
    return {role: None if clip is None else {"sha256": clip.sha256} for role, clip in inputs.items()}


def _identity(
    cls, digest, request, inputs, parents, output: OutputSettings, runtime: Runtime
) -> dict[str, Any]:
    """What the id hashes: everything that determines the bytes, nothing that does not (dates, paths)."""
    known: dict[str, str] = {"libsndfile": sf.__libsndfile_version__}
    names = sorted({*WRITER_PACKAGES, *cls.packages})
    return {
        "schema": IDENTITY_SCHEMA,
        "kind": cls.kind,
        "engine": {"name": cls.name, "code_version": cls.code_version, "writer_version": WRITER_VERSION},
        "model_inventory_digest": digest,
        "request": request.to_json(_inputs_json(inputs)),
        "parents": {role: [p.id, p.file, p.sha256] for role, p in parents.items() if p is not None},
        "output": {"format": output.format, "normalize_lufs": output.normalize_lufs},
        "runtime": {
            "device": torch.device(runtime.device).type,
            "dtype": runtime.dtype,
            "threads": runtime.threads,
            "precision": runtime.precision,
        },
        "packages": {name: _version(name, known) for name in names},
    }


def _legacy_id(cls, digest, request, inputs, parents, output: OutputSettings, runtime: Runtime) -> str | None:
    """The id a schema-1 Harmonia gave this request (MusicGen without parents), so old artifacts stay hits."""
    if cls.name != "musicgen" or cls.code_version != 1 or any(parents.values()):
        return None
    legacy_runtime = {
        "device": torch.device(runtime.device).type,
        "dtype": runtime.dtype,
        "threads": runtime.threads,
    }
    if runtime.precision != "exact":
        legacy_runtime["precision"] = runtime.precision
    known: dict[str, str] = {}
    return artifact_id(
        {
            "schema": LEGACY_SCHEMA,
            "kind": "music",
            "engine": cls.name,
            "model_inventory_digest": digest,
            "request": request.to_json(_inputs_json(inputs)),
            "output": {"format": output.format, "normalize_lufs": output.normalize_lufs},
            "runtime": legacy_runtime,
            "packages": {name: _version(name, known) for name in LEGACY_PACKAGES},
        }
    )


def _keep_input(folder: Path, role: str, clip: Audio, parent: ParentRecord | None) -> InputRecord:
    """Copy an input into the artifact (inputs/ROLE.ext) so the artifact reproduces on its own."""
    (folder / "inputs").mkdir(exist_ok=True)
    if clip.source is not None:
        target = folder / "inputs" / f"{role}{Path(clip.source).suffix.lower()}"
        shutil.copyfile(clip.source, target)
    else:
        target = write_audio(folder / "inputs" / f"{role}.wav", clip.samples, clip.sample_rate, "wav")
    return InputRecord(
        role=role,
        file=str(target.relative_to(folder)),
        sha256=clip.sha256,
        sample_rate=clip.sample_rate,
        channels=clip.channels,
        duration_s=round(clip.duration_s, 6),
        source=None if parent is not None else clip.source,
        parent=parent.id if parent is not None else None,
    )


def _licenses(wb: Workbench, model: ModelRecord, parents: list[ParentRecord]) -> tuple[LicenseRecord, ...]:
    """The licence of this artifact's model (if it has one) and of every model behind its parents."""
    found = [LicenseRecord(model.name, model.license)] if model.source != "none" else []
    for parent in parents:
        art = find_artifact(wb, parent.id)
        if art is not None:
            for lic in art.manifest.licenses:
                found.append(LicenseRecord(lic.model, lic.license, lic.via or parent.id))
    unique = {(x.model, x.license, x.via): x for x in found}
    return tuple(unique.values())


def _manifest(
    new_id, identity, cls, engine, result, ideas, kept, parents, outputs, output, wb, write_s
) -> Manifest:
    loaded = engine.loaded
    if loaded.inventory is None:  # an engine without weights: no model behind it
        model = ModelRecord(loaded.name, None, None, "none", None, None, "", None)
    else:
        src, spec = loaded.inventory.source, loaded.spec
        model = ModelRecord(
            name=loaded.name,
            repo=src.repo,
            revision=src.revision,
            source=src.type,
            builder=src.builder,
            seed=src.seed,
            inventory_digest=loaded.inventory.digest,
            license=loaded.inventory.license or spec.license,
        )
    request = result.request.to_json({role: {"sha256": k.sha256, "file": k.file} for role, k in kept.items()})
    chosen_parents = [p for p in parents.values() if p is not None]
    duration = sum(o.duration_s or 0 for o in outputs) / max(len(outputs), 1)
    return Manifest(
        id=new_id,
        kind=cls.kind,
        created=utc_now(),
        engine=EngineRecord(cls.name, cls.code_version, {**engine.describe(), **result.details()}),
        model=model,
        request=request,
        seed=getattr(result.request, "seed", None),
        packages=package_versions(),
        runtime=RuntimeRecord(
            device=torch.device(loaded.device).type,
            dtype=loaded.dtype,
            threads=loaded.threads,
            precision=loaded.precision,
            deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
            platform=platform.platform(),
            machine=platform.machine(),
            cpu=cpu_model(),
            choices=dict(loaded.choices),
        ),
        timings=Timings(
            load_s=round(loaded.load_s, 4),
            generate_s=round(result.generate_s, 4),
            write_s=round(write_s, 4),
            steps=result.steps,
            steps_per_s=round(result.steps / result.generate_s, 3) if result.generate_s else None,
            real_time_factor=round(duration / result.generate_s, 4)
            if result.generate_s and duration
            else None,
        ),
        output=output,
        outputs=outputs,
        inputs=kept,
        parents=tuple(chosen_parents),
        licenses=_licenses(wb, model, chosen_parents),
        ideas=[idea.to_json() for idea in ideas] if ideas else None,
        identity=identity,
    )


def _drift(path: str, same_bytes: bool, kept: Path, fresh: Path, media: str) -> OutputDrift:
    if media != "audio":
        return OutputDrift(
            path, same_bytes, 0.0 if same_bytes else math.inf, math.inf if same_bytes else -math.inf
        )
    then, _ = sf.read(kept, dtype="float32", always_2d=True)
    now, _ = sf.read(fresh, dtype="float32", always_2d=True)
    if then.shape != now.shape:
        n = min(len(then), len(now))
        then, now = then[:n], now[:n]
    diff = (then.astype(np.float64) - now.astype(np.float64)) if then.size else np.zeros(1)
    noise = float(np.sum(diff**2))
    signal = float(np.sum(then.astype(np.float64) ** 2))
    snr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return OutputDrift(path, same_bytes, float(np.max(np.abs(diff))) if diff.size else 0.0, snr)
