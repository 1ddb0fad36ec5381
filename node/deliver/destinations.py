"""Destination models, as written in the rules YAML under `destinations:`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from node.config import validate_ae_title


class DimseDestination(BaseModel):
    """A DICOM peer reached by C-STORE."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["dimse"] = "dimse"
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    # Our AE title on associations to this peer; the node's own AE title when not set.
    calling_ae_title: str | None = None
    # Transfer syntaxes this peer may be offered, in order of preference. None: offer the stored
    # syntax first, then Explicit and Implicit VR Little Endian (decompressing when only those are accepted).
    transfer_syntaxes: list[str] | None = None

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else validate_ae_title(v)


# A union with a "kind" discriminator once DICOMweb destinations exist.
Destination = DimseDestination
