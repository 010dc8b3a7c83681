"""The one writer per media type: video (H.264 MP4 through PyAV) read back, and the same bytes twice."""

import hashlib
import subprocess
import sys

import av
import numpy as np
import pytest

from harmonia.manifest import OutputSettings
from harmonia.media import AudioTake, VideoTake, write_take
from tests.conftest import REPO_ROOT

RATE, FPS = 16000, 8.0


def _take() -> VideoTake:
    t, y, x = np.arange(12)[:, None, None], np.arange(48)[None, :, None], np.arange(64)[None, None, :]
    zero = 0 * (t + y + x)
    frames = np.stack([(x * 4 + t * 10 + zero) % 256, (y * 5 + zero) % 256, (x + y + t * 20) % 256], axis=-1)
    seconds = np.arange(int(1.5 * RATE)) / RATE
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 600 * seconds) * seconds)  # no period: alignment is unique
    return VideoTake(frames.astype(np.uint8), FPS, AudioTake(chirp[None].astype(np.float32), RATE), "stripes")


def test_a_video_take_is_an_h264_mp4_with_its_track_and_pictures(tmp_path):
    take = _take()
    record = write_take(tmp_path, 0, take, OutputSettings(), previews=True)
    assert (record.path, record.media, record.preview) == ("take-0.mp4", "video", "take-0.png")
    assert (record.width, record.height, record.fps, record.frame_count, record.duration_s) == (
        64,
        48,
        8.0,
        12,
        1.5,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take-0-sheet.png", "take-0.mp4", "take-0.png"]
    with av.open(str(tmp_path / "take-0.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (video.width, video.height, float(video.average_rate)) == (64, 48, FPS)
        assert (audio.codec_context.name, audio.rate) == ("aac", RATE)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 12 and decoded[0].shape == (48, 64, 3)
    # H.264 at crf 18 on yuv420p: close to the frames given (chroma is subsampled)
    assert np.mean(np.abs(np.stack(decoded).astype(int) - take.frames.astype(int))) < 12
    with av.open(str(tmp_path / "take-0.mp4")) as container:
        pcm = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)[0]
    ref = take.audio.samples[0]
    n = 16000
    delay = int(np.argmax(np.correlate(pcm[: n + 2048], ref[:n], mode="valid")))
    error = pcm[delay : delay + n] - ref[:n]
    # AAC is lossy: within 5 % RMS of the track, after the encoder's priming delay (at most 2048 samples)
    assert delay <= 2048 and np.sqrt(np.mean(error**2)) / np.sqrt(np.mean(ref[:n] ** 2)) < 0.05


def test_the_same_frames_give_the_same_bytes_in_two_processes(tmp_path):
    script = (
        "import sys; from pathlib import Path; from tests.test_media import _take; "
        "from harmonia.media import write_take; from harmonia.manifest import OutputSettings; "
        "write_take(Path(sys.argv[1]), 0, _take(), OutputSettings(), True)"
    )
    digests = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], cwd=REPO_ROOT, check=True)
        digests.append(
            {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / name).iterdir()}
        )
    assert digests[0] == digests[1] and len(digests[0]) == 3


def test_frames_of_the_wrong_shape_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"video frames must be uint8 \[frames, height, width, 3\]"):
        write_take(tmp_path, 0, VideoTake(np.zeros((2, 8, 8), np.uint8), FPS), OutputSettings(), False)
