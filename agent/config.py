"""The agent's configuration: a YAML file, overridden by ``RECONCILE_*`` environment variables.

Everything an operator can get wrong here surfaces as a :class:`ConfigError` whose message names the
file and the dotted key, so a typo is a one-line fix rather than a traceback to decode.

Owns the agent's configuration and its checks; reads files, never the store, the broker or the processes.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from agent import written
from agent.exec_limits import path_problem
from agent.labels import labels_problems
from agent.names import host_problem, id_problem, topic_prefix_problem
from agent.protocol import DEFAULT_TOPIC_PREFIX
from agent.reasons import os_reason

ENV_PREFIX = "RECONCILE_"
ENV_NESTED_DELIMITER = "__"
MAX_CONFIG_BYTES = 1 << 20  # a configuration file is a page or two; anything past a MiB is not one


_V = TypeVar("_V", str, Path)


def _refusing(problem_of: Callable[[str], str | None], what: str = "") -> Callable[[_V], _V]:
    """A validator refusing a value that ``problem_of`` finds a problem with, in its words. Checked when
    the configuration is read, not when the agent first uses the value: a NUL byte in a path, say, would
    otherwise pass check-config and fail the running agent with a bare 'embedded null byte'."""

    def check(value: _V) -> _V:
        problem = problem_of(str(value))
        if problem is not None:
            raise ValueError(what + problem)
        return value

    return check


# Models are strict so that `port: "1883"` is an error instead of a silent conversion; paths are the
# exception because YAML has no path type and a string is the only way to write one.
ConfigPath = Annotated[Path, Strict(False), AfterValidator(_refusing(path_problem, "the path "))]

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class ConfigError(Exception):
    """A configuration that cannot be used.

    ``path`` is the file at fault (None when no single file is), ``message`` a few lines for the operator
    that name the file and the dotted key, never a traceback.
    """

    def __init__(self, path: Path | None, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class TlsConfig(BaseModel):
    model_config = _STRICT

    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None
    required: bool = False

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together (mutual TLS needs both)")
        return self


class MqttConfig(BaseModel):
    model_config = _STRICT

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    client_id: str | None = Field(default=None, min_length=1)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_file: ConfigPath | None = None
    tls: TlsConfig | None = None
    embedded: bool = False
    # How often the agent reads every retained desired document of its node besides after each connection
    # (agent/resync.py): what the broker's per-client queue dropped is acted on within this time.
    resync_interval_s: float = Field(default=300.0, ge=10.0, le=86400.0)

    _check_topic_prefix = field_validator("topic_prefix")(_refusing(topic_prefix_problem))
    _check_host = field_validator("host")(_refusing(host_problem))

    @model_validator(mode="after")
    def _password_needs_username(self) -> Self:
        # MQTT 3.1.1 (section 3.1.2.9) forbids a password without a user name.
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set but username is not; MQTT needs both")
        return self


class LimitsConfig(BaseModel):
    model_config = _STRICT

    max_payload_bytes: int = Field(default=262144, ge=1024)
    # The most an execution's results archive may hold (its output directory and logs, before
    # compression): a workload that writes more fails its publish instead of filling the disk.
    max_results_bytes: int = Field(default=1024**3, ge=1)
    # Admission (docs/protocol.md, "Node control and admission"): at most this many unfinished executions;
    # None admits any number. Refusing everything is what a cordon is for, so at least 1.
    max_executions: int | None = Field(default=None, ge=1)


class S3PublisherConfig(BaseModel):
    """Credentials of the s3 publisher: both files, or neither (then the standard AWS environment)."""

    model_config = _STRICT

    access_key_id_file: ConfigPath | None = None
    secret_access_key_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if (self.access_key_id_file is None) != (self.secret_access_key_file is None):
            raise ValueError(
                "access_key_id_file and secret_access_key_file must be given together "
                "(or neither, to use the standard AWS environment)"
            )
        return self


class PublishersConfig(BaseModel):
    model_config = _STRICT

    s3: S3PublisherConfig | None = None  # absent: this node has no s3 publisher

    @field_validator("s3", mode="before")
    @classmethod
    def _empty_means_environment(cls, value: object) -> object:
        # `s3:` with nothing under it parses as null but means "s3, with the AWS environment's credentials".
        return {} if value is None else value


def parse_address(address: str) -> tuple[str | None, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every interface) -> (host or None, port).

    Raises ValueError with a message fit for the operator.
    """
    text = address.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host or not rest.startswith(":"):
            raise ValueError(f"{address!r} is not [IPv6 address]:port, such as [::1]:9100")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"{address!r} has no port; write host:port, such as 127.0.0.1:9100")
        if any(c.isspace() for c in host) or "/" in host:
            raise ValueError(f"{address!r}: {host!r} is not a host name or address")
        if ":" in host:
            raise ValueError(f"{address!r}: put an IPv6 address in brackets, such as [::1]:9100")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"{address!r}: the port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{address!r}: the port must be between 1 and 65535, not {port}")
    return (host or None), port


class MetricsConfig(BaseModel):
    model_config = _STRICT

    # host:port for the Prometheus endpoint (/metrics) and /healthz; None keeps it off.
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value


class WorkloadLogsConfig(BaseModel):
    model_config = _STRICT

    max_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)  # one segment of a workload's stdout/stderr
    keep: int = Field(default=3, ge=0, le=100)  # full segments kept per stream besides the one written
    interval_s: float = Field(
        default=5.0, gt=0, le=3600
    )  # how often format-1 logs (older supervisors) are checked

    @property
    def bound(self) -> int:
        """The most a stream ever holds on disk: ``keep`` full segments and the one being written."""
        return self.max_bytes * (1 + self.keep)


class LogConfig(BaseModel):
    model_config = _STRICT

    format: Literal["json", "console", "auto"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


def _host_node_id() -> str:
    return socket.gethostname().split(".", 1)[0]


# load_config hands the parsed file to settings_customise_sources through this variable: the file's
# path is only known at run time, and passing the values as init kwargs would make them beat the
# environment.
_file_values: ContextVar[Mapping[str, Any]] = ContextVar("_file_values", default=MappingProxyType({}))


class _FileSource(PydanticBaseSettingsSource):
    """The parsed YAML file, passed through as written.

    Unlike InitSettingsSource it does not fold the case of keys, so `Node_ID:` is reported as an unknown
    key instead of being accepted at the top level while `mqtt.Port:` is not.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get())


class AgentConfig(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
    )

    node_id: str = Field(default_factory=_host_node_id, validate_default=True)
    state_dir: ConfigPath = Path("/var/lib/reconcile-agent")
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    workload_logs: WorkloadLogsConfig = Field(default_factory=WorkloadLogsConfig)
    results_dir: ConfigPath | None = None  # local results archives; default <state_dir>/results
    publishers: PublishersConfig = Field(default_factory=PublishersConfig)
    labels: dict[str, str] = Field(default_factory=dict)  # shown in the node status; agent/labels.py

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No dotenv or secrets directory: an agent should not pick up a stray .env from its cwd.
        return (init_settings, env_settings, _FileSource(settings_cls))

    @field_validator("node_id")
    @classmethod
    def _check_node_id(cls, value: str) -> str:
        problem = id_problem(value)
        if problem is None:
            return value
        if value == _host_node_id():
            problem += "; it is this host's name, the default, so set node_id explicitly"
        raise ValueError(f"node id {value!r} {problem}")

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        problems = labels_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("mqtt", "limits", "log", "publishers", "labels", mode="before")
    @classmethod
    def _empty_section_means_defaults(cls, value: object) -> object:
        # `mqtt:` with every child commented out parses as null; treat it like an absent section.
        return {} if value is None else value

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"reconcile-agent-{self.node_id}"

    @property
    def results_path(self) -> Path:
        return self.results_dir if self.results_dir is not None else self.state_dir / "results"

    def s3_credentials(self) -> tuple[str, str] | None:
        """(access key id, secret key) from the configured files, or None when none are configured."""
        s3 = self.publishers.s3
        if s3 is None or s3.access_key_id_file is None or s3.secret_access_key_file is None:
            return None
        return (
            _read_secret(s3.access_key_id_file, "publishers.s3.access_key_id_file"),
            _read_secret(s3.secret_access_key_file, "publishers.s3.secret_access_key_file"),
        )

    def mqtt_password(self) -> str | None:
        path = self.mqtt.password_file
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, f"mqtt.password_file: cannot read {path}: {_why(exc)}") from exc

    def check_files(self) -> None:
        """Raise ConfigError unless every file the configuration names can be read now."""
        self.mqtt_password()
        self.s3_credentials()
        tls = self.mqtt.tls
        if tls is None:
            return
        for key in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(tls, key)
            if path is None:
                continue
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                raise ConfigError(path, f"mqtt.tls.{key}: cannot read {path}: {_why(exc)}") from exc


def _read_secret(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"{key}: cannot read {path}: {_why(exc)}") from exc
    if not value:
        raise ConfigError(path, f"{key}: {path} is empty")
    return value


def load_config(path: Path) -> AgentConfig:
    """Read ``path`` (YAML), apply ``RECONCILE_*`` environment overrides, and validate the result."""
    values = _read_yaml(path)
    token = _file_values.set(values)
    try:
        return AgentConfig()
    except ValidationError as exc:
        raise ConfigError(path, _describe_errors(path, exc)) from exc
    except SettingsError as exc:  # an environment value for a section or a mapping that is no JSON
        raise ConfigError(path, _describe_environment_error(path, exc)) from exc
    finally:
        _file_values.reset(token)


def _describe_environment_error(path: Path, exc: SettingsError) -> str:
    field = next(iter(re.findall(r'field "([^"]+)"', str(exc))), "")
    names = sorted(n for n in os.environ if n.upper().startswith(ENV_PREFIX + field.upper())) if field else []
    where = f" ({', '.join(names)})" if names else ""
    return (
        f"{path}: invalid configuration\n"
        f"  {field or '(environment)'}: the environment override{where} must be a JSON object for this key, "
        'such as \'{"name": "value"}\''
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = written.load(written.read_text(path, MAX_CONFIG_BYTES))
    except written.Unreadable as exc:
        raise ConfigError(path, f"{path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            path,
            f"{path}: the top level must be a mapping of keys such as `node_id:` and `mqtt:`, "
            f"not {_kind(data)}",
        )
    return data


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return os_reason(exc)
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(exc)


def _describe_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "(top level)"
        line = f"  {key}: {_error_text(loc, error)}"
        env_name = ENV_PREFIX + ENV_NESTED_DELIMITER.join(loc).upper()
        if loc and env_name in os.environ:
            line += f" (set by the environment variable {env_name})"
        lines.append(line)
    return "\n".join(lines)


def _error_text(loc: tuple[str, ...], error: ErrorDetails) -> str:
    kind = error["type"]
    value = error["input"]
    if kind == "extra_forbidden":
        return "unknown key" + _key_hint(loc)
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    message = error["msg"]
    if not message.startswith("Input should be "):
        return message
    got = _kind(value) if kind.endswith("_type") or kind == "is_instance_of" else _short(value)
    text = f"{message.removeprefix('Input ')}, got {got}"
    if kind == "string_type" and isinstance(value, int | float):
        text += "; put it in quotes to make it a string"
    return text


def _key_hint(loc: tuple[str, ...]) -> str:
    model: Any = AgentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None:
            return ""
        model = _model_in(field.annotation)
        if model is None:
            return ""
    known = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1].lower(), known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys here: {', '.join(known)})"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", (annotation,))
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _kind(value: object) -> str:
    # Say what the YAML looked like, in YAML's words, so `port: "1883"` reads as "a string".
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_short(value)})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
