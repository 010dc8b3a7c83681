"""Generation engines: one file per engine behind the small protocol in base.py.

Engines load a verified local snapshot and turn a request into arrays; they know nothing
about artifacts, manifests or the UI.
"""

from harmonia.engines.base import Engine, LoadedModel
from harmonia.engines.musicgen import MusicGenEngine, MusicRequest, MusicResult

ENGINES = {"musicgen": MusicGenEngine}

__all__ = ["ENGINES", "Engine", "LoadedModel", "MusicGenEngine", "MusicRequest", "MusicResult"]
