"""Datasets built in code: an evaluation prompt set and a small synthetic audio set.

- ``eval-prompts``: captions with tags (genre, mood, instruments, tempo) in ``prompts.jsonl``,
  the prompt set the pipeline generates from and the evaluation scores against.
- ``synthetic-audio``: tones, chords and drum patterns at 32 kHz with ``captions.jsonl``,
  for melody conditioning and for checking the evaluation (a tone's centroid is its pitch).

Both are deterministic from their seed and saved as ordinary dataset snapshots (inventory
source ``synthetic``), so DVC tracks them like fetched ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harmonia.audio import write_audio
from harmonia.errors import BuilderError
from harmonia.inventory import Inventory, Source
from harmonia.snapshots import install_built, require_verified
from harmonia.workbench import Workbench, check_name

RATE = 32_000
PROMPTS_FILE = "prompts.jsonl"
CAPTIONS_FILE = "captions.jsonl"

# (caption, tags): a spread of genres, moods, instruments and tempi.
EVAL_PROMPTS = [
    (
        "a calm lo-fi hip hop beat with warm piano chords and vinyl crackle, 80 bpm",
        ["lo-fi", "calm", "piano", "80 bpm"],
    ),
    (
        "an energetic drum and bass track with a heavy reese bass, 174 bpm",
        ["drum and bass", "energetic", "bass", "174 bpm"],
    ),
    ("a solo cello playing a slow, sad melody in D minor", ["classical", "sad", "cello", "slow"]),
    (
        "upbeat synthwave with bright arpeggios and gated snare, 110 bpm",
        ["synthwave", "upbeat", "synthesizer", "110 bpm"],
    ),
    (
        "an acoustic folk song with fingerpicked guitar and soft harmonica",
        ["folk", "gentle", "acoustic guitar", "harmonica"],
    ),
    ("a tense cinematic score with low brass and taiko drums", ["cinematic", "tense", "brass", "taiko"]),
    (
        "smooth jazz with a walking upright bass and brushed drums, 120 bpm",
        ["jazz", "relaxed", "upright bass", "120 bpm"],
    ),
    ("an ambient drone with evolving pads and distant bells", ["ambient", "meditative", "pads", "bells"]),
    (
        "a funky disco groove with slap bass and string stabs, 118 bpm",
        ["disco", "happy", "slap bass", "strings"],
    ),
    (
        "a minimal techno loop with a deep kick and hypnotic percussion, 128 bpm",
        ["techno", "hypnotic", "kick", "128 bpm"],
    ),
    (
        "a reggae riddim with offbeat guitar skanks and a dub bassline",
        ["reggae", "laid back", "guitar", "bass"],
    ),
    (
        "a heroic orchestral fanfare with trumpets and timpani",
        ["orchestral", "triumphant", "trumpet", "timpani"],
    ),
]

NOTES = {"c4": 261.63, "e4": 329.63, "g4": 392.00, "a4": 440.00, "c5": 523.25}
CHORDS = {"c-major": ("c4", "e4", "g4"), "a-minor": ("a4", "c5", "e4")}


@dataclass(frozen=True)
class DatasetBuild:
    name: str
    path: Path
    inventory: Inventory


def build_eval_prompts(out: Path, seed: int) -> None:
    """prompts.jsonl: one {"id", "caption", "tags"} per line, in an order fixed by the seed."""
    order = np.random.default_rng(seed).permutation(len(EVAL_PROMPTS))
    lines = [
        json.dumps(
            {"id": f"p{i:03d}", "caption": EVAL_PROMPTS[j][0], "tags": EVAL_PROMPTS[j][1]}, ensure_ascii=False
        )
        for i, j in enumerate(order)
    ]
    (out / PROMPTS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _tone(freq: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = np.minimum(1.0, t / 0.02) * np.minimum(1.0, (seconds - t) / 0.05)
    phase = rng.uniform(0, 2 * np.pi)
    return (0.4 * envelope * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def _drums(bpm: float, bars: int, rng: np.random.Generator) -> np.ndarray:
    beat = 60.0 / bpm
    total = int(bars * 4 * beat * RATE)
    out = np.zeros(total, np.float32)
    kick_t = np.arange(int(0.25 * RATE)) / RATE
    kick = np.sin(2 * np.pi * (50 + 100 * np.exp(-kick_t * 30)) * kick_t) * np.exp(-kick_t * 12)
    snare = rng.standard_normal(int(0.2 * RATE)) * np.exp(-np.arange(int(0.2 * RATE)) / RATE * 25) * 0.5
    hat = rng.standard_normal(int(0.05 * RATE)) * np.exp(-np.arange(int(0.05 * RATE)) / RATE * 80) * 0.25
    for step in range(bars * 8):  # eighth notes
        at = int(step * beat / 2 * RATE)
        for sound, hit in ((kick, step % 4 == 0), (snare, step % 8 == 4), (hat, True)):
            if hit:
                end = min(total, at + len(sound))
                out[at:end] += sound[: end - at].astype(np.float32)
    return np.clip(out * 0.6, -1, 1).astype(np.float32)


def build_synthetic_audio(out: Path, seed: int) -> None:
    """tones/, chords/, drums/ WAVs (32 kHz mono, 2 s) and captions.jsonl describing each."""
    rng = np.random.default_rng(seed)
    captions = []
    for folder in ("tones", "chords", "drums"):
        (out / folder).mkdir()
    for note, freq in NOTES.items():
        path = f"tones/{note}.wav"
        write_audio(out / path, _tone(freq, 2.0, rng)[None], RATE)
        captions.append(
            {
                "file": path,
                "caption": f"a pure sine tone at {freq:g} Hz ({note.upper()})",
                "tags": ["tone", note],
            }
        )
    for chord, notes in CHORDS.items():
        path = f"chords/{chord}.wav"
        wave = sum(_tone(NOTES[n], 2.0, rng) for n in notes) / len(notes)
        write_audio(out / path, wave[None].astype(np.float32), RATE)
        captions.append(
            {
                "file": path,
                "caption": f"a sustained {chord.replace('-', ' ')} chord of sine tones",
                "tags": ["chord", chord],
            }
        )
    for bpm in (90, 120):
        path = f"drums/beat-{bpm}bpm.wav"
        write_audio(out / path, _drums(bpm, 1, rng)[None], RATE)
        captions.append(
            {
                "file": path,
                "caption": f"a simple drum pattern with kick, snare and hi-hat at {bpm} bpm",
                "tags": ["drums", f"{bpm} bpm"],
            }
        )
    (out / CAPTIONS_FILE).write_text("\n".join(json.dumps(c) for c in captions) + "\n", encoding="utf-8")


BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "eval-prompts": build_eval_prompts,
    "synthetic-audio": build_synthetic_audio,
}


def build_dataset(wb: Workbench, builder: str, name: str | None = None, seed: int = 0) -> DatasetBuild:
    """Build a dataset in code and install it as ``datasets/NAME`` (default name: the builder's).

    Example:
        >>> build_dataset(Workbench.open(), "eval-prompts").path  # doctest: +SKIP
        PosixPath('/work/datasets/eval-prompts')
    """
    if builder not in BUILDERS:
        raise BuilderError(f"Unknown dataset builder '{builder}'. Known builders: {', '.join(BUILDERS)}.")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise BuilderError(f"seed must be an integer in [0, 2**63), got {seed!r}.")
    name = check_name("dataset", name or builder)
    source = Source(type="synthetic", builder=builder, seed=seed)
    inventory = install_built(
        wb, "dataset", name, lambda folder: BUILDERS[builder](folder, seed), source, license="cc0-1.0"
    )
    return DatasetBuild(name, wb.snapshot_dir("dataset", name), inventory)


def load_prompts(wb: Workbench, dataset: str, limit: int | None = None) -> list[dict]:
    """The verified prompt set's entries ({"id", "caption", "tags"}), the first ``limit`` of them."""
    require_verified(wb, "dataset", dataset)
    path = wb.snapshot_dir("dataset", dataset) / PROMPTS_FILE
    if not path.is_file():
        raise BuilderError(
            f"Dataset '{dataset}' has no {PROMPTS_FILE}; a prompt set needs one (see eval-prompts)."
        )
    entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return entries[:limit] if limit else entries
