"""Requests: what each kind of generation takes, with every field's limits, CLI flag and help.

Requests are frozen dataclasses with units in the names and an explicit seed. A numeric
field declares its :class:`Limit` with :func:`limit`; the engines' checks, the CLI's flags
and the studio's sliders all read it from here, so a limit is written once. A request knows
its JSON form (media inputs by sha256, never by path alone) and names its media inputs in
``INPUTS``. This module imports no torch: the CLI builds its flags from it at start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from harmonia.errors import RequestError

MAX_DURATION_S = 300.0
MAX_PROMPT_CHARS = 2000


def check_prompt_texts(prompts: tuple, negative: Any, what: str) -> None:
    """Each prompt is non-blank text within MAX_PROMPT_CHARS; a negative prompt, if given, too.

    ``what``: the hint for a blank prompt, e.g. "describe the sound in a few words".
    """
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(f"prompts[{i}] is empty: {what}.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(f"prompts[{i}] has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
    if negative is not None and (not isinstance(negative, str) or not negative.strip()):
        raise RequestError(
            f"negative_prompt must be text naming what to avoid, got {negative!r}. Leave it out or describe it."
        )
    if negative is not None and len(negative) > MAX_PROMPT_CHARS:
        raise RequestError(
            f"negative_prompt has {len(negative)} characters; the limit is {MAX_PROMPT_CHARS}."
        )


MAX_TOP_K = 65536  # above the codebook size every token is kept
MAX_IDEA_CHARS = 20_000  # a text request's idea; the model's context may allow fewer (the engine says)
MAX_NEW_TOKENS = 8192
TEXT_TASKS = ("prompt", "lyrics", "shots", "sfx")
SAMPLE_TYPES = ("one-shot", "loop", "sfx")  # as harmonia.samples.SAMPLE_TYPES (which imports librosa)
SLICE_TYPES = ("one-shot", "loop")  # as harmonia.samples.SLICE_TYPES
DECODERS = ("encodec", "mbd")  # how a music model's tokens become audio


def check_decoder(request: Any, engine: str, supported: tuple[str, ...] = ("encodec",)) -> None:
    """A music request's decoder is known and one ``engine`` runs; else a RequestError saying what to use."""
    decoder = request.decoder
    if decoder not in DECODERS:
        raise RequestError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}.")
    if decoder == "mbd" and decoder not in supported:
        raise RequestError(
            f"decoder mbd: Multi-Band Diffusion decodes MAGNeT's EnCodec tokens in the audiocraft worker; the "
            f"{engine} engine decodes with its own EnCodec only. Use --decoder encodec, or a magnet model "
            "whose params.yaml entry names an MBD snapshot (e.g. --model magnet-small-10secs --decoder mbd)."
        )


@dataclass(frozen=True)
class Limit:
    """The allowed range of a numeric request field (the engine's check and the widgets read it)."""

    low: float
    high: float
    unit: str = ""
    low_open: bool = False  # True: the value must be > low
    high_open: bool = False  # True: the value must be < high
    integer: bool = False
    step: float | None = None  # a widget's step

    def check(self, name: str, value: Any) -> None:
        """Raise RequestError naming the field, the range and the value unless ``value`` is in range."""
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if self.integer:
            ok = ok and isinstance(value, int)
        ok = ok and math.isfinite(value)
        if ok:
            ok = (value > self.low if self.low_open else value >= self.low) and (
                value < self.high if self.high_open else value <= self.high
            )
        if not ok:
            unit = f" {self.unit}" if self.unit else ""
            if self.integer and not (self.low_open or self.high_open):
                raise RequestError(
                    f"{name} must be an integer in [{self.low:g}, {self.high:g}]{unit}, got {value!r}."
                )
            lo = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
            hi = f"< {self.high:g}" if self.high_open else f"<= {self.high:g}"
            raise RequestError(f"{name} must be {lo} and {hi}{unit}, got {value!r}.")


def limit(
    default: Any, low: float, high: float, unit: str = "", *, flag: str, help: str = "", **kwargs: Any
) -> Any:
    """A request field with a default, its :class:`Limit`, and its CLI flag and help.

    ``limits`` and ``check_limits`` read the limit; the CLI builds ``--flag`` from it.
    """
    return field(
        default=default, metadata={"limit": Limit(low, high, unit, **kwargs), "flag": flag, "help": help}
    )


def option(
    default: Any,
    *,
    flag: str,
    help: str = "",
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A request field without a numeric range (text, a media input, one of ``choices``), with its
    CLI flag and help; the CLI offers ``choices`` as argparse choices."""
    return field(
        default=default, metadata={"flag": flag, "help": help, "metavar": metavar, "choices": choices}
    )


def options(request_type: type) -> list[tuple[str, dict]]:
    """(field name, metadata) of every request field the CLI offers as a flag, in declaration order."""
    return [(f.name, dict(f.metadata)) for f in fields(request_type) if f.metadata.get("flag")]


def limits(request_type: type) -> dict[str, Limit]:
    """Every limited field of a request type: name -> :class:`Limit` (what widgets bound themselves by)."""
    return {f.name: f.metadata["limit"] for f in fields(request_type) if "limit" in f.metadata}


def check_limits(request: Any) -> None:
    """Check every limited field of a request (optional fields may be None)."""
    for name, bound in limits(type(request)).items():
        value = getattr(request, name)
        if value is not None:
            bound.check(name, value)


@dataclass(frozen=True)
class MusicRequest:
    """One text-to-music generation; a list of prompts is a batch.

    Numeric fields carry their limits (``harmonia.engines.base.limits(MusicRequest)``): the
    engine's check, the CLI and the studio's sliders all read them.

    Example:
        >>> MusicRequest("calm piano, 70 bpm", duration_s=8, seed=1).prompts
        ('calm piano, 70 bpm',)
    """

    # what to make
    prompts: tuple[str, ...] | str
    duration_s: float = limit(
        10.0,
        0,
        MAX_DURATION_S,
        "seconds",
        low_open=True,
        step=1.0,
        flag="--duration",
        help="seconds of audio",
    )
    seed: int | None = None  # None: drawn at random and recorded in the result
    # sampling
    temperature: float = limit(1.0, 0, 10, "(1.0 is neutral)", low_open=True, step=0.05, flag="--temperature")
    top_k: int = limit(250, 0, MAX_TOP_K, "(0 turns it off)", integer=True, step=1, flag="--top-k")
    top_p: float = limit(1.0, 0, 1, "(1.0 turns it off)", low_open=True, step=0.01, flag="--top-p")
    guidance_scale: float = limit(
        3.0, 1, 30, "(1.0 turns guidance off)", step=0.5, flag="--guidance", help="classifier-free guidance"
    )
    # conditioning audio: a file path, harmonia.audio.Audio, or an artifact (harmonia.generation.From)
    melody: Any = option(
        None, flag="--melody", metavar="FILE|ID", help="audio whose melody to follow (melody models only)"
    )
    continuation: Any = option(
        None, flag="--continue", metavar="FILE|ID", help="audio to extend; --duration includes it"
    )
    # long-form: seconds of new audio per extension window (None: 60 % of the model's window)
    extend_stride_s: float | None = limit(
        None, 0, MAX_DURATION_S, "seconds", low_open=True, step=1.0, flag="--stride",
        help="seconds added per long-form window",
    )  # fmt: skip

    # how tokens become audio: the model's own EnCodec decoder, or Multi-Band Diffusion (MAGNeT
    # models whose params.yaml entry names an MBD snapshot with 'mbd:')
    decoder: str = option(
        "encodec", flag="--decoder", choices=DECODERS,
        help="how tokens become audio; mbd is Multi-Band Diffusion (magnet models whose entry names mbd:)",
    )  # fmt: skip

    INPUTS: ClassVar[tuple[str, ...]] = ("melody", "continuation")  # media inputs, kept by sha256
    TEXT_INPUTS: ClassVar[tuple[str, ...]] = ("prompts",)  # may come From a text artifact (role "text")

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            object.__setattr__(self, "prompts", (self.prompts,))
        elif isinstance(self.prompts, list):
            object.__setattr__(self, "prompts", tuple(self.prompts))

    def to_json(self, inputs: dict[str, dict | None]) -> dict[str, Any]:
        """The JSON form; ``inputs`` gives each media input's record (by sha256) or None."""
        return {
            "prompts": list(self.prompts),
            "duration_s": float(self.duration_s),
            "seed": self.seed,
            "temperature": float(self.temperature),
            "top_k": int(self.top_k),
            "top_p": float(self.top_p),
            "guidance_scale": float(self.guidance_scale),
            "extend_stride_s": None if self.extend_stride_s is None else float(self.extend_stride_s),
            "melody": inputs.get("melody"),
            "continuation": inputs.get("continuation"),
            # only when not the default: every EnCodec artifact keeps the id it had before decoders
            **({"decoder": self.decoder} if self.decoder != "encodec" else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], inputs: dict[str, Any]) -> MusicRequest:
        """The request of a JSON form, its media inputs given (``inputs``: role -> Audio)."""
        known = {
            "prompts",
            "duration_s",
            "seed",
            "temperature",
            "top_k",
            "top_p",
            "guidance_scale",
            "extend_stride_s",
            "decoder",
        }
        unknown = set(data) - known - set(cls.INPUTS)
        if unknown:
            raise RequestError(
                f"request field {sorted(unknown)[0]!r} is not a music request field; known: {', '.join(sorted(known))}."
            )
        prompts = data.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise RequestError(f"request field 'prompts' must be a list of strings, got {prompts!r:.60}.")
        fields_ = {k: data[k] for k in known if k in data}
        return cls(**{**fields_, "prompts": tuple(prompts)}, **{r: inputs.get(r) for r in cls.INPUTS})


@dataclass(frozen=True)
class TextRequest:
    """Ask a language model to write: a music prompt, lyrics, a shot list or sample prompts.

    ``template`` is the task's template (params.yaml ``text.templates.TASK``, filled with the
    fields below); None takes the built-in one. The idea may come from another text
    artifact (``From(id)``, which becomes a parent with role "text").

    Example:
        >>> TextRequest("rain on a tin roof, lo-fi", task="lyrics", duration_s=60, seed=0).task
        'lyrics'
    """

    # what to write about, and what to write
    idea: Any  # text, or From(a text artifact)
    task: str = option("prompt", flag="--task", help="prompt, lyrics, shots or sfx")
    seed: int | None = None  # None: drawn at random and recorded (greedy decoding does not use it)
    # what the tasks need
    duration_s: float | None = limit(
        None, 0, MAX_DURATION_S, "seconds", low_open=True, step=1.0, flag="--duration",
        help="lyrics: the song's length; shots: the track's (default: the --track's)",
    )  # fmt: skip
    structure: str | None = option(
        None,
        flag="--structure",
        help="lyrics: sections in order, e.g. 'verse chorus verse chorus bridge chorus'",
    )
    sections: str | None = option(
        None, flag="--sections", help="shots: the track's sections or beats, e.g. '0-12 intro, 12-40 verse'"
    )
    count: int = limit(
        5, 1, 50, "prompts", integer=True, step=1, flag="--count", help="sfx: how many sample prompts"
    )
    # decoding
    max_new_tokens: int = limit(
        512, 1, MAX_NEW_TOKENS, "tokens", integer=True, step=16, flag="--max-tokens", help="longest answer"
    )
    temperature: float = limit(
        0.0, 0, 2, "(0: greedy, the same answer every time)", step=0.05, flag="--temperature"
    )
    top_p: float = limit(1.0, 0, 1, "(1.0 turns it off)", low_open=True, step=0.01, flag="--top-p")
    # the task's template, with its placeholders ({idea}, {duration_s}, ...); None: the built-in one
    template: str | None = None
    # a media input: the track a shot list is cut to (shots)
    track: Any = option(
        None, flag="--track", metavar="FILE|ID", help="shots: the song or music the shots cut to"
    )

    INPUTS: ClassVar[tuple[str, ...]] = ("track",)
    TEXT_INPUTS: ClassVar[tuple[str, ...]] = ("idea",)
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "task", "idea", "seed", "duration_s", "structure", "sections", "count", "max_new_tokens",
        "temperature", "top_p", "template",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.idea, tuple | list) and all(isinstance(w, str) for w in self.idea):
            object.__setattr__(self, "idea", " ".join(self.idea))  # the CLI's words

    def to_json(self, inputs: dict[str, dict | None]) -> dict[str, Any]:
        """The JSON form; ``inputs`` gives the track's record (by sha256) or None."""
        data = {name: getattr(self, name) for name in self._FIELDS}
        for name in ("duration_s", "temperature", "top_p"):
            data[name] = None if data[name] is None else float(data[name])
        return {**data, "track": inputs.get("track")}

    @classmethod
    def from_json(cls, data: dict[str, Any], inputs: dict[str, Any]) -> TextRequest:
        """The request of a JSON form, its track given (``inputs``: role -> Audio)."""
        unknown = set(data) - set(cls._FIELDS) - set(cls.INPUTS)
        if unknown:
            raise RequestError(
                f"request field {sorted(unknown)[0]!r} is not a text request field; known: {', '.join(cls._FIELDS)}."
            )
        return cls(**{k: data[k] for k in cls._FIELDS if k in data}, track=inputs.get("track"))


def _unknown(data: dict[str, Any], known: set[str], inputs: tuple[str, ...], what: str) -> None:
    unknown = set(data) - known - set(inputs)
    if unknown:
        raise RequestError(
            f"request field {sorted(unknown)[0]!r} is not a {what} request field; known: {', '.join(sorted(known))}."
        )


def _float(value: Any) -> Any:
    """A number as float for the JSON form (any other value as given: the check reports it)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


@dataclass(frozen=True)
class SampleRequest:
    """One text-to-sample generation: one-shots, seamless loops at a tempo, or sound effects.

    ``takes`` takes per prompt; take ``i`` of every prompt runs from seed ``seed + i``. A loop's
    length is exact: ``bars × beats_per_bar`` beats at ``bpm`` (the engine generates a little
    more and cuts it on the beat grid); ``duration_s`` is for one-shots and sound effects (None:
    the type's default, within the model's limit); for one-shots and sound effects the loop
    fields are dropped (recorded as None). Numeric fields carry their limits.

    Example:
        >>> SampleRequest("tight funk drum loop", type="loop", bpm=100, bars=2, seed=1).prompts
        ('tight funk drum loop',)
    """

    # what to make
    prompts: tuple[str, ...] | str
    type: str = option(
        "sfx", flag="--type", choices=SAMPLE_TYPES, help="one-shot (a hit), loop (bars at a bpm) or sfx"
    )
    duration_s: float | None = limit(
        None, 0, MAX_DURATION_S, "seconds", low_open=True, step=0.5, flag="--duration",
        help="seconds to generate for a one-shot or sfx (default: 4 / 10, within the model's limit)",
    )  # fmt: skip
    negative_prompt: str | None = option(
        None, flag="--negative", metavar="TEXT", help="what to steer away from"
    )
    seed: int | None = None  # None: drawn at random and recorded; take i uses seed + i
    takes: int = limit(1, 1, 16, "per prompt", integer=True, step=1, flag="--takes", help="takes per prompt")
    # loops: the grid
    bpm: float | None = limit(
        None, 20, 400, "bpm", step=1.0, flag="--bpm", help="a loop's tempo, beats per minute"
    )
    bars: int | None = limit(
        None, 1, 64, "bars", integer=True, step=1, flag="--bars", help="a loop's length (default 1)"
    )
    beats_per_bar: int | None = limit(
        None,
        1,
        16,
        "beats",
        integer=True,
        step=1,
        flag="--beats-per-bar",
        help="4 for 4/4 (default), 3 for 3/4",
    )
    # diffusion
    steps: int = limit(100, 1, 1000, "steps", integer=True, step=1, flag="--steps", help="denoising steps")
    guidance_scale: float = limit(
        7.0, 1, 30, "(1.0 turns guidance off)", step=0.5, flag="--guidance", help="classifier-free guidance"
    )
    # a variation of this audio: a file path, harmonia.audio.Audio, or an artifact (harmonia.generation.From)
    init: Any = option(
        None, flag="--init", metavar="FILE|ID", help="audio to make a variation of (weak: see README)"
    )

    INPUTS: ClassVar[tuple[str, ...]] = ("init",)  # media inputs, kept by sha256
    FIELDS: ClassVar[tuple[str, ...]] = (
        "prompts", "type", "duration_s", "negative_prompt", "seed", "takes", "bpm", "bars", "beats_per_bar",
        "steps", "guidance_scale",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            object.__setattr__(self, "prompts", (self.prompts,))
        elif isinstance(self.prompts, list):
            object.__setattr__(self, "prompts", tuple(self.prompts))

    def to_json(self, inputs: dict[str, dict | None]) -> dict[str, Any]:
        """The JSON form; ``inputs`` gives each media input's record (by sha256) or None."""
        data = {name: getattr(self, name) for name in self.FIELDS}
        data["prompts"] = list(self.prompts)
        for name in ("duration_s", "bpm", "guidance_scale"):
            data[name] = _float(data[name])
        return {**data, "init": inputs.get("init")}

    @classmethod
    def from_json(cls, data: dict[str, Any], inputs: dict[str, Any]) -> SampleRequest:
        """The request of a JSON form, its media inputs given (``inputs``: role -> Audio)."""
        _unknown(data, set(cls.FIELDS), cls.INPUTS, "sample")
        fields_ = {k: data[k] for k in cls.FIELDS if k in data}
        return cls(**{**fields_, "prompts": tuple(data["prompts"])}, **{r: inputs.get(r) for r in cls.INPUTS})


@dataclass(frozen=True)
class SliceRequest:
    """Cut audio into a sample pack: one-shots at its onsets, loops at its bar boundaries (4/4).

    No model and no randomness: the same source gives the same pack. ``source`` is an audio
    file, :class:`~harmonia.audio.Audio`, or an artifact (``From(id)``: the pack's parent).

    Example:
        >>> SliceRequest(source="drums.wav", bpm=120, zip=True).types
        ('one-shot', 'loop')
    """

    source: Any
    types: tuple[str, ...] = SLICE_TYPES
    bpm: float | None = limit(
        None, 20, 400, "bpm", step=1.0, flag="--bpm", help="the source's tempo if known"
    )
    loop_bars: int = limit(1, 1, 64, "bars", integer=True, step=1, flag="--loop-bars", help="bars per loop")
    zip: bool = False  # also write pack.zip

    INPUTS: ClassVar[tuple[str, ...]] = ("source",)
    FIELDS: ClassVar[tuple[str, ...]] = ("types", "bpm", "loop_bars", "zip")

    def __post_init__(self) -> None:
        if isinstance(self.types, str):
            object.__setattr__(self, "types", (self.types,))
        elif isinstance(self.types, list):
            object.__setattr__(self, "types", tuple(self.types))

    def to_json(self, inputs: dict[str, dict | None]) -> dict[str, Any]:
        return {
            "types": list(self.types),
            "bpm": _float(self.bpm),
            "loop_bars": self.loop_bars,
            "zip": self.zip,
            "source": inputs.get("source"),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], inputs: dict[str, Any]) -> SliceRequest:
        _unknown(data, set(cls.FIELDS), cls.INPUTS, "slice")
        fields_ = {k: data[k] for k in cls.FIELDS if k in data}
        return cls(**fields_, source=inputs.get("source"))


@dataclass(frozen=True)
class Shot:
    """One shot of a music video: from ``start_s`` to ``end_s`` of the track, what it shows."""

    start_s: float
    end_s: float
    prompt: str

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start_s, "end": self.end_s, "prompt": self.prompt}


@dataclass(frozen=True)
class VideoRequest:
    """Text to video: a clip per prompt, or a music video (a soundtrack and a shot list).

    A clip is ``frames`` frames of ``width`` × ``height`` at ``fps`` (the model says which
    sizes and frame counts it takes: Wan 2.1, multiples of 16 and 4k+1 frames). A music video
    takes no prompts: each shot of ``shots`` (a JSON file, a list, or a text artifact of
    ``harmonia write shots``) is snapped to the soundtrack's bars and generated from seed
    ``seed + i``; the clips are cut together and the soundtrack is muxed in, so the video
    lasts as long as the track (``frames`` is then ignored). Numeric fields carry their limits.

    Example:
        >>> VideoRequest("a paper boat on a stream", width=256, height=256, frames=17, seed=1).prompts
        ('a paper boat on a stream',)
    """

    # what to make
    prompts: tuple[str, ...] | str = ()
    negative_prompt: str | None = option(
        None, flag="--negative", metavar="TEXT", help="what to steer away from"
    )
    seed: int | None = None  # None: drawn at random and recorded; shot i of a music video uses seed + i
    # the picture
    width: int = limit(256, 16, 4096, "pixels", integer=True, step=16, flag="--width", help="frame width")
    height: int = limit(256, 16, 4096, "pixels", integer=True, step=16, flag="--height", help="frame height")
    frames: int = limit(
        17, 1, 4097, "frames", integer=True, step=4, flag="--frames",
        help="frames per clip (Wan: 4k+1, e.g. 17, 33, 81)",
    )  # fmt: skip
    fps: float = limit(16.0, 0, 120, "frames/s", low_open=True, step=1.0, flag="--fps", help="frame rate")
    # diffusion
    steps: int = limit(30, 1, 1000, "steps", integer=True, step=1, flag="--steps", help="denoising steps")
    guidance_scale: float = limit(
        5.0, 1, 30, "(1.0 turns guidance off)", step=0.5, flag="--guidance", help="classifier-free guidance"
    )
    # a music video: the track (a file, Audio, or a music/song artifact) and its shot list
    soundtrack: Any = option(
        None, flag="--soundtrack", metavar="FILE|ID", help="music video: the track (a music or song artifact)"
    )
    shots: Any = option(
        None, flag="--shots", metavar="FILE|ID",
        help="music video: a JSON shot list [{start, end, prompt}] or a text artifact (harmonia write shots)",
    )  # fmt: skip

    INPUTS: ClassVar[tuple[str, ...]] = ("soundtrack",)  # media inputs, kept by sha256
    TEXT_INPUTS: ClassVar[tuple[str, ...]] = ("prompts", "shots")  # may come From a text artifact
    JSON_INPUTS: ClassVar[tuple[str, ...]] = ("shots",)  # ... whose JSON is taken as it is
    FIELDS: ClassVar[tuple[str, ...]] = (
        "prompts", "negative_prompt", "seed", "width", "height", "frames", "fps", "steps", "guidance_scale",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            object.__setattr__(self, "prompts", (self.prompts,))
        elif isinstance(self.prompts, list):
            object.__setattr__(self, "prompts", tuple(self.prompts))

    @property
    def music_video(self) -> bool:
        return self.shots is not None or self.soundtrack is not None

    def to_json(self, inputs: dict[str, dict | None]) -> dict[str, Any]:
        """The JSON form; ``inputs`` gives the soundtrack's record (by sha256) or None."""
        data = {name: getattr(self, name) for name in self.FIELDS}
        data["prompts"] = list(self.prompts)
        for name in ("fps", "guidance_scale"):
            data[name] = _float(data[name])
        shots = self.shots
        if isinstance(shots, tuple | list):
            shots = [s.to_json() if isinstance(s, Shot) else s for s in shots]
        return {**data, "shots": shots, "soundtrack": inputs.get("soundtrack")}

    @classmethod
    def from_json(cls, data: dict[str, Any], inputs: dict[str, Any]) -> VideoRequest:
        """The request of a JSON form, its soundtrack given (``inputs``: role -> Audio)."""
        _unknown(data, {*cls.FIELDS, "shots"}, cls.INPUTS, "video")
        fields_ = {k: data[k] for k in (*cls.FIELDS, "shots") if k in data}
        return cls(
            **{**fields_, "prompts": tuple(data.get("prompts", ()))}, soundtrack=inputs.get("soundtrack")
        )


SONG_TASKS = ("generate", "repaint", "extend", "cover")
MAX_SONG_S = 600.0  # ACE-Step 1.5 makes songs of up to ten minutes


@dataclass(frozen=True)
class SongRequest:
    """A sung song from a style and lyrics (``task="generate"``), or an edit of a song.

    Edits take a ``source`` song (a file, :class:`~harmonia.audio.Audio` or ``From(id)``: the
    parent) and make a new song of its length: ``repaint`` regenerates ``start_s``–``end_s``
    and keeps every other sample; ``extend`` adds ``extend_s`` seconds after it (or before,
    ``before=True``); ``cover`` makes a new song from its structure with ``strength`` (1: close
    to the source) and an optional ``reference`` clip for timbre. Lyrics are text with section
    tags (``[verse]``, ``[chorus]``, ``[inst]`` ...); empty lyrics make an instrumental.

    Example:
        >>> SongRequest("dreamy synth pop", lyrics="[verse]\\nhello", duration_s=30, seed=1).prompts
        ('dreamy synth pop',)
    """

    # what to make: one take per style prompt
    prompts: tuple[str, ...] | str
    lyrics: Any = option(
        "", flag="--lyrics", metavar="FILE|TEXT", help="lyrics with [verse], [chorus] ... tags"
    )
    language: str = option(
        "en", flag="--language", help="vocal language, an ISO 639-1 code (en, de, ja, ...)"
    )
    duration_s: float = limit(
        30.0, 0, MAX_SONG_S, "seconds", low_open=True, step=1.0, flag="--duration", help="seconds of song"
    )
    seed: int | None = None  # None: drawn at random and recorded
    # the song's metadata (None: the model chooses)
    bpm: int | None = limit(None, 30, 300, "bpm", integer=True, step=1, flag="--bpm", help="tempo")
    key: str | None = option(None, flag="--key", help="key and scale, e.g. 'A minor', 'F# major'")
    time_signature: str | None = option(
        None, flag="--time-signature", choices=("2/4", "3/4", "4/4", "6/8"), help="beats per bar"
    )
    # diffusion
    steps: int = limit(8, 1, 200, "steps", integer=True, step=1, flag="--steps", help="denoising steps")
    guidance_scale: float = limit(
        1.0, 1, 15, "(1.0 turns guidance off; turbo models need 1.0)", step=0.5, flag="--guidance",
        help="classifier-free guidance",
    )  # fmt: skip
    shift: float = limit(3.0, 1, 5, "", step=0.5, flag="--shift", help="timestep shift of the schedule")
    # edits of a song
    task: str = "generate"  # generate, repaint, extend, cover (harmonia edit ...)
    source: Any = None  # the song to edit (media input; its artifact becomes the parent)
    start_s: float | None = limit(None, 0, MAX_SONG_S, "seconds", step=0.5, flag=None)  # repaint
    end_s: float | None = limit(None, 0, MAX_SONG_S, "seconds", step=0.5, flag=None)  # repaint
    extend_s: float | None = limit(None, 0, MAX_SONG_S, "seconds", low_open=True, step=1.0, flag=None)
    before: bool = False  # extend: add the new seconds before the song
    strength: float | None = limit(
        None, 0, 1, "", step=0.05, flag=None
    )  # cover: 1 keeps the source's structure
    reference: Any = None  # cover: a clip for timbre (media input)

    INPUTS: ClassVar[tuple[str, ...]] = ("source", "reference")
    TEXT_INPUTS: ClassVar[tuple[str, ...]] = ("lyrics",)  # may come From a lyrics artifact (role "text")
    FIELDS: ClassVar[tuple[str, ...]] = (
        "prompts", "lyrics", "language", "duration_s", "seed", "bpm", "key", "time_signature", "steps",
        "guidance_scale", "shift", "task", "start_s", "end_s", "extend_s", "before", "strength",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            object.__setattr__(self, "prompts", (self.prompts,))
        elif isinstance(self.prompts, list):
            object.__setattr__(self, "prompts", tuple(self.prompts))

    def to_json(self, inputs: dict[str, dict | None]) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.FIELDS}
        data["prompts"] = list(self.prompts)
        for name in ("duration_s", "guidance_scale", "shift", "start_s", "end_s", "extend_s", "strength"):
            data[name] = _float(data[name])
        return {**data, "source": inputs.get("source"), "reference": inputs.get("reference")}

    @classmethod
    def from_json(cls, data: dict[str, Any], inputs: dict[str, Any]) -> SongRequest:
        _unknown(data, set(cls.FIELDS), cls.INPUTS, "song")
        fields_ = {k: data[k] for k in cls.FIELDS if k in data}
        return cls(**{**fields_, "prompts": tuple(data["prompts"])}, **{r: inputs.get(r) for r in cls.INPUTS})


@dataclass(frozen=True)
class StemsRequest:
    """Split audio into stems (vocals, drums, bass, other) with a source-separation model.

    No randomness: the model runs without random shifts, so the same source gives the same
    stems. ``source`` is an audio file, :class:`~harmonia.audio.Audio`, or an artifact
    (``From(id)``: the stems' parent).

    Example:
        >>> StemsRequest(source="song.wav").overlap
        0.25
    """

    source: Any
    overlap: float = limit(
        0.25, 0, 0.9, "", step=0.05, flag="--overlap", help="overlap of the model's segments"
    )

    INPUTS: ClassVar[tuple[str, ...]] = ("source",)
    FIELDS: ClassVar[tuple[str, ...]] = ("overlap",)

    def to_json(self, inputs: dict[str, dict | None]) -> dict[str, Any]:
        return {"overlap": _float(self.overlap), "source": inputs.get("source")}

    @classmethod
    def from_json(cls, data: dict[str, Any], inputs: dict[str, Any]) -> StemsRequest:
        _unknown(data, set(cls.FIELDS), cls.INPUTS, "stems")
        return cls(**{k: data[k] for k in cls.FIELDS if k in data}, source=inputs.get("source"))


@dataclass(frozen=True)
class TranscribeRequest:
    """Transcribe sung (or spoken) audio, and score it against the lyrics when they are given.

    Greedy decoding, no randomness. ``source`` is an audio file, Audio, or an artifact
    (``From(id)``; for stems, ``From(id, "vocals.wav")``); ``lyrics`` is the reference text
    (section tags are ignored); ``language`` None lets the model detect it.

    Example:
        >>> TranscribeRequest(source="vocals.wav", lyrics="[verse]\\nhello", language="en").language
        'en'
    """

    source: Any
    lyrics: str | None = None  # the reference for word and character error rates
    language: str | None = option(None, flag="--language", help="the sung language (default: detected)")
    max_new_tokens: int = limit(
        440, 1, 440, "tokens", integer=True, step=8, flag="--max-tokens", help="longest text per 30 s window"
    )

    INPUTS: ClassVar[tuple[str, ...]] = ("source",)
    FIELDS: ClassVar[tuple[str, ...]] = ("lyrics", "language", "max_new_tokens")

    def to_json(self, inputs: dict[str, dict | None]) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.FIELDS}, "source": inputs.get("source")}

    @classmethod
    def from_json(cls, data: dict[str, Any], inputs: dict[str, Any]) -> TranscribeRequest:
        _unknown(data, set(cls.FIELDS), cls.INPUTS, "transcribe")
        return cls(**{k: data[k] for k in cls.FIELDS if k in data}, source=inputs.get("source"))
