"""The learned pipeline (Wei et al. 2019): inpainting of the probe region (with its training and evaluation)
and the parts of the unsupervised registration network.

The training and evaluation modules (:mod:`.train_inpainting`, :mod:`.eval_inpainting`) are imported on use.
"""

from .inpaint_baselines import INPAINTING_BASELINES, biharmonic_inpaint, linear_interpolation_mar
from .inpaint_masks import METAL_THRESHOLD_HU, metal_hole_mask, synthetic_probe_mask
from .inpainting import inpaint_volume, network_inpainter
from .losses import InpaintingLossWeights, inpainting_loss
from .partial_conv import HU_SCALE, PartialConv2d, PartialConvUNet2d, denormalise_hu, normalise_hu
from .registration_net import (
    DiffeomorphicRegistrationNet,
    RegistrationUNet3d,
    SpatialTransformer3d,
    VecInt,
    gradient_smoothness_loss,
    local_ncc_loss,
)

__all__ = [
    "INPAINTING_BASELINES", "biharmonic_inpaint", "linear_interpolation_mar", "METAL_THRESHOLD_HU",
    "metal_hole_mask", "synthetic_probe_mask", "InpaintingLossWeights", "inpainting_loss", "HU_SCALE",
    "PartialConv2d", "PartialConvUNet2d", "denormalise_hu", "normalise_hu", "inpaint_volume",
    "network_inpainter", "DiffeomorphicRegistrationNet", "RegistrationUNet3d", "SpatialTransformer3d", "VecInt",
    "gradient_smoothness_loss", "local_ncc_loss",
]
