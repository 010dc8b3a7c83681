"""Text from users and files, made safe to print on a terminal.

A prompt, a file name, a manifest field or a model card can hold escape sequences that
recolour, retitle or clear a terminal, a carriage return that overwrites what a line said,
newlines that forge extra lines of output, or bidi controls that show text in another order
than it is stored. :func:`printable` shows each of them as a visible escape (``\\x1b``,
``\\r``, ``\\n``, ``\\u202e``) and leaves every other character, any script or emoji, as it is.

This module knows characters; it knows nothing about what is being printed.
"""

from __future__ import annotations

import re

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls and DEL; C1 controls (U+0080-U+009F; U+009B is a one-character CSI); the line and
# paragraph separators; bidi embeddings, overrides and isolates; lone surrogates (undecodable
# bytes of a file name, or broken text), which would also make printing raise.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: object) -> str:
    """``text`` (or ``str(text)``) with every character that can act on a terminal shown as an escape.

    Newline, carriage return and tab become ``\\n``, ``\\r`` and ``\\t``; other controls ``\\xNN``;
    bidi controls and line separators ``\\uNNNN``; a byte that ``os.fsdecode`` could not decode
    (a surrogate U+DC80-U+DCFF) the ``\\xNN`` of that byte. Backslashes are left as they are, so
    the result is for reading, not for parsing back.

    Example:
        >>> printable("calm piano\\x1b[2J\\rdone\\n")
        'calm piano\\\\x1b[2J\\\\rdone\\\\n'
        >>> print(printable("naïve 日本 🎹\\tok"))
        naïve 日本 🎹\\tok
    """
    return _UNSAFE.sub(_escape, text if isinstance(text, str) else str(text))


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
