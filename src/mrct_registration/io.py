"""Reading and writing medical images with their geometry (spacing, origin, direction) intact.

NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd) and NRRD (.nrrd, .nhdr) go through SimpleITK, which converts
NIfTI's RAS affine to the LPS convention of :mod:`mrct_registration.image`. DICOM series are read and
written with pydicom so that the geometry tags (ImagePositionPatient, ImageOrientationPatient,
PixelSpacing) are handled explicitly here, slice by slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .errors import GeometryError, ImageFormatError
from .image import Grid, Image

SITK_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".ima")
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


# ---------------------------------------------------------------------------------------------- SimpleITK


def from_sitk(image: sitk.Image) -> Image:
    """A 2D or 3D scalar SimpleITK image -> :class:`Image` (a 2D image becomes one slice, 1 mm thick)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageFormatError(f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components")
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 2:
        d = np.asarray(image.GetDirection()).reshape(2, 2)
        direction = np.eye(3)
        direction[:2, :2] = d
        grid = Grid(
            (1, *array.shape), (*image.GetSpacing(), 1.0), (*image.GetOrigin(), 0.0), tuple(direction.ravel())
        )
        return Image(array[None], grid)
    if image.GetDimension() != 3:
        raise GeometryError(f"expected a 2D or 3D image, got {image.GetDimension()}D")
    return Image(array, Grid(array.shape, image.GetSpacing(), image.GetOrigin(), image.GetDirection()))


def grid_to_sitk_reference(grid: Grid, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    ref = sitk.Image(list(grid.size_xyz), pixel_type)
    ref.SetSpacing(grid.spacing_mm)
    ref.SetOrigin(grid.origin_mm)
    ref.SetDirection(grid.direction)
    return ref


def _itk_message(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages start with the source location; the useful part is the last non-empty line
    return lines[-1] if lines else type(exc).__name__


def read_sitk(path: str | Path, pixel_type: int = sitk.sitkUnknown) -> sitk.Image:
    """``sitk.ReadImage`` with a clear :class:`ImageFormatError` naming the file when it cannot be read."""
    try:
        return sitk.ReadImage(str(path), pixel_type)
    except RuntimeError as exc:
        raise ImageFormatError(f"cannot read {path} as an image (corrupt or unsupported file): {_itk_message(exc)}") from exc


def write_sitk(image: sitk.Image, path: str | Path) -> Path:
    """``sitk.WriteImage`` by suffix (checked first) with a clear :class:`ImageFormatError` naming the file."""
    path = Path(path)
    check_output_path(path, allow_dicom=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sitk.WriteImage(image, str(path))
    except RuntimeError as exc:
        raise ImageFormatError(f"cannot write an image to {path}: {_itk_message(exc)}") from exc
    return path


def check_output_path(path: str | Path, allow_dicom: bool = True) -> Path:
    """Raise :class:`ImageFormatError` unless ``path`` has a suffix :func:`write_image` can write (or, with
    ``allow_dicom``, no suffix: a DICOM series folder). Call it before expensive work."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in SITK_SUFFIXES or (allow_dicom and suffix == ""):
        return path
    folder = " or a folder (DICOM series)" if allow_dicom else ""
    raise ImageFormatError(f"unknown image format {suffix!r} for {path}; use one of {', '.join(SITK_SUFFIXES)}{folder}")


def to_sitk(image: Image) -> sitk.Image:
    out = sitk.GetImageFromArray(np.ascontiguousarray(image.array))
    out.SetSpacing(image.grid.spacing_mm)
    out.SetOrigin(image.grid.origin_mm)
    out.SetDirection(image.grid.direction)
    return out


# ---------------------------------------------------------------------------------------------- public API


def read_image(path: str | Path, volume: int | None = None) -> Image:
    """Read a 3D image (or one ``volume`` of a 4D NIfTI) from NIfTI/MHA/NRRD, a DICOM file or a DICOM folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no image at {path}")
    if path.is_dir():
        return read_dicom_series(path)
    suffix = _suffix(path)
    if suffix in DICOM_SUFFIXES:
        return read_dicom_series([path])
    if suffix not in SITK_SUFFIXES:
        raise ImageFormatError(f"unknown image format {suffix!r} for {path}; use one of {SITK_SUFFIXES + DICOM_SUFFIXES}")
    image = read_sitk(path)
    if image.GetDimension() == 4:
        if volume is None:
            raise GeometryError(f"{path} is 4D ({image.GetSize()}); pass volume=<index> to pick one 3D volume")
        size = list(image.GetSize())
        if not 0 <= volume < size[3]:
            raise GeometryError(f"volume {volume} out of range for {size[3]} volumes in {path}")
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, volume])
    return from_sitk(image)


def write_image(image: Image, path: str | Path) -> Path:
    """Write NIfTI/MHA/NRRD by suffix; a path without a known suffix is written as a DICOM series folder."""
    path = check_output_path(path)
    if _suffix(path) in SITK_SUFFIXES:
        return write_sitk(to_sitk(image), path)
    return write_dicom_series(image, path)


# ---------------------------------------------------------------------------------------------- DICOM


def read_dicom_series(source: Path | list[Path], series_uid: str | None = None) -> Image:
    """Read one DICOM series (folder or list of files) into an :class:`Image` in LPS mm.

    Slices are ordered along the normal of ImageOrientationPatient; the slice spacing is the distance
    between consecutive ImagePositionPatient values (SliceThickness for a single slice). Pixel values are
    rescaled with RescaleSlope/RescaleIntercept.
    """
    files = sorted(p for p in Path(source).iterdir() if p.is_file()) if isinstance(source, Path) else list(source)
    datasets = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except pydicom.errors.InvalidDicomError:
            continue
        if "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise ImageFormatError(f"no DICOM image files in {source}")
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if series_uid is None and len(uids) > 1:
        raise ImageFormatError(f"{source} holds {len(uids)} series; pass series_uid= one of {uids}")
    if series_uid is not None:
        datasets = [ds for ds in datasets if str(ds.get("SeriesInstanceUID", "")) == series_uid]
        if not datasets:
            raise ImageFormatError(f"series {series_uid} not found in {source}")
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in datasets[0]:
            raise ImageFormatError(f"DICOM file lacks {tag}; cannot place it in physical space")
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in datasets])
    order = np.argsort(positions @ normal)
    datasets = [datasets[i] for i in order]
    positions = positions[order]
    if len(datasets) > 1:
        steps = np.diff(positions @ normal)
        if np.any(steps < 1e-6):
            raise GeometryError(f"DICOM series in {source} has duplicate slice positions")
        if np.ptp(steps) > 1e-2 * np.mean(steps) + 1e-3:
            raise GeometryError(f"DICOM series in {source} has uneven slice spacing {steps.min():.3f}..{steps.max():.3f} mm")
        dz = float(np.mean(steps))
    else:
        dz = float(datasets[0].get("SliceThickness", 1.0) or 1.0)
    slices = []
    for ds in datasets:
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # pydicom raises several types for truncated or unsupported pixel data
            raise ImageFormatError(f"cannot decode the pixel data of {ds.filename or source}: {exc}") from exc
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
        slices.append(pixels * slope + intercept)
    array = np.stack(slices, axis=0)
    pixel_spacing = [float(v) for v in datasets[0].PixelSpacing]  # (between rows, between columns)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    grid = Grid(array.shape, (pixel_spacing[1], pixel_spacing[0], dz), tuple(positions[0]), tuple(direction.ravel()))
    meta = {"Modality": str(datasets[0].get("Modality", "")), "SeriesInstanceUID": str(datasets[0].get("SeriesInstanceUID", ""))}
    return Image(array, grid, meta)


def write_dicom_series(image: Image, folder: str | Path, modality: str = "CT", series_description: str = "") -> Path:
    """Write a volume as one DICOM file per axial slice (int16 with RescaleSlope/Intercept)."""
    if modality not in ("CT", "MR"):
        raise ImageFormatError(f"modality must be 'CT' or 'MR', got {modality!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = np.asarray(image.array, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    integral = np.allclose(values, np.round(values)) and lo >= -32768 and hi <= 32767
    slope, intercept = (1.0, 0.0) if integral else (max(hi - lo, 1e-6) / 65000.0, (hi + lo) / 2.0)
    stored = np.round((values - intercept) / slope).astype(np.int16)
    d = image.grid.direction_matrix
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    sop_class = _CT_IMAGE_STORAGE if modality == "CT" else _MR_IMAGE_STORAGE
    for k in range(image.grid.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientID = "PHANTOM"
        ds.PatientName = "Phantom^Synthetic"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesDescription = series_description
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in image.grid.index_to_physical([0.0, 0.0, float(k)])]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{image.grid.spacing_mm[1]:.6f}", f"{image.grid.spacing_mm[0]:.6f}"]
        ds.SliceThickness = f"{image.grid.spacing_mm[2]:.6f}"
        ds.SpacingBetweenSlices = f"{image.grid.spacing_mm[2]:.6f}"
        ds.Rows, ds.Columns = image.grid.shape[1], image.grid.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.save_as(str(folder / f"slice_{k:04d}.dcm"), enforce_file_format=True)
    return folder
