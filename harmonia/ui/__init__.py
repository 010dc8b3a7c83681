"""ipywidgets UIs for JupyterLab: the music studio, the samples, song and video views, the artifact gallery, the models panel.

This package imports the rest of Harmonia and is never imported by it. Long work (generation,
verification, fetching, reproduction) runs in a worker thread so the kernel keeps answering
the buttons; the thread only sets widget values and children, never uses an Output context.

    >>> from harmonia.ui import Studio
    >>> Studio()  # doctest: +SKIP
"""

from harmonia.ui.gallery import Gallery
from harmonia.ui.models import ModelsPanel
from harmonia.ui.samples import SamplesView
from harmonia.ui.songs import SongView
from harmonia.ui.studio import Studio
from harmonia.ui.video import VideoView
from harmonia.ui.views import ab_view, artifact_view, facts_table, player

__all__ = [
    "Gallery",
    "ModelsPanel",
    "SamplesView",
    "SongView",
    "Studio",
    "VideoView",
    "ab_view",
    "artifact_view",
    "facts_table",
    "player",
]
