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
configs say, no weights built), ``load`` (a snapshot folder), ``build_mbd``, ``mbd_facts`` and
``load_mbd`` (a Multi-Band Diffusion decoder for the loaded model's tokens), ``generate`` (one
take per seed, decoded by EnCodec or MBD), ``exit``. Audio goes back as base64 float32
little-endian, ``[channels, samples]``.

Text conditioners that are T5 (the real AudioGen and MAGNeT checkpoints) never download: the
worker replaces the ``T5Tokenizer`` and ``T5EncoderModel`` that audiocraft's conditioners module
calls with loaders of the local snapshot Harmonia passes (``text_encoder``: a verified folder),
``local_files_only``; without one, a T5 conditioner is an error naming what to add.
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
MBD_FILE = (
    "mbd_musicgen_32khz.th"  # Multi-Band Diffusion for MusicGen's 32 kHz EnCodec tokens (as on the hub)
)
T5_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024}  # audiocraft's T5Conditioner.MODELS_DIMS


class Cancelled(Exception):
    pass


class Worker:
    def __init__(self, out) -> None:
        self.out = out
        self.cancel = threading.Event()
        self.model = None
        self.family = None
        self.pickle_used = False
        self.mbd = None  # MultiBandDiffusion over the loaded model's compression model

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
        text_encoder = request.get("text_encoder")  # a local T5 folder: the conditioner is T5 (t5-base)
        compression_cfg, lm_cfg = tiny_configs(family, t5=text_encoder is not None)
        _local_t5(text_encoder)
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
        _local_t5(request.get("text_encoder"))
        self.model, self.mbd = None, None
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

        decoder = request.get("decoder", "encodec")
        if decoder == "mbd" and self.mbd is None:
            raise RuntimeError("decoder mbd asked for but no MBD is loaded: send a load_mbd request first")
        model.set_custom_progress_callback(on_step)
        audio, started = [], time.perf_counter()
        for i, take in enumerate(takes):
            bound[0] = (i + 1) * per_take
            with torch.inference_mode(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(take["seed"]))
                if (
                    decoder == "mbd"
                ):  # the same tokens, decoded by diffusion (the stream goes on from the LM's)
                    _, tokens = model.generate([take["prompt"]], progress=True, return_tokens=True)
                    wav = _mbd_decode(self.mbd, tokens, lambda: on_step(0, 0))[0]
                else:
                    wav = model.generate([take["prompt"]], progress=True)[0]  # [channels, samples]
            if done[0] < bound[0]:  # the model took fewer steps than estimated
                done[0] = bound[0]
                self.send({"id": rid, "type": "progress", "done": done[0], "total": total})
            samples = np.ascontiguousarray(wav.float().cpu().numpy(), dtype="<f4")
            audio.append({"shape": list(samples.shape), "data": base64.b64encode(samples.tobytes()).decode()})
        return {"audio": audio, "generate_s": time.perf_counter() - started, "steps": steps[0]}

    def build_mbd(self, request: dict) -> dict:
        """A tiny Multi-Band Diffusion decoder from ``seed``, saved as the hub's ``mbd_musicgen_32khz.th``."""
        import torch
        from omegaconf import OmegaConf

        out, seed = Path(request["out"]), int(request["seed"])
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        rate, cfgs = tiny_mbd_configs()
        pkg = {"sample_rate": rate, "n_bands": len(cfgs)}
        for i, cfg in enumerate(cfgs):
            cfg = OmegaConf.create(cfg)  # kept as audiocraft keeps it: a DictConfig (a full pickle)
            unet, processor = _build_band(cfg, rate)
            processor.project_sample(
                0.1 * torch.randn(4, 1, rate)
            )  # fit its band statistics, as training does
            pkg[i] = {
                "cfg": cfg,
                "model_state": {k: v.detach().clone().contiguous() for k, v in unet.state_dict().items()},
                "processor_state": {
                    k: v.detach().clone().contiguous() for k, v in processor.state_dict().items()
                },
            }
        out.mkdir(parents=True, exist_ok=True)
        torch.save(pkg, out / MBD_FILE)
        return {"files": [MBD_FILE]}

    def mbd_facts(self, request: dict) -> dict:
        """What an MBD checkpoint decodes (rate, channels, codec latent width) and its steps, no weights built."""
        pkg, used = _torch_load(
            Path(request["snapshot"]) / MBD_FILE, bool(request.get("allow_pickle", False))
        )
        return {**_mbd_facts(pkg), "pickle_used": used}

    def load_mbd(self, request: dict) -> dict:
        """Build the MBD of a snapshot over the loaded model's compression model (its tokens' decoder)."""
        import torch
        from audiocraft.models.multibanddiffusion import DiffusionProcess, MultiBandDiffusion
        from audiocraft.modules.diffusion_schedule import NoiseSchedule

        if self.model is None:
            raise RuntimeError("no model is loaded: send a load request first")
        started = time.perf_counter()
        pkg, used = _torch_load(
            Path(request["snapshot"]) / MBD_FILE, bool(request.get("allow_pickle", False))
        )
        facts = _mbd_facts(pkg)
        codec = self.model.compression_model
        have = {"sample_rate": int(codec.sample_rate), "channels": int(codec.channels),
                "codec_dim": int(codec.quantizer.dimension)}  # fmt: skip
        wanted = {k: facts[k] for k in have}
        if wanted != have:
            raise ValueError(f"this MBD decodes {wanted}, the loaded model's tokens are {have}")
        processes = []
        for i in range(int(pkg["n_bands"])):
            band = pkg[i]
            unet, processor = _build_band(band["cfg"], int(pkg["sample_rate"]))
            unet.load_state_dict(band["model_state"])
            processor.load_state_dict(band["processor_state"])
            unet.eval()
            schedule = NoiseSchedule(**band["cfg"].schedule, sample_processor=processor, device="cpu")
            processes.append(DiffusionProcess(model=unet, noise_schedule=schedule))
        self.mbd = MultiBandDiffusion(DPs=processes, codec_model=codec)
        torch.set_num_threads(int(request.get("threads", torch.get_num_threads())))
        return {**facts, "pickle_used": used, "load_s": time.perf_counter() - started}

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
                elif op in ("hello", "build", "facts", "load", "build_mbd", "mbd_facts", "load_mbd"):
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
def tiny_configs(family: str, t5: bool = False) -> tuple[dict, dict]:
    """The configs of a tiny model, after audiocraft's debug models (builders.get_debug_*_model).

    AudioGen: 16 kHz mono, 25 frames/s, 4 codebooks of 64, a delayed pattern, a causal LM.
    MAGNeT: 32 kHz mono, the same codes, a non-causal LM with restricted context per codebook.
    The text conditioner is a lookup table over the whole description (``noop`` tokenizer:
    sha256 of the text, no spaCy model to download); with ``t5`` it is T5 ("t5-base", as the
    real MAGNeT and MusicGen models; loaded from the local folder Harmonia passes).
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
    if t5:
        lm["conditioners"] = {"description": {"model": "t5", "t5": {"name": "t5-base", "finetune": False,
                                                                    "word_dropout": 0.0, "normalize_text": False}}}  # fmt: skip
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


def tiny_mbd_configs() -> tuple[int, list[dict]]:
    """A tiny Multi-Band Diffusion for the tiny MAGNeT's tokens (32 kHz mono, 32-wide EnCodec latents).

    As audiocraft's MBD for MusicGen: one diffusion U-Net per band, each with a multi-band
    sample processor and a 1000-step power schedule, the codec latents entering at the
    bottleneck (here through a small BiLSTM; the released one is wider and deeper).
    """
    band = {
        "channels": 1,
        "schedule": {"repartition": "power", "beta_t0": 1e-4, "beta_t1": 0.02, "beta_exp": 1.0, "num_steps": 1000,
                     "variance": "beta", "clip": 5.0, "rescale": 1.0, "n_bands": None, "noise_scale": 1.0},
        "diffusion_unet": {"hidden": 8, "depth": 2, "res_blocks": 1, "norm_groups": 4, "kernel": 8, "stride": 4,
                           "growth": 2, "max_channels": 64, "dropout": 0.0, "emb_all_layers": True, "bilstm": True,
                           "codec_dim": 32, "transformer": False, "cross_attention": False},
        "processor": {"name": "multi_band_processor", "use": True, "n_bands": 4, "num_samples": 4, "power_std": 1.0},
    }  # fmt: skip
    return 32000, [band, json.loads(json.dumps(band))]


def _build_band(cfg, sample_rate: int):
    from audiocraft.models import builders

    return builders.get_diffusion_model(cfg), builders.get_processor(cfg.processor, sample_rate=sample_rate)


def _mbd_facts(pkg) -> dict:
    band = pkg[0]["cfg"]
    steps = [*range(999, -1, -50), 0]  # audiocraft's default step list (generate_subsampled)
    return {
        "sample_rate": int(pkg["sample_rate"]),
        "channels": int(band.channels),
        "codec_dim": int(band.diffusion_unet.codec_dim),
        "n_bands": int(pkg["n_bands"]),
        "steps_per_band": len(steps) - 1,
    }


def _mbd_decode(mbd, tokens, step):
    """``mbd.tokens_to_wav(tokens)`` with ``step()`` after every diffusion step of every band: ``[B, C, T]``."""

    class Counted:  # the U-Net, counting its calls (one a diffusion step)
        def __init__(self, unet):
            self.unet = unet

        def __call__(self, *args, **kwargs):
            out = self.unet(*args, **kwargs)
            step()
            return out

    originals = [process.model for process in mbd.DPs]
    try:
        for process in mbd.DPs:
            process.model = Counted(process.model)
        return mbd.tokens_to_wav(tokens)
    finally:
        for process, unet in zip(mbd.DPs, originals):
            process.model = unet


def _local_t5(folder: str | None) -> None:
    """Make audiocraft's T5 conditioner load T5 from ``folder`` (local files only), never from the hub."""
    from audiocraft.modules import conditioners
    from transformers import T5EncoderModel, T5Tokenizer

    def local(cls):
        class Local:
            @staticmethod
            def from_pretrained(name, *args, **kwargs):
                if folder is None:
                    raise FileNotFoundError(
                        f"the model's text conditioner is T5 '{name}' and no local T5 snapshot was given; name one "
                        "with 'text_encoder:' in the model's params.yaml entry (e.g. text_encoder: t5-base)"
                    )
                config = json.loads((Path(folder) / "config.json").read_text())
                if name in T5_DIMS and config.get("d_model") != T5_DIMS[name]:
                    raise ValueError(
                        f"the model's text conditioner is T5 '{name}' ({T5_DIMS[name]} wide) but the text encoder "
                        f"snapshot is {config.get('d_model')} wide; name a {name} snapshot with 'text_encoder:'"
                    )
                return cls.from_pretrained(folder, local_files_only=True)

        return Local

    conditioners.T5Tokenizer = local(T5Tokenizer)
    conditioners.T5EncoderModel = local(T5EncoderModel)


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
        "text_model": _text_model(lm_cfg),
    }
    if compression_cfg is not None:
        facts["latent_dim"] = int(compression_cfg["seanet"]["dimension"])
        facts["sample_rate"] = int(compression_cfg["encodec"]["sample_rate"])
        facts["channels"] = int(compression_cfg["encodec"].get("channels", 1))
        facts["frame_rate"] = compression_cfg["encodec"]["sample_rate"] / _hop(compression_cfg)
    return facts


def _text_model(lm_cfg: dict) -> str | None:
    """The T5 a checkpoint's text conditioner names ("t5-base"), or None for another conditioner."""
    description = (lm_cfg.get("conditioners") or {}).get("description") or {}
    return description.get("t5", {}).get("name") if description.get("model") == "t5" else None


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
