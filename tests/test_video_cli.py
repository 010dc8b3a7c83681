"""`harmonia models tiny wan` and `harmonia generate video` in fresh processes: the estimate before
the steps, one error line for bad input with nothing written, and a music video from files."""

import json
import shutil

import pytest

from tests.conftest import VIDEO_PARAMS, run_cli
from tests.engines.test_wan import click_track


@pytest.mark.slow
def test_tiny_wan_builds_and_a_bad_clip_is_one_error_line(tmp_path):
    (tmp_path / "params.yaml").write_text(VIDEO_PARAMS)
    built = run_cli("models", "tiny", "wan", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "models" / "tiny-wan" / "inventory.json").is_file()
    bad = run_cli("generate", "video", "a boat", "--frames", "16", "--seed", "1", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == (
        "error: frames must be 4k+1 for model 'tiny-wan' (its VAE packs 4 frames into one after the first), "
        "got 16; the nearest are 13 and 17.\n"
    )
    bad = run_cli("generate", "video", "a boat", "--fps", "0", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr == "error: fps must be > 0 and <= 120 frames/s, got 0.0.\n"
    bad = run_cli("generate", "video", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == "error: give a PROMPT, or --from-text ID to take it from a text artifact.\n"
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.slow
def test_a_clip_and_a_music_video_from_the_command_line(tmp_path, tiny_wan):
    (tmp_path / "params.yaml").write_text(VIDEO_PARAMS)
    shutil.copytree(tiny_wan, tmp_path / "models")  # `harmonia models tiny wan` is the test above's
    made = run_cli("generate", "video", "a boat", "--seed", "3", "--threads", "2", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "estimate: about " in made.stderr and "s/step at 64x48x9 (measured now)" in made.stderr
    assert made.stdout.startswith("generated: artifact ") and "take-0.mp4" in made.stdout
    track = click_track(tmp_path / "track.wav")
    shots = tmp_path / "shots.json"
    shots.write_text(
        json.dumps([{"start": 0, "end": 2, "prompt": "night"}, {"start": 2, "end": 4.2, "prompt": "day"}])
    )
    video = run_cli(
        "generate", "video", "--soundtrack", str(track), "--shots", str(shots), "--seed", "3", "--threads", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert video.returncode == 0, video.stderr
    assert '"music video: 2 shots"' in video.stdout and "2 clip(s) of 2 steps" in video.stderr
    art = video.stdout.split()[2]
    again = run_cli("reproduce", art, cwd=tmp_path)
    assert again.returncode == 0 and f"{art}: identical" in again.stdout
