"""Stable Audio (diffusers' StableAudioPipeline): one-shots, seamless loops at a tempo, sound effects.

The engine loads a verified snapshot in diffusers' layout (``model_index.json`` naming
StableAudioPipeline and components from diffusers and transformers only; safetensors,
``local_files_only=True``, no remote code) and runs the pipeline once per take: take ``i``
of every prompt runs from seed ``seed + i`` with its own ``torch.Generator``, which seeds
both the initial latents and the scheduler's SDE noise (CosineDPMSolverMultistepScheduler
seeds its Brownian tree from the generator's seed), so a take's bytes do not depend on the
other takes or prompts. Progress is reported after every denoising step through the
pipeline's legacy ``callback``; cancelling raises from it, between steps.

What the model generated is shaped by type with :mod:`harmonia.samples`: a one-shot is cut
at its first strong onset, faded and peak-normalised (at most 4 s); a loop is generated
``required_length_s`` long and cut to exactly ``bars × beats_per_bar`` beats at ``bpm`` on the
beat grid with its tail folded into its head (the seam and the measured tempo go in the
manifest); a sound effect is trimmed of silence at both ends.

``init`` (a variation of an audio clip) is passed as ``initial_audio_waveforms``: the
pipeline encodes it and adds it to the initial noise, which is scaled to sigma_max (500 for
Stable Audio Open), so the clip is about 1/500 of the starting point and changes the result
only slightly. The pipeline has no strength setting; the README says so.

The engine knows nothing about artifacts, files it does not read, or the UI.
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harmonia.audio import Audio, conform
from harmonia.engines.base import (
    DTYPES,
    TORCH_LOCK,
    Cancel,
    LoadedModel,
    Progress,
    Runtime,
    Steps,
    Timer,
    check_memory,
    open_snapshot,
    pick_device,
    pick_dtype,
    pick_threads,
    pinned_threads,
    quiet_transformers,
    seeded,
)
from harmonia.errors import RequestError
from harmonia.media import AudioTake
from harmonia.requests import SampleRequest
from harmonia.samples import check_sample_request, generated_seconds, shape_take
from harmonia.workbench import Workbench

PRECISIONS = ("exact",)
LIBRARIES = ("diffusers", "transformers")  # where a snapshot's components may come from


@dataclass(frozen=True)
class ModelFacts:
    """What a Stable Audio snapshot's configs say: rate, channels, the longest clip, the text length."""

    sample_rate: int
    channels: int
    hop: int  # audio samples per latent frame
    latent_frames: int  # the DiT's sample_size
    max_duration_s: float  # latent_frames × hop / sample_rate (47.55 s for Stable Audio Open)
    max_text_tokens: int


def model_facts(snapshot: Path) -> ModelFacts:
    """Read a snapshot's configs (no weights); RequestError if it is not a StableAudioPipeline."""
    try:
        index = json.loads((snapshot / "model_index.json").read_text(encoding="utf-8"))
        transformer = json.loads((snapshot / "transformer" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((snapshot / "vae" / "config.json").read_text(encoding="utf-8"))
        projection = json.loads((snapshot / "projection_model" / "config.json").read_text(encoding="utf-8"))
        tokenizer = json.loads((snapshot / "tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8"))
        if index.get("_class_name") != "StableAudioPipeline":
            raise KeyError("_class_name")
        rate, hop = int(vae["sampling_rate"]), math.prod(vae["downsampling_ratios"])
        frames = int(transformer["sample_size"])
        longest = min(frames * hop / rate, float(projection["max_value"]))
        return ModelFacts(
            rate, int(vae["audio_channels"]), hop, frames, longest, int(tokenizer["model_max_length"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise RequestError(
            f"{snapshot} is not a Stable Audio snapshot (model_index.json for StableAudioPipeline, with "
            "transformer/, vae/, projection_model/ and tokenizer/ configs). Pick a stable-audio model."
        ) from None


def _check_components(snapshot: Path, name: str) -> None:
    """Every component of model_index.json comes from diffusers or transformers (no custom code).

    A component of a pipeline's own folder in diffusers is named by that folder
    (``["stable_audio", "StableAudioProjectionModel"]``): that is diffusers' code too.
    """
    import diffusers.pipelines

    index = json.loads((snapshot / "model_index.json").read_text(encoding="utf-8"))
    for component, entry in index.items():
        if component.startswith("_") or entry is None:
            continue
        library = entry[0] if isinstance(entry, list) and entry else None
        in_diffusers = (
            isinstance(library, str) and library.isidentifier() and hasattr(diffusers.pipelines, library)
        )
        if library not in LIBRARIES and not in_diffusers:
            raise RequestError(
                f"Model '{name}': model_index.json takes component '{component}' from {library!r}; Harmonia "
                "loads components from diffusers and transformers only and never runs a repo's own code."
            )


@contextmanager
def _quiet() -> Any:
    """Silence diffusers' and transformers' logs, and two harmless warnings, for the block.

    torchsde warns when float32 sigmas land a hair outside [sigma_min, sigma_max]
    (0.29999998 < 0.3); torch warns that Oobleck's weight_norm is deprecated.
    """
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components..."
    try:
        with quiet_transformers(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Should have t", module="torchsde")
            warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(level)
        if bars:
            diffusers_logging.enable_progress_bar()


@dataclass(frozen=True, eq=False)
class SampleResult:
    """What a generation produced: one take per prompt and take index, shaped by type."""

    audio: tuple[np.ndarray, ...]  # float32 [channels, samples] per take (lengths differ by type)
    prompts: tuple[str, ...]  # the prompt of each take
    sample_rate: int
    request: SampleRequest  # as run: seed, duration, bars filled in
    init: Audio | None
    generated_s: float  # seconds the model generated per take (before shaping)
    steps: int  # denoising steps, all takes together
    generate_s: float
    take_details: tuple[dict, ...] = field(default=(), repr=False)

    @property
    def takes(self) -> tuple[AudioTake, ...]:
        return tuple(
            AudioTake(samples, self.sample_rate, prompt)
            for samples, prompt in zip(self.audio, self.prompts, strict=True)
        )

    @property
    def inputs(self) -> dict[str, Audio | None]:
        return {"init": self.init}

    def details(self) -> dict[str, Any]:
        """What the manifest's engine entry records of this run: each take's seed and shaping facts."""
        return {
            "type": self.request.type,
            "generated_s": round(self.generated_s, 6),
            "takes": list(self.take_details),
        }


class StableAudioEngine:
    """A loaded Stable Audio pipeline.

    Example:
        >>> engine = StableAudioEngine.load(Workbench.open(), "tiny-stable-audio")  # doctest: +SKIP
        >>> result = engine.generate(SampleRequest("kick", type="one-shot", steps=8, seed=0))  # doctest: +SKIP
        >>> result.audio[0].shape[0], result.sample_rate  # doctest: +SKIP
        (2, 44100)
    """

    name: ClassVar[str] = "stable-audio"
    kind: ClassVar[str] = "sample"
    code_version: ClassVar[int] = 1  # bump when a change here changes output bytes
    packages: ClassVar[tuple[str, ...]] = (
        "torch",
        "diffusers",
        "transformers",
        "torchsde",
        "librosa",
        "numpy",
    )
    request_type: ClassVar[type] = SampleRequest
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS

    def __init__(self, pipe, loaded: LoadedModel, facts: ModelFacts):
        self.pipe = pipe
        self.loaded = loaded
        self.facts = facts
        self.device = torch.device(loaded.device)
        self.sample_rate = facts.sample_rate
        self.channels = facts.channels

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        wb: Workbench,
        name: str,
        runtime: Runtime | None = None,
        allow_pickle: bool = False,
        **settings: Any,
    ) -> StableAudioEngine:
        """Load a declared, present and verified Stable Audio snapshot.

        Args:
            wb: the workbench.
            name: a model name from params.yaml whose ``engine:`` is stable-audio.
            runtime: device ("auto", "cpu", "cuda", ...), dtype ("float32", the reproducible
                default, or "bfloat16"; "float16" on a GPU), threads (recorded: they change the
                bits on CPU); precision must be "exact".
            allow_pickle: accept pickled weights (never needed: diffusers' layout is safetensors).
        """
        runtime = runtime or Runtime(**settings)
        cls.check_runtime(runtime)
        chosen = pick_device(runtime.device)
        from diffusers import StableAudioPipeline

        with TORCH_LOCK, Timer() as timer:
            spec, path, inventory = open_snapshot(wb, name, cls.name, allow_pickle)
            dtype, threads = pick_dtype(runtime.dtype, chosen), pick_threads(runtime.threads)
            facts = model_facts(path)
            _check_components(path, name)
            with pinned_threads(threads), _quiet():
                pipe = StableAudioPipeline.from_pretrained(
                    path, local_files_only=True, use_safetensors=not allow_pickle, dtype=DTYPES[dtype]
                )
            pipe = pipe.to(chosen)
            pipe.set_progress_bar_config(disable=True)
        loaded = LoadedModel(name, path, spec, inventory, str(chosen), dtype, threads, timer.seconds)
        return cls(pipe, loaded, facts)

    def describe(self) -> dict:
        """The manifest's engine entry."""
        return {
            "name": self.name,
            "class": type(self.pipe).__name__,
            "scheduler": type(self.pipe.scheduler).__name__,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "max_duration_s": round(self.facts.max_duration_s, 6),
        }

    # -- checks ----------------------------------------------------------------------------
    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None:
        if runtime.precision not in PRECISIONS:
            raise RequestError(
                f"precision must be exact for the stable-audio engine (choose float32 or bfloat16 with dtype), "
                f"got {runtime.precision!r}."
            )

    @classmethod
    def check_resources(cls, request: SampleRequest, snapshot: Path) -> None:
        """The weights, twice over (the pipeline holds them and works beside them), must fit in memory."""
        weights = sum(p.stat().st_size for p in snapshot.rglob("*.safetensors"))
        check_memory(
            2 * weights,
            f"model '{snapshot.name}' ({weights / 2**30:.1f} GiB of weights)",
            "close other work, or use a machine with more memory.",
        )

    @classmethod
    def fast_paths(cls, wb: Workbench, snapshot: Path, runtime: Runtime) -> tuple[tuple[str, str], ...]:
        """None: diffusers' own paths."""
        return ()

    @classmethod
    def check(cls, request: SampleRequest, snapshot: Path) -> SampleRequest:
        """Every check that needs no loaded model (the snapshot's configs and tokenizer are enough).

        Returns the request as it will run: its seed (drawn when None), its duration (one-shot,
        sfx) or grid (loop) filled in, its init audio read.
        """
        facts = model_facts(snapshot)
        request = check_sample_request(request, facts.sample_rate, facts.max_duration_s, snapshot.name)
        tokenizer = _tokenizer(snapshot)
        texts = [("prompts", i, p) for i, p in enumerate(request.prompts)]
        if request.negative_prompt is not None:
            texts.append(("negative_prompt", None, request.negative_prompt))
        for what, i, text in texts:  # the pipeline would cut a longer one silently
            count = len(tokenizer(text)["input_ids"])
            if count > facts.max_text_tokens:
                where = f"{what}[{i}]" if i is not None else what
                raise RequestError(
                    f"{where} is {count} tokens long; the model's text encoder reads at most "
                    f"{facts.max_text_tokens}. Shorten it."
                )
        return request

    # -- generation ------------------------------------------------------------------------
    def generate(
        self, request: SampleRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> SampleResult:
        """Generate samples; one float32 take ``[channels, samples]`` per prompt and take index.

        Args:
            request: the :class:`SampleRequest`.
            progress: ``progress(done, total)`` after every denoising step (all takes together).
            cancel: a ``threading.Event`` (or a function) that, once set, stops the generation
                at the next step with :class:`harmonia.errors.Cancelled`.
        """
        with TORCH_LOCK:
            return self._generate(request, progress, cancel)

    def _generate(
        self, request: SampleRequest, progress: Progress | None, cancel: Cancel | None
    ) -> SampleResult:
        # 1. Check inputs; fix the seed, the length to generate and the init clip.
        request = type(self).check(request, self.loaded.path)
        seconds = generated_seconds(request)
        init = None
        if request.init is not None:
            wave = conform(request.init, self.sample_rate, self.channels)
            init = torch.from_numpy(wave)[None].to(self.device, self.pipe.vae.dtype)  # [1, channels, samples]
        runs = [(p, k) for p in range(len(request.prompts)) for k in range(request.takes)]
        step = Steps(len(runs) * request.steps, progress, cancel)

        # 2. One pipeline call per take, each from its own seed; shape it by type.
        audio, prompts, details = [], [], []
        with torch.inference_mode(), pinned_threads(self.loaded.threads), _quiet(), Timer() as timer:
            for p, k in runs:
                seed = request.seed + k
                raw = self._run(request.prompts[p], request, seconds, seed, init, step)
                shaped, facts = shape_take(raw, self.sample_rate, request, seconds)
                audio.append(shaped)
                prompts.append(request.prompts[p])
                details.append(
                    {"prompt": p, "take": k, "seed": seed, "samples": int(shaped.shape[1]), **facts}
                )

        return SampleResult(
            audio=tuple(audio),
            prompts=tuple(prompts),
            sample_rate=self.sample_rate,
            request=request,
            init=request.init,
            generated_s=seconds,
            steps=step.total,
            generate_s=timer.seconds,
            take_details=tuple(details),
        )

    def _run(
        self, prompt: str, request: SampleRequest, seconds: float, seed: int, init, step: Steps
    ) -> np.ndarray:
        """One pipeline call: float32 ``[channels, samples]``; ``step()`` after every denoising step."""
        generator = torch.Generator("cpu").manual_seed(seed)  # latents and the scheduler's Brownian tree
        with seeded(seed, self.device):  # anything else drawing from torch's global stream
            out = self.pipe(
                prompt,
                negative_prompt=request.negative_prompt,
                audio_end_in_s=seconds,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                generator=generator,
                initial_audio_waveforms=init,
                initial_audio_sampling_rate=self.sample_rate if init is not None else None,
                output_type="np",
                callback=lambda i, t, latents: step(),
                callback_steps=1,
            )
        return np.ascontiguousarray(out.audios[0], dtype=np.float32)


_TOKENIZERS: dict[tuple[str, int], Any] = {}


def _tokenizer(snapshot: Path):
    """The snapshot's tokenizer (loaded once per snapshot folder and config version)."""
    from transformers import AutoTokenizer

    folder = snapshot / "tokenizer"
    key = (str(folder), (folder / "tokenizer_config.json").stat().st_mtime_ns)
    if key not in _TOKENIZERS:
        with quiet_transformers():
            _TOKENIZERS[key] = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return _TOKENIZERS[key]
