"""Wan (diffusers' WanPipeline): text to video, and the music video cut to its soundtrack.

The engine loads a verified snapshot in diffusers' layout (``model_index.json`` naming
WanPipeline and components from diffusers and transformers only; safetensors,
``local_files_only=True``, no remote code; reloading Wan needs ``accelerate``) and runs the
pipeline once per clip, each from its own ``torch.Generator`` seeded with the clip's seed
(the initial latents; Wan 2.1's UniPC flow scheduler draws nothing else). Progress is
reported after every denoising step through ``callback_on_step_end``; cancelling raises
from it, between steps. Frames come out as uint8 RGB ``[frames, height, width, 3]``;
harmonia.media writes them as an H.264 MP4 whose bytes repeat.

What the model can take is read from the snapshot's configs and checked before it loads:
widths and heights are multiples of the VAE's spatial factor times the transformer's patch
(16 for Wan 2.1), a clip has ``4k + 1`` frames (the VAE packs 4 frames into one latent after
the first), and its rotary position table bounds the latent grid.

A music video (a soundtrack and a shot list, harmonia.shots) makes one clip per shot: the
shot's frames rounded up to the next valid count, generated from seed ``seed + i`` and cut
back; the clips are joined and the soundtrack goes in as the video's audio, so the video
lasts as long as the track.

Before a run, :meth:`WanEngine.estimate` says how long it will take from the seconds per
step measured on this machine (harmonia.calibration's cache; a step is measured when there
is none for the size), and every run updates that measurement.

The engine knows nothing about artifacts, files it does not read, or the UI.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harmonia.audio import Audio, read_audio
from harmonia.engines.base import (
    DTYPES,
    SEED_LIMIT,
    TORCH_LOCK,
    Cancel,
    LoadedModel,
    Progress,
    Runtime,
    Steps,
    Timer,
    check_memory,
    check_seed,
    choose_seed,
    open_snapshot,
    pick_device,
    pick_dtype,
    pick_threads,
    pinned_threads,
    quiet_transformers,
    seeded,
)
from harmonia.errors import RequestError
from harmonia.media import AudioTake, VideoTake
from harmonia.requests import VideoRequest, check_limits, check_prompt_texts
from harmonia.workbench import Workbench

PRECISIONS = ("exact",)
LIBRARIES = ("diffusers", "transformers")  # where a snapshot's components may come from
PIPELINE_TEXT_TOKENS = 512  # WanPipeline's max_sequence_length (UMT5's padding length)


@dataclass(frozen=True)
class ModelFacts:
    """What a Wan snapshot's configs say about the videos it can make."""

    multiple: int  # widths and heights: the VAE's spatial factor × the transformer's patch (16)
    temporal: int  # frames: temporal × k + 1 (4)
    max_latent: int  # the rotary table's length: latent frames and patches per side at most
    max_text_tokens: int

    @property
    def max_frames(self) -> int:
        return self.temporal * (self.max_latent - 1) + 1

    @property
    def max_side(self) -> int:
        return self.multiple * self.max_latent


def model_facts(snapshot: Path) -> ModelFacts:
    """Read a snapshot's configs (no weights); RequestError if it is not a WanPipeline."""
    try:
        index = json.loads((snapshot / "model_index.json").read_text(encoding="utf-8"))
        transformer = json.loads((snapshot / "transformer" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((snapshot / "vae" / "config.json").read_text(encoding="utf-8"))
        tokenizer = json.loads((snapshot / "tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8"))
        if index.get("_class_name") != "WanPipeline":
            raise KeyError("_class_name")
        patch = transformer.get("patch_size", [1, 2, 2])
        spatial = int(vae.get("scale_factor_spatial") or 8)
        temporal = int(vae.get("scale_factor_temporal") or 4)
        tokens = min(int(tokenizer.get("model_max_length", PIPELINE_TEXT_TOKENS)), PIPELINE_TEXT_TOKENS)
        return ModelFacts(
            spatial * int(patch[1]), temporal, int(transformer.get("rope_max_seq_len", 1024)), tokens
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        raise RequestError(
            f"{snapshot} is not a Wan snapshot (model_index.json for WanPipeline, with transformer/, vae/ and "
            "tokenizer/ configs). Pick a wan model."
        ) from None


def _check_components(snapshot: Path, name: str) -> None:
    """Every component of model_index.json comes from diffusers or transformers (no custom code)."""
    index = json.loads((snapshot / "model_index.json").read_text(encoding="utf-8"))
    for component, entry in index.items():
        if component.startswith("_") or not isinstance(entry, list) or entry == [None, None]:
            continue  # settings, and components a pipeline leaves out (transformer_2 of Wan 2.1)
        if entry[0] not in LIBRARIES:
            raise RequestError(
                f"Model '{name}': model_index.json takes component '{component}' from {entry[0]!r}; Harmonia "
                "loads components from diffusers and transformers only and never runs a repo's own code."
            )


@contextmanager
def _quiet() -> Any:
    """Silence diffusers' and transformers' logs and progress bars for the block."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        with quiet_transformers():
            yield
    finally:
        diffusers_logging.set_verbosity(level)
        if bars:
            diffusers_logging.enable_progress_bar()


def clip_frames(frames: int, temporal: int = 4) -> int:
    """The fewest frames a clip can have (``temporal × k + 1``) that hold ``frames``."""
    return temporal * math.ceil(max(frames - 1, 0) / temporal) + 1


def _nearest(value: int, multiple: int, offset: int = 0, low: int = 1) -> str:
    """'A and B': the valid values (``multiple × k + offset``) either side of ``value``."""
    below = (value - offset) // multiple * multiple + offset
    above = below + multiple
    return f"{above}" if below < low else f"{below} and {above}"


@dataclass(frozen=True)
class Run:
    """One pipeline call: a clip of ``make`` frames, the first ``keep`` kept."""

    prompt: str
    seed: int
    keep: int
    make: int


@dataclass(frozen=True, eq=False)
class VideoResult:
    """What a generation produced: one video per prompt, or one music video."""

    videos: tuple[np.ndarray, ...]  # uint8 [frames, height, width, 3] each
    prompts: tuple[str, ...]
    fps: float
    soundtrack: Audio | None
    request: VideoRequest  # as run: its seed filled in, its shots as given
    steps: int
    generate_s: float
    run_details: tuple[dict, ...] = field(default=(), repr=False)
    timeline: dict | None = None

    @property
    def takes(self) -> tuple[VideoTake, ...]:
        track = None
        if self.soundtrack is not None:
            track = AudioTake(self.soundtrack.samples, self.soundtrack.sample_rate)
        return tuple(
            VideoTake(frames, self.fps, track, prompt)
            for frames, prompt in zip(self.videos, self.prompts, strict=True)
        )

    @property
    def inputs(self) -> dict[str, Audio | None]:
        return {"soundtrack": self.soundtrack}

    def details(self) -> dict[str, Any]:
        """The manifest's engine entry for this run: each clip (or shot) with its seed and frames."""
        key = "shots" if self.timeline is not None else "clips"
        out: dict[str, Any] = {key: list(self.run_details)}
        if self.timeline is not None:
            out["timeline"] = self.timeline
        return out


class WanEngine:
    """A loaded Wan pipeline.

    Example:
        >>> engine = WanEngine.load(Workbench.open(), "tiny-wan")  # doctest: +SKIP
        >>> result = engine.generate(VideoRequest("a red kite", width=64, height=64, frames=9, steps=4, seed=0))  # doctest: +SKIP
        >>> result.videos[0].shape  # doctest: +SKIP
        (9, 64, 64, 3)
    """

    name: ClassVar[str] = "wan"
    kind: ClassVar[str] = "video"
    code_version: ClassVar[int] = (
        2  # bump when a change here changes output bytes (2: the MP4 writer's x264 without AVX-512)
    )
    packages: ClassVar[tuple[str, ...]] = (
        "torch",
        "diffusers",
        "transformers",
        "ftfy",
        "av",
        "librosa",
        "numpy",
    )
    request_type: ClassVar[type] = VideoRequest
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS

    def __init__(self, pipe, loaded: LoadedModel, facts: ModelFacts, state_dir: Path):
        self.pipe = pipe
        self.loaded = loaded
        self.facts = facts
        self.state_dir = state_dir
        self.device = torch.device(loaded.device)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        wb: Workbench,
        name: str,
        runtime: Runtime | None = None,
        allow_pickle: bool = False,
        **settings: Any,
    ) -> WanEngine:
        """Load a declared, present and verified Wan snapshot.

        Args:
            wb: the workbench.
            name: a model name from params.yaml whose ``engine:`` is wan.
            runtime: device, dtype ("float32", the reproducible default, or "bfloat16";
                "float16" on a GPU), threads (recorded: they change the bits on CPU).
            allow_pickle: accept pickled weights (never needed: diffusers' layout is safetensors).
        """
        runtime = runtime or Runtime(**settings)
        cls.check_runtime(runtime)
        chosen = pick_device(runtime.device)
        if importlib.util.find_spec("accelerate") is None:
            raise RequestError(
                "the wan engine needs the accelerate package to load Wan snapshots; install it "
                "(pip install accelerate==1.16.0) and try again."
            )
        from diffusers import WanPipeline

        with TORCH_LOCK, Timer() as timer:
            spec, path, inventory = open_snapshot(wb, name, cls.name, allow_pickle)
            dtype, threads = pick_dtype(runtime.dtype, chosen), pick_threads(runtime.threads)
            facts = model_facts(path)
            _check_components(path, name)
            with pinned_threads(threads), _quiet():
                pipe = WanPipeline.from_pretrained(
                    path, local_files_only=True, use_safetensors=not allow_pickle, dtype=DTYPES[dtype]
                )
            pipe = pipe.to(chosen)
            pipe.set_progress_bar_config(disable=True)
        loaded = LoadedModel(name, path, spec, inventory, str(chosen), dtype, threads, timer.seconds)
        from harmonia.media import x264_params

        params = x264_params()
        why = "AVX-512 left out" if params.startswith("asm=") else "libx264 not found: no macroblock tree"
        loaded.choices["x264"] = f"{params} (the MP4 writer's x264 options: {why})"
        return cls(pipe, loaded, facts, wb.state_dir)

    def describe(self) -> dict:
        """The manifest's engine entry."""
        return {
            "name": self.name,
            "class": type(self.pipe).__name__,
            "scheduler": type(self.pipe.scheduler).__name__,
            "size_multiple": self.facts.multiple,
            "frames_rule": f"{self.facts.temporal}k+1",
            "max_frames": self.facts.max_frames,
        }

    # -- checks ----------------------------------------------------------------------------
    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None:
        if runtime.precision not in PRECISIONS:
            raise RequestError(
                f"precision must be exact for the wan engine (choose float32 or bfloat16 with dtype), "
                f"got {runtime.precision!r}."
            )

    @classmethod
    def check_resources(cls, request: VideoRequest, snapshot: Path) -> None:
        """The weights twice over, and the decoded frames (float32, with the VAE's working room)."""
        weights = sum(p.stat().st_size for p in snapshot.rglob("*.safetensors"))
        facts = model_facts(snapshot)
        frames = facts.max_frames if request.music_video else request.frames
        video = 4 * 3 * request.width * request.height * min(frames, facts.max_frames) * 8
        check_memory(
            2 * weights + video,
            f"model '{snapshot.name}' ({weights / 2**30:.1f} GiB of weights) at {request.width}x{request.height}",
            "use a smaller size or fewer frames, close other work, or use a machine with more memory.",
        )

    @classmethod
    def fast_paths(cls, wb: Workbench, snapshot: Path, runtime: Runtime) -> tuple[tuple[str, str], ...]:
        """diffusers' own paths for the model; for the MP4, the x264 options the writer passes
        (the CPU's SIMD levels less AVX-512, or no macroblock tree where libx264 cannot be
        asked): they change the file's bytes, so they are part of the id."""
        from harmonia.media import x264_params

        return (("x264", x264_params()),)

    @classmethod
    def check(cls, request: VideoRequest, snapshot: Path) -> VideoRequest:
        """Every check that needs no loaded model (the snapshot's configs and tokenizer are enough).

        Returns the request as it will run: its seed drawn when None, its soundtrack read, its
        shots read and checked against the track (their cuts are snapped when it runs).
        """
        facts = model_facts(snapshot)
        request = _check_request(request, facts, snapshot.name)
        tokenizer = _tokenizer(snapshot)
        texts = [(f"prompts[{i}]", p) for i, p in enumerate(request.prompts)]
        texts += [(f"shot {i}: the prompt", s.prompt) for i, s in enumerate(request.shots or ())]
        if request.negative_prompt is not None:
            texts.append(("negative_prompt", request.negative_prompt))
        for where, text in texts:  # the pipeline would cut a longer one silently
            count = len(tokenizer(text)["input_ids"])
            if count > facts.max_text_tokens:
                raise RequestError(
                    f"{where} is {count} tokens long; the model's text encoder reads at most "
                    f"{facts.max_text_tokens}. Shorten it."
                )
        return request

    # -- planning and the time estimate ----------------------------------------------------
    def plan(self, request: VideoRequest) -> tuple[list[Run], Any]:
        """The pipeline calls a checked request makes, and its shots' timeline (None for clips)."""
        return _plan(request, self.facts)

    def _speed_name(self) -> str:
        inventory = self.loaded.inventory
        which = inventory.digest[:16] if inventory is not None else self.loaded.name
        return f"wan {which} {self.loaded.device} {self.loaded.dtype}"

    @staticmethod
    def _shape(request: VideoRequest, make: int) -> str:
        return f"{request.width}x{request.height}x{make} cfg={int(request.guidance_scale > 1)}"

    def estimate(self, request: VideoRequest) -> str:
        """How long a request will take here: its steps × the seconds per step measured on this
        machine (one step is measured first when there is no measurement for a size)."""
        from harmonia.calibration import cpu_model, record_step_seconds, step_seconds

        request = type(self).check(request, self.loaded.path)
        runs, _ = self.plan(request)
        total, measured, unknown_other = 0.0, [], False
        for make in sorted({r.make for r in runs}):
            count = sum(1 for r in runs if r.make == make)
            shape = self._shape(request, make)
            speed = step_seconds(self.state_dir, self._speed_name(), shape, self.loaded.threads)
            how = "cached"
            if speed is None:
                with TORCH_LOCK:
                    seconds = self._time_one_step(request, make)
                record_step_seconds(self.state_dir, self._speed_name(), shape, self.loaded.threads, seconds)
                speed, how = {"step_s": seconds}, "measured now"
            unknown_other = unknown_other or "other_s" not in speed
            total += count * (request.steps * speed["step_s"] + speed.get("other_s", 0.0))
            measured.append(f"{speed['step_s']:.3g} s/step at {shape.split(' ')[0]} ({how})")
        where = f"{self.loaded.device}" + (f", {cpu_model()}" if self.device.type == "cpu" else "")
        extra = "; decoding not measured yet" if unknown_other else ""
        return (
            f"estimate: about {_duration(total)} for {len(runs)} clip(s) of {request.steps} steps: "
            f"{'; '.join(measured)} on this machine ({where}, {self.loaded.threads} threads, "
            f"{self.loaded.dtype}){extra}"
        )

    def _time_one_step(self, request: VideoRequest, make: int) -> float:
        """Seconds of one denoising step (the transformer once, twice with guidance) at a size."""
        transformer = self.pipe.transformer
        config = transformer.config
        latent = (
            1,
            int(config.in_channels),
            (make - 1) // self.facts.temporal + 1,
            request.height // (self.facts.multiple // int(config.patch_size[1])),
            request.width // (self.facts.multiple // int(config.patch_size[2])),
        )
        dtype, passes = transformer.dtype, 2 if request.guidance_scale > 1 else 1
        generator = torch.Generator("cpu").manual_seed(0)
        latents = torch.randn(latent, generator=generator).to(self.device, dtype)
        text = torch.randn((1, self.facts.max_text_tokens, int(config.text_dim)), generator=generator)
        text = text.to(self.device, dtype)
        timestep = torch.tensor([500.0], device=self.device)
        with torch.inference_mode(), pinned_threads(self.loaded.threads):
            start = time.perf_counter()
            for _ in range(passes):
                transformer(
                    hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False
                )
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter() - start

    # -- generation ------------------------------------------------------------------------
    def generate(
        self, request: VideoRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> VideoResult:
        """Generate a clip per prompt, or a music video; uint8 frames ``[frames, height, width, 3]``.

        Args:
            request: the :class:`VideoRequest`.
            progress: ``progress(done, total)`` after every denoising step (all clips together).
            cancel: a ``threading.Event`` (or a function) that, once set, stops the generation
                at the next step with :class:`harmonia.errors.Cancelled`.
        """
        with TORCH_LOCK:
            return self._generate(request, progress, cancel)

    def _generate(
        self, request: VideoRequest, progress: Progress | None, cancel: Cancel | None
    ) -> VideoResult:
        from harmonia.calibration import record_step_seconds

        # 1. Check inputs; plan the clips (a music video: one per shot, its cuts snapped to bars).
        request = type(self).check(request, self.loaded.path)
        runs, line = self.plan(request)
        step = Steps(len(runs) * request.steps, progress, cancel)

        # 2. One pipeline call per clip, each from its own seed; keep the frames it needs.
        clips, details = [], []
        with torch.inference_mode(), pinned_threads(self.loaded.threads), _quiet(), Timer() as timer:
            for i, run in enumerate(runs):
                frames, step_s, other_s = self._run(run, request, step)
                clips.append(frames[: run.keep])
                details.append(
                    {"index": i, "seed": run.seed, "frames": run.keep, "generated_frames": run.make}
                )
                shape = self._shape(request, run.make)
                record_step_seconds(
                    self.state_dir, self._speed_name(), shape, self.loaded.threads, step_s, other_s
                )

        # 3. A music video: the clips joined, the shots as cut.
        if line is not None:
            for detail, shot, given in zip(details, line.shots, request.shots, strict=True):
                detail.update(
                    prompt=shot.prompt, start_s=round(shot.start_s, 6), end_s=round(shot.end_s, 6),
                    given_start_s=given.start_s, given_end_s=given.end_s,
                )  # fmt: skip
            videos = (np.concatenate(clips),)
            prompts = (f"music video: {len(runs)} shots",)
        else:
            for detail, run in zip(details, runs, strict=True):
                detail["prompt"] = run.prompt
            videos, prompts = tuple(clips), tuple(run.prompt for run in runs)
        return VideoResult(
            videos=videos,
            prompts=prompts,
            fps=float(request.fps),
            soundtrack=request.soundtrack,
            request=request,
            steps=step.total,
            generate_s=timer.seconds,
            run_details=tuple(details),
            timeline=None if line is None else line.to_json(),
        )

    def _run(self, run: Run, request: VideoRequest, step: Steps) -> tuple[np.ndarray, float, float]:
        """One pipeline call: uint8 ``[make, height, width, 3]``, its seconds per step and outside them."""
        marks: list[float] = []

        def on_step(pipe, i, t, tensors) -> dict:
            step()
            marks.append(time.perf_counter())
            return {}

        generator = torch.Generator("cpu").manual_seed(run.seed)  # the initial latents
        start = time.perf_counter()
        with seeded(run.seed, self.device):  # anything else drawing from torch's global stream
            out = self.pipe(
                prompt=run.prompt,
                negative_prompt=request.negative_prompt,
                height=request.height,
                width=request.width,
                num_frames=run.make,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                generator=generator,
                output_type="np",
                max_sequence_length=self.facts.max_text_tokens,
                callback_on_step_end=on_step,
            )
        total = time.perf_counter() - start
        frames = np.asarray(out.frames[0], dtype=np.float32)  # [frames, height, width, 3] in [0, 1]
        video = np.ascontiguousarray((np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8))
        step_s = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else marks[0] - start
        return video, step_s, max(total - len(marks) * step_s, 0.0)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


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


def _plan(request: VideoRequest, facts: ModelFacts) -> tuple[list[Run], Any]:
    """The pipeline calls of a checked request, and the music video's timeline (None for clips)."""
    if not request.music_video:
        return [Run(p, request.seed, request.frames, request.frames) for p in request.prompts], None
    line = _timeline(request.soundtrack, request.shots, request.fps)
    runs = [
        Run(shot.prompt, request.seed + i, n, clip_frames(n, facts.temporal))
        for i, (shot, n) in enumerate(zip(line.shots, line.frames, strict=True))
    ]
    return runs, line


def _check_request(r: VideoRequest, facts: ModelFacts, name: str) -> VideoRequest:
    """Check every parameter of a request for a model; return it as it will run."""
    from harmonia.shots import read_shots

    # 1. What to make: clips from prompts, or a music video from a soundtrack and shots.
    if not isinstance(r.prompts, tuple):
        raise RequestError(f"prompts must be a list of strings, got {type(r.prompts).__name__}.")
    if r.music_video:
        if r.prompts:
            raise RequestError(
                "a music video takes its prompts from its shots; give PROMPTs or --soundtrack and --shots, not both."
            )
        if r.soundtrack is None:
            raise RequestError(
                "a music video needs a soundtrack: give --soundtrack ID (a music or song artifact) or an audio file."
            )
        if r.shots is None:
            raise RequestError(
                "a music video needs a shot list: give --shots FILE|ID (a JSON list of {start, end, prompt}, "
                "or the id of a 'harmonia write shots' artifact)."
            )
    elif not r.prompts:
        raise RequestError(
            "prompts must not be empty: give a prompt, or --soundtrack and --shots for a music video."
        )
    check_prompt_texts(r.prompts, r.negative_prompt, "describe what the clip shows")

    # 2. Ranges and the seed.
    check_limits(r)
    seed = choose_seed() if r.seed is None else check_seed(r.seed)

    # 3. What the model takes: sizes in multiples, 4k+1 frames, within its position table.
    m = facts.multiple
    for what, value in (("width", r.width), ("height", r.height)):
        if value % m:
            raise RequestError(
                f"{what} must be a multiple of {m} for model '{name}' (the VAE's and the transformer's "
                f"downsampling), got {value}; the nearest are {_nearest(value, m, low=m)}."
            )
        if value > facts.max_side:
            raise RequestError(
                f"{what} is {value} but model '{name}' makes at most {facts.max_side} pixels a side; "
                f"ask for at most {facts.max_side}."
            )
    t = facts.temporal
    if not r.music_video:
        if (r.frames - 1) % t:
            raise RequestError(
                f"frames must be {t}k+1 for model '{name}' (its VAE packs {t} frames into one after the first), "
                f"got {r.frames}; the nearest are {_nearest(r.frames, t, offset=1)}."
            )
        if r.frames > facts.max_frames:
            raise RequestError(
                f"frames is {r.frames} but model '{name}' makes at most {facts.max_frames} frames a clip; "
                f"ask for at most {facts.max_frames}."
            )
        return replace(r, seed=seed)

    # 4. A music video: the track, the shots, their timing against it, each shot's length.
    soundtrack = read_audio(r.soundtrack, "soundtrack")  # missing, unreadable, empty: one sentence each
    shots = read_shots(r.shots)
    if seed + len(shots) > SEED_LIMIT:
        raise RequestError(
            f"seed {seed} + {len(shots)} shots passes 2**63 (shot i uses seed + i); give a seed below "
            f"{SEED_LIMIT - len(shots)}."
        )
    line = _timeline(soundtrack, shots, r.fps)
    for i, n in enumerate(line.frames):
        if clip_frames(n, t) > facts.max_frames:
            shot = line.shots[i]
            raise RequestError(
                f"shot {i} lasts {shot.end_s - shot.start_s:.2f} s = {n} frames at {r.fps:g} fps (its cuts on the "
                f"bars); model '{name}' makes at most {facts.max_frames} frames ({facts.max_frames / r.fps:.2f} s) "
                "a clip. Split the shot."
            )
    return replace(r, seed=seed, soundtrack=soundtrack, shots=shots)


_TIMELINES: dict[tuple, Any] = {}


def _timeline(track: Audio, shots: tuple, fps: float):
    """The shots' timeline on a track (harmonia.shots.timeline), kept for the last track, shots and fps."""
    from harmonia.shots import timeline

    key = (track.sha256, shots, float(fps))
    if key not in _TIMELINES:
        _TIMELINES.clear()
        _TIMELINES[key] = timeline(shots, track.samples, track.sample_rate, fps)
    return _TIMELINES[key]
