"""CLAP alignment on the tiny CLAP model: loads verified, scores deterministically, in [-1, 1]."""

import numpy as np
import pytest

from harmonia.evaluation import ClapScorer
from harmonia.tiny import build_tiny


@pytest.fixture
def clap(music_wb):
    import yaml

    params = yaml.safe_load((music_wb.root / "params.yaml").read_text())
    params["models"]["tiny-clap"] = {"builder": "clap", "seed": 0, "engine": "clap"}
    (music_wb.root / "params.yaml").write_text(yaml.safe_dump(params))
    from harmonia.workbench import Workbench

    wb = Workbench.open(music_wb.root)
    build_tiny(wb, "clap")
    return ClapScorer.load(wb, "tiny-clap")


def test_clap_scores(clap):
    rng = np.random.default_rng(0)
    long_clip = (rng.standard_normal((1, 32_000 * 5)) * 0.1).astype(np.float32)  # longer than CLAP's 2 s
    short_clip = long_clip[:, :16_000]
    scores = clap.score(["calm piano", "loud drums"], [(long_clip, 32_000), (short_clip, 32_000)])
    assert len(scores) == 2 and all(-1 <= s <= 1 for s in scores)
    assert (
        clap.score(["calm piano", "loud drums"], [(long_clip, 32_000), (short_clip, 32_000)]) == scores
    )  # no random crop
    assert clap.score(["loud drums"], [(long_clip, 32_000)]) != scores[:1]  # the text matters
