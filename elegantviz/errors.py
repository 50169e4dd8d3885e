"""Errors a user can act on: each names the file and what is wrong with it."""

from __future__ import annotations

from contextlib import contextmanager


class ElegantvizError(Exception):
    """Base class; the CLI prints these as one line and exits with status 2."""


class InputError(ElegantvizError, ValueError):
    """A file or argument given by the user is unusable (format, shape, values, bands)."""


class SceneStoreError(ElegantvizError, ValueError):
    """A path is not a scene store, or its metadata is broken."""


class IncompleteSceneError(SceneStoreError):
    """A scene store whose writer did not finish; running the same command again resumes it."""


@contextmanager
def writing(where, also: tuple[type[BaseException], ...] = ()):
    """A failed read or write of ``where`` (a read-only folder, a full disk; ``also``: a library's
    own error types for that) as one line naming the file the system names, else ``where``."""
    try:
        yield
    except BrokenPipeError:
        raise
    except (OSError, *also) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [""])[0][:160]
        raise InputError(f"{getattr(e, 'filename', None) or where}: {reason or type(e).__name__}") from None
