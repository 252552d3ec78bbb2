"""Classical registration baselines behind one interface (:class:`Registration`) and their registry.

``ants-two-stage`` is a :class:`~.chain.ChainRegistration` (it also needs the pCT); every other method maps
(fixed, moving) directly.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UnknownMethodError
from .base import Registration, RegistrationResult, StageTimer
from .chain import ChainRegistration
from .identity import IdentityRegistration
from .sitk_rigid import SitkRigidRegistration

_FACTORIES: dict[str, Callable[[], Registration | ChainRegistration]] = {
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


def _two_stage():
    from .ants import AntsRegistration
    from .chain import TwoStageRegistration

    return TwoStageRegistration("ants-two-stage", pre=AntsRegistration("syn-mi"), intra=AntsRegistration("syn-cc"))


def _elastix() -> Registration:
    from .elastix import ElastixBsplineRegistration

    return ElastixBsplineRegistration()


_FACTORIES.update({"ants-rigid": _ants("rigid"), "ants-syn-mi": _ants("syn-mi"), "ants-syncc": _ants("syn-cc"),
                   "elastix-bspline-mi": _elastix, "ants-two-stage": _two_stage})
METHOD_NAMES = tuple(_FACTORIES)


def get_method(name: str) -> Registration | ChainRegistration:
    """A registration method by name; raises UnknownMethodError listing the known names."""
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise UnknownMethodError(f"unknown registration method {name!r}; choose from {', '.join(METHOD_NAMES)}") from None


__all__ = ["ChainRegistration", "Registration", "RegistrationResult", "StageTimer", "METHOD_NAMES", "get_method"]
