"""Harmonia's audiocraft worker: AudioGen and MAGNeT in a process (and a virtual environment) of their own.

Run only by harmonia/engines/audiocraft.py as ``WORKER_VENV/bin/python audiocraft_worker.py``:
never imported by Harmonia's main environment, and it imports nothing of Harmonia (only the
standard library, torch, numpy and audiocraft), so the stand-ins for xformers and torchaudio
that live in the worker's environment can never shadow a real library in Harmonia's.

The protocol is JSON lines. Harmonia writes requests to the worker's stdin, one object a line,
each with an ``op`` and an ``id``; the worker answers on its stdout (the real one: anything a
library prints goes to stderr) with messages carrying the same ``id``:

- ``{"id", "type": "progress", "done", "total"}`` after every step of a generation;
- ``{"id", "type": "result", ...}``: the op's answer;
- ``{"id", "type": "error", "error": CLASS, "message"}``: the op failed (``error`` "Cancelled"
  when a ``{"op": "cancel"}`` line arrived while it ran: it stops at its next step).

Ops: ``hello`` (versions), ``build`` (a tiny model into a folder), ``facts`` (what a checkpoint's
configs say, no weights built), ``load`` (a snapshot folder), ``generate`` (one take per seed),
``exit``. Audio goes back as base64 float32 little-endian, ``[channels, samples]``.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import sys
import threading
import time
import traceback
from importlib.metadata import version
from pathlib import Path

PROTOCOL = 1
FAMILIES = ("audiogen", "magnet")
LM_FILE = "state_dict.bin"  # audiocraft's own names for its two checkpoints (as on the hub)
COMPRESSION_FILE = "compression_state_dict.bin"


class Cancelled(Exception):
    pass


class Worker:
    def __init__(self, out) -> None:
        self.out = out
        self.cancel = threading.Event()
        self.model = None
        self.family = None
        self.pickle_used = False

    # -- messages ------------------------------------------------------------------------------
    def send(self, message: dict) -> None:
        self.out.write(json.dumps(message) + "\n")
        self.out.flush()

    # -- ops -----------------------------------------------------------------------------------
    def hello(self, request: dict) -> dict:
        import torch

        names = ("audiocraft", "torch", "numpy", "einops", "julius", "spacy", "flashy", "omegaconf")
        return {
            "protocol": PROTOCOL,
            "python": sys.version.split()[0],
            "versions": {name: version(name) for name in names},
            "standins": {"xformers": _standin("xformers"), "torchaudio": _standin("torchaudio")},
            "torch_threads": torch.get_num_threads(),
        }

    def build(self, request: dict) -> dict:
        """A tiny model of ``family`` from ``seed``, saved as audiocraft saves its checkpoints."""
        import torch

        family, out, seed = request["family"], Path(request["out"]), int(request["seed"])
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        compression_cfg, lm_cfg = tiny_configs(family)
        compression, lm = _build(compression_cfg, lm_cfg, family)
        # random init leaves the RVQ codebooks empty: initialise them as audiocraft's debug model does
        compression.quantizer.train()
        compression.quantizer(torch.randn(8, compression_cfg["seanet"]["dimension"], 128), 1)
        compression.eval()
        with torch.no_grad():  # sharpen the output heads: random heads give near-uniform logits
            for head in lm.linears:
                head.weight.normal_(0.0, 1.0)
        from omegaconf import OmegaConf

        out.mkdir(parents=True, exist_ok=True)
        for file, cfg, model in ((COMPRESSION_FILE, compression_cfg, compression), (LM_FILE, lm_cfg, lm)):
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            pkg = {
                "best_state": state,
                "xp.cfg": OmegaConf.to_yaml(OmegaConf.create(cfg)),
                "version": "1.3.0",
            }
            torch.save(pkg, out / file)
        return {"files": [COMPRESSION_FILE, LM_FILE]}

    def facts(self, request: dict) -> dict:
        """What the snapshot's configs say (rates, lengths, conditioners), without building the model."""
        folder = Path(request["snapshot"])
        compression_cfg = _cfg(folder / COMPRESSION_FILE, request.get("allow_pickle", False))
        lm_cfg = _cfg(folder / LM_FILE, request.get("allow_pickle", False))
        return _facts(compression_cfg, lm_cfg)

    def load(self, request: dict) -> dict:
        import torch
        from audiocraft.models import AudioGen, MAGNeT, loaders
        from audiocraft.modules.transformer import set_efficient_attention_backend

        family, folder = request["family"], Path(request["snapshot"])
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
        allow_pickle = bool(request.get("allow_pickle", False))
        torch.set_num_threads(int(request["threads"]))
        started = time.perf_counter()
        self.pickle_used = False

        def state(file, filename=None, device="cpu", cache_dir=None):  # loaders' torch.load, made safe
            pkg, used = _torch_load(Path(file), allow_pickle)
            self.pickle_used = self.pickle_used or used
            return pkg

        loaders._get_state_dict = state
        set_efficient_attention_backend("torch")  # the loader of MAGNeT sets xformers (our stand-in)
        compression = loaders.load_compression_model(folder / COMPRESSION_FILE, device="cpu")
        if family == "magnet":
            lm = loaders.load_lm_model_magnet(
                folder / LM_FILE, compression_model_frame_rate=int(compression.frame_rate), device="cpu"
            )
            model = MAGNeT(name=folder.name, compression_model=compression, lm=lm)
        else:
            lm = loaders.load_lm_model(folder / LM_FILE, device="cpu")
            model = AudioGen(name=folder.name, compression_model=compression, lm=lm)
        model.lm.eval()
        model.compression_model.eval()
        self.model, self.family = model, family
        facts = _facts(_plain(compression.cfg) if hasattr(compression, "cfg") else None, _plain(lm.cfg))
        return {
            **facts,
            "sample_rate": int(model.sample_rate),
            "channels": int(model.audio_channels),
            "frame_rate": float(model.frame_rate),
            "max_duration_s": float(model.max_duration),
            "lm_class": type(model.lm).__name__,
            "pickle_used": self.pickle_used,
            "load_s": time.perf_counter() - started,
        }

    def generate(self, request: dict, rid) -> dict:
        """One take per (prompt, seed): each from its own seed, so a take does not depend on the others."""
        import numpy as np
        import torch

        if self.model is None:
            raise RuntimeError("no model is loaded: send a load request first")
        model, params = self.model, request["params"]
        takes = request["takes"]  # [{"prompt", "seed"}]
        torch.set_num_threads(int(request["threads"]))
        if self.family == "magnet":
            model.set_generation_params(**params)
            model.duration = float(request["duration_s"])  # at most the model's segment (checked by Harmonia)
        else:
            model.set_generation_params(duration=float(request["duration_s"]), **params)
        per_take = int(request["steps_per_take"])  # Harmonia's estimate: progress stays within it
        total = len(takes) * per_take
        done, steps, bound = [0], [0], [0]

        def on_step(generated: int, to_generate: int) -> None:
            if self.cancel.is_set():
                raise Cancelled(f"cancelled at step {done[0]} of {total}")
            steps[0] += 1
            if done[0] < bound[0]:
                done[0] += 1
                self.send({"id": rid, "type": "progress", "done": done[0], "total": total})

        model.set_custom_progress_callback(on_step)
        audio, started = [], time.perf_counter()
        for i, take in enumerate(takes):
            bound[0] = (i + 1) * per_take
            with torch.inference_mode(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(take["seed"]))
                wav = model.generate([take["prompt"]], progress=True)[0]  # [channels, samples]
            if done[0] < bound[0]:  # the model took fewer steps than estimated
                done[0] = bound[0]
                self.send({"id": rid, "type": "progress", "done": done[0], "total": total})
            samples = np.ascontiguousarray(wav.float().cpu().numpy(), dtype="<f4")
            audio.append({"shape": list(samples.shape), "data": base64.b64encode(samples.tobytes()).decode()})
        return {"audio": audio, "generate_s": time.perf_counter() - started, "steps": steps[0]}

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stdin) -> None:
        requests: queue.Queue = queue.Queue()

        def read() -> None:  # cancel lines act at once; everything else waits its turn
            for line in stdin:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    message = {"op": "invalid", "line": line[:200]}
                if message.get("op") == "cancel":
                    self.cancel.set()
                else:
                    requests.put(message)
            requests.put({"op": "exit"})

        threading.Thread(target=read, daemon=True).start()
        while True:
            message = requests.get()
            op, rid = message.get("op"), message.get("id")
            if op == "exit":
                return
            self.cancel.clear()
            try:
                if op == "crash":  # for tests: a worker that dies mid-request
                    os._exit(int(message.get("code", 3)))
                if op == "generate":
                    answer = self.generate(message, rid)
                elif op in ("hello", "build", "facts", "load"):
                    answer = getattr(self, op)(message)
                else:
                    raise ValueError(f"unknown op {op!r}")
                self.send({"id": rid, "type": "result", **answer})
            except Cancelled as exc:
                self.send({"id": rid, "type": "error", "error": "Cancelled", "message": str(exc)})
            except Exception as exc:  # the answer names it; the traceback goes to stderr
                traceback.print_exc(file=sys.stderr)
                self.send({"id": rid, "type": "error", "error": type(exc).__name__, "message": str(exc)})


# -- tiny models --------------------------------------------------------------------------------
def tiny_configs(family: str) -> tuple[dict, dict]:
    """The configs of a tiny model, after audiocraft's debug models (builders.get_debug_*_model).

    AudioGen: 16 kHz mono, 25 frames/s, 4 codebooks of 64, a delayed pattern, a causal LM.
    MAGNeT: 32 kHz mono, the same codes, a non-causal LM with restricted context per codebook.
    The text conditioner is a lookup table over the whole description (``noop`` tokenizer:
    sha256 of the text, no spaCy model to download); the real models use T5.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    rate, ratios = (16000, [10, 8, 8]) if family == "audiogen" else (32000, [10, 8, 16])
    compression = {
        "compression_model": "encodec",
        "device": "cpu",
        "dtype": "float32",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": rate, "channels": 1,
                    "causal": False, "renormalize": False},
        "seanet": {"dimension": 32, "channels": 1, "n_filters": 4, "n_residual_layers": 1, "ratios": ratios,
                   "lstm": 0, "encoder": {}, "decoder": {}},
        "rvq": {"n_q": 4, "bins": 64, "q_dropout": False, "decay": 0.99, "kmeans_init": True,
                "kmeans_iters": 10, "threshold_ema_dead_code": 2},
    }  # fmt: skip
    lm = {
        "lm_model": "transformer_lm" if family == "audiogen" else "transformer_lm_magnet",
        "device": "cpu",
        "dtype": "float32",
        "dataset": {"segment_duration": 4 if family == "audiogen" else 2},
        "transformer_lm": {"n_q": 4, "card": 64, "dim": 32, "num_heads": 4, "num_layers": 2, "hidden_scale": 2,
                           "custom": False, "causal": family == "audiogen", "norm_first": True,
                           "memory_efficient": family == "magnet", "bias_proj": False},
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": [0, 1, 2, 3]}},
        "attribute_dropout": {},
        "classifier_free_guidance": {"training_dropout": 0.0, "inference_coef": 3.0},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [], "prepend": [],
                  "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "lut", "lut": {"n_bins": 256, "dim": 32, "tokenizer": "noop"}}},
    }  # fmt: skip
    if family == "magnet":
        lm["transformer_lm"]["subcodes_context"] = 5
        lm["codebooks_pattern"] = {"modeling": "parallel", "parallel": {}}
        lm["masking"] = {"span_len": 3}
    return compression, lm


def _build(compression_cfg: dict, lm_cfg: dict, family: str):
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    compression = builders.get_compression_model(OmegaConf.create(compression_cfg))
    cfg = OmegaConf.create(lm_cfg)
    if family == "magnet":  # as loaders.load_lm_model_magnet fills them in
        frame_rate = compression_cfg["encodec"]["sample_rate"] // _hop(compression_cfg)
        cfg.transformer_lm.compression_model_framerate = frame_rate
        cfg.transformer_lm.segment_duration = cfg.dataset.segment_duration
        cfg.transformer_lm.span_len = cfg.masking.span_len
    return compression, builders.get_lm_model(cfg)


def _hop(compression_cfg: dict) -> int:
    hop = 1
    for ratio in compression_cfg["seanet"]["ratios"]:
        hop *= ratio
    return hop


# -- checkpoints --------------------------------------------------------------------------------
def _torch_load(path: Path, allow_pickle: bool):
    """torch.load with ``weights_only=True``; a full unpickling only when Harmonia allowed it.

    Returns the package and whether full unpickling was used.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True), False
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as exc:
        if not allow_pickle:
            raise PermissionError(
                f"{path.name} needs full unpickling (weights_only failed: {str(exc).splitlines()[0][:200]}); "
                "allow_pickle is off"
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False), True


def _cfg(path: Path, allow_pickle: bool) -> dict:
    from omegaconf import OmegaConf

    pkg, _ = _torch_load(path, allow_pickle)
    return _plain(OmegaConf.create(pkg["xp.cfg"]))


def _plain(cfg) -> dict | None:
    from omegaconf import OmegaConf

    return None if cfg is None else OmegaConf.to_container(cfg, resolve=True)


def _facts(compression_cfg: dict | None, lm_cfg: dict) -> dict:
    facts = {
        "lm_model": lm_cfg.get("lm_model"),
        "segment_duration_s": float(lm_cfg["dataset"]["segment_duration"]),
        "n_q": int(lm_cfg["transformer_lm"]["n_q"]),
        "card": int(lm_cfg["transformer_lm"]["card"]),
        "conditioners": sorted((lm_cfg.get("conditioners") or {}).keys()),
    }
    if compression_cfg is not None:
        facts["sample_rate"] = int(compression_cfg["encodec"]["sample_rate"])
        facts["channels"] = int(compression_cfg["encodec"].get("channels", 1))
        facts["frame_rate"] = compression_cfg["encodec"]["sample_rate"] / _hop(compression_cfg)
    return facts


def _standin(name: str) -> str | None:
    try:
        module = __import__(name)
    except ImportError:
        return None
    return getattr(module, "__version__", "?")


def main() -> None:
    # The protocol owns the real stdout; anything printed by a library goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    Worker(out).run(sys.stdin)


if __name__ == "__main__":
    main()
