"""Pre-procedural pMR -> pCT registration: rigid initialisation, then instance optimisation of a diffeomorphic
field on MIND-SSC descriptors (``mind-svf``).

MR and CT intensities are not related by a function that a mono-modal metric could use, so the deformable
stage compares *local self-similarity* instead: the MIND-SSC descriptor of Heinrich et al. (MICCAI 2013,
"Towards realtime multimodal fusion for image-guided interventions using self-similarities"). At every voxel
it holds, for the 12 pairs of six-neighbourhood voxels that are sqrt(2) voxels apart, the patch distance
between the two neighbours, exp(-D / V) with V the mean of the 12 distances, divided by its largest channel.
Each channel depends on differences of the image within one patch, normalised by their local size, so the
descriptor is unchanged by any map a * I + b (a != 0), including a contrast inversion, and changes little
under a smooth multiplicative bias field. It is similar for MR and CT wherever the two images show the same
edges, whatever their intensities.

Steps (all on the fixed pCT image's box in physical space):

1. **rigid**: a rigid registration (by default ANTs Rigid with Mattes MI, :data:`RIGID_INIT`);
2. **resample**: the pMR through the rigid transform onto working grids (the pCT box at 1/2 and full
   resolution), plus a mask of where the pMR has data (its field of view is not the pCT's);
3. **mind**: MIND-SSC of both images on every working grid;
4. **optimise**: a stationary velocity field on a coarse control grid (mm), integrated by scaling and
   squaring (:class:`~.registration_net.VecInt`), upsampled trilinearly to the working grid, warps the pMR's
   descriptors; Adam minimises the masked mean squared descriptor difference plus ``smoothness`` times the
   diffusion energy of the displacement (mm / mm), coarse level first;
5. **to_field**: x_pMR = R(x + d(x)) sampled on the pCT grid (package convention, x_moving = x + u(x)).

The same instance optimisation can refine any initial field (:meth:`MindSvfRegistration.refine`), leaving out
fixed-image voxels that are not to be trusted. :func:`joint_refinement` uses it for a final pMR -> iCT refinement
of the learned pipeline's composed field against the inpainted iCT, with the probe hole and a margin left out.
It is *not* a pipeline stage: on validation phantoms 50002-50006 every setting tried made the chain's tumour
TRE, liver Dice and EPE worse, because on these phantoms the MIND-SSC loss is lower at the chain's field than at
the true one (``docs/mrct_eval/pre_procedural.md``, "Final joint refinement").

Torch runs on however many threads the process allows (``torch.set_num_threads``; the pipeline's runs use
one, ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..baselines.base import Registration, RegistrationResult, StageTimer, check_pair
from ..errors import GeometryError
from ..image import Grid, Image
from ..transforms import DisplacementField, sample_image
from .ctct_registration import hole_exclusion, overlaps, working_grid
from .registration_net import SpatialTransformer3d, VecInt

RIGID_INIT = "ants-rigid"

# the 12 MIND-SSC pairs: six-neighbourhood offsets (z, y, x) and the pairs of them sqrt(2) voxels apart
_SIX = ((0, 1, 1), (1, 1, 0), (1, 0, 1), (1, 1, 2), (2, 1, 1), (1, 2, 1))
_PAIRS = tuple((a, b) for a in range(6) for b in range(a + 1, 6)
               if sum((p - q) ** 2 for p, q in zip(_SIX[a], _SIX[b])) == 2)
assert len(_PAIRS) == 12


def _shift(image: torch.Tensor, offset: Sequence[int]) -> torch.Tensor:
    """``image`` [B, C, D, H, W] sampled at p + offset (voxels, z/y/x), edge-replicated at the border."""
    r = max(abs(o) for o in offset)
    if r == 0:
        return image
    padded = F.pad(image, (r, r, r, r, r, r), mode="replicate")
    d, h, w = image.shape[2:]
    oz, oy, ox = (r + o for o in offset)
    return padded[:, :, oz:oz + d, oy:oy + h, ox:ox + w]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2, eps: float = 1e-6) -> torch.Tensor:
    """MIND-SSC descriptor [B, 12, D, H, W] of ``image`` [B, 1, D, H, W], values in (0, 1].

    ``dilation``: distance (voxels) of the six neighbours from the centre; ``radius``: half-width of the cubic
    patch (box filter) over which squared differences are summed. Invariant to a * image + b for a != 0.
    """
    if image.ndim != 5 or image.shape[1] != 1:
        raise GeometryError(f"image must be [B, 1, D, H, W], got {tuple(image.shape)}")
    six = [tuple(dilation * (c - 1) for c in o) for o in _SIX]
    shifted = [_shift(image, o) for o in six]
    k = 2 * radius + 1
    distances = torch.cat([F.avg_pool3d(F.pad((shifted[a] - shifted[b]) ** 2, (radius,) * 6, mode="replicate"), k, stride=1)
                           for a, b in _PAIRS], dim=1)
    variance = distances.mean(dim=1, keepdim=True)
    mean_var = variance.mean()
    variance = variance.clamp(min=float(mean_var) * 1e-3 + eps, max=float(mean_var) * 1e3 + eps)
    descriptor = torch.exp(-distances / variance)
    return descriptor / descriptor.amax(dim=1, keepdim=True).clamp_min(eps)


def diffusion_mm(displacement_mm: torch.Tensor, spacing_zyx: Sequence[float]) -> torch.Tensor:
    """Mean squared forward-difference gradient of a displacement [B, 3, D, H, W] (mm) per mm, over z, y, x."""
    terms = []
    for axis, s in zip((2, 3, 4), spacing_zyx):
        n = displacement_mm.shape[axis]
        diff = displacement_mm.narrow(axis, 1, n - 1) - displacement_mm.narrow(axis, 0, n - 1)
        terms.append((diff / s).pow(2).mean())
    return sum(terms) / 3.0


@dataclass(frozen=True)
class MindSvfSettings:
    """What the deformable stage does; the defaults were chosen on validation phantoms (see
    ``docs/mrct_eval/pre_procedural.md``).

    ``level_factors``: working grids, as divisors of the fixed grid's shape, coarse first; ``steps``: Adam steps
    per level; ``control_factor``: divisor of the fixed grid's shape for the velocity grid; ``smoothness``:
    weight of the diffusion energy (mm/mm); ``lr``: Adam step (mm of velocity); ``mind_radius`` and
    ``mind_dilation``: the descriptor's patch half-width and neighbour distance (voxels of each working grid);
    ``blur_mm``: sigma (mm) of a Gaussian applied to both images before the descriptors (0: none). The
    descriptors compare small patch differences, so image noise (Rician in the pMR, quantum noise in the CT)
    biases them; 1.5 mm lowered the validation tumour TRE from 1.55 to 1.28 mm.
    """

    level_factors: tuple[int, ...] = (2, 1)
    steps: tuple[int, ...] = (60, 40)
    control_factor: int = 4
    smoothness: float = 0.5
    lr: float = 0.5
    mind_radius: int = 1
    mind_dilation: int = 2
    int_steps: int = 6
    blur_mm: float = 1.5

    def __post_init__(self) -> None:
        if len(self.level_factors) != len(self.steps) or not self.steps:
            raise ValueError(f"need one step count per level, got {self.level_factors} and {self.steps}")
        if min(self.level_factors) < 1 or self.control_factor < 1 or min(self.steps) < 0:
            raise ValueError("level_factors and control_factor must be >= 1 and steps >= 0")
        if not self.blur_mm >= 0:
            raise ValueError(f"blur_mm must be >= 0, got {self.blur_mm}")


def _shape_for(grid: Grid, factor: int) -> tuple[int, int, int]:
    return tuple(max(4, int(round(n / factor))) for n in grid.shape)


def _mm_to_voxels(displacement_mm: torch.Tensor, grid: Grid) -> torch.Tensor:
    """[B, 3, D, H, W] in mm, channels (z, y, x) physical -> voxels of ``grid`` (channels z, y, x index)."""
    inverse = np.linalg.inv(grid.index_to_physical_matrix)[::-1, ::-1].copy()  # zyx index <- zyx physical
    matrix = torch.as_tensor(inverse, dtype=displacement_mm.dtype)
    return torch.einsum("ij,bjdhw->bidhw", matrix, displacement_mm)


def _voxels_to_mm(displacement_vox: torch.Tensor, grid: Grid) -> torch.Tensor:
    forward = grid.index_to_physical_matrix[::-1, ::-1].copy()
    matrix = torch.as_tensor(forward, dtype=displacement_vox.dtype)
    return torch.einsum("ij,bjdhw->bidhw", matrix, displacement_vox)


def _resize(field: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling between two working grids of one box (voxel edges aligned: align_corners=False)."""
    if tuple(field.shape[2:]) == tuple(shape):
        return field
    return F.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=False)


class MindSvfRegistration:
    """pMR (moving) -> pCT (fixed): ``rigid`` initialisation, then a MIND-SSC diffeomorphic refinement.

    Stages, timed separately: ``rigid`` (the initialisation's own stages summed), ``resample``, ``mind``,
    ``optimise``, ``to_field``. ``rigid=None`` starts from the identity.
    """

    def __init__(self, rigid: Registration | None = None, settings: MindSvfSettings | None = None,
                 name: str = "mind-svf") -> None:
        self.rigid, self.settings, self.name = rigid, settings or MindSvfSettings(), name

    def register(self, fixed: Image, moving: Image) -> RegistrationResult:
        check_pair(fixed, moving)
        timer = StageTimer()
        if self.rigid is not None:
            initial = self.rigid.register(fixed, moving)
            timer.seconds["rigid"] = initial.total_seconds
            rigid_field = initial.field
        else:
            rigid_field = DisplacementField.identity(fixed.grid)
        field = self.refine(fixed, moving, rigid_field, timer=timer)
        return RegistrationResult(self.name, field, timer.seconds)

    def refine(self, fixed: Image, moving: Image, initial: DisplacementField, exclude: np.ndarray | None = None,
               timer: StageTimer | None = None) -> DisplacementField:
        """``initial`` (on ``fixed``'s grid) refined by the MIND-SSC instance optimisation: x_moving = I(x + d(x)).

        ``exclude``: a bool array of ``fixed``'s shape, True where the fixed image is not to be trusted (e.g. an
        inpainted probe hole with a margin); the similarity ignores those voxels and every voxel whose descriptor
        (or the ``blur_mm`` low-pass, out to 3 sigma) reaches into them. Stages ``resample``, ``mind``,
        ``optimise``, ``to_field`` go to ``timer``.
        """
        check_pair(fixed, moving)
        s = self.settings
        timer = timer if timer is not None else StageTimer()
        if exclude is not None and exclude.shape != fixed.grid.shape:
            raise GeometryError(f"exclude must have the fixed image's shape {fixed.grid.shape}, got {exclude.shape}")
        with timer.stage("resample"):
            grids = [working_grid(fixed.grid, _shape_for(fixed.grid, f)) for f in s.level_factors]
            fixed_s, moving_s = self._smoothed(fixed), self._smoothed(moving)
            if exclude is not None and s.blur_mm:  # the blur carries what is excluded 3 sigma out
                exclude = hole_exclusion(exclude, fixed.grid, 3.0 * s.blur_mm)
            pairs = [self._images_on(grid, fixed_s, moving_s, initial, exclude) for grid in grids]
        with timer.stage("mind"):
            features = [(mind_ssc(f, s.mind_radius, s.mind_dilation), mind_ssc(m, s.mind_radius, s.mind_dilation),
                         mask, fixed_mask) for f, m, mask, fixed_mask in pairs]
        with timer.stage("optimise"):
            control = working_grid(fixed.grid, _shape_for(fixed.grid, s.control_factor))
            velocity = self.optimise(features, grids, control)
        with timer.stage("to_field"), torch.no_grad():
            displacement = _mm_to_voxels(velocity, control)
            coarse = DisplacementField.from_torch(VecInt(s.int_steps)(displacement), control)
            return DisplacementField.from_point_map(fixed.grid, lambda x: initial.map_points(coarse.map_points(x)))

    def _smoothed(self, image: Image) -> Image:
        """``image`` low-passed by a Gaussian of ``blur_mm`` (sigma) before the descriptors: against noise."""
        if not self.settings.blur_mm:
            return image
        sigma_zyx = self.settings.blur_mm / np.asarray(image.grid.spacing_mm, dtype=np.float64)[::-1]
        return image.with_array(ndimage.gaussian_filter(image.array.astype(np.float32), sigma_zyx, mode="nearest"))

    @staticmethod
    def _images_on(grid: Grid, fixed: Image, moving: Image, initial: DisplacementField,
                   exclude: np.ndarray | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed and initially aligned moving image on ``grid`` ([1, 1, D, H, W] each), the moving image's mask
        (where it has data) and the fixed image's (outside ``exclude``)."""
        points = grid.physical_points()
        f = sample_image(fixed, points, order=1, fill_value=float(fixed.array.min()))
        m = sample_image(moving, initial.map_points(points), order=1, fill_value=np.nan)
        mask = np.isfinite(m)
        m = np.where(mask, m, float(np.nanmin(m)) if mask.any() else 0.0)
        if exclude is None:
            fixed_mask = np.ones(grid.shape, dtype=np.float32)
        else:  # a working voxel that overlaps an excluded voxel at all is excluded
            fixed_mask = (~overlaps(exclude, fixed.grid, grid)).astype(np.float32)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]

        return tensor(f), tensor(m), tensor(mask.astype(np.float32)), tensor(fixed_mask)

    def optimise(self, features: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                 grids: list[Grid], control: Grid) -> torch.Tensor:
        """The velocity [1, 3, D, H, W] (mm, z/y/x channels) on ``control`` after the Adam steps of every level.

        ``features``: per level, fixed and moving descriptors, the moving image's mask and the fixed image's."""
        s = self.settings
        integrate, warp = VecInt(s.int_steps), SpatialTransformer3d(padding_mode="border")
        velocity = torch.zeros((1, 3, *control.shape), requires_grad=True)
        optimiser = torch.optim.Adam([velocity], lr=s.lr)
        spacing = control.spacing_mm[::-1]
        # the descriptor near the edge of the pMR's field of view compares with fill: leave a margin out
        margin = s.mind_dilation + s.mind_radius

        def erode(m: torch.Tensor) -> torch.Tensor:
            return -F.max_pool3d(-F.pad(m, (margin,) * 6, value=0.0), 2 * margin + 1, stride=1)

        for (fixed_f, moving_f, mask, fixed_mask), grid, steps in zip(features, grids, s.steps):
            # the fixed mask's erosion treats the box's own edge as valid (padding 1): only exclusions spread
            fixed_valid = -F.max_pool3d(-F.pad(fixed_mask, (margin,) * 6, value=1.0), 2 * margin + 1, stride=1)
            moving_all = torch.cat([moving_f, erode(mask)], dim=1)
            for _ in range(steps):
                displacement_mm = _voxels_to_mm(integrate(_mm_to_voxels(velocity, control)), control)
                on_grid = _mm_to_voxels(_resize(displacement_mm, grid.shape), grid)
                warped = warp(moving_all, on_grid)
                weight = warped[:, -1:] * fixed_valid
                error = (warped[:, :-1] - fixed_f).pow(2).mean(dim=1, keepdim=True)
                similarity = (error * weight).sum() / weight.sum().clamp_min(1.0)
                loss = similarity + s.smoothness * diffusion_mm(displacement_mm, spacing)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        return velocity.detach()


def mind_svf(settings: MindSvfSettings | None = None, name: str = "mind-svf") -> MindSvfRegistration:
    """The pre-procedural registration with the default rigid initialisation (:data:`RIGID_INIT`)."""
    from ..baselines import get_method

    rigid = get_method(RIGID_INIT)
    return MindSvfRegistration(rigid, settings, name)


@dataclass(frozen=True)
class JointRefineSettings:
    """A final joint refinement of the learned pipeline's composed pMR -> iCT field (see :func:`joint_refinement`):
    the MIND-SSC instance optimisation ``mind`` (few steps on a coarse grid), with the fixed image's probe hole
    and every voxel within ``hole_margin_mm`` of it left out. The defaults are the first settings tried on
    validation; no setting tried helped, and the pipeline does not use this stage."""

    mind: MindSvfSettings = MindSvfSettings(level_factors=(2,), steps=(20,), smoothness=0.5, lr=0.2, blur_mm=0.0)
    hole_margin_mm: float = 10.0

    def __post_init__(self) -> None:
        if self.hole_margin_mm < 0:
            raise ValueError(f"hole_margin_mm must be >= 0, got {self.hole_margin_mm}")


def joint_refinement(fixed: Image, moving: Image, initial: DisplacementField, hole: np.ndarray | None = None,
                     settings: JointRefineSettings | None = None) -> tuple[DisplacementField, dict[str, float]]:
    """Refine a moving -> fixed field ``initial`` (on ``fixed``'s grid) directly on MIND-SSC descriptors.

    In the learned pipeline ``fixed`` is the inpainted iCT, ``hole`` its inpainting hole, ``moving`` the pMR and
    ``initial`` the composed pMR -> pCT -> iCT field. Returns the refined field (x_moving = I(x + d(x)), d a
    diffeomorphism) and the seconds of its stages (``resample``, ``mind``, ``optimise``, ``to_field``).
    """
    s = settings or JointRefineSettings()
    timer = StageTimer()
    with timer.stage("resample"):
        exclude = hole_exclusion(hole, fixed.grid, s.hole_margin_mm)
    field = MindSvfRegistration(None, s.mind, "joint-refine").refine(fixed, moving, initial, exclude, timer)
    return field, timer.seconds
