"""The inpainting stage behind one signature, whatever fills the hole: ``(slice_hu, hole) -> slice_hu``.

:func:`network_inpainter` wraps a :class:`PartialConvUNet2d` in that signature (the baselines of
:mod:`.inpaint_baselines` already have it), and :func:`inpaint_volume` applies any such function to the
axial slices of an iCT volume that have a hole (Wei et al. 2019 inpaint per 2D slice).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GeometryError
from .inpaint_baselines import InpaintFn
from .partial_conv import PartialConvUNet2d, denormalise_hu, normalise_hu


def network_inpainter(net: PartialConvUNet2d) -> InpaintFn:
    """A function ``(slice_hu (ny, nx), hole (ny, nx) bool) -> float32 HU (ny, nx)`` running ``net``.

    The slice is zero-padded to a multiple of ``2**net.depth``; the padding is marked as hole (unknown), so
    it does not leak into the fill, and is cropped away again. Known pixels come back unchanged. The network
    runs on the device its parameters are on; slices come and go as numpy arrays.
    """
    device = next(net.parameters()).device

    def inpaint(slice_hu: np.ndarray, hole: np.ndarray) -> np.ndarray:
        slice_hu, hole = np.asarray(slice_hu, dtype=np.float32), np.asarray(hole, dtype=bool)
        if slice_hu.ndim != 2 or hole.shape != slice_hu.shape:
            raise GeometryError(f"expected a slice (ny, nx) and a hole mask of the same shape, got "
                                f"{slice_hu.shape} and {hole.shape}")
        if not hole.any():
            return slice_hu.copy()
        ny, nx = slice_hu.shape
        step = 2**net.depth
        pad = (0, -nx % step, 0, -ny % step)  # (left, right, top, bottom) for F.pad
        x = F.pad(normalise_hu(torch.from_numpy(slice_hu))[None, None], pad).to(device)
        valid = F.pad(torch.from_numpy(~hole).float()[None, None], pad).to(device)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                out = net(x, valid)
        finally:
            net.train(was_training)
        filled = denormalise_hu(out[0, 0, :ny, :nx]).cpu().numpy()
        return np.where(hole, filled, slice_hu).astype(np.float32)

    return inpaint


def inpaint_volume(ct_hu: np.ndarray, hole: np.ndarray, inpaint: InpaintFn) -> np.ndarray:
    """Apply ``inpaint`` to every axial slice (k) of ``ct_hu`` (nz, ny, nx) whose ``hole`` has a pixel.

    Slices without a hole are copied unchanged. Returns a float32 HU volume of the input's shape.
    """
    ct_hu, hole = np.asarray(ct_hu, dtype=np.float32), np.asarray(hole, dtype=bool)
    if ct_hu.ndim != 3 or hole.shape != ct_hu.shape:
        raise GeometryError(f"expected a volume (nz, ny, nx) and a hole mask of the same shape, got "
                            f"{ct_hu.shape} and {hole.shape}")
    out = ct_hu.copy()
    for k in np.flatnonzero(hole.any(axis=(1, 2))):
        out[k] = inpaint(ct_hu[k], hole[k])
    return out
