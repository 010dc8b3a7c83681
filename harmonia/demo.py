"""`make demo` / `harmonia demo`: generate one clip end to end and show where everything went.

With the hub reachable it fetches musicgen-small (about 2.4 GB, once) and generates real
music; otherwise it says so plainly and uses the tiny random MusicGen (its "music" is
noise-like by construction, but every step of the path is the real one).
"""

from __future__ import annotations

import httpx2
from huggingface_hub import constants

from harmonia.engines.musicgen import MusicRequest
from harmonia.generation import Generated, generate
from harmonia.hub import fetch
from harmonia.snapshots import list_snapshots
from harmonia.tiny import build_tiny
from harmonia.workbench import Workbench

REAL_MODEL, TINY_MODEL = "musicgen-small", "tiny-musicgen"
PROMPT = "a calm lo-fi hip hop beat with warm piano chords and soft vinyl crackle, 80 bpm"


def hub_reachable(timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether the hub answers at all (one HEAD request), and why not."""
    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE=1 is set"
    try:
        httpx2.head(constants.ENDPOINT, timeout=timeout_s, follow_redirects=True)
    except httpx2.HTTPError as exc:
        return False, f"{constants.ENDPOINT} did not answer ({type(exc).__name__})"
    return True, ""


def run_demo(wb: Workbench, say=print, progress=None, duration_s: float = 5.0) -> Generated:
    """Pick a model (real if the hub answers, tiny otherwise), generate a clip, report it."""
    # 1. Get a model.
    reachable, why = hub_reachable()
    model = REAL_MODEL
    if reachable:
        say(
            f"The hub is reachable: fetching {REAL_MODEL} (pinned in params.yaml; about 2.4 GB the first time)."
        )
        fetch(wb, "model", REAL_MODEL)
    else:
        model = TINY_MODEL
        say(
            f"The Hugging Face hub is not reachable from here ({why}), so the demo uses {TINY_MODEL}: "
            "a tiny MusicGen with random weights. Its clip sounds like noise, not music; the path from "
            "snapshot to artifact is the real one."
        )
        status = {s.name: s for s in list_snapshots(wb, "model")}
        if not status.get(TINY_MODEL) or not status[TINY_MODEL].present:
            built = build_tiny(wb, "musicgen", name=TINY_MODEL, seed=0)
            say(f"built {TINY_MODEL} (seed 0, digest {built.inventory.digest[:12]})")

    # 2. Generate (a cache hit when the same demo already ran).
    say(f'generating {duration_s:g} s with {model}: "{PROMPT}" (seed 0)')
    done = generate(wb, model, MusicRequest(PROMPT, duration_s=duration_s, seed=0), progress=progress)
    return done
