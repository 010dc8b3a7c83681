"""The video stage: a generate stage's first take as the soundtrack (a parent), video.prompts as
equal shots snapped to its bars, one music video per pipeline seed; dvc.yaml renders the stage."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from harmonia.errors import ParamsError
from harmonia.generation import generate
from harmonia.pipeline import INDEX_FILE, stage_video
from harmonia.requests import MusicRequest
from harmonia.workbench import Workbench
from tests.conftest import REPO_ROOT


def _generated_folder(wb, folder):
    """What `harmonia pipeline generate` leaves: a take linked under generated/, and index.json."""
    music = generate(
        wb, "tiny-musicgen", MusicRequest("drums", duration_s=2.0, seed=1), previews=False
    ).artifact
    folder.mkdir(parents=True)
    shutil.copyfile(music.file(music.outputs[0]), folder / "p1-s0.wav")
    take = {"prompt_id": "p1", "caption": "drums", "seed": 0, "artifact": music.id, "take": "take-0.wav",
            "file": "p1-s0.wav", "sha256": music.outputs[0].sha256}  # fmt: skip
    (folder / INDEX_FILE).write_text(
        json.dumps({"prompt_set": "x", "model": "tiny-musicgen", "takes": [take]})
    )
    return music


def test_the_video_stage_renders_the_music_video_of_a_pipeline_take(video_wb):
    params = yaml.safe_load((video_wb.root / "params.yaml").read_text())
    params["video"].update(width=32, height=32, prompts=["night", "day"])
    params["pipeline"] = {"seeds": [0, 1]}
    (video_wb.root / "params.yaml").write_text(yaml.safe_dump(params))
    wb = Workbench.open(video_wb.root)
    music = _generated_folder(wb, wb.root / "generated" / "x")
    index = stage_video(wb, "tiny-wan", wb.root / "generated" / "x", wb.root / "videos" / "tiny-wan")
    assert [v["file"] for v in index["videos"]] == ["music-video-s0.mp4", "music-video-s1.mp4"]
    for v in index["videos"]:
        assert (wb.root / "videos" / "tiny-wan" / v["file"]).is_file()
        assert v["soundtrack"] == music.id and v["frames"] == 16 and v["duration_s"] == 2.0
        assert [s["prompt"] for s in v["shots"]] == ["night", "day"]
    art = json.loads((wb.root / "artifacts" / index["videos"][0]["artifact"] / "manifest.json").read_text())
    assert [(p["id"], p["role"]) for p in art["parents"]] == [(music.id, "soundtrack")]
    assert art["request"]["shots"] == [{"start": 0.0, "end": 1.0, "prompt": "night"},
                                       {"start": 1.0, "end": 2.0, "prompt": "day"}]  # fmt: skip
    again = stage_video(wb, "tiny-wan", wb.root / "generated" / "x", wb.root / "videos" / "tiny-wan")
    assert again == index  # artifact-store cache hits: the same files
    with pytest.raises(ParamsError, match=r"^.*generated/none/index\.json is missing: the video stage takes"):
        stage_video(wb, "tiny-wan", wb.root / "generated" / "none", wb.root / "videos" / "t")


def test_dvc_yaml_has_a_video_stage_per_video_model(tmp_path):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["pipeline"]["video_models"] = ["tiny-wan"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    listed = subprocess.run(["dvc", "stage", "list"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "video@tiny-wan" in listed.stdout and "videos/tiny-wan" in listed.stdout
