"""Configuration loading: defaults, environment overrides, and an operator-readable message for every mistake."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import AgentConfig, ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's shell and the machine's name must not leak into what a test sees.
    for name in list(os.environ):
        if name.upper().startswith("RECONCILE_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(socket, "gethostname", lambda: "testhost.example.com")


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(path: Path, *, caused: bool = True) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.path == path
    assert str(path) in error.message
    assert "Traceback" not in error.message
    # Raised `from` the underlying error, when there is one, so a developer can still see it.
    assert (error.__cause__ is not None) == caused
    return error


# --- valid files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_an_empty_file_means_all_defaults(tmp_path: Path, text: str) -> None:
    config = load_config(write(tmp_path, text))

    assert config.node_id == "testhost"  # the short host name
    assert config.state_dir == Path("/var/lib/reconcile-agent")
    assert config.mqtt.host == "127.0.0.1"
    assert config.mqtt.port == 1883
    assert config.mqtt.topic_prefix == "reconcile/v1"
    assert config.mqtt.keepalive_s == 30
    assert config.mqtt.client_id is None
    assert config.mqtt.username is None
    assert config.mqtt.password_file is None
    assert config.mqtt.tls is None
    assert config.mqtt.embedded is False
    assert config.limits.max_payload_bytes == 262144
    assert config.log.format == "auto"
    assert config.log.level == "info"
    assert config.client_id == "reconcile-agent-testhost"
    assert config.mqtt_password() is None


def test_a_section_with_every_child_commented_out_means_its_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "mqtt:\n  # port: 1884\nlimits:\nlog:\n"))

    assert config.mqtt.port == 1883
    assert config.limits.max_payload_bytes == 262144
    assert config.log.format == "auto"


def test_every_key_is_read(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cret\n", encoding="utf-8")
    path = write(
        tmp_path,
        f"""
node_id: node-7
state_dir: {tmp_path / "state"}
mqtt:
  host: broker.example.com
  port: 8883
  topic_prefix: fleet/a
  client_id: agent-seven
  keepalive_s: 60
  username: agent
  password_file: {tmp_path / "password"}
  tls:
    ca_file: /etc/ca.pem
    cert_file: /etc/client.pem
    key_file: /etc/client.key
    required: true
  embedded: false
limits:
  max_payload_bytes: 1024
log:
  format: json
  level: debug
""",
    )
    config = load_config(path)

    assert config.node_id == "node-7"
    assert config.state_dir == tmp_path / "state"
    assert config.mqtt.host == "broker.example.com"
    assert config.mqtt.port == 8883
    assert config.mqtt.topic_prefix == "fleet/a"
    assert config.client_id == "agent-seven"
    assert config.mqtt.keepalive_s == 60
    assert config.mqtt.username == "agent"
    assert config.mqtt_password() == "s3cret"
    assert config.mqtt.tls is not None
    assert config.mqtt.tls.ca_file == Path("/etc/ca.pem")
    assert config.mqtt.tls.cert_file == Path("/etc/client.pem")
    assert config.mqtt.tls.key_file == Path("/etc/client.key")
    assert config.mqtt.tls.required is True
    assert config.limits.max_payload_bytes == 1024
    assert config.log.format == "json"
    assert config.log.level == "debug"


def test_the_configuration_is_immutable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "node_id: n1\n"))

    with pytest.raises(ValidationError):
        config.node_id = "n2"  # type: ignore[misc]
    assert config.model_copy(update={"node_id": "n2"}).node_id == "n2"


def test_dev_yaml_is_an_embedded_single_node() -> None:
    config = load_config(REPO_ROOT / "config" / "dev.yaml")

    assert config.node_id == "dev-node"
    assert config.state_dir == Path(".state")
    assert config.mqtt.embedded is True
    assert (config.mqtt.host, config.mqtt.port) == ("127.0.0.1", 1883)
    assert config.mqtt.tls is None
    assert config.log.format == "console"


def test_the_example_file_is_valid_and_shows_the_defaults() -> None:
    config = load_config(REPO_ROOT / "config" / "agent.example.yaml")

    assert config.node_id == "testhost"  # commented out there, so each node takes its host name
    assert config.model_dump() == AgentConfig().model_dump()


# --- environment overrides -----------------------------------------------------------------------------


def test_the_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_NODE_ID", "n1")
    monkeypatch.setenv("RECONCILE_MQTT__PORT", "1884")
    monkeypatch.setenv("RECONCILE_MQTT__EMBEDDED", "true")
    monkeypatch.setenv("RECONCILE_STATE_DIR", "/srv/agent")
    monkeypatch.setenv("RECONCILE_LOG__LEVEL", "debug")
    path = write(tmp_path, "node_id: from-file\nmqtt:\n  host: broker.local\n  port: 1999\n")

    config = load_config(path)

    assert config.node_id == "n1"
    assert config.mqtt.port == 1884
    assert config.mqtt.embedded is True
    assert config.mqtt.host == "broker.local"  # the rest of the file's section is kept
    assert config.state_dir == Path("/srv/agent")
    assert config.log.level == "debug"
    assert config.client_id == "reconcile-agent-n1"


def test_an_all_digit_node_id_from_the_environment_stays_a_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILE_NODE_ID", "0042")

    assert load_config(write(tmp_path, "")).node_id == "0042"


def test_unrelated_reconcile_variables_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_TEST_BROKER", "amqtt")

    assert load_config(write(tmp_path, "")).mqtt.port == 1883


def test_a_bad_environment_value_names_the_key_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILE_MQTT__PORT", "abc")

    message = error_for(write(tmp_path, "")).message

    assert "mqtt.port" in message
    assert "RECONCILE_MQTT__PORT" in message


def test_a_bad_node_id_from_the_environment_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILE_NODE_ID", "a/b")

    message = error_for(write(tmp_path, "")).message

    assert "node_id" in message
    assert "'/'" in message
    assert "RECONCILE_NODE_ID" in message


# --- mistakes in the file ------------------------------------------------------------------------------


def test_an_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, "node_id: n1\nbogus: 1\n")).message

    assert "bogus: unknown key" in message
    assert "node_id, state_dir, mqtt, limits, log" in message


def test_an_unknown_nested_key_is_named_with_its_dotted_path_and_a_suggestion(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, "mqtt:\n  prot: 1884\n")).message

    assert "mqtt.prot: unknown key" in message
    assert "did you mean 'port'" in message


def test_keys_are_case_sensitive(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, "Node_ID: n1\nmqtt:\n  Port: 1\n")).message

    assert "Node_ID: unknown key (did you mean 'node_id'?)" in message
    assert "mqtt.Port: unknown key (did you mean 'port'?)" in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('mqtt:\n  port: "1883"\n', "mqtt.port", "should be a valid integer, got a string ('1883')"),
        ("mqtt:\n  keepalive_s: 1.5\n", "mqtt.keepalive_s", "should be a valid integer, got a number (1.5)"),
        ("mqtt:\n  port: true\n", "mqtt.port", "should be a valid integer, got a boolean (true)"),
        ("mqtt:\n  embedded: 1\n", "mqtt.embedded", "should be a valid boolean, got an integer (1)"),
        ('mqtt:\n  embedded: "yes"\n', "mqtt.embedded", "should be a valid boolean, got a string"),
        ("mqtt:\n  host: [a, b]\n", "mqtt.host", "should be a valid string, got a list"),
        ("mqtt: 5\n", "mqtt", "got an integer (5)"),
        ("node_id: 123\n", "node_id", "put it in quotes"),
        ("limits:\n  max_payload_bytes: 64KiB\n", "limits.max_payload_bytes", "should be a valid integer"),
        ("log:\n  format: xml\n", "log.format", "should be 'json', 'console' or 'auto', got 'xml'"),
        ("log:\n  level: trace\n", "log.level", "'debug', 'info', 'warning' or 'error', got 'trace'"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(tmp_path: Path, text: str, key: str, expected: str) -> None:
    message = error_for(write(tmp_path, text)).message

    assert f"  {key}: " in message
    assert expected in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("mqtt:\n  port: 0\n", "mqtt.port", "greater than or equal to 1, got 0"),
        ("mqtt:\n  port: 65536\n", "mqtt.port", "less than or equal to 65535, got 65536"),
        ("mqtt:\n  keepalive_s: 4\n", "mqtt.keepalive_s", "greater than or equal to 5"),
        ("mqtt:\n  keepalive_s: 3601\n", "mqtt.keepalive_s", "less than or equal to 3600"),
        ("mqtt:\n  host: ''\n", "mqtt.host", "at least 1 character"),
        ("limits:\n  max_payload_bytes: 1023\n", "limits.max_payload_bytes", "greater than or equal to 1024"),
    ],
)
def test_a_value_out_of_range_is_named(tmp_path: Path, text: str, key: str, expected: str) -> None:
    message = error_for(write(tmp_path, text)).message

    assert f"  {key}: " in message
    assert expected in message


@pytest.mark.parametrize(
    ("node_id", "expected"),
    [
        ("a/b", "contains '/'"),
        ("a b", "contains ' '"),
        ("", "must not be empty"),
        ("x" * 129, "129 characters long"),
    ],
)
def test_a_bad_node_id_says_what_is_wrong(tmp_path: Path, node_id: str, expected: str) -> None:
    message = error_for(write(tmp_path, f"node_id: '{node_id}'\n")).message

    assert "  node_id: " in message
    assert expected in message


def test_a_host_name_that_is_not_a_valid_node_id_asks_for_an_explicit_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "my host")

    message = error_for(write(tmp_path, "")).message

    assert "node id 'my host' contains ' '" in message
    assert "host's name" in message
    assert "set node_id" in message


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", "must not be empty"),
        ("a/+/b", "wildcard"),
        ("a/#", "wildcard"),
        ("/a", "must not start or end with '/'"),
        ("a/", "must not start or end with '/'"),
    ],
)
def test_a_bad_topic_prefix_is_rejected(tmp_path: Path, prefix: str, expected: str) -> None:
    message = error_for(write(tmp_path, f"mqtt:\n  topic_prefix: '{prefix}'\n")).message

    assert "  mqtt.topic_prefix: " in message
    assert expected in message


@pytest.mark.parametrize("given", ["cert_file", "key_file"])
def test_a_client_certificate_needs_its_key_and_the_reverse(tmp_path: Path, given: str) -> None:
    message = error_for(write(tmp_path, f"mqtt:\n  tls:\n    {given}: /etc/x.pem\n")).message

    assert "  mqtt.tls: cert_file and key_file must be given together" in message


def test_a_password_needs_a_user_name(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, "mqtt:\n  password_file: /etc/pw\n")).message

    assert "  mqtt: password_file is set but username is not" in message


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, "mqtt:\n  port: x\n  bogus: 1\nlog:\n  level: loud\n")).message

    assert "mqtt.port" in message
    assert "mqtt.bogus" in message
    assert "log.level" in message
    assert len(message.splitlines()) == 4  # a header, then one line per key


# --- files that cannot be read as a configuration ------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    message = error_for(tmp_path / "nope.yaml").message

    assert "cannot read" in message
    assert "no such file" in message


def test_a_directory(tmp_path: Path) -> None:
    assert "cannot read" in error_for(tmp_path).message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id: n1\n")
    path.chmod(0)

    assert "permission denied" in error_for(path).message


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"node_id: \xff\xfe\n")

    assert "not UTF-8" in error_for(path).message


def test_malformed_yaml_gives_line_and_column(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, "node_id: n1\nmqtt:\n  port: 1\n bad: [\n")).message

    assert "malformed YAML at line 4, column 2" in message


def test_an_unclosed_bracket_gives_a_position(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, "mqtt: {port: 1\n")).message

    assert "malformed YAML at line" in message


def test_a_duplicate_key_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, "mqtt:\n  port: 1\nnode_id: n1\nmqtt:\n  host: x\n")).message

    assert "duplicate key 'mqtt'" in message
    assert "line 4, column 1" in message


def test_a_key_that_is_not_a_string(tmp_path: Path) -> None:
    message = error_for(write(tmp_path, "node_id: n1\n1883: port\n")).message

    assert "key 1883 is not a string" in message
    assert "line 2" in message


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "a list"), ("just words\n", "a string"), ("42\n", "an integer")]
)
def test_the_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    message = error_for(write(tmp_path, text), caused=False).message

    assert "top level must be a mapping" in message
    assert kind in message


# --- files the configuration points to -----------------------------------------------------------------


def test_the_password_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("  pass word \r\n", encoding="utf-8")
    path = write(tmp_path, f"mqtt:\n  username: u\n  password_file: {tmp_path / 'pw'}\n")

    assert load_config(path).mqtt_password() == "  pass word "


def test_a_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "pw"
    config = load_config(write(tmp_path, f"mqtt:\n  username: u\n  password_file: {missing}\n"))

    with pytest.raises(ConfigError) as info:
        config.mqtt_password()

    assert info.value.path == missing
    assert "mqtt.password_file" in info.value.message
    assert str(missing) in info.value.message


def test_check_files_names_a_missing_tls_file(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    config = load_config(write(tmp_path, f"mqtt:\n  tls:\n    ca_file: {missing}\n"))

    with pytest.raises(ConfigError) as info:
        config.check_files()

    assert "mqtt.tls.ca_file" in info.value.message
    assert str(missing) in info.value.message


def test_check_files_accepts_readable_files(tmp_path: Path) -> None:
    for name in ("ca.pem", "pw"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    path = write(
        tmp_path,
        f"mqtt:\n  username: u\n  password_file: {tmp_path / 'pw'}\n  tls:\n    ca_file: {tmp_path / 'ca.pem'}\n",
    )

    load_config(path).check_files()


# --- results and publishers ---------------------------------------------------------------------------


def test_results_default_to_the_state_directory_and_no_s3(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "state_dir: /srv/agent\n"))
    assert config.results_path == Path("/srv/agent/results")
    assert config.publishers.s3 is None
    assert config.limits.max_results_bytes == 1024**3
    assert config.s3_credentials() is None


def test_s3_credentials_are_read_from_their_files(tmp_path: Path) -> None:
    (tmp_path / "id").write_text("AKID\n")
    (tmp_path / "secret").write_text("s3cr3t\n")
    text = (
        f"results_dir: {tmp_path / 'r'}\npublishers:\n  s3:\n"
        f"    access_key_id_file: {tmp_path / 'id'}\n    secret_access_key_file: {tmp_path / 'secret'}\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.results_path == tmp_path / "r"
    assert config.s3_credentials() == ("AKID", "s3cr3t")
    config.check_files()


def test_an_empty_s3_section_means_the_aws_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "publishers:\n  s3:\n"))
    assert config.publishers.s3 is not None
    assert config.s3_credentials() is None


def test_one_s3_key_file_without_the_other_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "publishers:\n  s3:\n    access_key_id_file: /etc/id\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "publishers.s3: " in caught.value.message
    assert "must be given together" in caught.value.message


def test_check_files_names_an_unreadable_s3_key_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x")
    text = (
        f"publishers:\n  s3:\n    access_key_id_file: {tmp_path / 'nope'}\n"
        f"    secret_access_key_file: {tmp_path / 'secret'}\n"
    )
    config = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError) as caught:
        config.check_files()
    assert caught.value.message.startswith("publishers.s3.access_key_id_file: cannot read")


# --- labels and admission (issue 14) -----------------------------------------------------------------


def test_labels_and_max_executions_are_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "labels:\n  zone: eu-1a\n  example.com/gpu: ''\n  rack.v2: R_7\nlimits:\n  max_executions: 40\n",
        )
    )
    assert config.labels == {"zone": "eu-1a", "example.com/gpu": "", "rack.v2": "R_7"}
    assert config.limits.max_executions == 40


def test_labels_default_to_none_and_max_executions_to_no_limit(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "labels:\n"))
    assert (config.labels, config.limits.max_executions) == ({}, None)


def test_labels_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_LABELS", '{"zone": "b"}')
    assert load_config(write(tmp_path, "labels: {zone: a}\n")).labels == {"zone": "b"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("labels: {zone: 7}", "labels.zone: should be a valid string, got an integer (7)"),
        ("labels: [a, b]", "labels: should be a valid dictionary"),
        ("labels: {'bad key': x}", "key 'bad key': the name must be letters, digits"),
        ("labels: {'-zone': x}", "key '-zone': the name must be letters, digits"),
        ("labels: {'a/b/c': x}", "key 'a/b/c': the prefix before '/' must be a DNS subdomain"),
        ("labels: {'Example.com/x': x}", "the prefix before '/' must be a DNS subdomain"),
        ("labels: {'/x': x}", "the prefix before '/' must be a DNS subdomain"),
        ("labels: {'': x}", "key '': the name must be letters"),
        (f"labels: {{a: {'v' * 64}}}", "'a': value 'vvvv"),
        ("labels: {a: 'two words'}", "'a': value 'two words': the value must be letters"),
        (f"labels: {{{'k' * 64}: x}}", "the name is longer than 63 characters"),
        ("limits: {max_executions: 0}", "limits.max_executions: should be greater than or equal to 1"),
        ("limits: {max_executions: '3'}", "limits.max_executions: should be a valid integer"),
    ],
)
def test_bad_labels_and_limits_are_named(tmp_path: Path, text: str, expected: str) -> None:
    error = error_for(write(tmp_path, text + "\n"))
    assert expected in error.message, error.message


def test_too_many_labels(tmp_path: Path) -> None:
    text = "labels:\n" + "".join(f"  k{i}: v\n" for i in range(65))
    assert "at most 64 labels, not 65" in error_for(write(tmp_path, text)).message


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("a" * 64 + ".example", "63 between dots"),
        ("a..b", "63 between dots"),
        ("broker host", "holds a space"),
        ("a\x00b", "NUL"),
    ],
)
def test_a_broker_host_the_resolver_cannot_be_asked_for_is_refused_here(
    tmp_path: Path, host: str, fragment: str
) -> None:
    # A label over 63 characters used to surface as a UnicodeError from the MQTT client's resolver.
    text = f'node_id: n1\nmqtt:\n  host: "{host.encode("unicode_escape").decode()}"\n'
    message = error_for(write(tmp_path, text)).message
    assert "mqtt.host" in message
    assert fragment in message


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "broker.example", "b\u00fccher.example", "localhost."])
def test_addresses_and_host_names_are_accepted(tmp_path: Path, host: str) -> None:
    assert load_config(write(tmp_path, f'node_id: n1\nmqtt:\n  host: "{host}"\n')).mqtt.host == host


@pytest.mark.parametrize("prefix", ["a/+/b", "#", "/a", "a/", "a\\0b", "p" * 1025])
def test_a_topic_prefix_that_is_not_one_literal_topic_is_refused(tmp_path: Path, prefix: str) -> None:
    message = error_for(write(tmp_path, f'node_id: n1\nmqtt:\n  topic_prefix: "{prefix}"\n')).message
    assert "mqtt.topic_prefix" in message
