"""mrct_registration: MR-CT registration for image-guided liver ablation (Wei et al., MICCAI 2019).

The main objects, one import away:

* :func:`generate_case` / :class:`PhantomConfig` - synthetic pMR, pCT, iCT (probe + streaks), clean iCT, labels,
  landmarks and ground-truth fields (``mrct_registration.phantom``);
* :func:`read_image` / :func:`write_image` - NIfTI, MHA/NRRD and DICOM series with geometry (``io``);
* :class:`DisplacementField`, :func:`compose`, :func:`invert`, :func:`warp_image`, :func:`warp_labels`,
  :func:`jacobian_determinant` - fields on the fixed grid, x_moving = x_fixed + u(x_fixed) in LPS mm (``transforms``);
* :func:`get_method` - the classical baselines behind one ``register(fixed, moving)`` interface (``baselines``).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Exported lazily: importing the package stays cheap and does not load SimpleITK/ITK before the CLI has set
# ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS (--threads; the ANTs seed is set in baselines/ants.py).
_EXPORTS = {
    "METHOD_NAMES": "baselines", "get_method": "baselines", "Grid": "image", "Image": "image", "read_image": "io",
    "write_image": "io", "PhantomConfig": "phantom", "generate_case": "phantom", "DisplacementField": "transforms",
    "compose": "transforms", "invert": "transforms", "jacobian_determinant": "transforms", "warp_image": "transforms",
    "warp_labels": "transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
