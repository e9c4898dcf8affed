"""embedrag's version, in a module of its own so that the engine can record it without
importing the package's public facade (``embedrag/__init__.py``) above it."""

__version__ = "0.1.0.dev0"
