"""The ``recfabric`` command: one verb per job (:mod:`.main`); ``plan`` and ``compile`` live in
:mod:`.compile`."""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
