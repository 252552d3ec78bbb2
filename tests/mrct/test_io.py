"""Medical image I/O keeps geometry: round trips, and real bundled files read as their own libraries read them."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from mrct_registration.errors import GeometryError, ImageFormatError
from mrct_registration.image import Grid, Image
from mrct_registration.io import read_image, write_dicom_series, write_image
from mrct_registration.phantom.motion import rotation_matrix

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
OBLIQUE = tuple(rotation_matrix(np.deg2rad([8.0, -4.0, 15.0])).ravel())


def _image(direction=OBLIQUE, dtype=np.float32) -> Image:
    grid = Grid((7, 9, 11), (0.8, 1.25, 3.5), (-12.5, 40.0, 7.25), direction)
    values = np.random.default_rng(0).normal(100.0, 30.0, grid.shape)
    return Image(values.astype(dtype), grid)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_sitk_formats_round_trip_values_spacing_origin_direction(tmp_path, suffix):
    image = _image()
    back = read_image(write_image(image, tmp_path / f"volume{suffix}"))
    assert back.grid.matches(image.grid, atol_mm=1e-4)
    assert np.allclose(back.array, image.array)


def test_dicom_series_round_trip_keeps_geometry_and_values_to_quantisation(tmp_path):
    image = _image()
    back = read_image(write_dicom_series(image, tmp_path / "series", modality="CT"))
    assert back.grid.matches(image.grid, atol_mm=1e-3)
    step = (image.array.max() - image.array.min()) / 65000.0
    assert np.abs(back.array - image.array).max() <= step


def test_our_dicom_series_reads_the_same_in_simpleitk(tmp_path):
    image = _image(dtype=np.int16)
    folder = write_dicom_series(image, tmp_path / "series", modality="MR")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    theirs = reader.Execute()
    assert np.allclose(theirs.GetSpacing(), image.grid.spacing_mm, atol=1e-4)
    assert np.allclose(theirs.GetOrigin(), image.grid.origin_mm, atol=1e-3)
    assert np.allclose(theirs.GetDirection(), image.grid.direction, atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(theirs), image.array)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_bundled_slices_read_with_rescale_and_patient_geometry(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert image.grid.shape == (1, ds.Rows, ds.Columns)
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    assert np.allclose(image.array[0], expected)
    assert np.allclose(image.grid.spacing_mm[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])])
    assert np.allclose(image.grid.origin_mm, [float(v) for v in ds.ImagePositionPatient])
    # and SimpleITK (GDCM) places the slice identically
    theirs = sitk.ReadImage(path)
    assert np.allclose(theirs.GetOrigin(), image.grid.origin_mm, atol=1e-4)
    assert np.allclose(theirs.GetSpacing()[:2], image.grid.spacing_mm[:2])


def test_nibabel_bundled_oblique_4d_nifti_volume_matches_nibabel_affine():
    path = NIBABEL_DATA / "example4d.nii.gz"
    with pytest.raises(GeometryError, match="volume"):
        read_image(path)
    image = read_image(path, volume=1)
    nii = nib.load(path)
    assert np.allclose(image.array, np.asarray(nii.dataobj[..., 1]).transpose(2, 1, 0))
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    affine_lps = ras_to_lps @ nii.affine[:3, :3]
    assert np.allclose(image.grid.index_to_physical_matrix, affine_lps, atol=1e-4)
    assert np.allclose(image.grid.origin_mm, ras_to_lps @ nii.affine[:3, 3], atol=1e-3)


def test_nibabel_bundled_anatomical_nifti_round_trips(tmp_path):
    image = read_image(NIBABEL_DATA / "anatomical.nii")
    assert image.grid.shape == (25, 41, 33) and np.allclose(image.grid.spacing_mm, 2.0)
    back = read_image(write_image(image, tmp_path / "a.nii.gz"))
    assert back.grid.matches(image.grid) and np.array_equal(back.array, image.array)


def test_missing_files_and_unknown_formats_raise_specific_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageFormatError):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(ImageFormatError):
        write_image(_image(), tmp_path / "volume.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFormatError):
        read_image(tmp_path / "empty")
