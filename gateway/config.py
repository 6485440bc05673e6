"""The configuration file of design section 12 (TOML). Every key is optional; an unknown key is an
error that names it, so that a typo never silently falls back to a default."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the file."""


@dataclass(frozen=True)
class ServerConfig:
    data_dir: str = "var"
    max_body_bytes: int = 64 * 1024 * 1024
    log_format: str = "text"  # "text" or "json" (one JSON object a line, with the request id)


# Operations (rate limits, retention) ------------------------------------------------------------------
@dataclass(frozen=True)
class LimitsConfig:
    """Token buckets held by each gateway process (see docs/operations.md); 0 turns a limit off."""

    requests_per_second: float = 100.0  # per party, after authentication, on every channel
    burst: int = 200  # requests a party may make at once before the rate applies
    login_per_minute: float = 20.0  # per client address: POST /login, /apply, /api/v1/registrations
    login_burst: int = 20


@dataclass(frozen=True)
class RetentionConfig:
    raw_messages_days: int = 0  # 0 keeps raw inbound messages forever
    audit_days: int = 0  # 0 keeps the audit trail forever


# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RulesConfig:
    lodgement_window_days: int = 14
    consignment_expiry_days: int = 7
    bundle_lead_minutes: int = 30
    declaration_deadline_days: int = 14


@dataclass(frozen=True)
class RiskConfig:
    threshold: int = 100
    random_rate: float = 0.02
    secret_file: str | None = None


@dataclass(frozen=True)
class EdifactConfig:
    identifier: str = "HKCUSTOMS"


@dataclass(frozen=True)
class ImmigrationConfig:
    url: str = "http://127.0.0.1:8091/immigration"
    timeout_ms: int = 800


@dataclass(frozen=True)
class TranshipmentConfig:
    overdue_hours: int = 6


@dataclass(frozen=True)
class ControlPointConfig:
    name: str
    lanes: tuple[str, ...] = ("1", "2", "3", "4", "5", "6", "7", "8")
    opens: str = "00:00"
    closes: str = "24:00"
    slot_minutes: int = 15
    slot_capacity: int = 120


@dataclass(frozen=True)
class SftpPullConfig:
    name: str
    party: str
    host: str
    user: str
    private_key: str
    host_key: str
    remote_inbox: str
    remote_outbox: str
    port: int = 22
    interval_seconds: int = 60


@dataclass(frozen=True)
class SftpConfig:
    pull: tuple[SftpPullConfig, ...] = ()


DEFAULT_CONTROL_POINTS: dict[str, ControlPointConfig] = {
    "LMC": ControlPointConfig("Lok Ma Chau"),
    "MKT": ControlPointConfig("Man Kam To"),
    "STK": ControlPointConfig("Sha Tau Kok"),
    "SBC": ControlPointConfig("Shenzhen Bay"),
    "HYW": ControlPointConfig("Heung Yuen Wai"),
    "HZM": ControlPointConfig("Hong Kong-Zhuhai-Macao Bridge"),
}


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    edifact: EdifactConfig = field(default_factory=EdifactConfig)
    immigration: ImmigrationConfig = field(default_factory=ImmigrationConfig)
    transhipment: TranshipmentConfig = field(default_factory=TranshipmentConfig)
    control_points: dict[str, ControlPointConfig] = field(
        default_factory=lambda: dict(DEFAULT_CONTROL_POINTS)
    )
    sftp: SftpConfig = field(default_factory=SftpConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "rules": RulesConfig,
    "risk": RiskConfig,
    "edifact": EdifactConfig,
    "immigration": ImmigrationConfig,
    "transhipment": TranshipmentConfig,
    "limits": LimitsConfig,
    "retention": RetentionConfig,
}
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")


def _build(
    cls: type[Any], table: Any, where: str, source: str, defaults: dict[str, Any] | None = None
) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = dict(defaults or {})
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{where}.{key}' (known: {', '.join(fields)})")
        values[key] = _check_type(fields[key].type, value, f"{where}.{key}", source)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: [{where}] needs {', '.join(repr(m) for m in missing)}")
    return cls(**values)


def _check_type(annotation: Any, value: Any, key: str, source: str) -> Any:
    text = str(annotation)
    if "tuple[str" in text:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: '{key}' must be a list of strings")
        return tuple(value)
    if text.startswith("int"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{source}: '{key}' must be a whole number of at least 0, not {value!r}")
        return value
    if text.startswith("float"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be a number, not {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{source}: '{key}' must be a string, not {value!r}")
    return value


def parse_config(data: dict[str, Any], source: str = "configuration") -> Config:
    known = {*_SECTIONS, "control_points", "sftp"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{key}' (known sections: {', '.join(sorted(known))})")
    sections = {
        name: _build(cls, data[name], name, source) for name, cls in _SECTIONS.items() if name in data
    }

    control_points = dict(DEFAULT_CONTROL_POINTS)
    cp_table = data.get("control_points", {})
    if not isinstance(cp_table, dict):
        raise ConfigError(f"{source}: [control_points] must be a table")
    for code, table in cp_table.items():
        if not re.fullmatch(r"[A-Z0-9]{2,5}", code):
            raise ConfigError(
                f"{source}: control point code '{code}' must be 2 to 5 capital letters or digits"
            )
        base = dataclasses.asdict(control_points[code]) if code in control_points else {}
        cp = _build(ControlPointConfig, table, f"control_points.{code}", source, base)
        for key in ("opens", "closes"):
            if not _HHMM.match(getattr(cp, key)):
                raise ConfigError(f"{source}: 'control_points.{code}.{key}' must be HH:MM (00:00 to 24:00)")
        if cp.slot_minutes <= 0 or cp.slot_capacity <= 0:
            raise ConfigError(f"{source}: control point {code} needs slot_minutes and slot_capacity above 0")
        control_points[code] = cp

    sftp_table = data.get("sftp", {})
    if not isinstance(sftp_table, dict):
        raise ConfigError(f"{source}: [sftp] must be a table")
    for key in sftp_table:
        if key != "pull":
            raise ConfigError(f"{source}: unknown key 'sftp.{key}' (known: pull)")
    pulls = sftp_table.get("pull", [])
    if not isinstance(pulls, list):
        raise ConfigError(f"{source}: 'sftp.pull' must be an array of tables ([[sftp.pull]])")
    sftp = SftpConfig(
        tuple(_build(SftpPullConfig, p, f"sftp.pull[{i}]", source) for i, p in enumerate(pulls))
    )
    risk = sections.get("risk", RiskConfig())
    if not 0.0 <= risk.random_rate <= 1.0:
        raise ConfigError(f"{source}: 'risk.random_rate' must be between 0 and 1")
    _check_operations(sections, source)
    return Config(control_points=control_points, sftp=sftp, **sections)


def _check_operations(sections: dict[str, Any], source: str) -> None:
    server = sections.get("server", ServerConfig())
    if server.log_format not in ("text", "json"):
        raise ConfigError(f"{source}: 'server.log_format' must be text or json, not {server.log_format!r}")
    limits = sections.get("limits", LimitsConfig())
    for key in ("requests_per_second", "login_per_minute"):
        if getattr(limits, key) < 0:
            raise ConfigError(f"{source}: 'limits.{key}' must be at least 0 (0 turns the limit off)")
    for rate, burst in (("requests_per_second", "burst"), ("login_per_minute", "login_burst")):
        if getattr(limits, rate) > 0 and getattr(limits, burst) < 1:
            raise ConfigError(f"{source}: 'limits.{burst}' must be at least 1 while 'limits.{rate}' is on")


def load_config(path: str | Path | None) -> Config:
    """Read a configuration file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, str(p))
