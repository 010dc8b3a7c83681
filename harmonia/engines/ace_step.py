"""ACE-Step 1.5 (diffusers' AceStepPipeline): lyrics and a style to a sung song; repaint, extend, cover.

The engine loads a verified snapshot in diffusers' layout (``model_index.json`` naming
AceStepPipeline, components from diffusers and transformers only; safetensors,
``local_files_only=True``, no remote code) and runs the pipeline once per style prompt: take
``i`` runs from seed ``seed + i``, with its own ``torch.Generator`` for the initial noise and
torch's global stream seeded the same way, because the pipeline encodes source and reference
audio with ``latent_dist.sample()`` without a generator. Progress is reported after every
denoising step through ``callback_on_step_end``; cancelling raises from it, between steps.

Edits take a source song, resampled to the model's rate and padded to whole latent frames:

- ``repaint`` runs the pipeline's repaint task over ``start_s``–``end_s``; the model's output
  then replaces the source only inside the range (with a short crossfade at each edge, inside
  it), so every sample outside the range is the source's own, bit for bit. The manifest
  records that (``outside_max_abs_diff``) and how far the model's own output had drifted
  there (``model_outside_max_abs_diff``: the VAE round trip and the loudness normalisation).
- ``extend`` pads the source with silence before or after and repaints the padding (the
  pipeline has no extend mode); the source's samples are kept the same way, and the new audio
  meets the song without a fade from the padding's silence (``splice``'s offset join).
- ``cover`` runs the cover task (the source's structure through the audio tokenizer, blended
  with plain text-to-music by ``strength``), with an optional timbre ``reference``.

The engine knows nothing about artifacts, files it does not read, or the UI.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harmonia.audio import Audio, conform, is_silent, read_audio
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
    seeded,
)
from harmonia.engines.stable_audio import _check_components, _quiet
from harmonia.errors import AudioError, RequestError
from harmonia.lyrics import (
    TIME_SIGNATURES,
    Lyrics,
    check_key,
    check_language,
    check_lyrics,
    check_time_signature,
)
from harmonia.media import AudioTake
from harmonia.requests import MAX_PROMPT_CHARS, SONG_TASKS, SongRequest, check_limits
from harmonia.workbench import Workbench

PRECISIONS = ("exact",)
MAX_LYRIC_TOKENS = 2048  # the pipeline's max_lyric_length: it would cut longer lyrics silently
MAX_TEXT_TOKENS = 256  # its max_text_length (the prompt template with the style and metadata)
CROSSFADE_S = 0.02  # repaint/extend: the fade from the source into the new audio, inside the range
INSTRUMENTAL = "[inst]"  # what the pipeline is given as lyrics for an instrumental


@dataclass(frozen=True)
class ModelFacts:
    """What an ACE-Step snapshot's configs say."""

    sample_rate: int
    channels: int
    hop: int  # audio samples per latent frame (1920 at 48 kHz: 25 frames/s)
    turbo: bool  # guidance is distilled into the weights: guidance_scale must be 1
    covers: bool  # has the audio tokenizer and detokenizer the cover task needs
    max_duration_s: float


def model_facts(snapshot: Path) -> ModelFacts:
    """Read a snapshot's configs (no weights); RequestError if it is not an AceStepPipeline."""
    try:
        index = json.loads((snapshot / "model_index.json").read_text(encoding="utf-8"))
        transformer = json.loads((snapshot / "transformer" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((snapshot / "vae" / "config.json").read_text(encoding="utf-8"))
        if index.get("_class_name") != "AceStepPipeline":
            raise KeyError("_class_name")
        turbo = bool(transformer.get("is_turbo")) or transformer.get("model_version") == "turbo"
        covers = all(
            isinstance(index.get(c), list) and index[c][0] is not None
            for c in ("audio_tokenizer", "audio_token_detokenizer")
        )
        return ModelFacts(
            int(vae["sampling_rate"]),
            int(vae["audio_channels"]),
            math.prod(vae["downsampling_ratios"]),
            turbo,
            covers,
            600.0,
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise RequestError(
            f"{snapshot} is not an ACE-Step snapshot (model_index.json for AceStepPipeline, with transformer/ "
            "and vae/ configs). Pick an ace-step model."
        ) from None


@dataclass(frozen=True, eq=False)
class SongResult:
    """What a generation produced: one song per style prompt."""

    audio: tuple[np.ndarray, ...]  # float32 [channels, samples] per take
    prompts: tuple[str, ...]
    sample_rate: int
    request: SongRequest  # as run: seed, duration, key canonical, lyrics as text
    source: Audio | None
    reference: Audio | None
    lyrics: Lyrics
    steps: int
    generate_s: float
    take_details: tuple[dict, ...] = field(default=(), repr=False)

    @property
    def takes(self) -> tuple[AudioTake, ...]:
        return tuple(AudioTake(a, self.sample_rate, p) for a, p in zip(self.audio, self.prompts, strict=True))

    @property
    def inputs(self) -> dict[str, Audio | None]:
        return {"source": self.source, "reference": self.reference}

    def details(self) -> dict[str, Any]:
        return {"task": self.request.task, "lyrics": self.lyrics.summary(), "takes": list(self.take_details)}


class AceStepEngine:
    """A loaded ACE-Step pipeline.

    Example:
        >>> engine = AceStepEngine.load(Workbench.open(), "tiny-ace-step")  # doctest: +SKIP
        >>> song = engine.generate(SongRequest("synth pop", lyrics="[verse]\\nhello", duration_s=4, seed=0))  # doctest: +SKIP
        >>> song.audio[0].shape, song.sample_rate  # doctest: +SKIP
        ((2, 192000), 48000)
    """

    name: ClassVar[str] = "ace-step"
    kind: ClassVar[str] = "song"
    code_version: ClassVar[int] = 2  # bump when a change here changes output bytes (2: extend's join)
    packages: ClassVar[tuple[str, ...]] = ("torch", "diffusers", "transformers", "numpy", "soxr")
    request_type: ClassVar[type] = SongRequest
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
    ) -> AceStepEngine:
        """Load a declared, present and verified ACE-Step snapshot (see StableAudioEngine.load)."""
        runtime = runtime or Runtime(**settings)
        cls.check_runtime(runtime)
        chosen = pick_device(runtime.device)
        from diffusers import AceStepPipeline

        with TORCH_LOCK, Timer() as timer:
            spec, path, inventory = open_snapshot(wb, name, cls.name, allow_pickle)
            dtype, threads = pick_dtype(runtime.dtype, chosen), pick_threads(runtime.threads)
            facts = model_facts(path)
            _check_components(path, name)
            with pinned_threads(threads), _quiet():
                pipe = AceStepPipeline.from_pretrained(
                    path, local_files_only=True, use_safetensors=not allow_pickle, dtype=DTYPES[dtype]
                )
            pipe = pipe.to(chosen)
            pipe.set_progress_bar_config(disable=True)
        loaded = LoadedModel(name, path, spec, inventory, str(chosen), dtype, threads, timer.seconds)
        return cls(pipe, loaded, facts)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "class": type(self.pipe).__name__,
            "scheduler": type(self.pipe.scheduler).__name__,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "turbo": self.facts.turbo,
        }

    # -- checks ----------------------------------------------------------------------------
    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None:
        if runtime.precision not in PRECISIONS:
            raise RequestError(
                f"precision must be exact for the ace-step engine (choose float32 or bfloat16 with dtype), "
                f"got {runtime.precision!r}."
            )

    @classmethod
    def check_resources(cls, request: SongRequest, snapshot: Path) -> None:
        weights = sum(p.stat().st_size for p in snapshot.rglob("*.safetensors"))
        check_memory(
            2 * weights,
            f"model '{snapshot.name}' ({weights / 2**30:.1f} GiB of weights)",
            "close other work, or use a machine with more memory.",
        )

    @classmethod
    def fast_paths(cls, wb: Workbench, snapshot: Path, runtime: Runtime) -> tuple[tuple[str, str], ...]:
        return ()

    @classmethod
    def check(cls, request: SongRequest, snapshot: Path) -> SongRequest:
        """Every check that needs no loaded model; returns the request as it will run."""
        facts = model_facts(snapshot)
        request = _check_request(request, facts, snapshot.name)
        tokenizer = _tokenizer(snapshot)
        lyric = f"# Languages\n{request.language}\n\n# Lyric\n{request.lyrics or INSTRUMENTAL}<|endoftext|>"
        count = len(tokenizer(lyric)["input_ids"])
        if count > MAX_LYRIC_TOKENS:
            raise RequestError(
                f"lyrics are {count} tokens long; model '{snapshot.name}' reads at most {MAX_LYRIC_TOKENS}. "
                "Shorten them."
            )
        for i, prompt in enumerate(request.prompts):
            count = len(tokenizer(prompt)["input_ids"])
            if count > MAX_TEXT_TOKENS - 80:  # the template and metadata take the rest
                raise RequestError(
                    f"prompts[{i}] is {count} tokens long; model '{snapshot.name}' reads at most "
                    f"{MAX_TEXT_TOKENS - 80} for the style. Shorten it."
                )
        return request

    # -- generation ------------------------------------------------------------------------
    def generate(
        self, request: SongRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> SongResult:
        """Make one song per style prompt; float32 ``[channels, samples]`` at the model's rate.

        Args:
            request: the :class:`SongRequest` (generate, repaint, extend or cover).
            progress: ``progress(done, total)`` after every denoising step (all takes together).
            cancel: a ``threading.Event`` (or a function) that stops at the next step with
                :class:`harmonia.errors.Cancelled`; nothing is returned.
        """
        with TORCH_LOCK:
            return self._generate(request, progress, cancel)

    def _generate(self, request: SongRequest, progress: Progress | None, cancel: Cancel | None) -> SongResult:
        # 1. Check inputs; the source at the model's rate, padded to whole latent frames.
        request = type(self).check(request, self.loaded.path)
        lyrics = check_lyrics(request.lyrics, request.duration_s)
        source = padded = None
        span = (0, 0)  # the samples the model writes (edits), [start, end)
        if request.source is not None:
            source = conform(request.source, self.sample_rate, self.channels)
            padded, span = self._edit_canvas(source, request)
        reference = None
        if request.reference is not None:
            reference = torch.from_numpy(conform(request.reference, self.sample_rate, self.channels))
        step = Steps(len(request.prompts) * request.steps, progress, cancel)

        # 2. One pipeline call per style prompt, each from its own seed; splice edits into the source.
        audio, details = [], []
        with torch.inference_mode(), pinned_threads(self.loaded.threads), _quiet(), Timer() as timer:
            for i, prompt in enumerate(request.prompts):
                seed = request.seed + i
                raw = self._run(prompt, request, seed, padded, span, reference, step)
                facts: dict[str, Any] = {"prompt": i, "seed": seed}
                if request.task in ("repaint", "extend"):
                    raw, spliced = splice(
                        padded,
                        raw,
                        span,
                        round(CROSSFADE_S * self.sample_rate),
                        padding=request.task == "extend",
                    )
                    facts.update(spliced)
                raw = np.ascontiguousarray(raw[:, : round(request.duration_s * self.sample_rate)])
                facts["samples"] = int(raw.shape[1])
                audio.append(raw)
                details.append(facts)

        return SongResult(
            audio=tuple(audio),
            prompts=request.prompts,
            sample_rate=self.sample_rate,
            request=request,
            source=request.source,
            reference=request.reference,
            lyrics=lyrics,
            steps=step.total,
            generate_s=timer.seconds,
            take_details=tuple(details),
        )

    def _edit_canvas(self, source: np.ndarray, r: SongRequest) -> tuple[np.ndarray, tuple[int, int]]:
        """The audio the pipeline edits (the source, or the source and silence for extend), padded
        to whole latent frames, and the samples ``[start, end)`` it regenerates."""
        rate, n = self.sample_rate, source.shape[1]
        if r.task == "extend":
            extra = round(r.extend_s * rate)
            pad = np.zeros((source.shape[0], extra), dtype=np.float32)
            canvas = np.concatenate([pad, source] if r.before else [source, pad], axis=1)
            span = (0, extra) if r.before else (n, n + extra)
        elif r.task == "repaint":
            canvas, span = source, (round(r.start_s * rate), round(r.end_s * rate))
        else:
            canvas, span = source, (0, n)
        hop = self.facts.hop
        whole = -(-canvas.shape[1] // hop) * hop
        if whole > canvas.shape[1]:
            canvas = np.pad(canvas, ((0, 0), (0, whole - canvas.shape[1])))
        if r.task == "extend" and not r.before:
            span = (span[0], whole)  # the frame padding is new audio too (trimmed after)
        return np.ascontiguousarray(canvas, dtype=np.float32), span

    def _run(self, prompt, r: SongRequest, seed: int, canvas, span, reference, step: Steps) -> np.ndarray:
        """One pipeline call: float32 ``[channels, samples]``; ``step()`` after every denoising step."""
        generator = torch.Generator("cpu").manual_seed(seed)

        def on_step(pipe, i, t, tensors):
            step()  # raises Cancelled between steps
            return {}

        kwargs: dict[str, Any] = {}
        if r.task == "generate":
            kwargs["audio_duration"] = r.duration_s
        else:
            kwargs["src_audio"] = torch.from_numpy(canvas).to(self.device)
            kwargs["audio_duration"] = None
        if r.task in ("repaint", "extend"):
            rate = self.sample_rate
            kwargs.update(task_type="repaint", repainting_start=span[0] / rate, repainting_end=span[1] / rate)
        elif r.task == "cover":
            kwargs.update(task_type="cover", audio_cover_strength=r.strength)
        if reference is not None:
            kwargs["reference_audio"] = reference.to(self.device)
        with seeded(seed, self.device):  # latent_dist.sample() of the source and reference draws from it
            out = self.pipe(
                prompt,
                lyrics=r.lyrics or INSTRUMENTAL,
                vocal_language=r.language,
                num_inference_steps=r.steps,
                guidance_scale=r.guidance_scale,
                shift=r.shift,
                generator=generator,
                bpm=r.bpm,
                keyscale=r.key,
                timesignature=TIME_SIGNATURES[r.time_signature] if r.time_signature else None,
                output_type="np",
                callback_on_step_end=on_step,
                **kwargs,
            )
        return np.ascontiguousarray(out.audios[0], dtype=np.float32)


def splice(
    source: np.ndarray, made: np.ndarray, span: tuple[int, int], fade: int, *, padding: bool = False
) -> tuple[np.ndarray, dict]:
    """The source with ``made`` inside ``span``, joined over ``fade`` samples inside it.

    A repaint fades linearly from the source into the new audio at each edge. An extend's range
    (``padding``) holds no source audio to fade from (a fade from its silence dipped the level
    at the join), so at an edge that meets the song the new audio is offset to start from the
    song's sample there, the offset falling linearly to nothing over ``fade`` samples: no dip, no
    step. Either way every sample outside the span is the source's own.

    Returns the spliced audio and what the manifest records: how far the model's own output
    was from the source outside the span, and that the spliced audio is the source there.
    """
    start, end = span
    fade = max(0, min(fade, (end - start) // 2))
    out = source.copy()
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32) if fade else np.zeros(0, np.float32)
    inside = made[:, start:end].copy()
    if fade and start > 0:  # the join after the song's start (an extend before the song has none)
        if padding:
            inside[:, :fade] += (source[:, start - 1 : start] - made[:, start - 1 : start]) * (1 - ramp)
        else:
            inside[:, :fade] = source[:, start : start + fade] * (1 - ramp) + inside[:, :fade] * ramp
    if fade and end < source.shape[1]:
        if padding:
            inside[:, -fade:] += (source[:, end : end + 1] - made[:, end : end + 1]) * (1 - ramp)[::-1]
        else:
            inside[:, -fade:] = inside[:, -fade:] * (1 - ramp) + source[:, end - fade : end] * ramp
    out[:, start:end] = inside
    outside = np.ones(source.shape[1], dtype=bool)
    outside[start:end] = False
    model_drift = float(np.max(np.abs(made[:, outside] - source[:, outside]))) if outside.any() else 0.0
    kept = float(np.max(np.abs(out[:, outside] - source[:, outside]))) if outside.any() else 0.0
    return out, {
        "range_samples": [int(start), int(end)],
        "crossfade_samples": int(fade),
        "join": "offset" if padding else "crossfade",
        "outside_max_abs_diff": kept,
        "model_outside_max_abs_diff": round(model_drift, 6),
    }


_TOKENIZERS: dict[tuple[str, int], Any] = {}


def _tokenizer(snapshot: Path):
    from transformers import AutoTokenizer

    from harmonia.engines.base import quiet_transformers

    folder = snapshot / "tokenizer"
    key = (str(folder), (folder / "tokenizer_config.json").stat().st_mtime_ns)
    if key not in _TOKENIZERS:
        with quiet_transformers():
            _TOKENIZERS[key] = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return _TOKENIZERS[key]


def _check_request(r: SongRequest, facts: ModelFacts, name: str) -> SongRequest:
    """Check every parameter of a song request for a model; return it as it will run."""
    # 1. Text: styles, lyrics (tags and length come below, once the duration is known), language.
    if not isinstance(r.prompts, tuple) or not r.prompts:
        raise RequestError("prompts must be a non-empty list of styles: describe the song in a few words.")
    for i, prompt in enumerate(r.prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(f"prompts[{i}] is empty: describe the song's style in a few words.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(f"prompts[{i}] has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
    lyrics = r.lyrics if r.lyrics is not None else ""
    if not isinstance(lyrics, str):
        raise RequestError(f"lyrics must be text (or a lyrics artifact), got {type(lyrics).__name__}.")
    check_language(r.language)

    # 2. Ranges, metadata, the seed.
    check_limits(r)
    key = None if r.key is None else check_key(r.key)
    if r.time_signature is not None:
        check_time_signature(r.time_signature)
    if r.task not in SONG_TASKS:
        raise RequestError(f"task must be one of {', '.join(SONG_TASKS)}, got {r.task!r}.")
    if facts.turbo and r.guidance_scale != 1:
        raise RequestError(
            f"guidance_scale is {r.guidance_scale:g} but model '{name}' is a turbo checkpoint (guidance is "
            "distilled into its weights); leave it at 1."
        )
    seed = choose_seed() if r.seed is None else check_seed(r.seed)
    if seed + len(r.prompts) > SEED_LIMIT:
        raise RequestError(f"seed {seed} + {len(r.prompts)} prompts passes 2**63; give a smaller seed.")
    r = replace(r, lyrics=lyrics.strip(), key=key, seed=seed)

    # 3. The task: its source and its range; the song's length.
    if r.task == "generate":
        if r.source is not None or r.reference is not None:
            raise RequestError("source and reference are for edits (repaint, extend, cover); leave them out.")
        duration = float(r.duration_s)
        r = replace(r, start_s=None, end_s=None, extend_s=None, before=False, strength=None)
    else:
        r = _check_edit(r, facts, name)
        duration = r.duration_s
    if duration > facts.max_duration_s:
        raise RequestError(
            f"the song would be {duration:g} s but model '{name}' makes at most {facts.max_duration_s:g} s."
        )
    check_lyrics(r.lyrics, duration)
    return replace(r, duration_s=duration)


def _check_edit(r: SongRequest, facts: ModelFacts, name: str) -> SongRequest:
    """An edit's source (audible audio), range and settings; its duration is the result's length."""
    if r.source is None:
        raise RequestError(f"{r.task} needs a source song: give the artifact id of the song to edit.")
    source = read_audio(r.source, "source")
    if is_silent(source.samples):
        raise AudioError(
            f"source: {source.source or 'the audio'} is silent (peak below -60 dBFS); there is no song to "
            f"{r.task}. Give a song with sound in it."
        )
    length = round(source.duration_s, 6)
    reference = None
    if r.task == "repaint":
        start, end = r.start_s, r.end_s
        if start is None or end is None:
            raise RequestError("repaint needs a range: give --start S and --end S in seconds.")
        if end <= start:
            raise RequestError(
                f"the repaint range {start:g}-{end:g} s is empty: --end must be after --start."
            )
        if end > length:
            raise RequestError(
                f"the repaint range {start:g}-{end:g} s lies outside the song, which is {length:g} s long; "
                f"give --end {length:g} or less."
            )
        r = replace(r, extend_s=None, before=False, strength=None, duration_s=length)
    elif r.task == "extend":
        if r.extend_s is None:
            raise RequestError("extend needs --seconds S: how many seconds to add.")
        r = replace(r, start_s=None, end_s=None, strength=None, duration_s=round(length + r.extend_s, 6))
    else:  # cover
        if not facts.covers:
            raise RequestError(
                f"model '{name}' has no audio tokenizer, which a cover needs; pick an ACE-Step 1.5 model that "
                "ships audio_tokenizer/ and audio_token_detokenizer/."
            )
        strength = 1.0 if r.strength is None else r.strength
        if r.reference is not None:
            reference = read_audio(r.reference, "reference")
            if is_silent(reference.samples):
                raise AudioError(
                    f"reference: {reference.source or 'the audio'} is silent (peak below -60 dBFS); give a clip "
                    "with the timbre to follow, or leave it out."
                )
        r = replace(
            r, start_s=None, end_s=None, extend_s=None, before=False, strength=strength, duration_s=length
        )
    if r.task != "cover" and r.reference is not None:
        raise RequestError("reference (a timbre clip) is for covers only; leave it out.")
    return replace(r, source=source, reference=reference)
