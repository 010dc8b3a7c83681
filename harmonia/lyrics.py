"""Song lyrics: section tags, lines and syllables, and whether they fit a duration.

Lyrics are plain text with section tags on lines of their own (``[verse]``, ``[chorus]``,
``[bridge]``, ``[inst]`` ...), the form ACE-Step was trained on and the text engine writes.
A song's lyrics are sung at a pace: this module counts syllables per section (a vowel-group
count for Latin script, one per character for scripts without spaces) and estimates the
seconds they need, so a request whose lyrics cannot fit its duration is refused before a
model loads, with the duration they need. The studio uses the same counts per section.

Also the metadata ACE-Step 1.5 accepts: vocal languages, tempo range, keys and time
signatures (from ACE-Step 1.5's own constants). This module imports no torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from harmonia.errors import RequestError

SECTION_TAGS = (
    "intro", "verse", "pre-chorus", "chorus", "post-chorus", "hook", "bridge", "interlude", "break",
    "inst", "instrumental", "solo", "outro",
)  # fmt: skip
INSTRUMENTAL_TAGS = ("inst", "instrumental", "interlude", "break", "solo")
SYLLABLES_PER_S = 5.0  # a fast sung pace; lyrics needing more than this are "far too long"
BREATH_S = 0.3  # added per sung line
# ACE-Step 1.5's vocal languages (acestep/constants.py VALID_LANGUAGES), "unknown" included.
LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr",
    "ht", "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro",
    "ru", "sa", "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh", "unknown",
)  # fmt: skip
BPM_RANGE = (30, 300)  # ACE-Step 1.5's BPM_MIN, BPM_MAX
TIME_SIGNATURES = {"2/4": "2", "3/4": "3", "4/4": "4", "6/8": "6"}  # ours -> the pipeline's
KEY_PATTERN = re.compile(r"^\s*([A-Ga-g])\s*([#♯b♭]?)\s+(major|minor)\s*$", re.IGNORECASE)
_TAG = re.compile(r"^\[([^\]]*)\]\s*$")
_VOWELS = re.compile(r"[aeiouyàáâãäåèéêëìíîïòóôõöùúûüýÿæœ]+", re.IGNORECASE)


@dataclass(frozen=True)
class Section:
    """One section of a song: its tag, its sung lines and their syllables."""

    tag: str  # "verse", "chorus", ... ("" for lines before the first tag)
    lines: tuple[str, ...]
    syllables: int

    @property
    def instrumental(self) -> bool:
        return not self.lines

    def to_json(self) -> dict:
        return {"tag": self.tag, "lines": len(self.lines), "syllables": self.syllables}


@dataclass(frozen=True)
class Lyrics:
    """Parsed lyrics: sections in order, and what singing them takes."""

    text: str
    sections: tuple[Section, ...]

    @property
    def lines(self) -> int:
        return sum(len(s.lines) for s in self.sections)

    @property
    def syllables(self) -> int:
        return sum(s.syllables for s in self.sections)

    @property
    def instrumental(self) -> bool:
        """No sung line at all (empty lyrics, or only [inst] sections)."""
        return self.lines == 0

    @property
    def needed_s(self) -> float:
        """Seconds the sung lines need at least: syllables at a fast pace, plus a breath per line."""
        return self.syllables / SYLLABLES_PER_S + BREATH_S * self.lines

    def summary(self) -> dict:
        return {
            "sections": [s.to_json() for s in self.sections],
            "lines": self.lines,
            "syllables": self.syllables,
            "needed_s": round(self.needed_s, 2),
            "instrumental": self.instrumental,
        }


def syllables(line: str) -> int:
    """Syllables of a sung line: vowel groups per Latin word (a silent final e dropped), one per
    character of words in scripts without vowels letters (CJK, kana), at least one per word."""
    count = 0
    for word in re.findall(r"[^\s\-]+", line):
        letters = re.sub(r"[^\w']", "", word)
        if not letters:
            continue
        if not re.search(r"[A-Za-zÀ-ÿ]", letters):
            count += len(re.sub(r"[\d_']", "", letters)) or 1  # one per character (CJK, kana, ...)
            continue
        groups = len(_VOWELS.findall(letters))
        if letters.lower().endswith("e") and not letters.lower().endswith(("le", "ee")) and groups > 1:
            groups -= 1
        count += max(1, groups)
    return count


def parse_lyrics(text: str) -> Lyrics:
    """Split lyrics into sections at their tags; RequestError naming an unknown tag.

    Example:
        >>> parse_lyrics("[verse]\\nhello there\\n[chorus]\\nla la la").syllables
        6
    """
    if not isinstance(text, str):
        raise RequestError(f"lyrics must be text, got {type(text).__name__}.")
    sections: list[tuple[str, list[str]]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        tag = _TAG.match(line)
        if tag:
            name = re.sub(r"\s*\d+$", "", tag.group(1).strip().lower())  # [verse 2] -> verse
            if name not in SECTION_TAGS:
                raise RequestError(
                    f"lyrics line {number}: [{tag.group(1)}] is not a section tag; known: "
                    f"{', '.join(f'[{t}]' for t in SECTION_TAGS)}. Fix the tag or drop it."
                )
            sections.append((name, []))
            continue
        if not sections:
            sections.append(("", []))
        sections[-1][1].append(line)
    parsed = []
    for tag, lines in sections:
        if tag in INSTRUMENTAL_TAGS and lines:
            raise RequestError(
                f"lyrics: [{tag}] is an instrumental section but has {len(lines)} sung line(s) "
                f"({lines[0][:40]!r}); move them to a [verse] or [chorus]."
            )
        parsed.append(Section(tag, tuple(lines), sum(syllables(x) for x in lines)))
    return Lyrics(text, tuple(parsed))


def check_lyrics(text: str, duration_s: float) -> Lyrics:
    """Parsed lyrics that fit ``duration_s``; RequestError saying how long they need otherwise."""
    lyrics = parse_lyrics(text)
    if lyrics.needed_s > duration_s:
        need = math.ceil(lyrics.needed_s)
        raise RequestError(
            f"lyrics are too long for {duration_s:g} s: {lyrics.lines} lines, {lyrics.syllables} syllables "
            f"need about {need} s sung ({SYLLABLES_PER_S:g} syllables a second and a breath "
            f"per line); give --duration {need} or more, or cut lines."
        )
    return lyrics


def check_language(value: str) -> str:
    if value not in LANGUAGES:
        raise RequestError(
            f"language {value!r} is not one the model sings; known: {', '.join(LANGUAGES)} (ISO 639-1 codes)."
        )
    return value


def check_key(value: str) -> str:
    """A key as ACE-Step names it ("A minor", "F# major"); RequestError otherwise."""
    found = KEY_PATTERN.match(value) if isinstance(value, str) else None
    if found is None:
        raise RequestError(
            f"key must be a note A-G, optionally # or b, then major or minor (e.g. 'A minor', 'F# major'), "
            f"got {value!r}."
        )
    note, accidental, mode = found.groups()
    accidental = {"♯": "#", "♭": "b"}.get(accidental, accidental)
    return f"{note.upper()}{accidental} {mode.lower()}"


def check_time_signature(value: str) -> str:
    if value not in TIME_SIGNATURES:
        raise RequestError(f"time_signature must be one of {', '.join(TIME_SIGNATURES)}, got {value!r}.")
    return value


def normalise(text: str) -> str:
    """Text as words to compare: section tags and punctuation dropped, lower case, single spaces.

    Example:
        >>> normalise("[verse]\\nHello, there -- my FRIEND!")
        'hello there my friend'
    """
    text = re.sub(r"^\s*\[[^\]]*\]\s*$", " ", text, flags=re.MULTILINE)
    text = re.sub(r"[^\w\s']", " ", text.lower()).replace("'", "")
    return " ".join(text.split())


@dataclass(frozen=True)
class Intelligibility:
    """How well a transcript matches the lyrics: word and character error rates on normalised text."""

    reference: str  # the lyrics, normalised
    hypothesis: str  # the transcript, normalised
    wer: float | None  # None: the lyrics have no words (an instrumental)
    cer: float | None
    words: tuple[tuple[str, str, str], ...]  # (op, reference words, transcript words): equal, substitute, ...

    def to_json(self) -> dict:
        return {
            "reference": self.reference,
            "hypothesis": self.hypothesis,
            "wer": self.wer,
            "cer": self.cer,
            "words": [list(w) for w in self.words],
        }


def intelligibility(transcript: str, lyrics: str) -> Intelligibility:
    """Word and character error rates of a transcript against the lyrics (jiwer, on normalised text).

    Example:
        >>> intelligibility("hello their my friend", "[verse]\\nHello, there my friend!").wer
        0.25
    """
    import jiwer

    reference, hypothesis = normalise(lyrics), normalise(transcript)
    if not reference:
        return Intelligibility(reference, hypothesis, None, None, ())
    words = jiwer.process_words(reference, hypothesis)
    ref, hyp = words.references[0], words.hypotheses[0]
    ops = tuple(
        (chunk.type, " ".join(ref[chunk.ref_start_idx : chunk.ref_end_idx]),
         " ".join(hyp[chunk.hyp_start_idx : chunk.hyp_end_idx]))
        for chunk in words.alignments[0]
    )  # fmt: skip
    cer = jiwer.cer(reference, hypothesis) if hypothesis else 1.0
    return Intelligibility(reference, hypothesis, round(words.wer, 6), round(float(cer), 6), ops)
