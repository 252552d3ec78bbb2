"""The learned pMR -> iCT pipeline (Wei et al. 2019, Sec. 2): pre-procedural pMR -> pCT, intra-procedural
pCT -> iCT (inpainting + registration network + refinement), composed so the pMR is resampled once.

Stage (b), pMR -> pCT, is meant to be the mono-modal registration of pCT to the Cycle-GAN's synthetic CT.
Our Cycle-GAN route was not good enough, so stage (b) is :data:`PRE_PROCEDURAL_METHOD`: ANTs rigid, then
instance optimisation of a diffeomorphic field on MIND-SSC descriptors (``mind-svf``,
:mod:`.pre_procedural`). Pre-procedural stages are named ``pre_*`` and do not count as intra-procedural
time; every other stage (inpaint, resample, network, refine, to_field, compose, warp) does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..baselines.base import Registration, RegistrationResult, StageTimer, check_pair
from ..image import Image
from ..transforms import DisplacementField, compose, warp_image
from .ctct_registration import LearnedCtCtRegistration

# pMR -> pCT on validation phantoms 50002-50006 (CI scale, one torch and one ITK thread), means over 5 cases:
# mind-svf tumour TRE 1.28 mm, liver Dice 0.971, liver EPE 1.40 mm (1.55 / 0.972 / 1.50 before its 1.5 mm blur),
# no folding, about 25 s per case; ants-syn-mi
# 6.09 mm, 0.938, 5.41 mm; ants-rigid 6.36 mm, 0.950, 5.26 mm (docs/mrct_eval/pre_procedural.md). The earlier
# stand-in was ants-syn-mi; our ci-preset Cycle-GAN + SyN-CC was worse than it (liver EPE 6.8 / 7.6 / 8.3 mm
# against 3.9 / 5.4 / 6.6 mm on 50002-50004)
PRE_PROCEDURAL_METHOD = "mind-svf"
# instance optimisation at test time: Adam steps (lr 0.1) chosen on validation phantoms 50000-50001, where from
# the committed network 30 steps gave tumour TRE 0.99 / 2.02 mm and 60 steps 1.25 / 2.09 mm (network alone:
# 2.47 / 7.57 mm), so the cheaper 30. With the refinements' low-pass and window (below), lr 0.2 for both
# refinements lowered the pCT -> iCT liver EPE on validation phantoms 50000-50006 from 1.21 to 1.18 mm and the
# tumour TRE from 1.83 to 1.75 mm at the same cost; 0.4 overshot (EPE 1.80 mm)
REFINE_STEPS = 30
REFINE_LR = 0.2
# a second refinement on a finer working grid over the same box (working shape x FINE_SCALE, 60 x 72 x 72 at CI
# scale), FINE_STEPS Adam steps at lr FINE_LR, same loss; chosen on validation phantoms 50000-50006
# (docs/mrct_eval/pre_procedural.md, "Finer second refinement of the CT-CT stage"); 0 steps switches it off
# With lr 0.2 (below), 25 steps instead of 15 lowered the validation pCT -> iCT EPE from 1.18 to 1.13 mm (chain
# EPE 1.65 -> 1.64 mm) for about 5.5 s more per case, well inside the 30 s intra-procedural budget
FINE_SCALE = 1.5
FINE_STEPS = 25
FINE_LR = 0.2
# what the two refinements see (the network's input is unchanged): both CTs low-passed by a Gaussian of
# REFINE_BLUR_MM (sigma; the iCT carries 15 HU of noise) and windowed to REFINE_WINDOW HU, which keeps liver, tumour
# and vessels apart but saturates the contrast-enhanced vessels of the pCT near those of the iCT (enhancement
# 50-100 HU against 10-40 HU). On validation phantoms 50000-50006 the pCT -> iCT liver EPE went from 1.30 to
# 1.21 mm, with tumour TRE 1.83 mm both ways (docs/mrct_eval/pre_procedural.md, "Noise and contrast")
REFINE_BLUR_MM = 1.5
REFINE_WINDOW = (-100.0, 110.0)
# what LearnedPipeline.run reports to its ``on_stage`` callback, in order
PIPELINE_STAGES = ("pre-procedural pMR -> pCT", "inpainting + pCT -> iCT", "compose", "warp pMR")


@dataclass(frozen=True, eq=False)
class PipelineResult:
    """Everything ``mrct-reg run`` writes: the three fields (package convention: on the fixed grid, mm,
    x_moving = x + u(x)), the pMR on the iCT grid, the inpainted iCT and its hole, and the stage times."""

    pmr_to_pct: DisplacementField  # on the pCT grid
    pct_to_ict: DisplacementField  # on the iCT grid
    pmr_to_ict: DisplacementField  # on the iCT grid, the composition of the two
    pmr_on_ict: Image
    ict_inpainted: Image
    hole: np.ndarray | None
    stage_seconds: dict[str, float]

    @property
    def intra_procedural_seconds(self) -> float:
        return float(sum(v for k, v in self.stage_seconds.items() if not k.startswith("pre_")))


class LearnedPipeline:
    """iCT (fixed), pCT (intermediate), pMR (moving) -> pMR -> iCT, as a :class:`ChainRegistration`."""

    def __init__(self, pre: Registration, intra: LearnedCtCtRegistration, name: str = "learned") -> None:
        self.pre, self.intra, self.name = pre, intra, name

    def run(self, ict: Image, pct: Image, pmr: Image, on_stage: Callable[[str], None] | None = None
            ) -> PipelineResult:
        """Run the stages in order; ``on_stage(name)`` is called before each (for a progress display)."""
        check_pair(ict, pct)
        check_pair(pct, pmr)
        notify = on_stage or (lambda name: None)
        notify(PIPELINE_STAGES[0])
        pre = self.pre.register(pct, pmr)
        notify(PIPELINE_STAGES[1])
        intra = self.intra.run(ict, pct)
        timer = StageTimer()
        notify(PIPELINE_STAGES[2])
        with timer.stage("intra_compose"):
            field = compose(pre.field, intra.registration.field)
        notify(PIPELINE_STAGES[3])
        with timer.stage("intra_warp"):
            warped = warp_image(pmr, field)
        stages = {f"pre_{k}": v for k, v in pre.stage_seconds.items()}
        stages.update({f"intra_{k}": v for k, v in intra.registration.stage_seconds.items()})
        stages.update(timer.seconds)
        return PipelineResult(pre.field, intra.registration.field, field, warped, intra.inpainted, intra.hole, stages)

    def register_via(self, fixed: Image, intermediate: Image, moving: Image) -> RegistrationResult:
        result = self.run(fixed, intermediate, moving)
        return RegistrationResult(self.name, result.pmr_to_ict, result.stage_seconds)


def learned_ctct(inpaint: bool = True, refine_steps: int = REFINE_STEPS, name: str = "learned-ctct",
                 weights: Path | None = None, fine_steps: int | None = None, device: str = "cpu"
                 ) -> LearnedCtCtRegistration:
    """The intra-procedural stage with the committed weights (or ``weights``) and the committed inpainter.

    ``fine_steps``: steps of the second, finer refinement; None gives :data:`FINE_STEPS`, or 0 when
    ``refine_steps`` is 0 (the network alone). ``device``: where the inpainting and registration networks and
    the refinements run ('cpu', 'cuda', 'cuda:N').
    """
    from .ctct_registration import resolve_device
    from .inpainting import network_inpainter
    from .train_inpainting import COMMITTED_WEIGHTS as INPAINTING_WEIGHTS
    from .train_inpainting import load_inpainter
    from .train_registration import COMMITTED_WEIGHTS, load_registration_net

    torch_device = resolve_device(device)
    net, config = load_registration_net(weights or COMMITTED_WEIGHTS)
    inpainter = network_inpainter(load_inpainter(INPAINTING_WEIGHTS).to(torch_device)) if inpaint else None
    geometry = config.geometry()
    if fine_steps is None:
        fine_steps = FINE_STEPS if refine_steps else 0
    fine_shape = tuple(int(round(FINE_SCALE * n)) for n in geometry.working_shape)
    return LearnedCtCtRegistration(net, geometry, inpainter, refine_steps, REFINE_LR, name,
                                   fine_shape=fine_shape, fine_steps=fine_steps, fine_lr=FINE_LR,
                                   refine_blur_mm=REFINE_BLUR_MM, refine_window=REFINE_WINDOW, device=torch_device)


def synthesis_pre_stage(weights: Path) -> Registration:
    """Stage (b) with a trained Cycle-GAN (``mrct-reg train synthesis``): pMR -> sCT, then pCT -> sCT by SyN-CC."""
    from ..baselines.ants import AntsRegistration
    from .train_synthesis import SynthesisRegistration, load_synthesis

    mr_to_ct, _, config = load_synthesis(weights)
    pixel_mm = config.phantom().pmr_grid().spacing_mm[:2]  # the generator works at its training pixel size
    return SynthesisRegistration(mr_to_ct, AntsRegistration("syn-cc"), "synthesis-syncc", pixel_mm)


def learned_pipeline(refine_steps: int = REFINE_STEPS, weights: Path | None = None, synthesis: Path | None = None,
                     name: str = "learned", device: str = "cpu") -> LearnedPipeline:
    """The pipeline with the committed networks; pMR -> pCT by :data:`PRE_PROCEDURAL_METHOD`, or through the
    Cycle-GAN saved at ``synthesis``."""
    from ..baselines import get_method

    pre = synthesis_pre_stage(synthesis) if synthesis is not None else get_method(PRE_PROCEDURAL_METHOD)
    return LearnedPipeline(pre, learned_ctct(refine_steps=refine_steps, weights=weights, device=device), name)
