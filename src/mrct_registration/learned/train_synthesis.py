"""Unpaired training of the MI-constrained Cycle-GAN MR <-> CT on phantom slices, its evaluation, and the
pre-procedural registration it enables (Wei et al. 2019, Sec. 2.1).

One file, read top to bottom as it runs (CleanRL style): the config, the data (axial slices of pMR volumes
from one half of the training seeds, of pCT volumes from the other half, so no MR slice has its CT
counterpart in the data), the loop (least-squares GAN + cycle L1 + ``mi_weight`` x Parzen MI between each
input and its translation; ``mi_weight=0`` is the plain Cycle-GAN ablation), then the files:
``synthesis.safetensors`` (both generators, config in the metadata), ``synthesis.json``, ``train_log.csv``.

Evaluation needs the true CT of the MR anatomy, which only a phantom has: the pMR's label map rendered
with the case's pCT HU table, without texture or noise (:func:`true_ct_of_pmr`). The validation phantoms'
sCT MAE picks the kept state; held-out phantoms are scored by :func:`evaluate_synthesis`.

:class:`SynthesisRegistration` is stage (b): pMR -> sCT, then pCT registered to the sCT mono-modally (CT-CT,
ANTs SyN with CC); since the sCT lies on the pMR's grid, that field is pMR -> pCT.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from ..baselines.base import Registration, RegistrationResult, StageTimer, check_pair
from ..errors import MrctError
from ..image import Image
from ..metrics import dice
from ..phantom import PhantomCase, PhantomConfig, Tissue, generate_case
from ..phantom.ct import render_ct
from ..phantom.seeds import TRAIN_SEEDS, VALIDATION_SEEDS
from ..transforms import sample_image
from .ctct_registration import working_grid
from .run_files import write_run_files
from .synthesis import (
    PatchDiscriminator,
    SliceTranslator,
    ct_to_unit,
    lsgan_loss,
    mr_to_unit,
    parzen_mutual_information,
    translate_volume,
    unit_to_ct,
)

WEIGHTS_NAME = "synthesis.safetensors"
WEIGHTS_DIR = Path(__file__).parent / "weights"
COMMITTED = {"mi": WEIGHTS_DIR / "synthesis_mi.safetensors", "no-mi": WEIGHTS_DIR / "synthesis_no_mi.safetensors"}
BODY_HU = -500.0


class SynthesisConfigError(MrctError, ValueError):
    """A synthesis training configuration that cannot run."""


@dataclass(frozen=True)
class SynthesisTrainConfig:
    phantom_size: str = "ci"
    n_phantoms: int = 16  # MR slices from the first half of these training seeds, CT slices from the second
    n_validation_phantoms: int = 2
    slices_per_phantom: int = 16
    crop_px: int = 64
    batch_size: int = 4
    steps: int = 1200
    lr: float = 2e-4
    cycle_weight: float = 10.0
    mi_weight: float = 1.0  # 0: the plain Cycle-GAN (ablation)
    channels: int = 16
    residual_blocks: int = 4
    seed: int = 0
    validate_every: int = 250

    def __post_init__(self) -> None:
        if self.n_phantoms < 2 or self.n_phantoms > len(TRAIN_SEEDS):
            raise SynthesisConfigError(f"n_phantoms must be in 2..{len(TRAIN_SEEDS)} (half MR, half CT), "
                                       f"got {self.n_phantoms}")
        if self.crop_px % 8 or self.crop_px < 16:
            raise SynthesisConfigError(f"crop_px must be a multiple of 8 and >= 16, got {self.crop_px}")
        for name in ("steps", "batch_size", "validate_every", "slices_per_phantom", "n_validation_phantoms"):
            if getattr(self, name) < 1:
                raise SynthesisConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mi_weight < 0 or self.cycle_weight < 0 or not self.lr > 0:
            raise SynthesisConfigError("weights must be >= 0 and lr > 0")

    def phantom(self) -> PhantomConfig:
        return getattr(PhantomConfig, self.phantom_size)().with_(with_probe=False)

    def generators(self) -> tuple[SliceTranslator, SliceTranslator]:
        return (SliceTranslator(self.channels, self.residual_blocks), SliceTranslator(self.channels, self.residual_blocks))

    @classmethod
    def from_dict(cls, values: dict) -> SynthesisTrainConfig:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise SynthesisConfigError(f"unknown config field(s) {', '.join(unknown)}")
        return cls(**values)


TRAIN_PRESETS: dict[str, SynthesisTrainConfig] = {
    "tiny": SynthesisTrainConfig(phantom_size="tiny", n_phantoms=2, n_validation_phantoms=1, slices_per_phantom=6,
                                 crop_px=32, batch_size=2, steps=30, lr=1e-3, channels=8, residual_blocks=1,
                                 validate_every=10),
    "ci": SynthesisTrainConfig(),
    "ci-no-mi": SynthesisTrainConfig(mi_weight=0.0),
}


def true_ct_of_pmr(case: PhantomCase) -> np.ndarray:
    """HU of the pMR's anatomy as the pCT scanner would show it (no texture, no noise): the sCT's target."""
    labels = case.pmr_labels.array
    return render_ct(labels, case.pmr.grid, case.pct_appearance, np.zeros(labels.shape, np.float32),
                     np.random.default_rng(0), noise_hu=0.0)


def _body_slices(volume: np.ndarray, body: np.ndarray, n: int) -> np.ndarray:
    rows = np.flatnonzero(body.mean(axis=(1, 2)) >= 0.2)
    picks = np.unique(np.round(np.linspace(rows[0], rows[-1], min(n, rows.size))).astype(int))
    return volume[picks]


def _pad4(slices: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    return torch.nn.functional.pad(t, (0, -t.shape[3] % 4, 0, -t.shape[2] % 4), mode="replicate")


def unpaired_slices(config: SynthesisTrainConfig, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(MR slices, CT slices) [N, 1, H, W] in [0, 1] from disjoint training phantoms."""
    seeds = list(TRAIN_SEEDS[: config.n_phantoms])
    half = len(seeds) // 2
    mr, ct = [], []
    for i, seed in enumerate(tqdm(seeds, desc="synthesis slices", unit="case", disable=not progress)):
        case = generate_case(seed, config.phantom())
        if i < half:
            mr.append(_body_slices(mr_to_unit(case.pmr.array), case.pmr_labels.array > 0, config.slices_per_phantom))
        else:
            ct.append(_body_slices(ct_to_unit(case.pct.array), case.pct.array > BODY_HU, config.slices_per_phantom))
    return _pad4(np.concatenate(mr)), _pad4(np.concatenate(ct))


def _crops(slices: torch.Tensor, config: SynthesisTrainConfig, rng: np.random.Generator) -> torch.Tensor:
    h, w = slices.shape[2:]
    c = config.crop_px
    out = []
    for i in rng.integers(0, slices.shape[0], size=config.batch_size):
        y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
        out.append(slices[i, :, y : y + c, x : x + c])
    return torch.stack(out)


@dataclass(frozen=True)
class SynthesisScore:
    """One pMR volume translated to sCT, against the true CT of its anatomy, inside the body."""

    seed: int
    mae_hu: float
    bone_dice: float  # sCT > 300 HU vs the bone label
    fat_dice: float  # -300 < sCT < -30 HU vs the fat label
    mi_nats: float  # Parzen MI between the pMR and its sCT (structural coupling)


def score_synthesis(mr_to_ct: SliceTranslator, case: PhantomCase) -> SynthesisScore:
    mr_unit = mr_to_unit(case.pmr.array)
    sct = unit_to_ct(translate_volume(mr_to_ct, mr_unit))
    truth, labels = true_ct_of_pmr(case), case.pmr_labels.array
    body = labels > 0
    mi = float(parzen_mutual_information(torch.from_numpy(mr_unit[body])[None], torch.from_numpy(
        ct_to_unit(sct[body]).astype(np.float32))[None]))
    return SynthesisScore(case.seed, float(np.abs(sct - truth)[body].mean()), dice(sct > 300.0, labels == Tissue.BONE),
                          dice((sct > -300.0) & (sct < -30.0), labels == Tissue.FAT), mi)


@dataclass(frozen=True)
class SynthesisTrainResult:
    mr_to_ct: SliceTranslator
    ct_to_mr: SliceTranslator
    weights_path: Path
    best_val_mae_hu: float
    best_step: int
    seconds: float


def train_synthesis(config: SynthesisTrainConfig, out_dir: Path | str, progress: bool = True) -> SynthesisTrainResult:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 0])
    mr_slices, ct_slices = unpaired_slices(config, progress)
    val_cases = [generate_case(s, config.phantom()) for s in VALIDATION_SEEDS[: config.n_validation_phantoms]]

    g_mc, g_cm = config.generators()
    d_ct, d_mr = PatchDiscriminator(config.channels), PatchDiscriminator(config.channels)
    opt_g = torch.optim.Adam([*g_mc.parameters(), *g_cm.parameters()], lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*d_ct.parameters(), *d_mr.parameters()], lr=config.lr, betas=(0.5, 0.999))

    def validate() -> float:
        return float(np.mean([score_synthesis(g_mc, c).mae_hu for c in val_cases]))

    best, best_step = float("inf"), 0
    best_state: dict[str, torch.Tensor] = {}
    rows = []
    bar = tqdm(range(1, config.steps + 1), desc="synthesis", unit="step", disable=not progress)
    for step in bar:
        mr, ct = _crops(mr_slices, config, rng), _crops(ct_slices, config, rng)
        # generators: fool the critics, come back around the cycle, keep each input's structure (MI)
        fake_ct, fake_mr = g_mc(mr), g_cm(ct)
        adversarial = lsgan_loss(d_ct(fake_ct), True) + lsgan_loss(d_mr(fake_mr), True)
        cycle = (g_cm(fake_ct) - mr).abs().mean() + (g_mc(fake_mr) - ct).abs().mean()
        mi = parzen_mutual_information(mr, fake_ct) + parzen_mutual_information(ct, fake_mr)
        loss_g = adversarial + config.cycle_weight * cycle - config.mi_weight * mi
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        # critics: real vs the (detached) translations
        loss_d = 0.5 * (lsgan_loss(d_ct(ct), True) + lsgan_loss(d_ct(fake_ct.detach()), False)
                        + lsgan_loss(d_mr(mr), True) + lsgan_loss(d_mr(fake_mr.detach()), False))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        val = ""
        if step % config.validate_every == 0 or step == config.steps:
            val = validate()
            if val < best:
                best, best_step = val, step
                best_state = {**{f"mr_to_ct.{k}": v.detach().clone() for k, v in g_mc.state_dict().items()},
                              **{f"ct_to_mr.{k}": v.detach().clone() for k, v in g_cm.state_dict().items()}}
            bar.set_postfix(val_mae_hu=f"{val:.1f}", mi=f"{float(mi.detach()):.2f}")
        rows.append({"step": step, "loss_g": float(loss_g.detach()), "adversarial": float(adversarial.detach()),
                     "cycle": float(cycle.detach()), "mi": float(mi.detach()), "loss_d": float(loss_d.detach()),
                     "val_sct_mae_hu": val, "seconds": time.perf_counter() - start})

    seconds = time.perf_counter() - start
    figures = {"best_val_sct_mae_hu": best, "best_step": best_step, "seconds": seconds}
    weights_path, _, _, _ = write_run_files(
        out_dir, weights_name=WEIGHTS_NAME, config_name="synthesis.json", state=best_state, config=asdict(config),
        figures=figures, rows=rows,
    )
    g_mc, g_cm = load_synthesis(weights_path)[:2]
    return SynthesisTrainResult(g_mc, g_cm, weights_path, best, best_step, seconds)


def load_synthesis(path: Path | str) -> tuple[SliceTranslator, SliceTranslator, SynthesisTrainConfig]:
    """(MR -> CT generator, CT -> MR generator, config) saved by :func:`train_synthesis`, in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no synthesis weights at {path}; train them with `mrct-reg train synthesis`")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "config" not in metadata:
        raise SynthesisConfigError(f"{path} has no training config in its metadata")
    config = SynthesisTrainConfig.from_dict(json.loads(metadata["config"]))
    state = load_file(str(path))
    g_mc, g_cm = config.generators()
    g_mc.load_state_dict({k.removeprefix("mr_to_ct."): v for k, v in state.items() if k.startswith("mr_to_ct.")})
    g_cm.load_state_dict({k.removeprefix("ct_to_mr."): v for k, v in state.items() if k.startswith("ct_to_mr.")})
    return g_mc.eval(), g_cm.eval(), config


def evaluate_synthesis(mr_to_ct: SliceTranslator, seeds: list[int], phantom: PhantomConfig) -> list[SynthesisScore]:
    return [score_synthesis(mr_to_ct, generate_case(seed, phantom)) for seed in seeds]


class SynthesisRegistration:
    """Stage (b): pMR (moving) -> pCT (fixed) through the synthetic CT and a mono-modal CT-CT registration."""

    def __init__(self, mr_to_ct: SliceTranslator, mono: Registration, name: str,
                 pixel_mm: tuple[float, float] | None = None) -> None:
        self.mr_to_ct, self.mono, self.name, self.pixel_mm = mr_to_ct.eval(), mono, name, pixel_mm

    def synthesise(self, pmr: Image) -> Image:
        """The sCT on the pMR's grid. With ``pixel_mm`` (x, y), the generator sees slices resampled to the
        pixel size it was trained at (same box in space), and its output is resampled back."""
        grid = pmr.grid
        if self.pixel_mm is not None:
            extent = np.asarray(grid.spacing_mm[:2]) * np.asarray(grid.size_xyz[:2])
            nx, ny = (4 * np.maximum(1, np.round(extent / np.asarray(self.pixel_mm) / 4))).astype(int)
            grid = working_grid(pmr.grid, (pmr.grid.shape[0], int(ny), int(nx)))
        mr = pmr.array if grid is pmr.grid else sample_image(pmr, grid.physical_points(), order=1)
        sct = unit_to_ct(translate_volume(self.mr_to_ct, mr_to_unit(mr))).astype(np.float32)
        if grid is not pmr.grid:
            sct = sample_image(Image(sct, grid), pmr.grid.physical_points(), order=1, fill_value=-1000.0)
        return Image(sct.astype(np.float32), pmr.grid, {"Modality": "CT"})

    def register(self, fixed: Image, moving: Image) -> RegistrationResult:
        check_pair(fixed, moving)
        timer = StageTimer()
        with timer.stage("synthesise"):
            sct = self.synthesise(moving)
        mono = self.mono.register(fixed, sct)  # sCT shares the pMR's grid and anatomy: this is pMR -> pCT
        return RegistrationResult(self.name, mono.field, {**timer.seconds, **mono.stage_seconds})


def synthesis_table_markdown(scores_by_variant: dict[str, list[SynthesisScore]]) -> str:
    """One row per variant (e.g. with and without the MI term): mean ± sd over the cases."""
    lines = ["| variant | cases | sCT MAE in body (HU) | bone Dice on sCT | fat Dice on sCT | MI(pMR, sCT) (nats) |",
             "|---|---:|---:|---:|---:|---:|"]
    for variant, scores in scores_by_variant.items():
        cells = []
        for name in ("mae_hu", "bone_dice", "fat_dice", "mi_nats"):
            v = np.array([getattr(s, name) for s in scores])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f}" if name != "mae_hu"
                         else f"{v.mean():.1f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.1f}")
        lines.append(f"| {variant} | {len(scores)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
