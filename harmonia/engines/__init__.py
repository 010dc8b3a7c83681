"""Generation engines: one file per engine behind the contract in base.py, and the registry.

``ENGINES`` maps an engine's name (params.yaml's ``engine:``) to its class; ``KINDS`` maps a
kind of artifact to its params.yaml section and request type. Both are read lazily, so the
CLI starts without importing torch. Engines load a verified local snapshot and turn a
request into takes of media; they know nothing about artifacts, manifests or the UI.

Adding an engine: write ``harmonia/engines/NAME.py`` (see the README's "Adding an engine"),
add a line to ``ENGINES`` (and to ``KINDS`` for a new kind), a tiny builder in tiny.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from harmonia.errors import RequestError

ENGINES: dict[str, str] = {
    "musicgen": "harmonia.engines.musicgen:MusicGenEngine",
    "text": "harmonia.engines.text:TextEngine",
    "stable-audio": "harmonia.engines.stable_audio:StableAudioEngine",
    "slicer": "harmonia.engines.slicer:SlicerEngine",  # no weights: audio -> sample pack
    # audiocraft's own models, run in a worker process with its own environment (engines/audiocraft.py)
    "audiogen": "harmonia.engines.audiocraft:AudioGenEngine",
    "magnet": "harmonia.engines.audiocraft:MagnetEngine",
    "ace-step": "harmonia.engines.ace_step:AceStepEngine",
    "demucs": "harmonia.engines.demucs:DemucsEngine",  # audio -> vocals, drums, bass, other
    "whisper": "harmonia.engines.whisper:WhisperEngine",  # sung or spoken audio -> text
    "wan": "harmonia.engines.wan:WanEngine",
}


@dataclass(frozen=True)
class KindInfo:
    """A kind of artifact: its params.yaml section, its request type, its engines."""

    name: str
    section: str  # params.yaml's section of defaults (and the CLI's `generate KIND`)
    request: str  # "module:Class" of the request dataclass
    help: str
    prompted: bool = True  # made from prompts: `harmonia generate KIND PROMPT...` exists


KINDS: dict[str, KindInfo] = {
    "music": KindInfo("music", "music", "harmonia.requests:MusicRequest", "text (and melody) to music"),
    "text": KindInfo(
        "text",
        "text",
        "harmonia.requests:TextRequest",
        "an idea to a prompt, lyrics, shots or sfx (a language model)",
    ),
    "sample": KindInfo(
        "sample",
        "samples",
        "harmonia.requests:SampleRequest",
        "text to one-shots, loops at a bpm, sound effects",
    ),
    "song": KindInfo(
        "song",
        "songs",
        "harmonia.requests:SongRequest",
        "a style and lyrics to a sung song (edits: harmonia edit repaint|extend|cover)",
    ),
    "video": KindInfo(
        "video",
        "video",
        "harmonia.requests:VideoRequest",
        "text to video clips; a soundtrack and a shot list to a music video",
    ),
    # made from another artifact, not from prompts: `harmonia samples slice ARTIFACT`
    "pack": KindInfo(
        "pack", "samples", "harmonia.requests:SliceRequest", "audio cut into a sample pack", False
    ),
    # `harmonia stems ARTIFACT`
    "stems": KindInfo(
        "stems",
        "songs",
        "harmonia.requests:StemsRequest",
        "audio split into vocals, drums, bass, other",
        False,
    ),
    # `harmonia transcribe ARTIFACT`
    "transcript": KindInfo(
        "transcript",
        "songs",
        "harmonia.requests:TranscribeRequest",
        "sung audio to text, scored against the lyrics",
        False,
    ),
}


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def engine_class(name: Any) -> Any:
    """The engine class registered under ``name``; RequestError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in ENGINES:
        raise RequestError(
            f"engine {name!r} is not one Harmonia runs; known engines: {', '.join(ENGINES)}. "
            "Set 'engine' of the model in params.yaml to one of them."
        )
    return _resolve(ENGINES[name])


def request_type(kind: str) -> type:
    """The request dataclass of a kind."""
    if kind not in KINDS:
        raise RequestError(f"kind {kind!r} is not one Harmonia makes; known kinds: {', '.join(KINDS)}.")
    return _resolve(KINDS[kind].request)


__all__ = ["ENGINES", "KINDS", "KindInfo", "engine_class", "request_type"]
