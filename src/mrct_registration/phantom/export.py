"""Write a phantom case to a folder: NIfTI images, label maps and ground-truth fields, landmark CSVs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io import write_image, write_sitk
from ..transforms import field_to_sitk
from .case import PhantomCase


def save_case(case: PhantomCase, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pmr", "pct", "ict", "ict_clean", "pmr_labels", "pct_labels", "ict_labels", "probe_mask"):
        write_image(getattr(case, name), folder / f"{name}.nii.gz")
    for name in ("pmr_to_pct", "pct_to_ict", "pmr_to_ict"):
        write_sitk(field_to_sitk(getattr(case, name)), folder / f"field_{name}.nii.gz")
    rows = []
    for image in ("pmr", "pct", "ict"):
        lm = getattr(case, f"{image}_landmarks")
        rows += [{"image": image, "name": n, "kind": k, "x_mm": p[0], "y_mm": p[1], "z_mm": p[2]}
                 for n, k, p in zip(lm.names, lm.kinds, lm.points_mm)]
    pd.DataFrame(rows).to_csv(folder / "landmarks.csv", index=False)
    meta = {
        "seed": case.seed,
        "convention": "field on the fixed grid, x_moving = x_fixed + u(x_fixed), mm, LPS; field_a_to_b: moving a, fixed b",
        "needle": None if case.needle is None else {"entry_mm": case.needle.entry_mm, "tip_mm": case.needle.tip_mm,
                                                     "radius_mm": case.needle.radius_mm},
        "tumour_contrast_hu": {"pct": case.pct_appearance.tumour_contrast_hu, "ict": case.ict_appearance.tumour_contrast_hu},
    }
    (folder / "case.json").write_text(json.dumps(meta, indent=2))
    return folder
