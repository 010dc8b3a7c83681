"""Songs: edits of a song (repaint, extend, cover) as new artifacts whose parent is the song.

An edit is a :class:`~harmonia.requests.SongRequest` with a ``task`` and a ``source``
(``From(id)``) run through the one generation path (:func:`harmonia.generation.generate`):
its id hashes the source's bytes, the source becomes its parent (role "source"), an
identical edit is a cache hit and ``harmonia reproduce`` regenerates it. What the edit does
not say is taken from the song it edits (its style, lyrics, language, tempo, key, steps and
model), so ``harmonia edit repaint ID --start 10 --end 14`` needs nothing else.

This module knows requests, artifacts and params.yaml's ``songs:`` section; not the CLI or UI.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from harmonia.artifacts import check_id, load_artifact
from harmonia.defaults import kind_defaults
from harmonia.engines.base import Cancel, Progress
from harmonia.errors import AudioError, RequestError
from harmonia.generation import From, Generated, generate
from harmonia.requests import SongRequest, StemsRequest, TranscribeRequest, check_limits
from harmonia.workbench import Workbench

EDITS = ("repaint", "extend", "cover")
INHERITED = (
    "prompts",
    "lyrics",
    "language",
    "bpm",
    "key",
    "time_signature",
    "steps",
    "guidance_scale",
    "shift",
)
UNSAID_LANGUAGE = "unknown"  # ACE-Step's language for a song whose language is not given
# the edit's fields as the command line names them: a limit's message names the flag to change
EDIT_FLAGS = {"start_s": "--start", "end_s": "--end", "extend_s": "--seconds", "strength": "--strength"}


def edit_request(
    wb: Workbench, task: str, artifact: str, *, model: str | None = None, **fields: Any
) -> tuple[str, SongRequest]:
    """The model and request of an edit of ``artifact``: ``fields`` (None keeps the song's own).

    A song made by ace-step lends its style, lyrics, metadata, steps and model; any other audio
    artifact (music, a sample) needs a style (``prompts``) and takes params.yaml's ``songs:``.

    Example:
        >>> edit_request(wb, "repaint", "5f0c8a4b", start_s=10, end_s=14)  # doctest: +SKIP
        ('tiny-ace-step', SongRequest(prompts=('dreamy synth pop',), ..., task='repaint', ...))
    """
    if task not in EDITS:
        raise RequestError(f"edit must be one of {', '.join(EDITS)}, got {task!r}.")
    parent = load_artifact(wb, check_id(artifact))
    if not parent.audio_outputs():
        raise AudioError(
            f"source: artifact {parent.id} is a {parent.kind} artifact with no audio output; {task} edits a "
            "song (or any audio artifact)."
        )
    given = {k: v for k, v in fields.items() if v is not None}
    defaults = kind_defaults(wb, "song")
    if parent.kind == "song":
        inherited = {k: parent.manifest.request[k] for k in INHERITED if k in parent.manifest.request}
        inherited["prompts"] = tuple(inherited["prompts"])
        model = model or parent.manifest.model.name
    else:
        inherited = dict(defaults.request)
        model = model or defaults.model
        if "prompts" not in given:
            raise RequestError(
                f"artifact {parent.id} is {parent.kind}, not a song: give its style with --style TEXT."
            )
    if not model:
        raise RequestError("no model given: pass --model NAME or set songs.model in params.yaml.")
    chosen = {**inherited, **given}
    prompts = chosen.pop("prompts")
    chosen.pop("duration_s", None)  # an edit's length is the source's (and the extension)
    request = SongRequest(prompts, task=task, source=From(parent.id), **chosen)
    try:
        check_limits(request)
    except RequestError as exc:
        field, _, rest = str(exc).partition(" ")
        if field in EDIT_FLAGS:
            raise RequestError(f"{EDIT_FLAGS[field]} {rest}") from None
        raise
    return model, request


def edit(
    wb: Workbench,
    task: str,
    artifact: str,
    *,
    model: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    threads: int | None = None,
    **fields: Any,
) -> Generated:
    """Repaint, extend or cover a song into a new artifact whose parent is the song.

    Example:
        >>> edit(wb, "extend", "5f0c8a4b", extend_s=10).artifact.manifest.parents[0].role  # doctest: +SKIP
        'source'
    """
    model, request = edit_request(wb, task, artifact, model=model, **fields)
    settings = kind_defaults(wb, "song").run_settings()
    if threads is not None:
        settings["threads"] = threads
    return generate(wb, model, replace(request), force=force, progress=progress, cancel=cancel, **settings)


def _setting(wb: Workbench, key: str, what: str, flag: str) -> str:
    value = wb.params.get("songs", {}).get(key) if isinstance(wb.params.get("songs"), dict) else None
    if not isinstance(value, str) or not value:
        raise RequestError(f"no {what} model given: pass {flag} NAME or set songs.{key} in params.yaml.")
    return value


def stems(
    wb: Workbench,
    source: Any,
    *,
    model: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    threads: int | None = None,
) -> Generated:
    """Split a song (an artifact id, ``From``, a file or Audio) into vocals, drums, bass and other.

    The model is ``model`` or params.yaml's ``songs.stems_model``; the stems are one artifact
    whose parent is the song, and its manifest records how far their sum is from the song.

    Example:
        >>> stems(wb, "5f0c8a4b").artifact.outputs[0].path  # doctest: +SKIP
        'vocals.wav'
    """
    model = model or _setting(wb, "stems_model", "stems", "--model")
    return generate(
        wb, model, StemsRequest(source=source), force=force, progress=progress, cancel=cancel, threads=threads
    )


def song_lyrics(wb: Workbench, artifact: str) -> str | None:
    """The lyrics a song was made from: of the artifact if it is a song, else of its source's song
    (stems of a song, a repaint of it); None when no song is found in its lineage."""
    seen = set()
    current = load_artifact(wb, check_id(artifact))
    while current.id not in seen:
        seen.add(current.id)
        if current.kind == "song":
            lyrics = current.manifest.request.get("lyrics")
            return lyrics if isinstance(lyrics, str) else None
        parent = next((p for p in current.manifest.parents if p.role == "source"), None)
        if parent is None:
            return None
        try:
            current = load_artifact(wb, parent.id)
        except Exception:  # the parent is gone: no lyrics to compare with
            return None
    return None


def transcribe(
    wb: Workbench,
    artifact: str,
    *,
    lyrics: str | None = None,
    language: str | None = None,
    model: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    threads: int | None = None,
) -> Generated:
    """Transcribe a song's vocals and score them against its lyrics.

    ``artifact``: a stems artifact (its vocals.wav is transcribed), a song, or any audio
    artifact (its first take). ``lyrics``: the reference (default: the lyrics of the song in
    the artifact's lineage); ``language``: default the song's. The model is ``model`` or
    params.yaml's ``songs.transcribe_model``.

    Example:
        >>> transcribe(wb, "5f0c8a4b").artifact.manifest.engine.details["intelligibility"]["wer"]  # doctest: +SKIP
        0.42
    """
    model = model or _setting(wb, "transcribe_model", "transcription", "--model")
    if Path(str(artifact)).is_file():  # a file: nothing to look up
        request = TranscribeRequest(source=str(artifact), lyrics=lyrics, language=language)
        return generate(wb, model, request, force=force, progress=progress, cancel=cancel, threads=threads)
    art = load_artifact(wb, check_id(artifact))
    vocals = next((o for o in art.outputs if o.path == "vocals.wav"), None)
    source = From(art.id, "vocals.wav" if vocals is not None else None)
    if lyrics is None:
        lyrics = song_lyrics(wb, art.id)
    if language is None and lyrics is not None:
        song = _song_of(wb, art.id)
        language = song.manifest.request.get("language") if song is not None else None
        if language == UNSAID_LANGUAGE:  # the song never said its language: let the model detect it
            language = None
    request = TranscribeRequest(source=source, lyrics=lyrics, language=language)
    return generate(wb, model, request, force=force, progress=progress, cancel=cancel, threads=threads)


def _song_of(wb: Workbench, artifact: str):
    current, seen = load_artifact(wb, artifact), set()
    while current.id not in seen:
        seen.add(current.id)
        if current.kind == "song":
            return current
        parent = next((p for p in current.manifest.parents if p.role == "source"), None)
        if parent is None:
            return None
        current = load_artifact(wb, parent.id)
    return None
