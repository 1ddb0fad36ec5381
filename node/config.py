"""Typed settings. Loaded once (YAML file or defaults) and passed explicitly; no module globals."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node.errors import ConfigError
from node.yaml_lines import LineDict, load_yaml, yaml_error_line
from node.yaml_problems import (
    Problem,
    describe_all,
    did_you_mean,
    field_path,
    keys_at,
    kind_of,
    locate,
    unknown_key,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedCaller(_Strict):
    """One entry of the calling-AE allow-list. `host` None means any host."""

    ae_title: str
    host: str | None = None


class TlsReceiveSettings(_Strict):
    """DICOM TLS on the SCP (PS3.15 Annex B; docs/security.md, "DICOM TLS"): a listener of its own,
    beside the plain one or instead of it."""

    # 2762 is the port IANA registered for DICOM over TLS (dicom-tls).
    port: int = Field(2762, ge=0, le=65535)
    # The node's certificate (PEM, the chain after it) and its private key (PEM, unencrypted).
    cert_file: Path
    key_file: Path
    # CAs (PEM bundle) that client certificates must chain to; needed to verify clients at all.
    ca_file: Path | None = None
    # True: a client without a valid certificate is refused during the handshake (mutual TLS).
    require_client_cert: bool = False
    # True: no plain listener; receive.port is not opened.
    tls_only: bool = False
    # Client certificate subject (its CN, or the full subject as `openssl x509 -noout -subject
    # -nameopt RFC2253` prints it) -> the calling AE titles it may use. Empty: no subject check.
    client_ae_titles: dict[str, list[str]] = {}

    @field_validator("client_ae_titles")
    @classmethod
    def _titles_valid(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for subject, titles in v.items():
            if not subject.strip():
                raise ValueError("an empty certificate subject")
            if not titles:
                raise ValueError(f"subject {subject!r} has no calling AE titles")
        return {subject.strip(): [validate_ae_title(t) for t in titles] for subject, titles in v.items()}

    @model_validator(mode="after")
    def _verifiable(self) -> TlsReceiveSettings:
        if self.ca_file is None and (self.require_client_cert or self.client_ae_titles):
            needs = "require_client_cert" if self.require_client_cert else "client_ae_titles"
            raise ValueError(f"{needs} needs ca_file (the CAs that client certificates must chain to)")
        return self


class ReceiveSettings(_Strict):
    ae_title: str = "NODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    # Empty list: any calling AE title is accepted.
    allowed_callers: list[AllowedCaller] = []
    # What to do when a SOP Instance UID arrives again with different bytes.
    duplicate_policy: Literal["replace", "keep_first"] = "replace"
    # A replacement (same SOP Instance UID, other bytes) from another calling AE title or host than the
    # sender of the stored instance: refused with 0x0124 (default), quarantined (acknowledged, kept
    # aside, not forwarded) or allowed (replaced as from the same sender). docs/receiving.md.
    replacement_from_other_sender: Literal["refuse", "quarantine", "allow"] = "refuse"
    # Largest instance accepted (bytes); larger ones get 0xA700 and an audit row.
    max_instance_bytes: int = Field(2 * 1024**3, gt=0)
    # The receive fast path keeps an instance in memory up to this size; a larger one is written to a
    # temporary file in the spool as its fragments arrive (memory per association stays bounded).
    spill_to_disk_bytes: int = Field(32 * 1024**2, gt=0)
    # Stores are refused (0xA700, nothing written) while the spool's file system would keep less than
    # this free; they are accepted again as soon as space returns. 0: no floor.
    min_free_disk_bytes: int = Field(1024**3, ge=0)
    # SQLite: how long a store waits for the database's write lock (another process or a long transaction
    # holding it) before it is refused with 0xA700; well below a sender's own DIMSE timeout (often 30 s).
    database_wait_seconds: float = Field(10.0, gt=0)
    # AE titles the node answers to besides ae_title (A-ASSOCIATE-RQ's called AE title).
    called_ae_titles: list[str] = []
    # False: any called AE title is accepted (for sites whose modalities send to a wrong one).
    check_called_ae: bool = True
    max_associations: int = Field(16, gt=0)
    # Open connections from one IP address, negotiated or not; more are closed at once.
    max_associations_per_host: int = Field(8, gt=0)
    # The maximum PDU length the node advertises and accepts: a P-DATA-TF PDU longer than this is
    # aborted before it is read. 1 MiB takes a 512x512 CT image in one PDU (docs/receiving.md).
    max_pdu_bytes: int = Field(1024 * 1024, ge=4096, le=64 * 1024 * 1024)
    # A connection must have sent a complete A-ASSOCIATE-RQ this long after it opened (the ARTIM
    # timer, PS3.8 9.1.5), or it is closed.
    negotiation_timeout: float = Field(10.0, gt=0)
    dimse_timeout: float = 30.0
    # An association idle this long is aborted; a PDU that has started must arrive in full within it.
    network_timeout: float = Field(60.0, gt=0)
    # An established association open longer than this is aborted (audited); 0: no limit.
    max_association_seconds: float = Field(3600.0, ge=0)
    # pynetdicom polls its sockets with a sleep per loop; see node/pynetdicom_tuning.py.
    poll_delay_seconds: float = Field(0.0001, ge=0.0, le=0.01)
    # C-STORE data read and answered below pynetdicom's DIMSE layer (node/receive/wire.py); false:
    # every request goes through pynetdicom (slower; the same checks and answers).
    fast_path: bool = True
    # DICOM TLS (docs/security.md); None: no TLS listener.
    tls: TlsReceiveSettings | None = None

    @model_validator(mode="after")
    def _ports_differ(self) -> ReceiveSettings:
        tls = self.tls
        if tls is not None and not tls.tls_only and tls.port == self.port and self.port != 0:
            raise ValueError(f"tls.port {tls.port} is receive.port too: give TLS its own port, or tls_only")
        return self

    @field_validator("ae_title")
    @classmethod
    def _ae_title_valid(cls, v: str) -> str:
        return validate_ae_title(v)

    @field_validator("called_ae_titles")
    @classmethod
    def _called_ae_titles_valid(cls, v: list[str]) -> list[str]:
        return [validate_ae_title(title) for title in v]

    @property
    def answers_to(self) -> frozenset[str]:
        """The called AE titles the node accepts: ae_title and called_ae_titles."""
        return frozenset([self.ae_title, *self.called_ae_titles])


class CompletionSettings(_Strict):
    # A series is complete after this long without a new instance.
    quiet_seconds: float = Field(30.0, gt=0)
    # If set, an instance carrying this attribute (e.g. ImagesInAcquisition) gives the expected
    # instance count; the series completes as soon as that many distinct instances are stored.
    expected_count_attribute: str | None = None


class ForwardSettings(_Strict):
    workers: int = Field(2, ge=1, le=32)
    max_attempts: int = Field(6, ge=1)
    backoff_initial_seconds: float = Field(10.0, ge=0)
    backoff_factor: float = Field(2.0, ge=1.0)
    backoff_max_seconds: float = Field(600.0, ge=0)
    # Short on purpose: a lost C-STORE response (pynetdicom issue #875) must not hold a series long.
    dimse_timeout: float = Field(10.0, gt=0)
    acse_timeout: float = Field(10.0, gt=0)
    network_timeout: float = Field(30.0, gt=0)
    # How many times one delivery attempt re-opens an association after a stall before failing.
    stall_retries: int = Field(2, ge=0)


class RouteSettings(_Strict):
    """Retries of the route step (read the series, classify, decide, queue deliveries) when it fails."""

    max_attempts: int = Field(4, ge=1)
    backoff_initial_seconds: float = Field(10.0, ge=0)
    backoff_factor: float = Field(2.0, ge=1.0)
    backoff_max_seconds: float = Field(600.0, ge=0)


class HealthSettings(_Strict):
    """The health monitor (docs/operations.md): worker liveness, written to <data_dir>/health.json."""

    # How often the monitor checks the workers and rewrites the health file.
    interval_seconds: float = Field(5.0, gt=0)
    # A worker that holds one job longer than this is "stuck" (the node reports unhealthy).
    stuck_job_seconds: float = Field(3600.0, gt=0)
    # A worker whose loop has not turned for this long while idle is "stuck" too.
    stalled_loop_seconds: float = Field(120.0, gt=0)
    # GET /health/ready says "not ready" when the spool's disk has less than this free.
    spool_min_free_bytes: int = Field(1024**3, ge=0)


class WebUser(_Strict):
    """One HTTP user of the web endpoints (basic auth). The password is never in the config: give its
    PBKDF2 hash (`dicom-node web hash-password`) or a file holding the plain password (mode 0600)."""

    username: str = Field(min_length=1)
    password_hash: str | None = None
    password_file: Path | None = None


class WebAuthSettings(_Strict):
    """Who may use the STOW-RS endpoint (docs/dicomweb.md). `kind: none` must be chosen explicitly and
    logs a warning at start; health and metrics endpoints need no auth (they carry no patient data)."""

    kind: Literal["basic", "bearer", "basic_or_bearer", "none"] = "basic_or_bearer"
    users: list[WebUser] = []
    # Bearer tokens: a file with one token per line (never the tokens themselves in the config).
    tokens_file: Path | None = None


class WebSettings(_Strict):
    """The node's HTTP side (node/web): STOW-RS in, /health/live, /health/ready, /metrics. One server in
    the node's process, started and stopped with the DICOM SCP."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    # A request body over this many bytes is refused with 413 (streamed to disk, never held in memory).
    max_request_bytes: int = Field(4 * 1024**3, gt=0)
    auth: WebAuthSettings = WebAuthSettings()
    # Seconds a graceful stop waits for requests in flight.
    shutdown_timeout_seconds: float = Field(30.0, gt=0)


class RetentionSettings(_Strict):
    # Spooled files of a series are deleted this long after every delivery of it succeeded
    # (and after routing decided there was nothing to deliver). None keeps files forever.
    keep_seconds: float | None = 3600.0
    sweep_interval_seconds: float = Field(60.0, gt=0)


class ClassifySettings(_Strict):
    """Classification between completion and routing (docs/classification.md)."""

    enabled: bool = True
    # A model package (MONAI bundle layout); None means the starter model shipped with the node.
    model_dir: Path | None = None
    # auto: CUDA when torch sees a GPU, else CPU. Or "cpu", "cuda", "cuda:1".
    device: str = "auto"
    # Half precision (autocast) on CUDA; ignored on CPU.
    fp16: bool = True
    # Series classified in one forward pass; None: 8 on CUDA, 1 on CPU (batching does not help a CPU).
    max_batch: int | None = Field(None, ge=1, le=256)
    # How long the engine waits for more series to fill a batch once one is waiting.
    batch_wait_ms: float = Field(10.0, ge=0, le=1000)
    # Route workers (each assembles volumes in parallel; the engine batches their inference).
    # None: 4 on CUDA, 1 on CPU.
    workers: int | None = Field(None, ge=1, le=64)
    # Processes that decode compressed pixel data (JPEG 2000, JPEG-LS, ...) while a volume is assembled;
    # 0 decodes in the route worker. The decoders hold the GIL, so only processes help (docs/volume.md).
    decode_processes: int = Field(0, ge=0, le=64)
    # CPU threads for torch; None leaves torch's default (one per core).
    cpu_threads: int | None = Field(None, ge=1, le=256)
    # Below this probability an image answer is "low confidence"; a prior at least this confident wins.
    min_confidence: float = Field(0.6, ge=0.0, le=1.0)
    min_prior_confidence: float = Field(0.5, ge=0.0, le=1.0)


class Settings(_Strict):
    data_dir: Path = Path("node-data")
    # Default: SQLite (WAL) at <data_dir>/node.db. PostgreSQL: postgresql+psycopg://user:pw@host/db
    database_url: str | None = None
    spool_dir: Path | None = None
    rules_path: Path | None = None
    log_level: str = "INFO"
    receive: ReceiveSettings = ReceiveSettings()
    completion: CompletionSettings = CompletionSettings()
    forward: ForwardSettings = ForwardSettings()
    route: RouteSettings = RouteSettings()
    health: HealthSettings = HealthSettings()
    retention: RetentionSettings = RetentionSettings()
    classify: ClassifySettings = ClassifySettings()
    web: WebSettings = WebSettings()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'node.db').resolve()}"

    @property
    def resolved_spool_dir(self) -> Path:
        return (self.spool_dir or self.data_dir / "spool").resolve()


def validate_ae_title(value: str) -> str:
    """An AE title is 1-16 characters of printable ASCII without backslash."""
    stripped = value.strip()
    if not 1 <= len(stripped) <= 16 or any(c == "\\" or not 32 <= ord(c) < 127 for c in stripped):
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable ASCII characters, no backslash")
    return stripped


class ConfigFileError(ConfigError):
    """A settings file with one or more problems; `problems` lists each with its line and field."""

    def __init__(self, file: str, problems: Sequence[Problem]) -> None:
        super().__init__(describe_all(file, problems))
        self.file = file
        self.problems = list(problems)


# The paths in a settings file that are relative to the file, not to the working directory.
_FILE_RELATIVE = (
    ("data_dir",),
    ("spool_dir",),
    ("rules_path",),
    ("classify", "model_dir"),
    ("receive", "tls", "cert_file"),
    ("receive", "tls", "key_file"),
    ("receive", "tls", "ca_file"),
)


def load_settings(path: Path | None, overrides: dict[str, object] | None = None) -> Settings:
    """Load settings from a YAML file (or the defaults when path is None), then apply overrides (nested
    mappings merge key by key: {"receive": {"port": 11113}}). Raises ConfigError; a file's problems are
    all listed, each with its line and field, and "did you mean" for a mistyped key or choice."""
    empty = LineDict()
    empty.key_lines = {}
    raw: dict[str, Any] = empty
    where = str(path) if path is not None else "settings"
    if path is not None:
        raw = _read(path)
        for keys in _FILE_RELATIVE:
            holder: Any = raw
            for key in keys[:-1]:
                holder = holder.get(key) if isinstance(holder, dict) else None
            value = holder.get(keys[-1]) if isinstance(holder, dict) else None
            if isinstance(value, str) and not Path(value).is_absolute():
                holder[keys[-1]] = str((path.parent / value).resolve())
    if overrides:
        raw = _merge(raw, overrides)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = [_problem(error, raw, overrides or {}) for error in exc.errors(include_url=False)]
        problems.sort(key=lambda p: p.line or 0)
        raise ConfigFileError(where, problems) from None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    try:
        loaded = load_yaml(text)
    except yaml.YAMLError as exc:
        detail = str(getattr(exc, "problem", None) or exc)
        raise ConfigFileError(
            str(path), [Problem(f"not valid YAML: {detail}", line=yaml_error_line(exc))]
        ) from None
    if loaded is None:
        empty = LineDict()
        empty.key_lines = {}
        return empty
    if not isinstance(loaded, dict):
        raise ConfigFileError(
            str(path),
            [Problem(f"the top level must be a mapping of settings; got {kind_of(loaded)}", line=1)],
        )
    return loaded


def _merge(base: dict[str, Any], overrides: dict[str, object]) -> LineDict:
    """base with overrides applied; nested mappings are merged key by key. Line numbers are kept for
    what came from the file; an overridden value has none (it came from the command line)."""
    lines: dict[Any, int] = dict(base.key_lines) if isinstance(base, LineDict) else {}
    merged = LineDict(base)
    merged.line = base.line if isinstance(base, LineDict) else 0
    merged.key_lines = {k: v for k, v in lines.items() if k not in overrides}
    for key, value in overrides.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key] = _merge(below, value)
            if key in lines:
                merged.key_lines[key] = lines[key]
        else:
            merged[key] = value
    return merged


_TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "string": "text",
    "list": "a list",
    "dict": "a mapping of settings",
    "model": "a mapping of settings",
    "path": "a path",
}
_CONSTRAINTS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long")


def _overridden(overrides: dict[str, object], loc: Sequence[Any]) -> bool:
    node: Any = overrides
    for step in loc:
        if not isinstance(node, dict) or step not in node:
            return False
        node = node[step]
    return True


def _problem(error: Any, raw: Any, overrides: dict[str, object]) -> Problem:
    loc: tuple[Any, ...] = tuple(error["loc"])
    kind = str(error["type"])
    given = error.get("input")
    message = str(error["msg"])
    if kind == "extra_forbidden":
        message = unknown_key(str(loc[-1]), keys_at(Settings, loc[:-1]))
    elif kind == "missing":
        message = "required"
    elif kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", ""))
        message = f"expected {expected}; got {kind_of(given)}"
        if isinstance(given, str):
            message += did_you_mean(given, re.findall(r"'([^']*)'", expected))
    elif kind.split("_")[0] in _TYPE_WORDS and kind.endswith(("_type", "_parsing", "_from_float")):
        message = f"expected {_TYPE_WORDS[kind.split('_')[0]]}; got {kind_of(given)}"
    elif kind in _CONSTRAINTS:
        message = message.replace("Input should be", "must be", 1) + f"; got {given!r}"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    if _overridden(overrides, loc):
        return Problem(f"{message} (given on the command line)", field=field_path(loc))
    return Problem(message, field=field_path(loc), line=locate(raw, loc))
