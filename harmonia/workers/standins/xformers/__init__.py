"""A stand-in for xformers in Harmonia's audiocraft worker only (never in Harmonia's own environment).

audiocraft 1.3.0 imports ``xformers.ops`` at module level and MAGNeT selects its xformers
attention path; this package gives those three names on torch's own scaled-dot-product
attention. It is installed into the worker's virtual environment by harmonia/engines/audiocraft.py.
"""

__version__ = "0.0.0+harmonia.standin"
