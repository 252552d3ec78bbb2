"""Classical registration baselines behind one interface (:class:`Registration`) and their registry.

``ants-two-stage`` and ``learned`` are :class:`~.chain.ChainRegistration` s (they also need the pCT); every
other method maps (fixed, moving) directly. The learned methods live in :mod:`mrct_registration.learned` and
are registered here so the harness and the CLI find every method in one place.
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


def _mind_svf() -> Registration:
    """Pre-procedural pMR -> pCT: ANTs rigid, then a MIND-SSC diffeomorphic refinement (learned/pre_procedural.py)."""
    from ..learned.pre_procedural import mind_svf

    return mind_svf()


def _learned(kind: str) -> Callable[[], Registration | ChainRegistration]:
    """The learned pipeline of Wei et al. 2019 and its CT-CT stage, with the committed weights."""

    def make() -> Registration | ChainRegistration:
        from ..learned.pipeline import learned_ctct, learned_pipeline

        if kind == "learned":
            return learned_pipeline()
        if kind == "learned-ctct-net":  # the network alone, no instance optimisation
            return learned_ctct(refine_steps=0, name=kind)
        if kind == "learned-ctct-noinpaint":  # the ablation without inpainting
            return learned_ctct(inpaint=False, name=kind)
        return learned_ctct(name=kind)

    return make


_FACTORIES.update({"ants-rigid": _ants("rigid"), "ants-syn-mi": _ants("syn-mi"), "ants-syncc": _ants("syn-cc"),
                   "elastix-bspline-mi": _elastix, "ants-two-stage": _two_stage, "mind-svf": _mind_svf})
# "learned" is the pMR -> iCT chain (pre-procedural stage: learned/pipeline.py); the learned-ctct* methods
# register pCT -> iCT only
_FACTORIES.update({name: _learned(name) for name in ("learned", "learned-ctct", "learned-ctct-net",
                                                     "learned-ctct-noinpaint")})
METHOD_NAMES = tuple(_FACTORIES)


def get_method(name: str) -> Registration | ChainRegistration:
    """A registration method by name; raises UnknownMethodError listing the known names."""
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise UnknownMethodError(f"unknown registration method {name!r}; choose from {', '.join(METHOD_NAMES)}") from None


__all__ = ["ChainRegistration", "Registration", "RegistrationResult", "StageTimer", "METHOD_NAMES", "get_method"]
