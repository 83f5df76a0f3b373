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

__all__ = [
    "BINARY_LABEL_VALUES",
    "BRATS_LABEL_VALUES",
    "SPLITS",
    "Case",
    "Manifest",
    "ManifestError",
    "load_manifest",
    "write_manifest",
]
