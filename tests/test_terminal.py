import os

import pytest

from harmonia.terminal import printable


@pytest.mark.parametrize(
    "text, shown",
    [
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),  # colour
        ("\x1b]0;pwned\x07title", "\\x1b]0;pwned\\x07title"),  # window title (OSC ... BEL)
        ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "\\x1b]8;;http://evil\\x1b\\link\\x1b]8;;\\x1b\\"),
        ("progress 100%\rdone", "progress 100%\\rdone"),  # a CR that would overwrite the line
        ("one\ntwo\r\n", "one\\ntwo\\r\\n"),  # a forged second line
        ("a\tb", "a\\tb"),
        ("\x00\x08\x7f", "\\x00\\x08\\x7f"),  # NUL, backspace, DEL
        ("\x9b2J\x85", "\\x9b2J\\x85"),  # C1: the one-character CSI, next line
        ("abc\u202edcba\u2066x\u2069", "abc\\u202edcba\\u2066x\\u2069"),  # bidi override and isolate
        ("line\u2028sep", "line\\u2028sep"),
        ("naïve 日本語 🎹 \\ backslash", "naïve 日本語 🎹 \\ backslash"),  # everything else is kept
        ("", ""),
    ],
)
def test_controls_are_shown_as_escapes(text, shown):
    assert printable(text) == shown


def test_undecodable_file_name_bytes_show_as_those_bytes():
    name = os.fsdecode(b"take-\xff\x1b.wav")
    assert printable(name) == "take-\\xff\\x1b.wav"
    assert printable("\ud800") == "\\ud800"
    printable(name).encode("utf-8")  # printable on any UTF-8 terminal: no lone surrogates left


def test_any_object_is_printed_as_its_str():
    assert printable(3.5) == "3.5"
    assert printable(["a\nb"]) == "['a\\nb']"  # repr already escaped the newline
    assert printable(ValueError("bad\x1b[2J")) == "bad\\x1b[2J"
