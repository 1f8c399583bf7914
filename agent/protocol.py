"""The wire contract (../shared/PROTOCOL.md, docs/protocol.md) as pydantic models, topics and time format.

Pure data: parsing bytes into models and rendering documents back to JSON. Nothing here touches the
network, the store or the clock, so the lifecycle core may use it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from agent import exec_limits, strict_json
from agent.names import id_problem

DEFAULT_TOPIC_PREFIX = "reconcile/v1"

DesiredStateType = Literal["pending", "running", "stopped"]
UpdateStrategy = Literal["stop_first", "start_first"]
ObservedStateType = Literal[
    "pending",
    "starting",
    "validating",
    "running",
    "degraded",
    "completed",
    "failed",
    "lost",
    "stopping",
    "stopped",
]
OBSERVED_STATES: tuple[ObservedStateType, ...] = get_args(ObservedStateType)


def _check_id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r} {problem}")
    return value


Id = Annotated[StrictStr, AfterValidator(_check_id)]
# JSON numbers: an int is a fine float, a bool or a string is not. Bounded and finite: an infinite or
# 400-digit duration would overflow the timers and could not be stored back as JSON.
MAX_SECONDS = 10 * 365 * 24 * 3600
Seconds = Annotated[StrictFloat | StrictInt, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
PositiveSeconds = Annotated[StrictFloat | StrictInt, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DesiredState(_Strict):
    state_type: DesiredStateType
    message: StrictStr = ""
    details: dict[str, Any] = Field(default_factory=dict)


class RestartPolicy(_Strict):
    policy: Literal["never", "on-failure", "always"] = "on-failure"
    max_restarts: Annotated[StrictInt, Field(ge=0)] = 3
    backoff_s: Seconds = 1.0
    backoff_max_s: Seconds = 60.0


class Validation(_Strict):
    window_s: Seconds = 10.0
    deadline_s: PositiveSeconds = 300.0


class ExecProbe(_Strict):
    command: Annotated[list[StrictStr], Field(min_length=1)]


class HttpProbe(_Strict):
    url: StrictStr


class TcpProbe(_Strict):
    host: StrictStr = "127.0.0.1"
    port: Annotated[StrictInt, Field(ge=1, le=65535)]


class Probe(_Strict):
    exec: ExecProbe | None = None
    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    period_s: PositiveSeconds = 2.0
    timeout_s: PositiveSeconds = 1.0
    failure_threshold: Annotated[StrictInt, Field(ge=1)] = 3


class StopSpec(_Strict):
    signal: Literal["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2"] = "SIGTERM"
    grace_s: Seconds = 10.0


# --- Results (PROTOCOL.md, Results; docs/protocol.md, Results) ---------------------------------------

PublishWhen = Literal["completed", "always"]
PUBLISHING_MESSAGE = "publishing results"  # observed_state.message while an execution's results go out
# S3 bucket names (AWS's rules for new buckets, which S3-compatible servers follow): 3 to 63 characters of
# lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MAX_KEY_PREFIX_BYTES = 512  # a key is at most 1024 bytes; the rest is for <job_id>/<execution_id>.tar.gz


def key_prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot start an S3 object key, or None.

    S3 takes almost any UTF-8 as a key, but some keys cannot be written back as files or paths by the
    tools that read results (a leading ``/``, ``//``, ``.`` and ``..`` segments, control characters),
    so the agent refuses them rather than upload an object nobody can download under its name.
    """
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a lone surrogate)"
    if size > MAX_KEY_PREFIX_BYTES:
        return f"is {size} bytes long, over {MAX_KEY_PREFIX_BYTES}"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        return "contains a control character"
    if prefix.startswith("/"):
        return "starts with '/'"
    if "//" in prefix:
        return "contains '//'"
    if any(segment in (".", "..") for segment in prefix.split("/")):
        return "contains a '.' or '..' segment"
    return None


def _check_bucket(value: str) -> str:
    if not _BUCKET.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not an S3 bucket name (3 to 63 characters of a-z 0-9 . -, "
            "starting and ending with a letter or digit)"
        )
    return value


def _check_key_prefix(value: str) -> str:
    problem = key_prefix_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r} is not a valid S3 key prefix: it {problem}")
    return value


def _check_endpoint(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


class _PublisherCommon(_Strict):
    when: PublishWhen = "completed"
    deadline_s: PositiveSeconds = 600.0


class LocalPublisher(_PublisherCommon):
    type: Literal["local"]


class S3Publisher(_PublisherCommon):
    type: Literal["s3"]
    bucket: Annotated[StrictStr, AfterValidator(_check_bucket)]
    key_prefix: Annotated[StrictStr, AfterValidator(_check_key_prefix)] = ""
    endpoint: Annotated[StrictStr | None, AfterValidator(_check_endpoint)] = None
    region: Annotated[StrictStr, Field(pattern=r"^[a-z0-9-]{1,64}$")] = "us-east-1"


Publisher = Annotated[LocalPublisher | S3Publisher, Field(discriminator="type")]
PUBLISHER_TYPES: tuple[str, ...] = ("local", "s3")


class ResultsMetadata(_Strict):
    sha256: StrictStr
    size_bytes: StrictInt
    files: StrictInt


class S3Location(_Strict):
    bucket: StrictStr
    key: StrictStr
    endpoint: StrictStr | None
    region: StrictStr
    version_id: StrictStr | None = None
    checksum: StrictStr | None = None


class PublishedResults(_Strict):
    """The seeds' StorageSpec: where an execution's results went (``published_results``)."""

    storage_source: Literal["local", "s3"]
    name: StrictStr
    url: StrictStr
    path: StrictStr | None = None
    s3: S3Location | None = None
    metadata: ResultsMetadata


def archive_name(execution_id: str) -> str:
    return f"{execution_id}.tar.gz"


def s3_key(publisher: S3Publisher, job_id: str, execution_id: str) -> str:
    return f"{publisher.key_prefix}{job_id}/{archive_name(execution_id)}"


class Resources(_Strict):
    """Limits of one workload (all of its processes), enforced by its cgroup's controllers."""

    memory_max_bytes: Annotated[StrictInt, Field(ge=4096, le=1 << 62)] | None = None
    pids_max: Annotated[StrictInt, Field(ge=1, le=1 << 22)] | None = None
    cpu_max: Annotated[StrictFloat | StrictInt, Field(gt=0, le=1 << 16, allow_inf_nan=False)] | None = (
        None  # cores
    )

    @property
    def values(self) -> dict[str, float | int]:
        """The limits set, by name."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class Spec(_Strict):
    engine: Literal["process"] = "process"
    command: Annotated[list[StrictStr], Field(min_length=1)]
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    working_dir: StrictStr | None = None
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    validation: Validation = Field(default_factory=Validation)
    probe: Probe | None = None
    stop: StopSpec = Field(default_factory=StopSpec)
    update_strategy: UpdateStrategy = "stop_first"
    timeout_s: PositiveSeconds | None = None
    publisher: Publisher | None = None
    resources: Resources | None = None


class DesiredDocument(_Strict):
    execution_id: Id
    job_id: Id | None = None
    generation: Annotated[StrictInt, Field(ge=1)]
    desired_state: DesiredState
    previous_execution_id: Id | None = None
    spec: Spec | None = None

    @property
    def job(self) -> str:
        return self.job_id or self.execution_id


class RunOutput(_Strict):
    stdout: str = ""
    stdout_truncated: StrictBool = False
    stderr: str = ""
    stderr_truncated: StrictBool = False
    exit_code: int | None = None
    error: str | None = None


class ObservedState(_Strict):
    state_type: ObservedStateType
    message: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


# --- Parsing desired documents -------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A desired document that passed every check that needs no stored state."""

    document: DesiredDocument
    digest: str


@dataclass(frozen=True)
class Rejected:
    """A desired payload that cannot be accepted; ``generation`` is None when it could not be read."""

    generation: int | None
    reason: str
    digest: str


@dataclass(frozen=True)
class Deleted:
    """An empty retained payload: the orchestrator deletes the execution."""


Parsed = Accepted | Rejected | Deleted


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:32]


def parse_desired(execution_id: str, payload: bytes, max_bytes: int) -> Parsed:
    """Turn one payload from ``.../executions/<execution_id>/desired`` into what the core acts on.

    Never raises: every way a payload can be wrong becomes a :class:`Rejected` with a reason that names
    the field, because the agent must not die on input.
    """
    if not payload:
        return Deleted()
    digest = payload_digest(payload)
    if len(payload) > max_bytes:
        return Rejected(None, f"payload is {len(payload)} bytes, over the limit of {max_bytes}", digest)
    try:
        raw = strict_json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejected(None, f"payload is not JSON: {exc}", digest)
    except strict_json.NotAccepted as exc:  # read all the same: its generation says whether it is stale
        return Rejected(readable_generation(exc.value), f"payload is not JSON we accept: {exc}", digest)
    except RecursionError:
        return Rejected(None, "payload is not JSON we accept: it nests too deeply", digest)
    if not isinstance(raw, dict):
        return Rejected(None, f"payload is JSON {type(raw).__name__}, not an object", digest)
    try:
        document = DesiredDocument.model_validate(raw)
    except ValidationError as exc:
        return Rejected(readable_generation(raw), describe_validation_error(exc), digest)
    if document.execution_id != execution_id:
        return Rejected(
            document.generation,
            f"execution_id {document.execution_id!r} does not match the topic's {execution_id!r}",
            digest,
        )
    if document.desired_state.state_type != "stopped" and document.spec is None:
        return Rejected(
            document.generation,
            f"spec: required when desired_state.state_type is {document.desired_state.state_type!r}",
            digest,
        )
    if document.spec is not None and document.spec.probe is not None:
        kinds = [k for k in ("exec", "http", "tcp") if getattr(document.spec.probe, k) is not None]
        if len(kinds) != 1:
            return Rejected(
                document.generation,
                "spec.probe: exactly one of exec, http, tcp is required"
                + (f" (got {', '.join(kinds)})" if kinds else ""),
                digest,
            )
    if document.spec is not None:
        problems = spec_problems(document.spec)
        if problems:
            return Rejected(document.generation, "; ".join(problems), digest)
    return Accepted(document, digest)


def spec_problems(spec: Spec) -> list[str]:
    """What exec, chdir or a probe would refuse in ``spec``, each naming its field (agent/exec_limits.py)."""
    problems = [
        *exec_limits.argv_problems("spec.command", spec.command),
        *exec_limits.env_problems("spec.env", spec.env),
    ]
    if spec.working_dir is not None:
        problem = exec_limits.working_dir_problem(spec.working_dir)
        if problem is not None:
            problems.append(f"spec.working_dir: {problem}")
    if not problems and (size := exec_limits.exec_size(spec.command, spec.env)) > exec_limits.EXEC_BYTES_MAX:
        problems.append(
            f"spec.command and spec.env: {size} bytes of arguments and environment; "
            f"at most {exec_limits.EXEC_BYTES_MAX} can be passed to a workload"
        )
    probe = spec.probe
    if probe is not None and probe.exec is not None:
        problems += exec_limits.argv_problems("spec.probe.exec.command", probe.exec.command)
    for path, text in (
        ("spec.probe.http.url", probe.http.url if probe is not None and probe.http is not None else None),
        ("spec.probe.tcp.host", probe.tcp.host if probe is not None and probe.tcp is not None else None),
    ):
        problem = None if text is None else exec_limits.string_problem(text)
        if problem is not None:
            problems.append(f"{path}: {problem}")
    return problems


def readable_generation(raw: Any) -> int | None:
    """The generation of a document that cannot be accepted, if it has a valid one."""
    generation = raw.get("generation") if isinstance(raw, dict) else None
    return generation if type(generation) is int and generation >= 1 else None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the dotted path of the field, e.g. ``spec.command: ...``."""
    problems = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(p) for p in error["loc"]) or "(document)"
        if error["type"] == "extra_forbidden":
            problems.append(f"{path}: unknown field")
        elif error["type"] == "union_tag_invalid":
            ctx = error.get("ctx", {})
            problems.append(
                f"{path}.type: unknown type {ctx.get('tag')!r} (known: {ctx.get('expected_tags')})"
            )
        else:
            problems.append(f"{path}: {error['msg']}")
    return "; ".join(problems)


# --- Topics ---------------------------------------------------------------------------------------------
# The one layout of the topics (docs/protocol.md): the agent names its node's through ``Topics``, the
# operator CLI reads every node's through ``FleetTopics``.

ANY = "+"

TopicKind = Literal["execution_status", "desired", "node_status", "events"]


@dataclass(frozen=True)
class Where:
    """What a topic is about: its kind, node and (for execution topics) execution."""

    kind: TopicKind
    node_id: str
    execution_id: str | None = None


@dataclass(frozen=True)
class FleetTopics:
    prefix: str

    def status(self, node_id: str = ANY, execution_id: str = ANY) -> str:
        return f"{self.prefix}/nodes/{node_id}/executions/{execution_id}/status"

    def desired(self, node_id: str, execution_id: str) -> str:
        return f"{self.prefix}/nodes/{node_id}/executions/{execution_id}/desired"

    def node_status(self, node_id: str = ANY) -> str:
        return f"{self.prefix}/nodes/{node_id}/status"

    def events(self, node_id: str = ANY) -> str:
        return f"{self.prefix}/nodes/{node_id}/events"

    def control(self, node_id: str) -> str:
        return f"{self.prefix}/nodes/{node_id}/control"

    def log_requests(self, node_id: str) -> str:
        return f"{self.prefix}/nodes/{node_id}/logs/{REQUEST_LEAF}"

    def log_replies(self, node_id: str, request_id: str) -> str:
        return f"{self.prefix}/nodes/{node_id}/logs/{request_id}"

    def fence(self, client_id: str) -> str:
        # Outside nodes/ so no agent or orchestrator filter ever matches it.
        return f"{self.prefix}/operators/{client_id}/fence"

    def where(self, topic: str) -> Where | None:
        """Parse one of the fleet's topics, or None for anything else."""
        head = f"{self.prefix}/nodes/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) == 2 and parts[1] in ("status", "events"):
            return Where("node_status" if parts[1] == "status" else "events", parts[0])
        if len(parts) == 4 and parts[1] == "executions" and parts[3] in ("status", "desired"):
            return Where("execution_status" if parts[3] == "status" else "desired", parts[0], parts[2])
        return None


@dataclass(frozen=True)
class Topics:
    """One node's topics, as its agent names them."""

    prefix: str
    node_id: str

    @property
    def _fleet(self) -> FleetTopics:
        return FleetTopics(self.prefix)

    @property
    def desired_filter(self) -> str:
        return self._fleet.desired(self.node_id, ANY)

    @property
    def node_status(self) -> str:
        return self._fleet.node_status(self.node_id)

    @property
    def control(self) -> str:
        return self._fleet.control(self.node_id)

    @property
    def events(self) -> str:
        return self._fleet.events(self.node_id)

    def status(self, execution_id: str) -> str:
        return self._fleet.status(self.node_id, execution_id)

    def desired(self, execution_id: str) -> str:
        return self._fleet.desired(self.node_id, execution_id)

    @property
    def log_requests(self) -> str:
        return self._fleet.log_requests(self.node_id)

    def log_replies(self, request_id: str | None) -> str:
        """Where the replies to ``request_id`` go; those to a request without a usable id go under
        :data:`UNNAMED_REQUEST` (docs/protocol.md, Logs on request)."""
        return self._fleet.log_replies(self.node_id, request_id or UNNAMED_REQUEST)

    def execution_of_desired(self, topic: str) -> str | None:
        """The execution segment of a desired topic of this node, or None if the topic is not one."""
        where = self._fleet.where(topic)
        if where is None or where.kind != "desired" or where.node_id != self.node_id:
            return None
        return where.execution_id


# --- Log requests (PROTOCOL.md, Logs on request) ------------------------------------------------------

MAX_TAIL_BYTES = 1024 * 1024
DEFAULT_TAIL_BYTES = 64 * 1024
MAX_FOLLOW_S = 3600
LOG_STREAMS = ("stdout", "stderr")
# The reply topic of a request whose request_id is missing or cannot name a topic: the one reply it gets
# (an error) must go somewhere a requester watching ``logs/+`` sees it.
UNNAMED_REQUEST = "invalid"
# The last segment of the request topic. Replies go to logs/<request_id>, so this one cannot be a request
# id: its replies would land on the request topic and come back as requests, a loop without end.
REQUEST_LEAF = "request"


def _check_request_id(value: str) -> str:
    if value == REQUEST_LEAF:
        raise ValueError(f"{value!r} names the request topic itself (replies go to logs/<request_id>)")
    return value


RequestId = Annotated[Id, AfterValidator(_check_request_id)]


class LogRequest(_Strict):
    request_id: RequestId
    execution_id: Id
    stream: Literal["stdout", "stderr"] = "stdout"
    tail_bytes: Annotated[StrictInt, Field(ge=0, le=MAX_TAIL_BYTES)] = DEFAULT_TAIL_BYTES
    follow: StrictBool = False
    follow_s: Annotated[StrictFloat | StrictInt, Field(gt=0, le=MAX_FOLLOW_S, allow_inf_nan=False)] = 300


class LogCancel(_Strict):
    request_id: RequestId
    cancel: Literal[True]


@dataclass(frozen=True)
class LogRequestRejected:
    request_id: str | None  # None when the request has none that can name a reply topic
    reason: str


def parse_log_request(payload: bytes, max_bytes: int) -> LogRequest | LogCancel | LogRequestRejected:
    """One payload from ``.../logs/request``; never raises: every fault is a rejection naming the field."""
    if len(payload) > max_bytes:
        return LogRequestRejected(None, f"payload is {len(payload)} bytes, over the limit of {max_bytes}")
    try:
        raw = strict_json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return LogRequestRejected(None, f"payload is not JSON: {exc}")
    except strict_json.NotAccepted as exc:
        return LogRequestRejected(_usable_request_id(exc.value), f"payload is not JSON we accept: {exc}")
    except RecursionError:
        return LogRequestRejected(None, "payload is not JSON we accept: it nests too deeply")
    if not isinstance(raw, dict):
        return LogRequestRejected(None, f"payload is JSON {type(raw).__name__}, not an object")
    model: type[LogRequest] | type[LogCancel] = LogCancel if "cancel" in raw else LogRequest
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        return LogRequestRejected(_usable_request_id(raw), describe_validation_error(exc))


def _usable_request_id(raw: Any) -> str | None:
    request_id = raw.get("request_id") if isinstance(raw, dict) else None
    usable = isinstance(request_id, str) and id_problem(request_id) is None and request_id != REQUEST_LEAF
    return request_id if usable else None


# --- Time and JSON --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def rfc3339(epoch_s: float | None) -> str | None:
    """RFC 3339 in UTC with microseconds and a Z, or None for a time that is not set.

    Cached: every decision renders its status two or three times (agent/core/step.py compares it with the
    last one published), each time with the same few times, and formatting one costs microseconds."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=False).encode()
