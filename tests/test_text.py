"""The text engine: a tiny in-process LM, OpenAI-compatible servers (a real `transformers serve` and a
scripted stdlib one), each task's check, templates, context, lineage from text to music, the key."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harmonia.artifacts import children, list_artifacts
from harmonia.engines.text import (
    TEMPLATES,
    Rejected,
    TextEngine,
    check_lyrics,
    check_prompt,
    check_sfx,
    check_shots,
)
from harmonia.errors import ArtifactError, Cancelled, EndpointError, OutputError, ParamsError, RequestError
from harmonia.generation import From, generate, reproduce
from harmonia.requests import MusicRequest, TextRequest
from harmonia.workbench import Workbench
from tests.conftest import run_cli

KEY = "sk-test-7f3a9c1e5b2d4a6f8e0c"  # a fake key: it must appear in no file, log or message
TEXT_MODELS = """\
  tiny-lm:
    builder: lm
    seed: 0
    engine: text
    license: mit
text:
  model: tiny-lm
  max_new_tokens: 24
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """The tiny-lm snapshot, built once per session."""
    from harmonia.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-lm")
    (root / "params.yaml").write_text("models:\n" + TEXT_MODELS)
    build_tiny(Workbench.open(root), "lm", seed=0)
    return root / "models" / "tiny-lm"


def _with_text(wb: Workbench, tiny_lm: Path, extra: str = "") -> Workbench:
    params = wb.root / "params.yaml"
    params.write_text(params.read_text().replace("models:\n", "models:\n" + TEXT_MODELS.split("text:")[0] + extra, 1)
                      + "text:" + TEXT_MODELS.split("text:")[1])  # fmt: skip
    shutil.copytree(tiny_lm, wb.root / "models" / "tiny-lm")
    return Workbench.open(wb.root)


@pytest.fixture
def text_wb(workbench, tiny_lm) -> Workbench:
    return _with_text(workbench, tiny_lm)


@pytest.fixture
def lineage_wb(music_wb, tiny_lm) -> Workbench:
    return _with_text(music_wb, tiny_lm)


def nothing_written(wb: Workbench) -> bool:
    return not wb.artifacts_dir.exists() or not any(wb.artifacts_dir.iterdir())


# -- the tiny model in process ------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_lm_writes_the_same_bytes_in_two_processes(text_wb, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(text_wb.root, other)
    runs = [
        run_cli(
            "write", "prompt", "rain", "on", "a", "tin", "roof", "--seed", "1", "--threads", "1", cwd=root
        )
        for root in (text_wb.root, other)
    ]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    first, second = (proc.stdout.splitlines() for proc in runs)
    assert first[0] == second[0] and first[1].split()[:3] == second[1].split()[:3]  # text and id
    text, written = first[:2]
    assert text.strip()
    art_id = written.split()[2]
    assert written.startswith(f"written: artifact {art_id} (prompt, tiny-lm, seed 1, 24 tokens, ")
    files = [root / "artifacts" / art_id / "take-0.txt" for root in (text_wb.root, other)]
    assert sha(files[0]) == sha(files[1]) and files[0].read_text() == text + "\n"
    manifest = json.loads((text_wb.root / "artifacts" / art_id / "manifest.json").read_text())
    assert manifest["kind"] == "text" and manifest["model"]["name"] == "tiny-lm"
    assert (
        manifest["request"]["template"] == TEMPLATES["prompt"]
        and manifest["request"]["idea"] == "rain on a tin roof"
    )
    assert manifest["engine"]["details"]["decoding"] == "greedy"
    assert manifest["engine"]["details"]["reproducible"] is True
    assert manifest["outputs"][0]["media"] == "text"
    again = run_cli(
        "write", "prompt", "rain on a tin roof", "--seed", "1", "--threads", "1", cwd=text_wb.root
    )
    assert again.stdout.splitlines()[1].startswith(f"cached: artifact {art_id} ")
    verdict = run_cli("reproduce", art_id, cwd=text_wb.root)
    assert verdict.returncode == 0 and verdict.stdout == f"{art_id}: identical (1 output, same sha256)\n"


def test_sampling_follows_the_seed(text_wb):
    def text(seed: int) -> str:
        request = TextRequest("a storm at sea", task="prompt", seed=seed, temperature=1.5, max_new_tokens=24)
        art = generate(text_wb, "tiny-lm", request, threads=1).artifact
        return art.file(art.outputs[0]).read_text()

    assert text(1) == text(1) != text(2)


def test_cancel_stops_between_tokens_and_writes_nothing(text_wb):
    stop, seen = threading.Event(), []

    def progress(done, total):
        seen.append((done, total))
        if done == 3:
            stop.set()

    with pytest.raises(Cancelled, match=r"^Generation cancelled at step 3 of 24; no artifact was written\.$"):
        generate(
            text_wb, "tiny-lm", TextRequest("rain", seed=0, max_new_tokens=24), progress=progress, cancel=stop
        )
    assert seen == [(1, 24), (2, 24), (3, 24)] and nothing_written(text_wb)


def test_a_rejected_answer_is_kept_and_makes_no_artifact(text_wb):
    with pytest.raises(OutputError) as caught:
        generate(
            text_wb, "tiny-lm", TextRequest("rain", task="lyrics", duration_s=30, seed=0, max_new_tokens=24)
        )
    message = str(caught.value)
    assert message.startswith("lyrics: the model's answer failed the check: the lyrics start with '")
    assert (
        "not with a section tag such as [verse] (it was cut at max_new_tokens=24). No artifact was made; "
        in message
    )
    kept = message.split("the raw answer is kept in ")[1].split(". ")[0]
    assert (text_wb.root / kept).is_file() and kept.startswith(".harmonia/rejected/lyrics-")
    assert nothing_written(text_wb)
    proc = run_cli("write", "lyrics", "rain", "--duration", "30", "--seed", "0", cwd=text_wb.root)
    assert (
        proc.returncode == 2
        and proc.stdout == ""
        and proc.stderr.startswith("error: lyrics: the model's answer")
    )


# -- checks before anything runs -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Lyrics about {idea}, {structure}.", r"^text.templates.lyrics lacks the placeholder \{duration_s\}: without it the model never sees the duration s\. It must have \{duration_s\}, \{idea\}, \{structure\}\.$"),
        ("About {idea} in {duration_s} s: {structure} {mood}", r"^text.templates.lyrics has the placeholder \{mood\}, which the lyrics task does not fill; it may use \{duration_s\}, \{idea\}, \{max_lines\}, \{structure\} \(literal braces: \{\{ and \}\}\)\.$"),
        ("About {idea {duration_s} {structure}", r"^text.templates.lyrics is not a valid template \(.*\); write literal braces as \{\{ and \}\}\.$"),
        ("   ", r"^text.templates.lyrics is empty; write the task's instructions with its placeholders\.$"),
    ],
)  # fmt: skip
def test_a_template_without_its_placeholders_is_refused(text_wb, template, message):
    request = TextRequest("rain", task="lyrics", duration_s=30, seed=0, template=template)
    with pytest.raises(RequestError, match=message):
        generate(text_wb, "tiny-lm", request)
    assert nothing_written(text_wb)


@pytest.mark.slow
def test_templates_come_from_params_yaml(text_wb):
    params = text_wb.root / "params.yaml"
    params.write_text(
        params.read_text() + "  templates:\n    prompt: 'Music for {idea} with no {{braces}} lost'\n"
    )
    proc = run_cli("write", "prompt", "rain", "--seed", "0", cwd=text_wb.root)
    assert proc.returncode == 0, proc.stderr
    (art,) = list_artifacts(text_wb)
    assert art.manifest.request["template"] == "Music for {idea} with no {{braces}} lost"
    params.write_text(params.read_text().replace("{idea} with", "the rain with"))
    proc = run_cli("write", "prompt", "rain", "--seed", "0", cwd=text_wb.root)
    assert proc.returncode == 2 and proc.stderr == (
        "error: text.templates.prompt lacks the placeholder {idea}: without it the model never sees the idea. "
        "It must have {idea}.\n"
    )


def test_an_idea_longer_than_the_context_is_refused_before_loading(text_wb, monkeypatch):
    monkeypatch.setattr(TextEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded")))
    with pytest.raises(
        RequestError,
        match=r"^idea is too long for model 'tiny-lm': with the prompt template the prompt is \d+ tokens, and "
        r"max_new_tokens asks for 24 more, but the model's context holds 2048 tokens\. Shorten the idea by about "
        r"\d+ tokens or lower --max-tokens\.$",
    ):
        generate(text_wb, "tiny-lm", TextRequest("rain " * 500, seed=0, max_new_tokens=24))
    with pytest.raises(RequestError, match=r"^idea has 20001 characters; the limit is 20000\.$"):
        generate(text_wb, "tiny-lm", TextRequest("x" * 20001, seed=0))
    with pytest.raises(RequestError, match=r"^task must be one of prompt, lyrics, shots, sfx, got 'poem'\.$"):
        generate(text_wb, "tiny-lm", TextRequest("rain", task="poem", seed=0))
    with pytest.raises(
        RequestError, match=r"^the lyrics task needs the song's length: give --duration SECONDS\.$"
    ):
        generate(text_wb, "tiny-lm", TextRequest("rain", task="lyrics", seed=0))
    with pytest.raises(
        RequestError, match=r"^structure must be section names from intro, verse, .* got 'verse solo'"
    ):
        generate(
            text_wb, "tiny-lm", TextRequest("rain", task="lyrics", duration_s=30, structure="verse solo")
        )
    with pytest.raises(
        RequestError, match=r"^max_new_tokens must be an integer in \[1, 8192\] tokens, got 0\.$"
    ):
        generate(text_wb, "tiny-lm", TextRequest("rain", seed=0, max_new_tokens=0))
    with pytest.raises(
        RequestError, match=r"^sections is for the shots task; the prompt task does not use it\.$"
    ):
        generate(text_wb, "tiny-lm", TextRequest("rain", seed=0, sections="0-4 intro"))
    assert nothing_written(text_wb)


# -- each task's check, good and bad ----------------------------------------------------------------
LYRICS = TextRequest("rain", task="lyrics", duration_s=24.0, structure="verse chorus inst chorus")


def test_prompt_check():
    assert check_prompt('  "warm lo-fi piano, vinyl crackle, 80 bpm"\n', TextRequest("x")) == (
        "warm lo-fi piano, vinyl crackle, 80 bpm\n"
    )
    for answer, why in [
        ("  \n ", "the answer is empty; a music prompt is one line of text"),
        ("piano\nand drums\n", "the answer has 2 lines; a music prompt is one line"),
        ("1234 !!", "the answer '1234 !!' has no words"),
        ("a" * 501, "the prompt has 501 characters; at most 500 make a music prompt"),
    ]:
        with pytest.raises(Rejected, match=f"^{why}$"):
            check_prompt(answer, TextRequest("x"))


def test_lyrics_check():
    good = "[Verse]\nrain on the roof\nsoft and slow\n\n[chorus]\nla la\n[inst]\n[chorus 2]\nla la\n"
    assert check_lyrics(good, LYRICS) == (
        "[verse]\nrain on the roof\nsoft and slow\n\n[chorus]\nla la\n\n[inst]\n\n[chorus]\nla la\n"
    )
    # 24 s in 4 sections: 6 s each, at 2 s a line 3 lines at most
    for answer, why in [
        ("rain\n[verse]\nx\n", "the lyrics start with 'rain', not with a section tag such as \\[verse\\]"),
        ("[verse]\nx\n[solo]\ny\n", "\\[solo\\] is not a section tag; known: \\[intro\\], \\[verse\\]"),
        ("[verse]\nx\n[chorus]\ny\n", "the sections are verse, chorus but the structure asks for verse, chorus, inst, chorus"),
        ("[verse]\nx\n[chorus]\ny\n[inst]\nla\n[chorus]\ny\n", "\\[inst\\] \\(section 3\\) is instrumental but has 1 lines"),
        ("[verse]\n[chorus]\ny\n[inst]\n[chorus]\ny\n", "\\[verse\\] \\(section 1\\) has no lines"),
        ("[verse]\na\nb\nc\nd\n[chorus]\ny\n[inst]\n[chorus]\ny\n",
         "\\[verse\\] \\(section 1\\) has 4 lines; at 2 s a line, 4 sections in 24 s hold at most 3 lines each"),
        ("just words", "the lyrics start with 'just words', not with a section tag"),
    ]:  # fmt: skip
        with pytest.raises(Rejected, match=f"^{why}"):
            check_lyrics(answer, LYRICS)


SHOTS = TextRequest("rain", task="shots", duration_s=10.0)


def test_shots_check():
    good = [
        {"start": 0, "end": 4, "prompt": "rain on glass"},
        {"start": 4, "end": 10, "prompt": " a city at night "},
    ]
    expected = json.dumps([good[0], {**good[1], "prompt": "a city at night"}], indent=2) + "\n"
    assert check_shots(json.dumps(good), SHOTS) == expected
    assert check_shots("```json\n" + json.dumps(good) + "\n```", SHOTS) == expected  # a fence is fine
    bad = [
        ("not json", "the answer is not JSON \\(Expecting value"),
        ('{"start": 0}', "the answer is not a non-empty JSON list of shots"),
        ('[{"start": 0, "end": 10}]', "shot 0 must have exactly start, end and prompt, got \\['end', 'start'\\]"),
        ('[{"start": 0, "end": "10", "prompt": "x"}]', "shot 0: end must be a number of seconds, got '10'"),
        ('[{"start": 0, "end": 4, "prompt": ""}]', "shot 0: prompt must be text of 1 to 500 characters"),
        ('[{"start": 0, "end": 0, "prompt": "x"}]', "shot 0 ends at 0 s, not after its start 0 s"),
        ('[{"start": 1, "end": 10, "prompt": "x"}]', "shot 0 starts at 1 s, after the previous one ends \\(0 s\\): a gap"),
        ('[{"start": 0, "end": 5, "prompt": "x"}, {"start": 4, "end": 10, "prompt": "y"}]',
         "shot 1 starts at 4 s, before the previous one ends \\(5 s\\): overlap"),
        ('[{"start": 0, "end": 5, "prompt": "x"}, {"start": 6, "end": 10, "prompt": "y"}]',
         "shot 1 starts at 6 s, after the previous one ends \\(5 s\\): a gap"),
        ('[{"start": 0, "end": 12, "prompt": "x"}]', "shot 0 ends at 12 s, past the track's end \\(10 s\\)"),
        ('[{"start": 0, "end": 8, "prompt": "x"}]', "the shots end at 8 s, before the track does \\(10 s\\)"),
        ('[{"start": 5, "end": 10, "prompt": "x"}, {"start": 0, "end": 5, "prompt": "y"}]',
         "shot 0 starts at 5 s, after the previous one ends \\(0 s\\): a gap"),
    ]  # fmt: skip
    for answer, why in bad:
        with pytest.raises(Rejected, match=f"^{why}"):
            check_shots(answer, SHOTS)


def test_sfx_check():
    request = TextRequest("a forest at dawn", task="sfx", count=3)
    assert check_sfx('["birdsong", " wind in leaves", "a twig snaps"]', request) == (
        '[\n  "birdsong",\n  "wind in leaves",\n  "a twig snaps"\n]\n'
    )
    for answer, why in [
        ("birdsong, wind", "the answer is not JSON"),
        ('["birdsong", 3, "x"]', "the answer is not a JSON list of non-empty strings"),
        ('["birdsong", "wind"]', "the answer lists 2 prompts; 3 were asked for"),
        ('["wind", "wind", "x"]', "the answer lists the same prompt twice"),
    ]:
        with pytest.raises(Rejected, match=f"^{why}"):
            check_sfx(answer, request)


# -- lineage: text feeds music -------------------------------------------------------------------
@pytest.mark.slow
def test_a_text_artifact_is_the_parent_of_the_music_it_fed(lineage_wb):
    wb = lineage_wb
    text = generate(wb, "tiny-lm", TextRequest("rain on a tin roof", seed=1), threads=1).artifact
    prompt = text.file("take-0.txt").read_text().strip()
    music = generate(
        wb, "tiny-musicgen", MusicRequest(From(text.id[:8]), duration_s=1.0, seed=2), previews=False
    )
    art = music.artifact
    (parent,) = art.manifest.parents
    assert (parent.id, parent.file, parent.role, parent.kind) == (text.id, "take-0.txt", "text", "text")
    assert parent.sha256 == sha(text.file("take-0.txt")) == text.outputs[0].sha256
    assert art.manifest.request["prompts"] == [prompt] and art.outputs[0].prompt == prompt
    assert [(x.model, x.via) for x in art.manifest.licenses] == [
        ("tiny-musicgen", None),
        ("tiny-lm", text.id),
    ]
    assert [c.id for c in children(wb, text.id)] == [art.id]
    # the same prompt typed is another artifact: lineage is part of what the id names
    typed = generate(
        wb, "tiny-musicgen", MusicRequest(prompt, duration_s=1.0, seed=2), previews=False
    ).artifact
    assert typed.id != art.id and sha(typed.file("take-0.wav")) == sha(art.file("take-0.wav"))
    # the CLI names it the same way: a cache hit
    proc = run_cli("generate", "music", "--from-text", text.id, "--duration", "1", "--seed", "2", cwd=wb.root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"cached: artifact {art.id} ")
    shown = run_cli("artifacts", "show", art.id, cwd=wb.root).stdout
    assert f"  parent    {text.id} (text, text: take-0.txt, sha256 {parent.sha256[:12]})\n" in shown
    assert (
        f"  child     {art.id} (music, as text)\n"
        in run_cli("artifacts", "show", text.id, cwd=wb.root).stdout
    )
    assert reproduce(wb, art.id).verified
    # a changed text file is refused as a parent; a missing one is reported by reproduce
    text.file("take-0.txt").write_text("something else\n")
    with pytest.raises(
        ArtifactError, match=rf"^text: {text.id}/take-0.txt no longer matches its manifest's sha256"
    ):
        generate(wb, "tiny-musicgen", MusicRequest(From(text.id), duration_s=1.0, seed=3))
    shutil.rmtree(text.path)
    verdict = reproduce(wb, art.id)
    assert verdict.identical and verdict.differences == (
        f"parent {text.id} (text) is missing; the kept copy of its file was used",
    )
    proc = run_cli("generate", "music", "calm", "--from-text", text.id, cwd=wb.root)
    assert proc.returncode == 2 and proc.stderr == "error: give a PROMPT or --from-text ID, not both.\n"
    proc = run_cli("generate", "music", "--from-text", art.id, cwd=wb.root)
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"error: text: artifact {art.id} (music) has no text output; its text files: none."
    )


# -- servers ----------------------------------------------------------------------------------------
class _Scripted(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that answers what the test tells it to."""

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.seen.append({"body": body, "authorization": self.headers.get("Authorization")})
        mode = server.mode
        if mode == "slow":
            time.sleep(2.0)
        if mode == "garbage":
            return self._send(200, b"<html>this is not an API</html>", "text/html")
        if mode == "not-a-completion":
            return self._send(200, json.dumps({"object": "list", "data": []}).encode())
        if mode == "error":
            return self._send(500, json.dumps({"error": {"message": "CUDA out of memory"}}).encode())
        if mode == "redirect":
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.2:9/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if mode == "unauthorized":
            return self._send(401, json.dumps({"error": {"message": "bad key"}}).encode())
        if body["model"] != "acme/lm-7b":
            detail = {
                "error": {
                    "message": f"The model `{body['model']}` does not exist.",
                    "code": "model_not_found",
                }
            }
            return self._send(404, json.dumps(detail).encode())
        answer = {"id": "x", "object": "chat.completion", "model": "acme/lm-7b-q4", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": server.answer}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 12}}  # fmt: skip
        self._send(200, json.dumps(answer).encode())

    def _send(self, status: int, data: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def scripted_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.mode, server.answer, server.seen = "ok", "", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _endpoint(wb: Workbench, name: str, url: str, served: str, timeout_s: float = 5.0) -> Workbench:
    entry = f"  {name}:\n    endpoint: {url}\n    served_model: {served}\n    timeout_s: {timeout_s}\n    engine: text\n"
    params = wb.root / "params.yaml"
    params.write_text(params.read_text().replace("models:\n", "models:\n" + entry, 1))
    return Workbench.open(wb.root)


def _no_key_anywhere(wb: Workbench, *texts: str) -> None:
    for text in texts:
        assert KEY not in text
    for path in wb.root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_server_answers_become_artifacts_that_say_they_are_not_reproducible(lineage_wb, monkeypatch):
    monkeypatch.setenv("HARMONIA_TEXT_API_KEY", KEY)
    with scripted_server() as server:
        wb = _endpoint(lineage_wb, "remote", f"http://127.0.0.1:{server.server_port}/v1", "acme/lm-7b")
        # a shot list for a music artifact: the track is a parent, its length bounds the shots
        track = generate(
            wb, "tiny-musicgen", MusicRequest("calm", duration_s=1.0, seed=1), previews=False
        ).artifact
        server.answer = '```json\n[{"start": 0, "end": 0.4, "prompt": "rain"}, {"start": 0.4, "end": 1, "prompt": "sun"}]\n```'
        done = generate(wb, "remote", TextRequest("weather", task="shots", track=From(track.id), seed=5))
        art = done.artifact
        assert json.loads(art.file("take-0.json").read_text()) == [
            {"start": 0, "end": 0.4, "prompt": "rain"}, {"start": 0.4, "end": 1, "prompt": "sun"}]  # fmt: skip
        (parent,) = art.manifest.parents
        assert (parent.id, parent.role, parent.kind) == (track.id, "track", "music")
        details = art.manifest.engine.details
        assert (
            details["backend"] == "openai-chat"
            and details["endpoint"] == f"http://127.0.0.1:{server.server_port}/v1"
        )
        assert details["served_model"] == "acme/lm-7b" and details["reported_model"] == "acme/lm-7b-q4"
        assert details["reproducible"] is False and details["new_tokens"] == 12
        assert art.manifest.model.source == "endpoint" and art.manifest.model.repo == "acme/lm-7b"
        sent = server.seen[-1]
        assert sent["authorization"] == f"Bearer {KEY}"
        assert sent["body"]["model"] == "acme/lm-7b" and sent["body"]["seed"] == 5
        assert "The track lasts 1 seconds" in sent["body"]["messages"][0]["content"]
        # cached by id: the server is not asked again
        asked = len(server.seen)
        assert generate(
            wb, "remote", TextRequest("weather", task="shots", track=From(track.id), seed=5)
        ).cached
        assert len(server.seen) == asked
        # reproduce asks again and says it cannot promise anything
        verdict = reproduce(wb, art.id)
        assert verdict.identical and not verdict.verified
        assert verdict.summary() == (
            f"{art.id}: not reproducible (answered by the server at http://127.0.0.1:{server.server_port}/v1, "
            "whose weights and code Harmonia does not pin); the same sha256 this time"
        )
        proc = run_cli("reproduce", art.id, cwd=wb.root, env={"HARMONIA_TEXT_API_KEY": KEY})
        assert proc.returncode == 1 and proc.stdout.startswith(
            f"{art.id}: not reproducible (answered by the server"
        )
        # the CLI: lyrics that pass their check
        server.answer = "[verse]\nrain again\n[chorus]\noh rain\n"
        proc = run_cli("write", "lyrics", "rain", "--model", "remote", "--duration", "20", "--structure",
                       "verse chorus", "--seed", "2", cwd=wb.root, env={"HARMONIA_TEXT_API_KEY": KEY})  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("[verse]\nrain again\n\n[chorus]\noh rain\nwritten: artifact ")
        assert "  not reproducible: answered by the server at" in proc.stdout
        # sfx prompts feed a batch of music
        server.answer = '["thunder", "rain on leaves"]'
        sfx = generate(wb, "remote", TextRequest("a storm", task="sfx", count=2, seed=1)).artifact
        batch = generate(
            wb, "tiny-musicgen", MusicRequest(From(sfx.id), duration_s=0.5, seed=1), previews=False
        )
        assert batch.artifact.manifest.request["prompts"] == ["thunder", "rain on leaves"]
        _no_key_anywhere(wb, proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    ("mode", "served", "timeout_s", "message"),
    [
        ("garbage", "acme/lm-7b", 5.0, r"^The text server at {url} answered something that is not JSON \('<html>this is not an API</html>'\.\.\.\)\. Is the endpoint the server's OpenAI-compatible base URL \(ending in /v1\)\? Nothing was written\.$"),
        ("not-a-completion", "acme/lm-7b", 5.0, r"^The text server at {url} answered JSON that is not a chat completion \(no choices\[0\]\.message\.content: 'choices'\)\. Is it an OpenAI-compatible server\? Nothing was written\.$"),
        ("error", "acme/lm-7b", 5.0, r'^The text server at {url} answered HTTP 500 \(Internal Server Error\): \{"error": \{"message": "CUDA out of memory"\}\}\. Nothing was written\.$'),
        ("unauthorized", "acme/lm-7b", 5.0, r"^The text server at {url} refused the request \(HTTP 401\): set HARMONIA_TEXT_API_KEY in the environment or \.env to a key it accepts\. Nothing was written\.$"),
        ("redirect", "acme/lm-7b", 5.0, r"^The text server at {url} redirects \(HTTP 307\); Harmonia does not follow redirects, which would send the key elsewhere\. Set models\.remote\.endpoint in params\.yaml to the final base URL\. Nothing was written\.$"),
        ("ok", "acme/nope", 5.0, r"^The text server at {url} does not serve the model 'acme/nope' \(HTTP 404: .*model_not_found.*\)\. Fix models\.remote\.served_model in params\.yaml \(the server's /models lists what it serves\)\. Nothing was written\.$"),
        ("slow", "acme/lm-7b", 0.5, r"^The text server at {url} did not answer within 0\.5 s \(models\.remote\.timeout_s in params\.yaml\)\. Raise the timeout, ask for fewer tokens, or check the server\. Nothing was written\.$"),
    ],
)  # fmt: skip
def test_server_failures_are_one_clear_error_and_write_nothing(
    text_wb, monkeypatch, mode, served, timeout_s, message
):
    monkeypatch.setenv("HARMONIA_TEXT_API_KEY", KEY)
    with scripted_server() as server:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        wb = _endpoint(text_wb, "remote", url, served, timeout_s)
        server.mode = mode
        started = time.monotonic()
        with pytest.raises(EndpointError, match=message.replace("{url}", url.replace(".", r"\."))) as caught:
            generate(wb, "remote", TextRequest("rain", seed=0))
        assert time.monotonic() - started < 5
        assert nothing_written(wb)
        _no_key_anywhere(wb, str(caught.value))


def test_a_server_that_is_down_is_named_within_the_timeout(text_wb):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    wb = _endpoint(text_wb, "remote", url, "acme/lm-7b", 3.0)
    started = time.monotonic()
    proc = run_cli(
        "write", "prompt", "rain", "--model", "remote", cwd=wb.root, env={"HARMONIA_TEXT_API_KEY": KEY}
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        f"error: The text server at {url} refused the connection (is it running?). Start it (e.g. `transformers "
        "serve`) or fix models.remote.endpoint in params.yaml. Nothing was written.\n"
    )
    assert time.monotonic() - started < 30
    _no_key_anywhere(wb, proc.stderr)
    assert run_cli("models", "list", cwd=wb.root).stdout.count(f"endpoint:{url}") == 1
    proc = run_cli("models", "fetch", "remote", cwd=wb.root)
    assert proc.returncode == 2 and "is served by http://127.0.0.1:" in proc.stderr


def test_the_key_comes_from_dotenv_and_never_from_params(text_wb):
    with scripted_server() as server:
        wb = _endpoint(text_wb, "remote", f"http://127.0.0.1:{server.server_port}/v1", "acme/lm-7b")
        (wb.root / ".env").write_text(f"HARMONIA_TEXT_API_KEY={KEY}\n")
        server.answer = "soft rain, piano, 70 bpm"
        proc = run_cli("write", "prompt", "rain", "--model", "remote", "--seed", "3", cwd=wb.root)
        assert proc.returncode == 0, proc.stderr
        assert server.seen[-1]["authorization"] == f"Bearer {KEY}"
        (wb.root / ".env").unlink()
        _no_key_anywhere(wb, proc.stdout, proc.stderr)
    params = wb.root / "params.yaml"
    params.write_text(
        params.read_text().replace(
            "    served_model: acme/lm-7b\n", f"    served_model: acme/lm-7b\n    api_key: {KEY}\n"
        )
    )
    with pytest.raises(ParamsError, match=r"^params.yaml: models.remote has unknown keys \['api_key'\]"):
        Workbench.open(wb.root)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{endpoint: 'ftp://x', served_model: m, engine: text}", r"endpoint must be the server's base URL"),
        ("{endpoint: 'http://127.0.0.1:1/v1', engine: text}", r"has an endpoint but no 'served_model'"),
        ("{endpoint: 'http://127.0.0.1:1/v1', served_model: m, timeout_s: 0}", r"timeout_s must be seconds in \(0, 3600\], got 0"),
        ("{endpoint: 'http://127.0.0.1:1/v1', served_model: m, api_key_env: 'sk-123'}", r"api_key_env must name an environment variable"),
        ("{endpoint: 'http://127.0.0.1:1/v1', served_model: m, repo: a/b}", r"needs exactly one of 'repo' \(a hub repo\), 'builder'"),
        ("{endpoint: 'http://127.0.0.1:1/v1', served_model: m, revision: main}", r"revision makes no sense for a model served by an endpoint"),
    ],
)  # fmt: skip
def test_endpoint_entries_are_checked(workbench, entry, message):
    (workbench.root / "params.yaml").write_text(f"models:\n  remote: {entry}\n")
    with pytest.raises(ParamsError, match=message):
        Workbench.open(workbench.root)


@contextlib.contextmanager
def transformers_serve(model: Path, home: Path):
    """`transformers serve` on 127.0.0.1 with the model pinned; stopped (and waited for) at the end."""
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    args = [str(exe), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(home)}
    log = home / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            for _ in range(240):
                if server.poll() is not None:
                    raise RuntimeError(f"transformers serve exited: {log.read_text()[-2000:]}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            else:
                raise RuntimeError(f"transformers serve did not start: {log.read_text()[-2000:]}")
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


@pytest.mark.slow
def test_the_real_transformers_server_answers_like_the_model_in_process(text_wb, tmp_path):
    if not Path(sys.executable).with_name("transformers").exists():
        pytest.skip("the transformers CLI is not installed")
    model = text_wb.root / "models" / "tiny-lm"
    request = TextRequest("rain on a tin roof", seed=1, max_new_tokens=24)
    local = generate(text_wb, "tiny-lm", request, threads=1).artifact
    home = tmp_path / "home"
    home.mkdir()
    with transformers_serve(model, home) as url:
        wb = _endpoint(text_wb, "served", url, str(model), 60.0)
        env = {"HARMONIA_TEXT_API_KEY": KEY}
        proc = run_cli("write", "prompt", "rain on a tin roof", "--model", "served", "--seed", "1", "--max-tokens", "24",
                       cwd=wb.root, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        served = next(a for a in list_artifacts(wb) if a.model == "served")
        # greedy decoding of the same weights: the server wrote what the model wrote in process
        assert served.file("take-0.txt").read_bytes() == local.file("take-0.txt").read_bytes()
        details = served.manifest.engine.details
        assert details["reported_model"].startswith(str(model)) and details["reproducible"] is False
        assert details["new_tokens"] == 24 and details["finish"] == "length"
        # a model name the server does not have
        params = wb.root / "params.yaml"
        params.write_text(params.read_text().replace(f"served_model: {model}", "served_model: acme/none"))
        proc = run_cli("write", "prompt", "rain", "--model", "served", cwd=wb.root, env=env)
        assert proc.returncode == 2
        assert proc.stderr.startswith(
            f"error: The text server at {url} does not serve the model 'acme/none' (HTTP 400: "
        )
        _no_key_anywhere(wb, proc.stdout, proc.stderr, (home / "serve.log").read_text())
