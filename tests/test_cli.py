"""The CLI as a user runs it: output, exit codes, JSON."""

import json

from tests.conftest import REPO_ROOT, make_snapshot, run_cli


def test_list_prints_a_table(workbench):
    make_snapshot(workbench, "toy", {"a.json": b"{}"})
    proc = run_cli("models", "list", cwd=workbench.root / "notebooks")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "REVISION", "SIZE", "LICENSE", "VERIFIED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["toy"] == ["toy", "synthetic:hand", "seed=0", "2", "B", "mit", "never"]
    assert rows["private"] == ["private", "hf:acme/private", "-", "-", "-", "missing"]


def test_list_json(workbench):
    proc = run_cli("datasets", "list", "--json", cwd=workbench.root)
    assert json.loads(proc.stdout) == [
        {
            "name": "captions",
            "kind": "dataset",
            "declared": True,
            "present": False,
            "source": "hf:acme/captions",
            "revision": None,
            "size": None,
            "license": "cc-by-4.0",
            "verified": "missing",
            "verified_at": None,
        }
    ]


def test_verify_exit_codes_and_report(workbench):
    folder = make_snapshot(workbench, "toy", {"a.json": b"{}", "b.bin": b"12345"})
    ok = run_cli("models", "verify", cwd=workbench.root)
    assert (ok.returncode, ok.stdout) == (0, "model toy: ok (2 files, 2 hashed, 0 unchanged, fast)\n")
    (folder / "b.bin").write_bytes(b"123")
    bad = run_cli("models", "verify", "toy", cwd=workbench.root)
    assert bad.returncode == 1
    assert bad.stdout == "model toy: FAILED: 1 truncated (b.bin)\n  truncated b.bin: 3 of 5 bytes\n"
    as_json = run_cli("models", "verify", "toy", "--full", "--json", cwd=workbench.root)
    (report,) = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["ok"] is False and report["mode"] == "full"
    assert report["problems"] == [{"path": "b.bin", "kind": "truncated", "detail": "3 of 5 bytes"}]


def test_errors_are_one_line_and_exit_2(workbench, tmp_path):
    proc = run_cli("models", "fetch", "nope", cwd=workbench.root)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: Unknown model 'nope'. Known models: broken, corrupt,")
    assert "Traceback" not in proc.stderr
    missing = run_cli("models", "verify", "toy", cwd=workbench.root)
    assert missing.returncode == 2 and "Run: harmonia models fetch toy" in missing.stderr
    nowhere = run_cli("models", "list", cwd=tmp_path)
    assert nowhere.returncode == 2 and nowhere.stderr.startswith("error: No Harmonia workbench found")


def test_tiny_prints_what_it_built(workbench):
    proc = run_cli("models", "tiny", "musicgen", cwd=workbench.root)
    assert proc.returncode == 0, proc.stderr
    built, recorded, dvc = proc.stdout.splitlines()
    assert built.startswith("built: model tiny-musicgen = tiny musicgen, seed 0 (6 files, ")
    assert built.endswith("in models/tiny-musicgen/")
    assert recorded == "recorded snapshots.lock"
    assert dvc == "not a DVC repository: run 'dvc init && dvc add models' to track models/ with DVC"
    assert proc.stderr == ""


def test_dataset_fetch_through_the_cli(workbench, hub):
    proc = run_cli("datasets", "fetch", "captions", cwd=workbench.root, env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    commit = hub.repos[("dataset", "acme/captions")].refs["main"]
    assert proc.stdout.splitlines() == [
        f"fetched: dataset captions = acme/captions@{commit} (1 files, 24 B) in datasets/captions/",
        "recorded snapshots.lock",
        "not a DVC repository: run 'dvc init && dvc add datasets' to track datasets/ with DVC",
    ]
    again = run_cli("datasets", "fetch", "captions", cwd=workbench.root, env={"HF_ENDPOINT": hub.url})
    assert (
        again.stdout.splitlines()[:2]
        == [  # params.yaml says no commit: the lock's is the pin
            f"revision main: using the commit snapshots.lock records ({commit[:12]}…); "
            "pass --revision main to move to the newest",
            f"already present: dataset captions = acme/captions@{commit} (1 files, 24 B) in datasets/captions/",
        ]
    )


def test_generate_list_show_reproduce(music_wb):
    gen = run_cli("generate", "music", "calm piano", "--duration", "0.5", "--seed", "4", cwd=music_wb.root)
    assert gen.returncode == 0, gen.stderr
    lines = gen.stdout.splitlines()
    art_id = lines[0].split()[2]
    assert lines[0].startswith(f"generated: artifact {art_id} (tiny-musicgen, seed 4, 1 take(s) of 0.5 s, ")
    assert lines[1:] == [
        f'  artifacts/{art_id}/take-0.wav  "calm piano"',
        f"  artifacts/{art_id}/take-0.png",
        f"  artifacts/{art_id}/manifest.json",
    ]
    again = run_cli("generate", "music", "calm piano", "--duration", "0.5", "--seed", "4", cwd=music_wb.root)
    assert again.stdout.startswith(
        f"cached: artifact {art_id} (the identical request was made before; --force regenerates)"
    )

    listed = run_cli("artifacts", "list", cwd=music_wb.root).stdout.splitlines()
    assert listed[0].split() == ["ID", "CREATED", "KIND", "MODEL", "SEED", "TAKES", "SECONDS", "PROMPT"]
    assert listed[1].split()[0] == art_id and listed[1].split()[2:] == [
        "music",
        "tiny-musicgen",
        "4",
        "1",
        "0.5",
        "calm",
        "piano",
    ]
    as_json = json.loads(run_cli("artifacts", "list", "--json", cwd=music_wb.root).stdout)
    assert as_json[0]["id"] == art_id and as_json[0]["prompts"] == ["calm piano"]

    shown = run_cli("artifacts", "show", art_id[:8], cwd=music_wb.root)
    assert shown.returncode == 0 and shown.stdout.startswith(f"artifact {art_id}  (music, created ")
    assert (
        "  request   duration_s 0.5, seed 4, temperature 1.0, top_k 250, top_p 1.0, guidance_scale 3.0\n"
        in shown.stdout
    )
    assert "  engine    musicgen (code version 1)\n" in shown.stdout
    assert "  licence   mit (tiny-musicgen): no non-commercial licence found\n" in shown.stdout
    manifest = json.loads(run_cli("artifacts", "show", art_id, "--json", cwd=music_wb.root).stdout)
    assert manifest["id"] == art_id

    rep = run_cli("reproduce", art_id, cwd=music_wb.root)
    assert (rep.returncode, rep.stdout) == (0, f"{art_id}: identical (1 output, same sha256)\n")


def test_generate_from_an_idea_and_bad_input_exit_codes(music_wb):
    idea = run_cli(
        "generate", "music", "rainy night", "--genre", "Lo-Fi", "--key", "a min", "--instrument", "piano",
        "--seed", "1", "--duration", "0.3", cwd=music_wb.root,
    )  # fmt: skip
    assert idea.returncode == 0, idea.stderr
    assert '"lo-fi, rainy night, with piano, A minor"' in idea.stdout
    bad = run_cli("generate", "music", "x", "--duration", "-1", cwd=music_wb.root)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "error: duration_s must be > 0 and <= 300 seconds, got -1.0.\n"
    assert (
        not (music_wb.root / "artifacts").exists() or len(list((music_wb.root / "artifacts").iterdir())) == 1
    )
    missing = run_cli("reproduce", "ffffffff", cwd=music_wb.root)
    assert missing.returncode == 2 and "No artifact 'ffffffff'" in missing.stderr


def test_demo_offline_uses_the_tiny_model(workbench):
    (workbench.root / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    proc = run_cli("demo", cwd=workbench.root, env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith(
        "The Hugging Face hub is not reachable from here (http://127.0.0.1:9 did not answer (ConnectError)), "
        "so the demo uses tiny-musicgen"
    )
    assert out[1].startswith("built tiny-musicgen (seed 0, digest ")
    art_id = next(line.split()[2] for line in out if line.startswith("generated: artifact"))
    assert (workbench.root / "artifacts" / art_id / "take-0.wav").is_file()
    assert (workbench.root / "artifacts" / art_id / "take-0.png").stat().st_size > 10_000
    assert out[-2] == f"spectrogram: artifacts/{art_id}/take-0.png"


def test_a_lyrics_file_that_is_not_there_is_refused_not_sung(workbench, monkeypatch, capsys):
    from harmonia.cli import _text_or_file, main
    from harmonia.generation import From

    monkeypatch.chdir(workbench.root)
    monkeypatch.setenv("HARMONIA_ROOT", str(workbench.root))
    (workbench.root / "lyrics.txt").write_text("[verse]\nhello\n", encoding="utf-8")
    assert _text_or_file("lyrics.txt", "lyrics") == "[verse]\nhello\n"
    assert _text_or_file("hello there.txt", "lyrics") == "hello there.txt"  # words, not a file name
    assert _text_or_file("0123abcd", "lyrics") == From("0123abcd", None)
    args = ["generate", "song", "synth pop", "--model", "tiny-ace-step", "--lyrics", "lyric.txt"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --lyrics: there is no file lyric.txt; give an existing file, an artifact id, or the text itself."
    )
    assert not (workbench.root / "artifacts").exists()
