"""Generation and reproduction: an engine plus the artifact store, the one path that the CLI,
the notebooks, the widgets and the pipelines all take.

``generate_music`` fixes the seed, computes the artifact id from everything that
determines the output, returns the existing artifact when there is one (a cache hit),
and otherwise loads (or reuses) the engine, generates, and writes the artifact whole.
``reproduce`` regenerates an artifact from its manifest and says whether the bytes are
identical or how far they drifted.
"""

from __future__ import annotations

import math
import platform
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

from harmonia.artifacts import (
    MANIFEST_SCHEMA,
    Artifact,
    artifact_id,
    find_artifact,
    load_artifact,
    write_artifact,
)
from harmonia.audio import FORMATS, Audio, facts, normalize_loudness, read_audio, write_audio
from harmonia.engines import ENGINES
from harmonia.engines.base import (
    Progress,
    check_seed,
    choose_seed,
    open_snapshot,
    pick_device,
    pick_dtype,
    pick_threads,
)
from harmonia.engines.musicgen import MusicGenEngine, MusicRequest, MusicResult, check_precision
from harmonia.errors import ArtifactError, RequestError
from harmonia.hashing import sha256_file
from harmonia.inventory import Inventory, utc_now
from harmonia.prompts import Idea, canonical_prompt
from harmonia.workbench import SnapshotSpec, Workbench

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
IDENTITY_PACKAGES = ("torch", "transformers", "numpy", "soundfile")  # those that can change the bytes
LUFS_RANGE = (-70.0, 0.0)
_engines: dict[tuple, MusicGenEngine] = {}


@dataclass(frozen=True)
class Generated:
    """The artifact a generation produced or found."""

    artifact: Artifact
    cached: bool  # True: an identical request had already been made; nothing was generated
    result: MusicResult | None  # the engine's result (None on a cache hit)


@dataclass(frozen=True)
class OutputDrift:
    """How one regenerated output compares with the stored one."""

    path: str
    identical: bool  # same sha256
    max_abs_diff: float
    snr_db: float  # inf when identical


@dataclass(frozen=True)
class Reproduction:
    """The verdict of `harmonia reproduce`."""

    artifact_id: str
    outputs: tuple[OutputDrift, ...]
    differences: tuple[str, ...]  # what differs between then and now (packages, device, threads, model)

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


def engine_of(spec: SnapshotSpec) -> str:
    """The engine that runs a model: params.yaml's 'engine', or the tiny builder's family."""
    name = spec.engine or (spec.builder.split("-")[0] if spec.builder else None)
    if name not in ENGINES:
        raise RequestError(
            f"Model '{spec.name}' has engine {name!r}; Harmonia runs {', '.join(ENGINES)}. "
            "Set 'engine' for it in params.yaml."
        )
    return name


def load_engine(
    wb: Workbench,
    model: str,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    precision: str = "exact",
    inventory: Inventory | None = None,
) -> MusicGenEngine:
    """Load a model's engine, reusing the last one loaded with the same snapshot and settings.

    ``inventory``: the snapshot's inventory when the caller has just verified it (saves a second
    verification); otherwise the snapshot is verified here.
    """
    spec = wb.spec("model", model)
    if inventory is None:
        _, _, inventory = open_snapshot(wb, model, engine_of(spec))
    chosen = pick_device(device)
    settings = (str(chosen), pick_dtype(dtype, chosen), pick_threads(threads), precision)
    key = (str(wb.root), model, inventory.digest, *settings)
    if key not in _engines:
        _engines.clear()  # one model in memory at a time
        _engines[key] = ENGINES[engine_of(spec)].load(
            wb, model, device=device, dtype=dtype, threads=threads, precision=precision
        )
    return _engines[key]


def prompts_from_ideas(ideas: Sequence[Idea]) -> tuple[str, ...]:
    """The canonical prompt of each idea (see harmonia.prompts)."""
    return tuple(canonical_prompt(idea) for idea in ideas)


def generate_music(
    wb: Workbench,
    model: str,
    request: MusicRequest,
    *,
    ideas: Sequence[Idea] | None = None,
    fmt: str = "wav",
    normalize_lufs: float | None = None,
    force: bool = False,
    progress: Progress | None = None,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    precision: str = "exact",
    previews: bool = True,
) -> Generated:
    """Generate music into the artifact store (or find the identical artifact already there).

    Args:
        wb: the workbench.
        model: a model name from params.yaml (e.g. "musicgen-small", "tiny-musicgen").
        request: what to generate; its prompts are replaced by the ideas' canonical prompts
            when ``ideas`` is given.
        ideas: one :class:`~harmonia.prompts.Idea` per prompt; the manifest keeps them.
        fmt: "wav" (32-bit float, exact) or "flac" (24-bit).
        normalize_lufs: loudness target in LUFS (e.g. -14), with a -1 dBFS peak guard; None keeps
            the model's levels.
        force: regenerate even when the artifact exists.
        progress: ``progress(done, total)`` per decoding step; raising stops the generation and
            nothing is written.
        device, dtype, threads, precision: see :meth:`MusicGenEngine.load`.
        previews: also write a waveform/spectrogram PNG per output.

    Returns:
        :class:`Generated` with the artifact, whether it was a cache hit, and the result.

    Example:
        >>> wb = Workbench.open()  # doctest: +SKIP
        >>> done = generate_music(wb, "tiny-musicgen", MusicRequest("calm piano", duration_s=4, seed=1))  # doctest: +SKIP
        >>> done.artifact.path  # doctest: +SKIP
        PosixPath('/work/artifacts/5f0c8a4b2d1e9f37')
    """
    # 1. Check what needs no model: format, loudness target, ideas; fix the seed.
    if fmt not in FORMATS:
        raise RequestError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if normalize_lufs is not None:
        low, high = LUFS_RANGE
        if (
            not isinstance(normalize_lufs, int | float)
            or not math.isfinite(normalize_lufs)
            or not low <= normalize_lufs <= high
        ):
            raise RequestError(
                f"normalize_lufs must be in [{low:g}, {high:g}] LUFS (e.g. -14), got {normalize_lufs!r}."
            )
    if ideas is not None:
        ideas = tuple(ideas)
        if not ideas:
            raise RequestError("ideas must not be empty: give one idea per prompt.")
        request = replace(request, prompts=prompts_from_ideas(ideas))
    request = replace(request, seed=choose_seed() if request.seed is None else check_seed(request.seed))
    chosen = pick_device(device)
    check_precision(precision, chosen)  # before the snapshot's verification reads every byte

    # 2. The id: the model's bytes, the request, the inputs' bytes, the output settings, the runtime.
    spec = wb.spec("model", model)
    _, _, inventory = open_snapshot(wb, model, engine_of(spec))
    melody = read_audio(request.melody, "melody") if request.melody is not None else None
    continuation = (
        read_audio(request.continuation, "continuation") if request.continuation is not None else None
    )
    runtime = {"device": chosen.type, "dtype": pick_dtype(dtype, chosen), "threads": pick_threads(threads)}
    if (
        precision != "exact"
    ):  # exact gives plain transformers' bytes: ids made before modes existed stay valid
        runtime["precision"] = precision
    identity = _identity(
        engine_of(spec), inventory.digest, request, melody, continuation, fmt, normalize_lufs, runtime
    )
    new_id = artifact_id(identity)
    if not force and (existing := find_artifact(wb, new_id)) is not None:
        return Generated(existing, cached=True, result=None)

    # 3. Load (or reuse) the engine and generate.
    engine = load_engine(
        wb, model, device=device, dtype=dtype, threads=threads, precision=precision, inventory=inventory
    )
    request = replace(request, melody=melody, continuation=continuation)
    result = engine.generate(request, progress=progress)

    # 4. Write the artifact whole: media, inputs, previews, manifest.
    started = time.perf_counter()

    def write(folder: Path) -> dict[str, Any]:
        outputs = _write_outputs(folder, result, fmt, normalize_lufs, previews)
        inputs = {
            name: _keep_input(folder, name, clip)
            for name, clip in (("melody", melody), ("continuation", continuation))
        }
        return _manifest(
            new_id,
            identity,
            engine,
            result,
            ideas,
            inputs,
            outputs,
            fmt,
            normalize_lufs,
            time.perf_counter() - started,
        )

    artifact = write_artifact(wb, new_id, write)
    return Generated(artifact, cached=False, result=result)


def reproduce(wb: Workbench, artifact: str, progress: Progress | None = None) -> Reproduction:
    """Regenerate an artifact from its manifest and compare it with the stored files.

    Nothing is written to the artifact store. The verdict is "identical" (every fresh
    output has the sha256 the manifest records, and so has the stored file) or the drift
    from the stored file: the largest absolute sample difference and the SNR.

    Example:
        >>> reproduce(Workbench.open(), "5f0c8a4b").summary()  # doctest: +SKIP
        '5f0c8a4b2d1e9f37: identical (1 outputs, same sha256)'
    """
    # 1. Read the manifest and rebuild the request, its inputs from the artifact's own copies.
    stored = load_artifact(wb, artifact)
    m = stored.manifest
    if m.get("kind") != "music":
        raise ArtifactError(
            f"Artifact {stored.id} is a {m.get('kind')!r} artifact; only music can be reproduced."
        )
    req = dict(m["request"])
    for name in ("melody", "continuation"):
        kept = m["inputs"].get(name)
        req[name] = read_audio(stored.path / kept["file"], name) if kept else None
    request = MusicRequest(**{**req, "prompts": tuple(req["prompts"])})
    runtime = m["runtime"]

    # 2. Note what differs between then and now.
    differences = []
    now_packages = package_versions()
    for name, then in m["packages"].items():
        if now_packages.get(name) != then:
            differences.append(f"{name} {then} -> {now_packages.get(name)}")
    device = runtime["device"]
    if device == "cuda" and not torch.cuda.is_available():
        differences.append("device cuda -> cpu (no GPU here)")
        device = "cpu"

    # 3. Regenerate with the recorded settings and render the outputs the same way.
    engine = load_engine(
        wb,
        m["model"]["name"],
        device=device,
        dtype=runtime["dtype"],
        threads=runtime["threads"],
        precision=runtime.get("precision", "exact"),
    )
    if engine.loaded.inventory.digest != m["model"]["inventory_digest"]:
        differences.append(f"model {m['model']['name']} snapshot changed (inventory digest differs)")
    result = engine.generate(request, progress=progress)
    fmt, target = m["output"]["format"], m["output"]["normalize_lufs"]
    with tempfile.TemporaryDirectory(prefix="harmonia-reproduce-") as tmp:
        fresh = _write_outputs(Path(tmp), result, fmt, target, previews=False)
        drifts = []
        for then, now in zip(m["outputs"], fresh, strict=True):
            kept = stored.path / then["path"]
            if sha256_file(kept) != then["sha256"]:
                differences.append(
                    f"stored {then['path']} no longer matches its manifest sha256 (changed after writing)"
                )
            a, _ = sf.read(kept, dtype="float32", always_2d=True)
            b, _ = sf.read(Path(tmp) / now["path"], dtype="float32", always_2d=True)
            same = then["sha256"] == now["sha256"] == sha256_file(kept)
            drifts.append(_drift(then["path"], same, a, b))
    return Reproduction(stored.id, tuple(drifts), tuple(differences))


# -- helpers -----------------------------------------------------------------------------------
def _request_json(
    request: MusicRequest, melody: Audio | None, continuation: Audio | None, full: bool
) -> dict[str, Any]:
    def clip(audio: Audio | None):
        if audio is None:
            return None
        return audio.describe() if full else {"sha256": audio.sha256}

    return {
        "prompts": list(request.prompts),
        "duration_s": float(request.duration_s),
        "seed": request.seed,
        "temperature": float(request.temperature),
        "top_k": int(request.top_k),
        "top_p": float(request.top_p),
        "guidance_scale": float(request.guidance_scale),
        "extend_stride_s": None if request.extend_stride_s is None else float(request.extend_stride_s),
        "melody": clip(melody),
        "continuation": clip(continuation),
    }


def _identity(engine, digest, request, melody, continuation, fmt, normalize_lufs, runtime) -> dict[str, Any]:
    packages = package_versions()
    return {
        "schema": MANIFEST_SCHEMA,
        "kind": "music",
        "engine": engine,
        "model_inventory_digest": digest,
        "request": _request_json(request, melody, continuation, full=False),
        "output": {"format": fmt, "normalize_lufs": normalize_lufs},
        "runtime": runtime,
        "packages": {name: packages[name] for name in IDENTITY_PACKAGES},
    }


def _write_outputs(folder: Path, result: MusicResult, fmt: str, normalize_lufs, previews: bool) -> list[dict]:
    """Write take-N.<fmt> per batch item (and take-N.png); return their manifest entries."""
    outputs = []
    for i, samples in enumerate(result.audio):
        if normalize_lufs is not None:
            samples = normalize_loudness(samples, result.sample_rate, normalize_lufs)
        path = write_audio(folder / f"take-{i}.{fmt}", samples, result.sample_rate, fmt)
        entry = {"path": path.name, "prompt": result.request.prompts[i], "sha256": sha256_file(path)}
        entry.update(facts(samples, result.sample_rate))
        if previews:
            from harmonia.plots import save_audio_figure

            preview = save_audio_figure(
                folder / f"take-{i}.png", samples, result.sample_rate, result.request.prompts[i]
            )
            entry["preview"] = preview.name
        outputs.append(entry)
    return outputs


def _keep_input(folder: Path, name: str, clip: Audio | None) -> dict | None:
    """Copy an input into the artifact (inputs/NAME.ext) so the artifact reproduces on its own."""
    if clip is None:
        return None
    (folder / "inputs").mkdir(exist_ok=True)
    if clip.source is not None:
        target = folder / "inputs" / f"{name}{Path(clip.source).suffix.lower()}"
        shutil.copyfile(clip.source, target)
    else:
        target = write_audio(folder / "inputs" / f"{name}.wav", clip.samples, clip.sample_rate, "wav")
    return {**clip.describe(), "file": str(target.relative_to(folder))}


def _manifest(
    new_id, identity, engine, result, ideas, inputs, outputs, fmt, normalize_lufs, write_s
) -> dict[str, Any]:
    loaded = engine.loaded
    request = _request_json(result.request, result.melody, result.continuation, full=True)
    for name in ("melody", "continuation"):  # the manifest's request points at the kept copies
        request[name] = (
            None if inputs[name] is None else {"sha256": inputs[name]["sha256"], "file": inputs[name]["file"]}
        )
    return {
        "schema": MANIFEST_SCHEMA,
        "id": new_id,
        "kind": "music",
        "created": utc_now(),
        "ideas": [idea.to_json() for idea in ideas] if ideas else None,
        "request": request,
        "seed": result.request.seed,
        "model": loaded.describe(),
        "engine": {
            **engine.describe(),
            "long_form": {
                "windows": result.windows,
                "window_s": result.window_s,
                "stride_s": result.stride_s,
            },
        },
        "packages": package_versions(),
        "runtime": {
            "device": torch.device(loaded.device).type,
            "dtype": loaded.dtype,
            "precision": loaded.precision,
            "threads": loaded.threads,
            "seeding": "torch.manual_seed(seed) on a forked RNG, per request",
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "platform": platform.platform(),
            "machine": platform.machine(),
        },
        "timings": {
            "load_s": round(loaded.load_s, 4),
            "generate_s": round(result.generate_s, 4),
            "write_s": round(write_s, 4),
            "steps": result.steps,
            "steps_per_s": round(result.steps / result.generate_s, 3) if result.generate_s else None,
            "real_time_factor": round(result.real_time_factor, 4),
        },
        "output": {"format": fmt, "normalize_lufs": normalize_lufs},
        "inputs": inputs,
        "outputs": outputs,
        "identity": identity,
    }


def _drift(path: str, same_bytes: bool, then: np.ndarray, now: np.ndarray) -> OutputDrift:
    if then.shape != now.shape:
        n = min(len(then), len(now))
        then, now = then[:n], now[:n]
    diff = (then.astype(np.float64) - now.astype(np.float64)) if then.size else np.zeros(1)
    noise = float(np.sum(diff**2))
    signal = float(np.sum(then.astype(np.float64) ** 2))
    snr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return OutputDrift(path, same_bytes, float(np.max(np.abs(diff))) if diff.size else 0.0, snr)
