# Copyright (c) monai-memorization contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Write volumes as DICOM series (one file per slice), as hospital PACS exports them.

MONAI reads such a folder with ``LoadImage`` (``PydicomReader`` treats a folder as one series).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["write_dicom_series"]


def write_dicom_series(
    volume: np.ndarray,
    folder: str | os.PathLike,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    modality: str = "CT",
    patient_id: str = "PHANTOM",
) -> Path:
    """Write a 3D volume ``[x, y, z]`` in RAS order as a DICOM series of axial slices.

    Positions and orientations are written in DICOM's LPS patient coordinates, so MONAI
    reads the series back, after ``Orientation("RAS")``, as the same array as the NIfTI
    written by :func:`monai_memorization.data.phantoms.write_image`.

    Args:
        volume: 3D array (CT in HU; other modalities are rescaled to unsigned 16 bit).
        folder: output folder (created); files are ``slice_0000.dcm`` ...
        spacing: voxel spacing in mm along x, y, z.
        modality: DICOM modality, ``"CT"`` or ``"MR"``.
        patient_id: PatientID written to every slice; UIDs derive from it deterministically.

    Returns:
        The folder.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"write_dicom_series needs a 3D volume, got shape {vol.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modality = modality.upper()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    if modality == "CT":
        pixels, slope, intercept, signed = np.round(vol).astype(np.int16), 1.0, 0.0, 1
    else:
        lo, hi = float(vol.min()), float(vol.max())
        slope = (hi - lo) / 65535.0 if hi > lo else 1.0
        pixels, intercept, signed = np.round((vol - lo) / slope).astype(np.uint16), lo, 0
    study = generate_uid(entropy_srcs=[patient_id, "study"])
    series = generate_uid(entropy_srcs=[patient_id, "series"])
    frame = generate_uid(entropy_srcs=[patient_id, "frame"])
    sx, sy, sz = (float(s) for s in spacing)
    origin = -0.5 * np.array([sx, sy, sz]) * (np.array(vol.shape) - 1)
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id, "slice", str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice_{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = modality
        ds.PatientID = ds.PatientName = patient_id
        ds.InstanceNumber = k + 1
        # the array is RAS (as the NIfTI writer stores it); DICOM patient coordinates are LPS
        ds.ImagePositionPatient = [float(-origin[0]), float(-origin[1]), float(origin[2] + k * sz)]
        ds.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        ds.PixelSpacing = [sy, sx]  # row spacing, column spacing
        ds.SliceThickness = sz
        ds.SpacingBetweenSlices = sz
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = signed
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        # the DICOM file format (preamble, file meta): pydicom 3's keyword; pydicom 2 (monailabel's pin) has the older one
        fmt = {"enforce_file_format": True} if int(pydicom.__version__.split(".")[0]) >= 3 else {"write_like_original": False}
        ds.save_as(folder / f"slice_{k:04d}.dcm", **fmt)
    return folder
