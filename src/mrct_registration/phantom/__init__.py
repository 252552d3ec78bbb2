"""Synthetic abdominal phantom with exact ground truth for pMR -> pCT -> iCT registration."""

from .anatomy import LIVER_LABELS, Anatomy, Tissue, sample_anatomy
from .case import PhantomCase, PhantomConfig, generate_case
from .seeds import HELD_OUT_SEEDS, TRAIN_SEEDS, VALIDATION_SEEDS, held_out_seeds, train_seeds

__all__ = [
    "LIVER_LABELS", "Anatomy", "Tissue", "sample_anatomy", "PhantomCase", "PhantomConfig", "generate_case",
    "HELD_OUT_SEEDS", "TRAIN_SEEDS", "VALIDATION_SEEDS", "held_out_seeds", "train_seeds",
]
