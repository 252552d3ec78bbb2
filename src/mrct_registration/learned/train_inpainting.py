"""Self-supervised training of the partial-convolution inpainting U-Net (Wei et al. 2019, Sec. 2.2).

The network never sees a probe during training: it learns to fill synthetic needle-and-streak holes
(:func:`.inpaint_masks.synthetic_probe_mask`) drawn on artifact-free pCT slices, whose true values are known.
At test time it fills the metal hole of the iCT (:func:`.inpaint_masks.metal_hole_mask`).

One file, read top to bottom as it runs (CleanRL style): the config, the data (slices of phantom pCT
volumes in normalised HU), the training loop (Adam, a fresh seeded mask per sample and step, validation
hole-L1 every ``validate_every`` steps, the best state kept), then the files it writes:

* ``inpainting_unet.safetensors``: the best state dict, with the config in its metadata;
* ``inpainting_unet.json``: the config and the figures of the run;
* ``train_log.csv``: one row per step (loss terms; validation hole L1 at validation steps);
* ``loss_curve.png``: training and validation hole L1 (HU) against the step.

:func:`load_inpainter` restores the network from the ``.safetensors`` file (or its folder); the weights of
the ``ci`` preset are committed at :data:`COMMITTED_WEIGHTS`.
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

from ..errors import MrctError
from ..phantom import PhantomConfig, generate_case
from ..phantom.seeds import TRAIN_SEEDS, VALIDATION_SEEDS
from .inpaint_masks import synthetic_probe_mask
from .losses import hole_l1, inpainting_loss
from .partial_conv import HU_SCALE, PartialConvUNet2d, normalise_hu
from .run_files import write_run_files

WEIGHTS_NAME = "inpainting_unet.safetensors"
CONFIG_NAME = "inpainting_unet.json"
LOG_NAME = "train_log.csv"
CURVE_NAME = "loss_curve.png"
# from `mrct-reg train inpainting --preset ci --eval-cases 20 --out DIR` (weights, config, curve, eval table)
COMMITTED_WEIGHTS = Path(__file__).parent / "weights" / WEIGHTS_NAME
PHANTOM_SIZES = ("tiny", "small", "ci", "large")
BODY_THRESHOLD_HU = -500.0  # pixels above this are tissue, below it air
MIN_BODY_FRACTION = 0.2  # slices with less tissue than this (the ends of the volume) are not used


class TrainConfigError(MrctError, ValueError):
    """An inpainting training configuration that cannot run (sizes, counts or rates out of range)."""


class InpainterWeightsError(MrctError, ValueError):
    """A weights file that is not one written by :func:`train_inpainting`."""


@dataclass(frozen=True)
class InpaintTrainConfig:
    """Everything a training run depends on; the same config gives the same weights (on the same machine)."""

    phantom_size: str = "ci"  # a PhantomConfig preset: tiny, small, ci or large
    n_train_phantoms: int = 16  # the first n of TRAIN_SEEDS
    n_validation_phantoms: int = 2  # the first n of VALIDATION_SEEDS
    slices_per_phantom: int = 24  # axial pCT slices per phantom, evenly spaced over the body
    crop_px: int = 64  # square training crop (pixels); validation uses the centred crop
    batch_size: int = 8
    steps: int = 3000
    lr: float = 1e-3
    seed: int = 0
    base_channels: int = 16  # U-Net width
    depth: int = 3  # U-Net levels; crop_px must be divisible by 2**depth
    validate_every: int = 100

    def __post_init__(self) -> None:
        if self.phantom_size not in PHANTOM_SIZES:
            raise TrainConfigError(f"phantom_size must be one of {', '.join(PHANTOM_SIZES)}, got {self.phantom_size!r}")
        if not 1 <= self.n_train_phantoms <= len(TRAIN_SEEDS):
            raise TrainConfigError(f"n_train_phantoms must be in 1..{len(TRAIN_SEEDS)}, got {self.n_train_phantoms}")
        if not 1 <= self.n_validation_phantoms <= len(VALIDATION_SEEDS):
            raise TrainConfigError(f"n_validation_phantoms must be in 1..{len(VALIDATION_SEEDS)}, "
                                   f"got {self.n_validation_phantoms}")
        for name in ("slices_per_phantom", "batch_size", "steps", "base_channels", "depth", "validate_every"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise TrainConfigError(f"lr must be > 0, got {self.lr}")
        step = 2**self.depth
        slice_px = min(self.phantom().ct_shape_xyz[:2])
        if self.crop_px % step or not step <= self.crop_px <= slice_px:
            raise TrainConfigError(f"crop_px must be a multiple of {step} (2**depth) between {step} and the "
                                   f"{slice_px}-pixel slice of the {self.phantom_size} phantom, got {self.crop_px}")

    def phantom(self) -> PhantomConfig:
        # no probe: training slices come from the artifact-free pCT, and the needle is not needed for it
        return getattr(PhantomConfig, self.phantom_size)().with_(with_probe=False)

    @classmethod
    def from_dict(cls, values: dict) -> InpaintTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainConfigError(f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


TRAIN_PRESETS: dict[str, InpaintTrainConfig] = {
    # seconds on 2 CPU cores: the tests' run
    "tiny": InpaintTrainConfig(phantom_size="tiny", n_train_phantoms=2, n_validation_phantoms=1, slices_per_phantom=8,
                               crop_px=32, batch_size=4, steps=80, lr=3e-3, base_channels=8, depth=2,
                               validate_every=20),
    # the committed weights (COMMITTED_WEIGHTS): about 2 minutes on 2 CPU cores
    "ci": InpaintTrainConfig(phantom_size="ci", n_train_phantoms=12, n_validation_phantoms=2, slices_per_phantom=24,
                             crop_px=64, batch_size=8, steps=4000, lr=1e-3, base_channels=16, depth=3,
                             validate_every=200),
}


@dataclass(frozen=True)
class InpaintTrainResult:
    """The best network (eval mode), where the run wrote its files, and its validation hole L1 (HU) before
    training and at its best."""

    network: PartialConvUNet2d
    weights_path: Path
    config_path: Path
    log_path: Path
    curve_path: Path
    initial_val_hole_l1_hu: float
    best_val_hole_l1_hu: float
    best_step: int
    seconds: float


def body_slices(pct_hu: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` axial slices (n, ny, nx) of a pCT volume (nz, ny, nx), evenly spaced over those with tissue."""
    body = np.flatnonzero((pct_hu > BODY_THRESHOLD_HU).mean(axis=(1, 2)) >= MIN_BODY_FRACTION)
    if body.size == 0:
        raise TrainConfigError("the pCT volume has no slice with tissue; check the phantom preset")
    picks = np.unique(np.round(np.linspace(body[0], body[-1], min(n, body.size))).astype(int))
    return pct_hu[picks]


def pct_slices(seeds: list[int], config: InpaintTrainConfig) -> torch.Tensor:
    """Normalised-HU body slices of the pCTs of ``seeds``: (n_slices, 1, ny, nx) float32."""
    phantom = config.phantom()
    slices = [body_slices(generate_case(seed, phantom).pct.array, config.slices_per_phantom) for seed in seeds]
    return normalise_hu(torch.from_numpy(np.concatenate(slices).astype(np.float32)))[:, None]


def random_batch(slices: torch.Tensor, config: InpaintTrainConfig, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, valid), each (batch, 1, crop, crop): random slices, crops and flips, one fresh hole per sample."""
    ny, nx = slices.shape[2:]
    crop = config.crop_px
    targets, valids = [], []
    for index in rng.integers(0, slices.shape[0], size=config.batch_size):
        y0, x0 = rng.integers(0, ny - crop + 1), rng.integers(0, nx - crop + 1)
        patch = slices[index, :, y0 : y0 + crop, x0 : x0 + crop]
        flips = [d for d, flip in zip((1, 2), rng.random(2) < 0.5) if flip]
        targets.append(patch.flip(flips) if flips else patch)
        valids.append(torch.from_numpy(~synthetic_probe_mask((crop, crop), rng))[None].float())
    return torch.stack(targets), torch.stack(valids)


def validation_batch(slices: torch.Tensor, config: InpaintTrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, valid): the centred crop of every validation slice with a fixed hole (seeded by the config)."""
    ny, nx = slices.shape[2:]
    crop = config.crop_px
    y0, x0 = (ny - crop) // 2, (nx - crop) // 2
    rng = np.random.default_rng([config.seed, 1])  # a stream of its own: independent of the training masks
    valid = np.stack([~synthetic_probe_mask((crop, crop), rng) for _ in range(slices.shape[0])])
    return slices[:, :, y0 : y0 + crop, x0 : x0 + crop].clone(), torch.from_numpy(valid)[:, None].float()


def validation_hole_l1_hu(net: PartialConvUNet2d, target: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean absolute error (HU) over the hole pixels of the validation batch, the input hidden under the hole."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        value = float(hole_l1(net(target * valid, valid), target, valid)) * HU_SCALE
    net.train(was_training)
    return value


def train_inpainting(config: InpaintTrainConfig, out_dir: Path | str, progress: bool = True) -> InpaintTrainResult:
    """Train the U-Net on ``config``, write weights, config, CSV log and loss curve to ``out_dir``."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 0])

    # data: artifact-free pCT slices; training and validation phantoms come from disjoint seed ranges
    train_slices = pct_slices(list(TRAIN_SEEDS[: config.n_train_phantoms]), config)
    val_target, val_valid = validation_batch(pct_slices(list(VALIDATION_SEEDS[: config.n_validation_phantoms]),
                                                        config), config)

    net = PartialConvUNet2d(base_channels=config.base_channels, depth=config.depth)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    initial = best = validation_hole_l1_hu(net, val_target, val_valid)
    best_step, best_state = 0, {k: v.detach().clone() for k, v in net.state_dict().items()}
    rows = [{"step": 0, "loss": "", "hole_l1_hu": "", "total_variation": "", "gradient": "",
             "val_hole_l1_hu": initial, "seconds": time.perf_counter() - start}]

    bar = tqdm(range(1, config.steps + 1), desc="inpainting", unit="step", disable=not progress)
    for step in bar:
        target, valid = random_batch(train_slices, config, rng)
        # the hole's values are hidden from the input, so nothing can leak through (partial convs ignore them)
        output = net(target * valid, valid)
        loss, terms = inpainting_loss(output, target, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        val = ""
        if step % config.validate_every == 0 or step == config.steps:
            val = validation_hole_l1_hu(net, val_target, val_valid)
            if val < best:
                best, best_step = val, step
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val_hu=f"{val:.1f}", best_hu=f"{best:.1f}")
        rows.append({"step": step, "loss": float(loss.detach()), "hole_l1_hu": terms["hole"] * HU_SCALE,
                     "total_variation": terms["total_variation"], "gradient": terms["gradient"],
                     "val_hole_l1_hu": val, "seconds": time.perf_counter() - start})

    # files: the best state (not the last), the config with the run's figures, the log and the curve
    seconds = time.perf_counter() - start
    figures = {"initial_val_hole_l1_hu": initial, "best_val_hole_l1_hu": best, "best_step": best_step,
               "seconds": seconds}
    weights_path, config_path, log_path, curve_path = write_run_files(
        out_dir, weights_name=WEIGHTS_NAME, config_name=CONFIG_NAME, state=best_state, config=asdict(config),
        figures=figures, rows=rows, log_name=LOG_NAME, curve_name=CURVE_NAME, plot=_plot_loss_curve,
    )
    net.load_state_dict(best_state)
    return InpaintTrainResult(net.eval(), weights_path, config_path, log_path, curve_path, initial, best, best_step,
                              seconds)


def _plot_loss_curve(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["hole_l1_hu"]) for r in rows if r["hole_l1_hu"] != ""]
    val = [(r["step"], r["val_hole_l1_hu"]) for r in rows if r["val_hole_l1_hu"] != ""]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="training hole L1 (random holes)")
    ax.plot(*zip(*val), "o-", label="validation hole L1 (fixed holes)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean |error| in the hole (HU)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_inpainter(path: Path | str) -> PartialConvUNet2d:
    """The network saved by :func:`train_inpainting`, in eval mode; ``path`` is the file or its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no inpainting weights at {path}; train them with `mrct-reg train inpainting`")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "config" not in metadata:
        raise InpainterWeightsError(f"{path} has no training config in its metadata; it was not written by "
                                    "train_inpainting")
    config = InpaintTrainConfig.from_dict(json.loads(metadata["config"]))
    net = PartialConvUNet2d(base_channels=config.base_channels, depth=config.depth)
    net.load_state_dict(load_file(str(path)))
    return net.eval()
