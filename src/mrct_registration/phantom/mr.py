"""MR appearance from a spin-echo signal model, S = PD (1 - exp(-TR/T1)) exp(-TE/T2), per tissue.

Relaxation times are textbook 1.5 T values (ms). Because S depends on PD, T1 and T2 rather than on
electron density, MR intensity is a non-monotonic function of CT intensity (bone: brightest on CT, dark
on MR; fat: dark on CT, bright on T1-weighted MR), which is why MR-CT registration needs a statistical
similarity such as mutual information. Flowing blood gives a spin-echo flow void (low PD here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..image import Grid
from .anatomy import Tissue

# (proton density, T1 ms, T2 ms)
_TISSUE_PD_T1_T2 = {
    Tissue.BACKGROUND: (0.0, 1000.0, 10.0),
    Tissue.FAT: (0.90, 260.0, 80.0),
    Tissue.SOFT_TISSUE: (0.75, 900.0, 50.0),
    Tissue.LIVER: (0.70, 500.0, 43.0),
    Tissue.TUMOUR: (0.80, 950.0, 85.0),
    Tissue.VESSEL: (0.10, 1400.0, 250.0),
    Tissue.SPLEEN: (0.80, 1050.0, 62.0),
    Tissue.KIDNEY: (0.85, 700.0, 58.0),
    Tissue.BONE: (0.20, 400.0, 30.0),
    Tissue.GAS: (0.0, 1000.0, 10.0),
}


@dataclass(frozen=True)
class SpinEchoProtocol:
    name: str
    tr_ms: float
    te_ms: float


T1_WEIGHTED = SpinEchoProtocol("T1w", tr_ms=500.0, te_ms=12.0)
T2_WEIGHTED = SpinEchoProtocol("T2w", tr_ms=3000.0, te_ms=90.0)
PROTOCOLS = {"t1": T1_WEIGHTED, "t2": T2_WEIGHTED}


def spin_echo_signal(pd: np.ndarray, t1_ms: np.ndarray, t2_ms: np.ndarray, protocol: SpinEchoProtocol) -> np.ndarray:
    return pd * (1.0 - np.exp(-protocol.tr_ms / t1_ms)) * np.exp(-protocol.te_ms / t2_ms)


def tissue_signals(protocol: SpinEchoProtocol, rng: np.random.Generator, jitter: float = 0.08) -> np.ndarray:
    """Noise-free signal of each Tissue (indexed by label), with per-case jitter of PD, T1 and T2."""
    out = np.zeros(len(Tissue))
    for tissue, (pd, t1, t2) in _TISSUE_PD_T1_T2.items():
        f = rng.uniform(1 - jitter, 1 + jitter, size=3)
        out[tissue] = spin_echo_signal(pd * f[0], t1 * f[1], t2 * f[2], protocol)
    return out


def bias_field(grid: Grid, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative coil sensitivity exp(quadratic polynomial), values within about 1 +- strength."""
    x = grid.physical_points()
    x = (x - grid.center_mm()) / 150.0
    terms = [x[..., 0], x[..., 1], x[..., 2], x[..., 0] * x[..., 1], x[..., 0] ** 2, x[..., 1] ** 2, x[..., 2] ** 2]
    log_b = sum(c * t for c, t in zip(rng.normal(size=len(terms)), terms))
    log_b = log_b - log_b.mean()
    log_b *= np.log1p(strength) / max(float(np.abs(log_b).max()), 1e-9)
    return np.exp(log_b).astype(np.float32)


def render_mr(labels: np.ndarray, grid: Grid, protocol: SpinEchoProtocol, texture: np.ndarray, rng: np.random.Generator,
              noise_fraction: float = 0.03, bias_strength: float = 0.3, blur_mm: float = 2.0) -> np.ndarray:
    """MR magnitude image (float32, about 0..1000): spin-echo signal x texture, blurred, x bias, Rician noise."""
    signal = tissue_signals(protocol, rng)[labels].astype(np.float32)
    signal *= 1.0 + 0.05 * texture
    sigma_vox = [blur_mm / 2.355 / s for s in grid.spacing_mm[::-1]]
    signal = ndimage.gaussian_filter(signal, sigma_vox, mode="nearest")
    signal *= bias_field(grid, rng, bias_strength)
    sigma = noise_fraction * float(signal.max())
    # Rician: the magnitude of a complex signal with Gaussian noise on both channels
    noisy = np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))
    scale = 1000.0 / max(float(np.percentile(noisy, 99.5)), 1e-9)
    return (noisy * scale).astype(np.float32)
