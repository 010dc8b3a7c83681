"""Ideas into prompts: one deterministic function from a researcher's idea to a canonical prompt.

An :class:`Idea` is free text plus optional musical facts (genre, mood, tempo, key,
instruments). :func:`canonical_prompt` turns it into the one prompt string the engine sees:
whitespace collapsed, facts in a fixed order and spelling, so the same idea always gives
the same prompt (and so the same artifact id). The manifest keeps the idea and the prompt.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from harmonia.errors import RequestError

TEMPO_RANGE_BPM = (20.0, 300.0)
_KEY = re.compile(r"^\s*([A-Ga-g])\s*([#♯b♭]?)\s*(major|minor|maj|min|m)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Idea:
    """What a researcher wants to hear.

    Example:
        >>> canonical_prompt(Idea("a rainy night in the city", genre="Lo-Fi  hip hop",
        ...                       mood="melancholic", tempo_bpm=80, key="a min",
        ...                       instruments=("piano", "vinyl crackle")))
        'lo-fi hip hop, a rainy night in the city, melancholic, with piano and vinyl crackle, 80 bpm, A minor'
    """

    text: str
    genre: str | None = None
    mood: str | None = None
    tempo_bpm: float | None = None
    key: str | None = None
    instruments: tuple[str, ...] = ()

    def to_json(self) -> dict:
        data = asdict(self)
        data["instruments"] = list(self.instruments)
        return data


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def normalize_key(key: str) -> str:
    """'a min' -> 'A minor', 'Bb' -> 'B♭ major', 'f#m' -> 'F♯ minor'."""
    match = _KEY.match(key)
    if not match:
        raise RequestError(
            f"key must be a note A-G with an optional # or b and major/minor (e.g. 'A minor', 'Bb'), got {key!r}."
        )
    note, accidental, mode = match.groups()
    accidental = {"#": "♯", "♯": "♯", "b": "♭", "♭": "♭"}.get(accidental, "")
    mode = "minor" if (mode or "").lower() in ("minor", "min", "m") else "major"
    return f"{note.upper()}{accidental} {mode}"


def canonical_prompt(idea: Idea) -> str:
    """The prompt for an idea: genre, text, mood, instruments, tempo, key, in that order."""
    text = _clean(idea.text)
    if not text:
        raise RequestError("idea text must not be empty: describe the music in a few words.")
    parts = []
    if idea.genre and _clean(idea.genre):
        parts.append(_clean(idea.genre).lower())
    parts.append(text)
    if idea.mood and _clean(idea.mood):
        parts.append(_clean(idea.mood).lower())
    instruments = list(dict.fromkeys(_clean(i).lower() for i in idea.instruments if _clean(i)))
    if instruments:
        listed = (
            instruments[0]
            if len(instruments) == 1
            else ", ".join(instruments[:-1]) + " and " + instruments[-1]
        )
        parts.append(f"with {listed}")
    if idea.tempo_bpm is not None:
        low, high = TEMPO_RANGE_BPM
        if not isinstance(idea.tempo_bpm, int | float) or not low <= idea.tempo_bpm <= high:
            raise RequestError(f"tempo_bpm must be in [{low:g}, {high:g}], got {idea.tempo_bpm!r}.")
        parts.append(f"{idea.tempo_bpm:g} bpm")
    if idea.key and idea.key.strip():
        parts.append(normalize_key(idea.key))
    return ", ".join(parts)
