"""``<key>_seg.dcm``: the whole-tumour mask as a DICOM Segmentation over its source series (highdicom).

One BINARY segment, "Whole tumour": category Morphologically abnormal structure (SCT 49755003),
type Neoplasm (SCT 108369006), anatomic region Brain (SCT 12738006), algorithm type AUTOMATIC,
algorithm plgg-fl (its version; the model as a parameter). The SEG is a new series in the source's
study, with the source's Frame of Reference and patient; frame ``k`` references source slice ``k``
and carries its ImagePositionPatient, so Slicer, OHIF and a PACS place it over the scan. Every
source slice gets a frame, empty or not (an empty mask gives a valid SEG whose segment has no
voxel). The file is read back before it is moved into place and must give the mask again, slice by
slice through its references to the source images.

Arrays: the mask is ``(i, j, k)`` in SimpleITK's file voxel order (``i`` along DICOM columns, ``j``
along rows, ``k`` = slice, in the order of ``headers``); a DICOM frame is ``(rows, columns)``, so
the frames are ``mask.transpose(2, 1, 0)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from plgg_fl.predict.io import InputError, Scan, atomic_write

SEGMENT_LABEL = "Whole tumour"
SERIES_DESCRIPTION = "plgg-fl whole tumour"


def seg_source(scan: Scan) -> list[Any]:
    """The source headers of ``scan`` (pydicom, slice order), or :class:`InputError` if no SEG can be made over it."""
    from plgg_fl.predict.dicom_series import is_multiframe

    headers = scan.extra.get("dicom_headers")
    path = scan.source.path
    if not headers:
        raise InputError(path, "a DICOM SEG needs a DICOM series as input; drop --dicom-seg")
    if is_multiframe(headers):
        raise InputError(path, "multi-frame (enhanced) DICOM: no DICOM SEG is written for it; pass --no-dicom-seg for the NIfTI mask")
    if not headers[0].get("FrameOfReferenceUID"):
        raise InputError(path, "the series has no FrameOfReferenceUID, so a DICOM SEG could not be placed over it; "
                               "pass --no-dicom-seg for the NIfTI mask, or export the series with its full headers")
    return list(headers)


def segment_description(model_name: str) -> Any:
    """highdicom ``SegmentDescription`` of segment 1: whole tumour (Neoplasm), brain, AUTOMATIC by plgg-fl + ``model_name``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from plgg_fl import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="plgg-fl", family=codes.DCM.ArtificialIntelligence, version=__version__, source="plgg-fl",
        parameters={"model": model_name or "unknown"},
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Brain],
    )


def build_segmentation(mask: np.ndarray, headers: Sequence[Any], model_name: str) -> Any:
    """A highdicom ``Segmentation`` of ``mask`` ((i, j, k) uint8/bool, 1 = tumour) over ``headers`` (slice k = headers[k])."""
    import highdicom as hd

    from plgg_fl import __version__

    h0 = headers[0]
    if mask.shape != (int(h0.Columns), int(h0.Rows), len(headers)):
        raise ValueError(f"mask shape {mask.shape} != source (columns, rows, slices) {(h0.Columns, h0.Rows, len(headers))}")
    frames = np.ascontiguousarray((np.asarray(mask) > 0).astype(np.uint8).transpose(2, 1, 0))  # (slices, rows, columns)
    number = h0.get("SeriesNumber")
    return hd.seg.Segmentation(
        source_images=list(headers),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(model_name)],
        series_instance_uid=hd.UID(),
        series_number=1000 + (int(number) if number not in (None, "") else 0),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="plgg-fl",
        manufacturer_model_name="plgg-fl predict",
        software_versions=__version__,
        device_serial_number=(model_name or "unknown")[:64],
        content_label="WHOLE_TUMOUR",
        content_description=f"{SEGMENT_LABEL}, model {model_name or 'unknown'}"[:64],
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=False,  # one frame per source slice, also for an empty mask
    )


def check_seg(path: Path, mask: np.ndarray, headers: Sequence[Any], name: str | Path | None = None) -> None:
    """Raise ``RuntimeError`` (naming ``name``, default ``path``) unless the SEG at ``path`` gives ``mask`` back,
    slice by slice through its references to the source images, in their Frame of Reference."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    problems = []
    if seg.FrameOfReferenceUID != headers[0].FrameOfReferenceUID:
        problems.append(f"FrameOfReferenceUID {seg.FrameOfReferenceUID} != source {headers[0].FrameOfReferenceUID}")
    uids = [h.SOPInstanceUID for h in headers]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]  # (slices, rows, cols)
    if back.shape != (len(headers), mask.shape[1], mask.shape[0]) or not np.array_equal(back.transpose(2, 1, 0) > 0, mask > 0):
        problems.append("its frames do not give the mask back on the source slices")
    if problems:
        raise RuntimeError(f"{name or path}: written DICOM SEG is wrong: " + "; ".join(problems))


def write_dicom_seg(mask: np.ndarray, scan: Scan, path: str | Path, model_name: str = "", overwrite: bool = False) -> Path:
    """Write ``mask`` ((i, j, k), ``scan.shape``) as a DICOM SEG over ``scan``'s source series, atomically and checked."""
    headers = seg_source(scan)
    seg = build_segmentation(mask, headers, model_name)
    return atomic_write(path, lambda tmp: seg.save_as(str(tmp)), overwrite=overwrite, check=lambda tmp: check_seg(tmp, mask, headers, path))
