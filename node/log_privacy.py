"""Keep patient data out of the log (docs/security.md `## Logs and patient data`).

pydicom checks values as it reads them and, in its default mode, reports a bad one with
`warnings.warn` and a WARNING on the "pydicom" logger that quote the value. A malformed data set's
value can run on over the elements after it: a "UID" that holds the Patient Name and ID, printed at
WARNING and on stderr. The node checks what it needs itself (node.uids, ingest) with messages that
do not quote such values, so pydicom's reading validation is switched off for the process.
"""

from __future__ import annotations

from pydicom import config as _pydicom_config


def install() -> None:
    """Process wide and idempotent; NodeService.start calls it."""
    _pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE


def installed() -> bool:
    return _pydicom_config.settings.reading_validation_mode == _pydicom_config.IGNORE
