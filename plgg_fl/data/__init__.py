"""Site data: manifests, importers from the formats hospitals hold, and validation.

Nothing here knows about NVFlare or training. See :mod:`plgg_fl.data.manifest` for the format.
"""

from plgg_fl.data.manifest import (
    BINARY_LABEL_VALUES,
    BRATS_LABEL_VALUES,
    SPLITS,
    Case,
    Manifest,
    ManifestError,
    load_manifest,
    write_manifest,
)
from plgg_fl.data.importers import DataImportError, import_brats, import_nnunet, import_pairs
from plgg_fl.data.splits import load_split_file, make_splits, tumour_volume_ml
from plgg_fl.data.validate import CheckReport, Problem, check_manifest, usable_cases

__all__ = [
    "BINARY_LABEL_VALUES",
    "BRATS_LABEL_VALUES",
    "SPLITS",
    "Case",
    "Manifest",
    "ManifestError",
    "load_manifest",
    "write_manifest",
    "DataImportError",
    "import_brats",
    "import_nnunet",
    "import_pairs",
    "load_split_file",
    "make_splits",
    "tumour_volume_ml",
    "CheckReport",
    "Problem",
    "check_manifest",
    "usable_cases",
]
