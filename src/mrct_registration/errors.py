"""Exception types of mrct_registration. Each names what the caller got wrong and how to fix it."""

from __future__ import annotations


class MrctError(Exception):
    """Base class of every error raised on purpose by this package."""


class GeometryError(MrctError, ValueError):
    """Arrays or grids whose shapes, spacings or orientations do not fit together."""


class ImageFormatError(MrctError, ValueError):
    """A file that cannot be read or written as a medical image (unknown suffix, missing tags)."""


class UnknownMethodError(MrctError, KeyError):
    """A registration method name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class UnknownTaskError(MrctError, KeyError):
    """An evaluation task name that is not in :data:`mrct_registration.evaluation.TASKS`."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SeedRangeError(MrctError, ValueError):
    """A request for more phantom seeds than a seed range holds, or for seeds outside it."""


class RegistrationFailedError(MrctError, RuntimeError):
    """A classical registration backend (SimpleITK, ANTs, elastix) failed or returned nothing usable."""
