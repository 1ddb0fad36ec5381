"""Instances -> volume: the spooled files of one series become a float32 HU array, or a reason why not.

Two passes. The header pass reads every file with `stop_before_pixels`, drops what is not part of one
image volume (unreadable files, non-image objects, non-CT, localizers, images without geometry), keeps the
largest group of slices that agree on size, pixel spacing and orientation, and sorts them along the slice
normal (row cosine x column cosine), dropping duplicate positions. The pixel pass then decodes each slice,
averages it down in-plane by an integer factor and writes it straight into a preallocated array, so a
full-resolution series is never held in memory. Multi-frame (Enhanced CT) objects contribute one slice per
frame, with geometry and rescale from the functional groups.

Bad input never raises: it gives a `NotClassifiable` with a code and one sentence, and every exclusion is
counted in the report. See docs/volume.md.
"""

from node.volume.assembly import assemble_series, volume_from_array
from node.volume.geometry import DUPLICATE_TOLERANCE_MM, GAP_FACTOR, ORIENTATION_TOLERANCE
from node.volume.headers import CT_MODALITY
from node.volume.model import MAX_EXAMPLES, NotClassifiable, Volume
from node.volume.pixels import AIR_HU, FRAMES_PER_TASK, downsample_factor

__all__ = [
    "AIR_HU",
    "CT_MODALITY",
    "DUPLICATE_TOLERANCE_MM",
    "FRAMES_PER_TASK",
    "GAP_FACTOR",
    "MAX_EXAMPLES",
    "ORIENTATION_TOLERANCE",
    "NotClassifiable",
    "Volume",
    "assemble_series",
    "downsample_factor",
    "volume_from_array",
]
