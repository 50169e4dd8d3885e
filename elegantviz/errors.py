"""Errors a user can act on: each names the file and what is wrong with it."""

from __future__ import annotations


class ElegantvizError(Exception):
    """Base class; the CLI prints these as one line and exits with status 2."""


class InputError(ElegantvizError, ValueError):
    """A file or argument given by the user is unusable (format, shape, values, bands)."""


class SceneStoreError(ElegantvizError, ValueError):
    """A path is not a scene store, or its metadata is broken."""


class IncompleteSceneError(SceneStoreError):
    """A scene store whose writer did not finish; running the same command again resumes it."""
