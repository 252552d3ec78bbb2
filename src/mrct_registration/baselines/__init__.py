"""Classical registration baselines behind one interface (:class:`Registration`) and their registry."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UnknownMethodError
from .base import Registration, RegistrationResult, StageTimer
from .identity import IdentityRegistration
from .sitk_rigid import SitkRigidRegistration

_FACTORIES: dict[str, Callable[[], Registration]] = {
    "identity": IdentityRegistration,
    "sitk-rigid-mi": lambda: SitkRigidRegistration("mattes"),
    "sitk-rigid-ncc": lambda: SitkRigidRegistration("ncc"),
    "sitk-rigid-mse": lambda: SitkRigidRegistration("mse"),
}


def _ants(kind: str) -> Callable[[], Registration]:
    def make() -> Registration:
        from .ants import AntsRegistration

        return AntsRegistration(kind)

    return make


def _elastix() -> Registration:
    from .elastix import ElastixBsplineRegistration

    return ElastixBsplineRegistration()


_FACTORIES.update({"ants-rigid": _ants("rigid"), "ants-syn-mi": _ants("syn-mi"), "ants-syncc": _ants("syn-cc"),
                   "elastix-bspline-mi": _elastix})
METHOD_NAMES = tuple(_FACTORIES)


def get_method(name: str) -> Registration:
    """A registration method by name; raises UnknownMethodError listing the known names."""
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise UnknownMethodError(f"unknown registration method {name!r}; choose from {', '.join(METHOD_NAMES)}") from None


__all__ = ["Registration", "RegistrationResult", "StageTimer", "METHOD_NAMES", "get_method"]
