"""Destination models, as written in the rules YAML under `destinations:`.

Two kinds: a DICOM peer reached by C-STORE (`kind: dimse`, the default) and a DICOMweb server reached
by STOW-RS (`kind: dicomweb`). Both say what the destination gets besides the stored bytes: the
classification written back into the copies (`writeback`, docs/writeback.md) and a Structured Report
(`structured_report`, docs/structured-report.md). A rule may override both for the destinations it
chooses (node.rules.ruleset.Rule.deliver); the route step freezes the result into the delivery plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from node.config import validate_ae_title


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WriteBack(_Frozen):
    """What the forwarded copies carry of the classification (docs/writeback.md)."""

    mode: Literal["none", "attributes"] = Field(
        "none",
        description="none: the bytes as stored; attributes: Body Part Examined and the node's private block",
    )
    body_part: Literal["if_empty", "overwrite"] = Field(
        "if_empty", description="set Body Part Examined only where it is empty, or always"
    )
    # Low-confidence or disputed answers are not written unless the destination asks for them.
    include_doubtful: bool = Field(
        False, description="write answers that are low-confidence or where prior and image disagree"
    )
    # New SOP Instance and Series Instance UIDs (mapped deterministically), the original referenced.
    derived_copy: bool = Field(False, description="send a derived copy with new instance and series UIDs")


class DeliveryOptions(_Frozen):
    """Per-rule override of what its destinations get (`deliver:` in a rule); unset fields keep the
    destination's own setting."""

    writeback: WriteBack | None = None
    structured_report: bool | None = None


class _DestinationBase(_Frozen):
    name: str
    writeback: WriteBack = Field(default_factory=WriteBack)
    structured_report: bool = Field(
        False, description="also send a DICOM SR with the classification, after the series"
    )

    def with_options(self, options: DeliveryOptions | None) -> _DestinationBase:
        """This destination with a rule's overrides applied."""
        if options is None:
            return self
        update: dict[str, object] = {}
        if options.writeback is not None:
            update["writeback"] = options.writeback
        if options.structured_report is not None:
            update["structured_report"] = options.structured_report
        return self.model_copy(update=update) if update else self

    @property
    def address(self) -> str:
        """Where the destination is, for messages: AE@host:port or the URL."""
        raise NotImplementedError


class DimseTls(_Frozen):
    """DICOM TLS to a C-STORE peer (docs/security.md, "DICOM TLS")."""

    verify: bool = Field(True, description="verify the peer's certificate and name (on unless switched off)")
    ca_file: Path | None = Field(
        None, description="PEM bundle of the CAs the peer's certificate must chain to; default: the system's"
    )
    cert_file: Path | None = Field(None, description="our client certificate (PEM), for peers that want one")
    key_file: Path | None = Field(None, description="its private key (PEM, unencrypted)")
    server_name: str | None = Field(
        None, description="the name the peer's certificate must carry; default: the destination's host"
    )

    @model_validator(mode="after")
    def _pair(self) -> DimseTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: cert_file and key_file go together")
        return self


class DimseDestination(_DestinationBase):
    """A DICOM peer reached by C-STORE."""

    kind: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    # Our AE title on associations to this peer; the node's own AE title when not set.
    calling_ae_title: str | None = None
    # Transfer syntaxes this peer may be offered, in order of preference. None: offer the stored
    # syntax first, then Explicit and Implicit VR Little Endian (decompressing when only those are accepted).
    transfer_syntaxes: list[str] | None = None
    tls: DimseTls | None = Field(None, description="DICOM TLS to this peer; absent: plain TCP")

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else validate_ae_title(v)

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" + (" (TLS)" if self.tls is not None else "")


class HttpAuth(_Frozen):
    """Credentials for a DICOMweb destination. Secrets are never written in the rules file: they are
    read from a file or an environment variable when the delivery runs, and never logged."""

    kind: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    token_file: Path | None = None
    token_env: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> HttpAuth:
        if self.kind == "basic":
            if not self.username:
                raise ValueError("basic auth needs username")
            if (self.password_file is None) == (self.password_env is None):
                raise ValueError("basic auth needs exactly one of password_file, password_env")
        if self.kind == "bearer" and (self.token_file is None) == (self.token_env is None):
            raise ValueError("bearer auth needs exactly one of token_file, token_env")
        return self


class DicomwebDestination(_DestinationBase):
    """A DICOMweb server reached by STOW-RS (PS3.18 10.5)."""

    kind: Literal["dicomweb"]
    # The service root, e.g. http://pacs:8042/dicom-web; instances are POSTed to {url}/studies.
    url: str = Field(pattern=r"^https?://")
    batch_size: int = Field(10, ge=1, le=1000, description="instances per STOW-RS request")
    timeout_seconds: float = Field(60.0, gt=0)
    auth: HttpAuth = Field(default_factory=HttpAuth)
    # TLS server verification is on unless switched off here; ca_bundle: a PEM file of trusted CAs.
    verify_tls: bool = True
    ca_bundle: Path | None = None

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        # A password in the URL would be shown wherever the destination is (plans, logs, audit).
        if "@" in v.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("no user or password in the url: use auth (password_file, token_env ...)")
        return v

    @property
    def address(self) -> str:
        return self.url


Destination = Annotated[DimseDestination | DicomwebDestination, Field(discriminator="kind")]
DESTINATION_KINDS: dict[str, type[_DestinationBase]] = {
    "dimse": DimseDestination,
    "dicomweb": DicomwebDestination,
}


def destination_from_json(data: object) -> DimseDestination | DicomwebDestination:
    """A destination from its JSON form (a plan, a rules file entry); `kind` defaults to dimse."""
    if not isinstance(data, dict):
        raise ValueError("no destination settings")
    kind = data.get("kind", "dimse")
    model = DESTINATION_KINDS.get(kind)
    if model is None:
        raise ValueError(f"unknown destination kind {kind!r} (known: {', '.join(DESTINATION_KINDS)})")
    result = model.model_validate({**data, "kind": kind})
    assert isinstance(result, DimseDestination | DicomwebDestination)
    return result
