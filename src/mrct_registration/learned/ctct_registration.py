"""Intra-procedural CT-CT registration pCT -> iCT: inpaint the probe, predict a diffeomorphic field with the
registration network, refine it by a few steps of instance optimisation (Wei et al. 2019, Sec. 2.2-2.3).

The network works on a coarse *working grid*: the fixed (iCT) image's box in physical space, sampled at
:attr:`NetworkGeometry.working_shape` voxels whatever the iCT's resolution. Both images are resampled onto
it (the pCT with the identity, so no pre-alignment: the phantom's pCT and iCT share the scanner frame up
to a few mm and degrees, within the network's reach), windowed to soft-tissue contrast and scaled to
[0, 1]. The network's displacement (voxels of the working grid) becomes a field in mm there, and is
trilinearly upsampled onto the iCT grid: the motions it must recover are smooth on the scale of the
working grid's 5-6 mm voxels.

Instance optimisation (optional, ``refine_steps``) starts from the network's velocity and takes Adam
steps on the same loss the network was trained with (local NCC + diffusion), for this one pair. It keeps
the field diffeomorphic (it still integrates a velocity by scaling and squaring). An optional second
refinement (``fine_shape``, ``fine_steps``) continues it on a finer working grid over the same box: the
velocity is upsampled there (so its control grid is finer too) and both images are resampled at that resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..baselines.base import RegistrationResult, StageTimer, check_pair
from ..errors import GeometryError
from ..image import Grid, Image
from ..transforms import DisplacementField, sample_image
from .inpaint_baselines import InpaintFn
from .inpaint_masks import metal_hole_mask
from .inpainting import inpaint_volume
from .registration_net import DiffeomorphicRegistrationNet, gradient_smoothness_loss, local_ncc_loss

AIR_HU = -1000.0


@dataclass(frozen=True)
class NetworkGeometry:
    """How images become network inputs; training and inference must agree on every field.

    ``working_shape``: (D, H, W) = (z, y, x) voxels of the working grid, divisible by 2**levels of the
    U-Net; ``hu_window``: HU mapped to [0, 1] (clipped outside), a soft-tissue window in which liver,
    vessels, fat and the body outline all have contrast; ``ncc_window``: local NCC window (voxels);
    ``smoothness_weight``: weight of the diffusion loss (working-grid voxels).
    """

    working_shape: tuple[int, int, int] = (40, 48, 48)
    hu_window: tuple[float, float] = (-250.0, 350.0)
    ncc_window: int = 7
    smoothness_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "working_shape", tuple(int(n) for n in self.working_shape))
        if len(self.working_shape) != 3 or min(self.working_shape) < 4:
            raise GeometryError(f"working_shape must be 3 sizes >= 4 (z, y, x), got {self.working_shape}")
        if not self.hu_window[0] < self.hu_window[1]:
            raise GeometryError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")


def working_grid(grid: Grid, shape: tuple[int, int, int]) -> Grid:
    """The same box in physical space as ``grid`` (voxel edges to voxel edges), sampled at ``shape`` (z, y, x)."""
    old = np.asarray(grid.spacing_mm)
    new = old * np.asarray(grid.size_xyz) / np.asarray(shape[::-1], dtype=np.float64)
    # the first voxel's outer edge stays put: origin moves by half the spacing difference along each axis
    origin = np.asarray(grid.origin_mm) + grid.direction_matrix @ ((new - old) / 2.0)
    return Grid(tuple(shape), tuple(new), tuple(origin), grid.direction)


def ct_to_tensor(ct: Image, grid: Grid, hu_window: tuple[float, float], blur_mm: float = 0.0) -> torch.Tensor:
    """A CT image resampled onto ``grid`` (anti-aliased when coarser), windowed to [0, 1]: [1, 1, D, H, W].

    ``blur_mm``: an extra Gaussian (sigma, mm) against noise, combined with the anti-aliasing one."""
    ratio = np.asarray(grid.spacing_mm) / np.asarray(ct.grid.spacing_mm)  # (x, y, z)
    alias = np.asarray([0.4 * r if r > 1.0 else 0.0 for r in ratio[::-1]])
    sigma_zyx = list(np.sqrt(alias ** 2 + (blur_mm / np.asarray(ct.grid.spacing_mm[::-1], dtype=np.float64)) ** 2))
    source = ct.array.astype(np.float32)
    if any(sigma_zyx):
        source = ndimage.gaussian_filter(source, sigma_zyx, mode="nearest")
    values = sample_image(ct.with_array(source), grid.physical_points(), order=1, fill_value=AIR_HU)
    lo, hi = hu_window
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(scaled)[None, None]


def inpaint_probe(ict: Image, inpaint: InpaintFn) -> tuple[Image, np.ndarray]:
    """The iCT with its metal hole (threshold + dilation, no ground truth) filled slice by slice, and the hole."""
    hole = metal_hole_mask(ict.array)
    if not hole.any():
        return ict, hole
    return ict.with_array(inpaint_volume(ict.array, hole, inpaint)), hole


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, with a clear error when it names a CUDA device this machine lacks."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"not a torch device: {device!r} (use 'cpu', 'cuda' or 'cuda:N')") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__})")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r}: only 'cpu' and CUDA devices are supported")
    return resolved


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work, so a stage timer around it measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hole_weight(hole: np.ndarray | None, image_grid: Grid, grid: Grid, margin_mm: float | None) -> torch.Tensor | None:
    """The similarity weight on working grid ``grid``: 0 near the probe hole, 1 elsewhere.

    ``hole`` (bool, on ``image_grid``) is the metal mask the inpainting filled. None (no hole, or ``margin_mm``
    None: masking off) gives None. The excluded region is every iCT voxel within ``margin_mm`` of the hole (the
    hole itself with a margin of 0), measured in mm on the iCT grid; a working voxel is excluded when its
    trilinear sample of that region is above zero, i.e. when it overlaps the region at all.
    """
    if hole is None or margin_mm is None or not hole.any():
        return None
    weight = ~overlaps(hole_exclusion(hole, image_grid, margin_mm), image_grid, grid)
    return torch.from_numpy(weight.astype(np.float32))[None, None]


def hole_exclusion(hole: np.ndarray | None, grid: Grid, margin_mm: float) -> np.ndarray | None:
    """Voxels of ``grid`` within ``margin_mm`` (physical distance) of the ``hole`` mask; None without a hole."""
    if hole is None or not hole.any():
        return None
    if margin_mm == 0:
        return hole.astype(bool)
    distance = ndimage.distance_transform_edt(~hole.astype(bool), sampling=tuple(grid.spacing_mm[::-1]))
    return distance <= margin_mm


def overlaps(mask: np.ndarray, image_grid: Grid, grid: Grid) -> np.ndarray:
    """Voxels of ``grid`` that overlap ``mask`` (bool, on ``image_grid``) at all: a trilinear sample above zero."""
    sampled = sample_image(Image(mask.astype(np.float32), image_grid), grid.physical_points(), order=1,
                           fill_value=0.0)
    return sampled > 0.0


def refine_velocity(net: DiffeomorphicRegistrationNet, moving: torch.Tensor, fixed: torch.Tensor,
                    velocity: torch.Tensor, geometry: NetworkGeometry, steps: int, lr: float,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Instance optimisation: ``steps`` Adam steps on local NCC + diffusion of this pair, from ``velocity``.

    ``velocity`` [1, 3, D, H, W] in working-grid voxels (z, y, x); returns the refined velocity (detached).
    The network's integrator and transformer are reused, so the result is the same kind of field.
    ``weight``: the NCC's voxel mask (:func:`hole_weight`), None for every voxel.
    """
    v = velocity.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([v], lr=lr)
    for _ in range(steps):
        displacement = net.integrate(v)
        warped = net.transformer(moving, displacement)
        loss = (local_ncc_loss(fixed, warped, geometry.ncc_window, weight=weight)
                + geometry.smoothness_weight * gradient_smoothness_loss(displacement))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return v.detach()


def upsample_velocity(velocity: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """A working-grid velocity [1, 3, D, H, W] (voxels) on another working grid of the same box, ``shape`` voxels.

    Trilinear, with voxel edges aligned (``align_corners=False``, as :func:`working_grid`); each channel is
    rescaled to the new voxel size along its axis, so the field in mm is unchanged.
    """
    old = velocity.shape[2:]
    out = torch.nn.functional.interpolate(velocity, size=tuple(shape), mode="trilinear", align_corners=False)
    scale = torch.tensor([n / o for n, o in zip(shape, old)], dtype=out.dtype, device=out.device).view(1, 3, 1, 1, 1)
    return out * scale


@dataclass(frozen=True, eq=False)
class CtCtResult:
    """A pCT -> iCT registration, the iCT as the network saw it (inpainted) and the hole (None: not inpainted)."""

    registration: RegistrationResult
    inpainted: Image
    hole: np.ndarray | None


class LearnedCtCtRegistration:
    """pCT (moving) -> iCT (fixed): inpainting, network, optional refinement; a field on the iCT grid.

    ``inpaint=None`` skips inpainting (the ablation "without inpainting"); on an iCT without metal the
    inpainting stage finds no hole and changes nothing. Stages, timed separately: ``inpaint``,
    ``resample`` (both images onto the working grid), ``network``, ``refine``, ``to_field``. With
    ``fine_steps`` > 0 the ``refine`` stage also holds a second refinement of ``fine_steps`` Adam steps (lr ``fine_lr``,
    same loss) on a working grid of ``fine_shape`` voxels over the same box, from the upsampled velocity.
    ``hole_margin_mm`` (None: off) leaves the probe hole and every voxel within that distance of it out of the
    refinements' similarity (:func:`hole_weight`); there the field follows its neighbours through the
    regulariser. The network's prediction is unchanged. ``device`` ('cpu', 'cuda', 'cuda:N') runs the network
    and the refinements there; images and fields stay numpy arrays on the host.
    """

    def __init__(self, net: DiffeomorphicRegistrationNet, geometry: NetworkGeometry, inpaint: InpaintFn | None,
                 refine_steps: int = 0, refine_lr: float = 0.05, name: str = "learned-ctct",
                 fine_shape: tuple[int, int, int] | None = None, fine_steps: int = 0, fine_lr: float = 0.05,
                 hole_margin_mm: float | None = None, refine_blur_mm: float = 0.0,
                 refine_window: tuple[float, float] | None = None, device: str | torch.device = "cpu") -> None:
        if refine_steps < 0 or fine_steps < 0:
            raise ValueError(f"refine_steps and fine_steps must be >= 0, got {refine_steps}, {fine_steps}")
        if hole_margin_mm is not None and not hole_margin_mm >= 0:
            raise ValueError(f"hole_margin_mm must be >= 0 mm or None, got {hole_margin_mm}")
        if fine_steps and (fine_shape is None or len(fine_shape) != 3 or min(fine_shape) < 4):
            raise GeometryError(f"fine_steps > 0 needs fine_shape: 3 sizes >= 4 (z, y, x), got {fine_shape}")
        if not refine_blur_mm >= 0:
            raise ValueError(f"refine_blur_mm must be >= 0, got {refine_blur_mm}")
        if refine_window is not None and (len(refine_window) != 2 or not refine_window[0] < refine_window[1]):
            raise GeometryError(f"refine_window must be (low, high) HU with low < high, got {refine_window}")
        self.device = resolve_device(device)
        self.net, self.geometry, self.inpaint = net.eval().to(self.device), geometry, inpaint
        self.refine_steps, self.refine_lr, self.name = refine_steps, refine_lr, name
        self.fine_shape = tuple(int(n) for n in fine_shape) if fine_shape is not None else None
        self.fine_steps, self.fine_lr = fine_steps, fine_lr
        self.hole_margin_mm = hole_margin_mm
        self.refine_blur_mm = refine_blur_mm
        self.refine_window = refine_window

    def _refine_inputs(self, fixed: Image, moving: Image, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed and moving image on ``grid`` as the refinements see them (their window and blur)."""
        window = self.refine_window or self.geometry.hu_window
        return (ct_to_tensor(fixed, grid, window, self.refine_blur_mm).to(self.device),
                ct_to_tensor(moving, grid, window, self.refine_blur_mm).to(self.device))

    def _weight(self, hole: np.ndarray | None, image_grid: Grid, grid: Grid) -> torch.Tensor | None:
        weight = hole_weight(hole, image_grid, grid, self.hole_margin_mm)
        return None if weight is None else weight.to(self.device)

    def run(self, fixed: Image, moving: Image) -> CtCtResult:
        """The registration and the inpainted iCT it was computed against."""
        check_pair(fixed, moving)
        timer = StageTimer()
        with timer.stage("inpaint"):
            target, hole = inpaint_probe(fixed, self.inpaint) if self.inpaint is not None else (fixed, None)
        with timer.stage("resample"):
            grid = working_grid(fixed.grid, self.geometry.working_shape)
            f = ct_to_tensor(target, grid, self.geometry.hu_window).to(self.device)
            m = ct_to_tensor(moving, grid, self.geometry.hu_window).to(self.device)
        with timer.stage("network"), torch.no_grad():
            velocity = self.net.unet(torch.cat([m, f], dim=1))
            synchronise(self.device)
        if self.refine_steps:
            with timer.stage("refine"):
                weight = self._weight(hole, fixed.grid, grid)
                if self.refine_blur_mm or self.refine_window is not None:
                    f, m = self._refine_inputs(target, moving, grid)
                velocity = refine_velocity(self.net, m, f, velocity, self.geometry, self.refine_steps,
                                           self.refine_lr, weight)
                synchronise(self.device)
        if self.fine_steps:
            with timer.stage("refine"):  # counted with the coarse refinement
                grid = working_grid(fixed.grid, self.fine_shape)
                f, m = self._refine_inputs(target, moving, grid)
                weight = self._weight(hole, fixed.grid, grid)
                velocity = refine_velocity(self.net, m, f, upsample_velocity(velocity, self.fine_shape),
                                           self.geometry, self.fine_steps, self.fine_lr, weight)
                synchronise(self.device)
        with timer.stage("to_field"), torch.no_grad():
            coarse = DisplacementField.from_torch(self.net.integrate(velocity), grid)
            field = DisplacementField.from_point_map(fixed.grid, coarse.map_points)
        return CtCtResult(RegistrationResult(self.name, field, timer.seconds), target, hole)

    def register(self, fixed: Image, moving: Image) -> RegistrationResult:
        return self.run(fixed, moving).registration
