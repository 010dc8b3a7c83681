import pytest

from harmonia.errors import RequestError
from harmonia.prompts import Idea, canonical_prompt, normalize_key


def test_canonical_prompt_orders_and_normalises():
    idea = Idea(
        "  a rainy   night in the city ",
        genre="Lo-Fi  Hip Hop",
        mood="Melancholic",
        tempo_bpm=80,
        key="a min",
        instruments=("Piano", "vinyl crackle", "piano"),
    )
    assert canonical_prompt(idea) == (
        "lo-fi hip hop, a rainy night in the city, melancholic, with piano and vinyl crackle, 80 bpm, A minor"
    )
    assert canonical_prompt(idea) == canonical_prompt(Idea(**{**idea.__dict__}))


def test_only_text():
    assert canonical_prompt(Idea("Ambient drone")) == "Ambient drone"
    assert canonical_prompt(Idea("x", instruments=("a", "b", "c"))) == "x, with a, b and c"
    assert canonical_prompt(Idea("x", tempo_bpm=92.5)) == "x, 92.5 bpm"


@pytest.mark.parametrize(
    "key, expected",
    [
        ("C", "C major"),
        ("f#m", "F♯ minor"),
        ("Bb major", "B♭ major"),
        ("e minor", "E minor"),
        ("G maj", "G major"),
    ],
)
def test_keys(key, expected):
    assert normalize_key(key) == expected


def test_bad_ideas():
    with pytest.raises(RequestError, match="idea text must not be empty"):
        canonical_prompt(Idea("   "))
    with pytest.raises(RequestError, match=r"tempo_bpm must be in \[20, 300\], got 400"):
        canonical_prompt(Idea("x", tempo_bpm=400))
    with pytest.raises(RequestError, match=r"key must be a note A-G .* got 'H minor'"):
        canonical_prompt(Idea("x", key="H minor"))
