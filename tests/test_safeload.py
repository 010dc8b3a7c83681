"""Hostile YAML and JSON: limits on size, encoding, nesting and aliases, each a one-line error."""

import time
import tracemalloc

import pytest

from harmonia.errors import FileFormatError, ParamsError
from harmonia.safeload import load_json, load_yaml

BOMB = "\n".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
)


def _error(load, source, what="f", **limits) -> str:
    with pytest.raises(FileFormatError) as exc:
        load(source, what, **limits)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_plain_documents_load_like_safe_load(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes("\ufeffa: [1, 2.5, x]\nb: {c: null}\n".encode())
    assert load_yaml(path, "p.yaml") == {"a": [1, 2.5, "x"], "b": {"c": None}}
    assert load_yaml("", "p.yaml") is None
    assert load_json(b'{"a": [1, {"b": null}]}', "j.json") == {"a": [1, {"b": None}]}


def test_yaml_refuses_python_tags():
    assert _error(load_yaml, "a: !!python/object/apply:os.system ['true']\n", "p.yaml") == (
        "p.yaml line 1, column 4: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'. Fix the file."
    )


def test_alias_bomb_fails_fast_and_small():
    tracemalloc.start()
    started = time.perf_counter()
    message = _error(load_yaml, BOMB, "bomb.yaml")
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 5 and peak < 20 << 20  # generous bounds: milliseconds and well under a megabyte
    assert message == (
        "bomb.yaml line 6, column 5: more than 200,000 values, counting each alias as a full copy "
        "(an alias bomb?). Use fewer aliases or a smaller file."
    )


def test_a_recursive_alias_is_refused():
    assert _error(load_yaml, "a: &x [1, *x]\n", "p.yaml") == (
        "p.yaml line 1, column 4: an alias refers to a collection that contains it. Remove the recursive alias."
    )


def test_modest_aliases_are_fine():
    doc = "base: &b [" + ", ".join(["x"] * 100) + "]\nuses: [" + ", ".join(["*b"] * 100) + "]\n"
    data = load_yaml(doc, "p.yaml")
    assert len(data["uses"]) == 100 and data["uses"][99] == ["x"] * 100
    assert "more than 5,000 values" in _error(load_yaml, doc, "p.yaml", max_values=5_000)


def test_nesting_is_limited_for_flow_and_block_yaml_and_json():
    assert load_yaml("[" * 64 + "]" * 64, "p.yaml") is not None
    assert _error(load_yaml, "[" * 65 + "]" * 65, "p.yaml") == (
        "p.yaml line 1, column 65: collections nested more than 64 levels deep. Flatten the file."
    )
    block = "".join("  " * i + f"k{i}:\n" for i in range(10)) + "  " * 10 + "v\n"
    assert _error(load_yaml, block, "p.yaml", max_depth=5) == (
        "p.yaml line 6, column 11: collections nested more than 5 levels deep. Flatten the file."
    )
    assert load_json("[" * 64 + "]" * 64, "j.json") is not None
    for depth in (65, 200_000):
        assert _error(load_json, "[" * depth + "]" * depth, "j.json", max_bytes=1 << 20) == (
            "j.json: collections nested more than 64 levels deep. Flatten the file."
        )


def test_size_limit(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 2000 + "\n")
    assert _error(load_yaml, path, "big.yaml", max_bytes=1000) == (
        "big.yaml is 2,004 bytes, over the 1,000-byte limit for this file. "
        "Check that it is the right file, or make it smaller."
    )
    assert _error(load_json, "[" + "1," * 600 + "1]", "j.json", max_bytes=1000) == (
        "j.json is 1,203 bytes, over the 1,000-byte limit for this file. "
        "Check that it is the right file, or make it smaller."
    )


def test_not_utf8_names_the_byte_and_offset():
    assert _error(load_yaml, b"a: 1\nb: 2\nc: \xff\n", "params.yaml") == (
        "params.yaml is not UTF-8 text (byte 0xff at offset 13). Save it as UTF-8."
    )
    assert _error(load_json, b'{"a": "\xc3("}', "x.json") == (
        "x.json is not UTF-8 text (byte 0xc3 at offset 7). Save it as UTF-8."
    )


def test_syntax_errors_are_one_line_with_line_and_column():
    assert _error(load_yaml, "a: 1\nb:\n  c: d: e\n", "params.yaml") == (
        "params.yaml line 3, column 7: mapping values are not allowed here. Fix the file."
    )
    assert _error(load_yaml, "a: 1\n---\nb: 2\n", "params.yaml") == (
        "params.yaml line 2, column 1: expected a single document in the stream but found another "
        "document. Fix the file."
    )
    assert _error(load_yaml, "a: \x07\n", "params.yaml") == (
        "params.yaml: character #x0007 at offset 3 is not allowed in YAML (special characters are not "
        "allowed). Remove it from the file."
    )
    assert _error(load_json, '{"a": 1,\n "b": }', "x.json") == (
        "x.json line 2, column 7: Expecting value. Fix the file."
    )


def test_the_error_class_and_fix_are_the_callers():
    with pytest.raises(ParamsError) as exc:
        load_yaml("a: [", "params.yaml", error=ParamsError, fix="Edit it.")
    assert (
        str(exc.value)
        == "params.yaml line 1, column 5: expected the node content, but found '<stream end>'. Edit it."
    )
