"""Errors raised by the project store. Every message names the problem and what to do next."""

from __future__ import annotations


class StoreError(ValueError):
    """A user-facing problem with a project, a name or an input; front ends print ``str(error)`` as is."""


class InvalidNameError(StoreError):
    """A project or class name that cannot be used (empty, a path separator, control characters, too long)."""


class ProjectNotFoundError(StoreError):
    """No project with that name exists in the workspace."""


class ProjectExistsError(StoreError):
    """A project with that name (ignoring case) already exists."""


class ClassNotFoundError(StoreError):
    """No class with that name exists in the project."""


class ClassExistsError(StoreError):
    """A class with that name (ignoring case) already exists in the project."""


class ImageNotFoundError(StoreError):
    """One or more image ids do not exist in the project."""


class ArchiveError(StoreError):
    """A whole archive was refused (not a zip, too many entries, too large once decompressed)."""


class StoreBusyError(StoreError):
    """Another process kept the project locked for longer than the retry budget."""


class SchemaError(StoreError):
    """The project database was written by a newer fsl_app or is damaged."""
