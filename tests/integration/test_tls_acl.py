"""Broker security end to end: the shipped mosquitto configuration and ACL (config/mosquitto/) over TLS.

Certificates come from the shipped config/mosquitto/make-certs.sh (openssl). Each broker runs one of the
two shipped variants, with only its paths and port rewritten:
- ``password``: config/mosquitto/mosquitto.conf, user name = node id, password from mosquitto_passwd;
- ``mtls``: config/mosquitto/mosquitto-mtls.conf, the client certificate's CN is the user name.

A denied subscription is granted by mosquitto 2.0 and then receives nothing; a denied publish is
acknowledged and dropped. So "nothing arrives" is proven behind a fence: a message the same client is
allowed to receive (or send), which arrives after anything the denied one could have produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
import structlog
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig, ConfigError, MqttConfig, TlsConfig
from agent.tls import connect_hint, tls_context
from tests.support import programs
from tests.support.agent import (
    AgentProcess,
    StatusLog,
    config_for,
    desired,
    desired_topic,
    events_topic,
    node_topic,
    running_agent,
    sleeper,
    status_topic,
)
from tests.support.broker import REPO_ROOT, Broker
from tests.support.mqtt import Message, Probe
from tests.support.wait import wait_until_sync

MOSQUITTO_DIR = REPO_ROOT / "config" / "mosquitto"
MAKE_CERTS = MOSQUITTO_DIR / "make-certs.sh"
CONF = {"password": "mosquitto.conf", "mtls": "mosquitto-mtls.conf"}
USERS = ("node-1", "node-2", "orchestrator")
PREFIX = "reconcile/v1/nodes"

needs_tools = programs.needs("mosquitto", "mosquitto_passwd", "openssl")


# --- certificates and brokers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path  # the fleet's CA and its certificates
    other: Path  # another CA, with a node-1 certificate of its own: the wrong CA for either side

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def make_certs(directory: Path, *names: str) -> None:
    programs.require("openssl")
    subprocess.run(["sh", str(MAKE_CERTS), "-d", str(directory), *names], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    make_certs(base / "fleet", *USERS)
    make_certs(base / "other", "node-1")
    return Pki(base / "fleet", base / "other")


def password_of(name: str) -> str:
    return f"secret of {name}"


class TlsBroker(Broker):
    """mosquitto with a shipped configuration: its /etc/mosquitto/reconcile/ files are copied here."""

    def __init__(self, data_dir: Path, variant: str, pki: Pki) -> None:
        super().__init__(data_dir, kind="mosquitto")
        self.variant = variant
        self.pki = pki
        self.etc = data_dir / "etc"
        self.etc.mkdir()
        for name in ("ca.crt", "server.crt", "server.key"):
            shutil.copy(pki.dir / name, self.etc / name)
        shutil.copy(MOSQUITTO_DIR / "acl", self.etc / "acl")
        for i, user in enumerate(USERS):
            # The way docs/security.md tells an operator to make the password file.
            flags = ["-b", "-c"] if i == 0 else ["-b"]
            subprocess.run(
                [
                    programs.require("mosquitto_passwd"),
                    *flags,
                    str(self.etc / "passwd"),
                    user,
                    password_of(user),
                ],
                check=True,
                capture_output=True,
            )

    def _write_mosquitto_conf(self) -> Path:
        text = (MOSQUITTO_DIR / CONF[self.variant]).read_text()
        for old, new in (
            ("/etc/mosquitto/reconcile/", f"{self.etc}/"),
            ("/var/lib/mosquitto/", f"{self.data_dir}/"),
            ("\nlistener 8883\n", f"\nlistener {self.port} {self.host}\n"),
        ):
            assert old in text, f"{CONF[self.variant]} no longer has {old!r}"
            text = text.replace(old, new)
        text += f"\nlog_dest file {self.log_path}\nlog_type all\n"
        if os.geteuid() == 0:
            text += "user root\n"  # else mosquitto drops to `mosquitto`, who cannot read this directory
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(text)
        return conf

    # --- what each user presents -------------------------------------------------------------------

    def client_tls(self, name: str | None, ca: Path | None = None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca or self.pki.ca)
        if name is not None and self.variant == "mtls":
            context.load_cert_chain(self.pki.cert(name), self.pki.key(name))
        return context

    def credentials(self, name: str) -> dict[str, Any]:
        if self.variant == "mtls":
            return {"tls_context": self.client_tls(name)}
        return {"tls_context": self.client_tls(name), "username": name, "password": password_of(name)}

    def agent_mqtt(self, name: str, ca: Path | None = None) -> dict[str, Any]:
        """The agent's mqtt settings for user ``name`` (as keyword arguments of MqttConfig)."""
        if self.variant == "mtls":
            tls = TlsConfig(
                ca_file=ca or self.pki.ca,
                cert_file=self.pki.cert(name),
                key_file=self.pki.key(name),
                required=True,
            )
            return {"tls": tls}
        password_file = self.data_dir / f"{name}.password"
        password_file.write_text(password_of(name) + "\n")
        return {
            "tls": TlsConfig(ca_file=ca or self.pki.ca, required=True),
            "username": name,
            "password_file": password_file,
        }


class TlsProbe(Probe):
    """The tests' Probe, connected over TLS with one user's credentials."""

    def __init__(self, broker: TlsBroker, name: str) -> None:
        super().__init__(broker.host, broker.port, identifier=f"probe-{name}-{os.urandom(3).hex()}")
        self.name = name
        self._client = aiomqtt.Client(
            broker.host, broker.port, identifier=self.identifier, timeout=10, **broker.credentials(name)
        )


def start_broker(tmp_path: Path, variant: str, pki: Pki) -> TlsBroker:
    broker = TlsBroker(tmp_path / f"broker-{variant}", variant, pki)
    broker.start()
    return broker


@pytest.fixture(params=["password", "mtls"])
def tls_broker(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> Any:
    broker = start_broker(tmp_path, request.param, pki)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def password_broker(tmp_path: Path, pki: Pki) -> Any:
    broker = start_broker(tmp_path, "password", pki)
    try:
        yield broker
    finally:
        broker.stop()


def as_yaml(mqtt: dict[str, Any]) -> dict[str, Any]:
    """MqttConfig keyword arguments as the agent's YAML file would hold them."""
    return MqttConfig(**mqtt).model_dump(mode="json", include=set(mqtt), exclude_none=True)


def from_node(probe: Probe, node: str) -> list[Message]:
    return [m for m in probe.messages if m.topic.startswith(f"{PREFIX}/{node}/")]


# --- the agent over TLS ------------------------------------------------------------------------------


@needs_tools
async def test_the_agent_works_over_tls_with_the_acl(tls_broker: TlsBroker, state_dir: Path) -> None:
    config = config_for(tls_broker, state_dir, "node-1", **tls_broker.agent_mqtt("node-1"))
    async with TlsProbe(tls_broker, "orchestrator") as orchestrator:
        await orchestrator.subscribe(f"{PREFIX}/+/executions/+/status")
        await orchestrator.subscribe(f"{PREFIX}/+/status")
        await orchestrator.subscribe(f"{PREFIX}/+/events")
        log = StatusLog(orchestrator, "node-1", "web")
        async with running_agent(config):
            await orchestrator.wait_for(
                lambda m: m.topic == node_topic("node-1") and m.json()["state"] == "online",
                what="node-1 online",
            )
            await orchestrator.wait_for(
                lambda m: m.topic == events_topic("node-1") and m.json()["type"] == "agent_started",
                what="agent_started event",
            )
            await orchestrator.publish(
                desired_topic("node-1", "web"), desired("web", command=sleeper()), retain=True
            )
            running = await log.wait_state("running")
            assert running["node_id"] == "node-1"
            mark = orchestrator.mark()
            await orchestrator.publish(
                desired_topic("node-1", "web"), desired("web", 2, "stopped"), retain=True
            )
            await log.wait_state("stopped", after=mark)
            mark = orchestrator.mark()
            await orchestrator.publish(desired_topic("node-1", "web"), b"", retain=True)
            await orchestrator.wait_for(
                lambda m: m.topic == log.topic and m.payload == b"", after=mark, what="status cleared"
            )
        await orchestrator.wait_for(
            lambda m: m.topic == node_topic("node-1") and m.json()["state"] == "offline",
            what="node-1 offline",
        )


@needs_tools
async def test_the_agent_s_last_will_passes_the_acl(
    tls_broker: TlsBroker, state_dir: Path, tmp_path: Path
) -> None:
    """Killed, the agent cannot say `offline` itself: the broker publishes its will, which the ACL allows."""
    mqtt = as_yaml(tls_broker.agent_mqtt("node-1"))
    agent = AgentProcess(tls_broker, tmp_path / "agent", "node-1", state_dir, mqtt=mqtt)
    async with TlsProbe(tls_broker, "orchestrator") as orchestrator:
        await orchestrator.subscribe(node_topic("node-1"))
        agent.start()
        try:
            await orchestrator.wait_for(
                lambda m: m.json()["state"] == "online", timeout=20, what="node-1 online"
            )
            mark = orchestrator.mark()
            agent.signal(signal.SIGKILL)
            agent.wait()
            await orchestrator.wait_for(
                lambda m: m.json()["state"] == "offline", after=mark, what="node-1's will"
            )
        finally:
            agent.kill()
    async with TlsProbe(tls_broker, "orchestrator") as late:
        await late.subscribe(node_topic("node-1"))
        retained = await late.wait_for_topic(node_topic("node-1"))
        assert retained.retain
        assert retained.json()["state"] == "offline"


# --- what node-2's credentials cannot do ---------------------------------------------------------------


@needs_tools
async def test_node_2_cannot_read_node_1s_desired_state(tls_broker: TlsBroker) -> None:
    async with TlsProbe(tls_broker, "orchestrator") as orchestrator:
        await orchestrator.publish(desired_topic("node-1", "a"), b"retained secret of node-1", retain=True)
        await orchestrator.publish(desired_topic("node-2", "b"), b"retained for node-2", retain=True)
        async with TlsProbe(tls_broker, "node-2") as node_2:
            # Granted or refused, depending on the mosquitto version; either way nothing may arrive.
            for topic_filter in (
                f"{PREFIX}/node-1/executions/+/desired",
                f"{PREFIX}/node-1/executions/a/desired",
                f"{PREFIX}/+/executions/+/desired",
                f"{PREFIX}/node-1/#",
                "#",
            ):
                with contextlib.suppress(aiomqtt.MqttError):
                    await node_2.subscribe(topic_filter)
            # Its own desired state it does read (the retained one, through the wildcard subscriptions).
            await node_2.wait_for(lambda m: m.topic == desired_topic("node-2", "b"), what="own retained")
            await orchestrator.publish(desired_topic("node-1", "a"), b"live secret of node-1", qos=1)
            await orchestrator.publish(desired_topic("node-1", "a"), b"live secret of node-1", qos=0)
            await orchestrator.publish(desired_topic("node-2", "fence"), b"fence", qos=1)
            await node_2.wait_for(
                lambda m: m.topic == desired_topic("node-2", "fence"), what="the fence on its own topic"
            )
            assert from_node(node_2, "node-1") == []
            assert all(m.topic.startswith(f"{PREFIX}/node-2/") for m in node_2.messages), node_2.messages


@needs_tools
async def test_node_2_cannot_publish_as_node_1_or_write_desired_state(tls_broker: TlsBroker) -> None:
    async with TlsProbe(tls_broker, "orchestrator") as orchestrator:
        for topic_filter in (
            f"{PREFIX}/+/executions/+/status",
            f"{PREFIX}/+/status",
            f"{PREFIX}/+/events",
            f"{PREFIX}/+/executions/+/desired",
        ):
            await orchestrator.subscribe(topic_filter)
        async with TlsProbe(tls_broker, "node-2") as node_2:
            forged = {"node_id": "node-1", "state": "online", "forged": True}
            for qos in (0, 1):
                await node_2.publish(status_topic("node-1", "web"), forged, retain=True, qos=qos)
                await node_2.publish(node_topic("node-1"), forged, retain=True, qos=qos)
                await node_2.publish(events_topic("node-1"), forged, qos=qos)
                # No node writes desired documents, not even its own.
                await node_2.publish(desired_topic("node-1", "web"), forged, retain=True, qos=qos)
                await node_2.publish(desired_topic("node-2", "web"), forged, retain=True, qos=qos)
            # Its own node status it may publish: the fence.
            await node_2.publish(node_topic("node-2"), {"node_id": "node-2", "state": "online"}, qos=1)
            await orchestrator.wait_for(lambda m: m.topic == node_topic("node-2"), what="the fence")
        assert [m.topic for m in orchestrator.messages] == [node_topic("node-2")]
    # Nothing forged was retained either.
    async with TlsProbe(tls_broker, "orchestrator") as late:
        await late.subscribe(f"{PREFIX}/node-1/#")
        await late.subscribe(f"{PREFIX}/node-2/executions/+/desired")
        await late.subscribe(node_topic("node-2"))
        await late.publish(desired_topic("node-2", "fence"), b"fence", qos=1)
        await late.wait_for(lambda m: m.topic == desired_topic("node-2", "fence"), what="the fence")
        assert [m.topic for m in late.messages] == [desired_topic("node-2", "fence")]


def control_topic(node: str) -> str:
    return f"{PREFIX}/{node}/control"


def logs_topic(node: str, leaf: str) -> str:
    return f"{PREFIX}/{node}/logs/{leaf}"


@needs_tools
async def test_node_2_cannot_cordon_node_1_nor_read_its_control(
    tls_broker: TlsBroker, state_dir: Path
) -> None:
    config = config_for(tls_broker, state_dir, "node-1", **tls_broker.agent_mqtt("node-1"))
    async with TlsProbe(tls_broker, "orchestrator") as orchestrator, running_agent(config) as agent:
        for topic_filter in (f"{PREFIX}/+/control", f"{PREFIX}/+/status", f"{PREFIX}/+/events"):
            await orchestrator.subscribe(topic_filter)
        await orchestrator.publish(control_topic("node-1"), {"generation": 1, "cordoned": False}, retain=True)
        async with TlsProbe(tls_broker, "node-2") as node_2:
            for topic_filter in (control_topic("node-1"), f"{PREFIX}/+/control", f"{PREFIX}/node-1/#"):
                with contextlib.suppress(aiomqtt.MqttError):
                    await node_2.subscribe(topic_filter)
            mark = orchestrator.mark()
            for qos in (0, 1):
                forged = {"generation": 99 + qos, "cordoned": True}
                await node_2.publish(control_topic("node-1"), forged, retain=True, qos=qos)
                await node_2.publish(control_topic("node-2"), forged, retain=True, qos=qos)  # nor its own
            # The fence: node-2's own node status, which it may write, behind everything it sent.
            await node_2.publish(node_topic("node-2"), {"node_id": "node-2", "state": "online"}, qos=1)
            await orchestrator.wait_for(lambda m: m.topic == node_topic("node-2"), after=mark, what="fence")
            assert not [m for m in orchestrator.messages[mark:] if m.topic.endswith("/control")]
            # node-1's agent never saw it: not cordoned, nothing rejected.
            assert (agent.runtime.control.generation, agent.runtime.control.cordoned) in (
                (0, False),
                (1, False),
            )
            assert not [
                m
                for m in orchestrator.messages
                if m.topic == events_topic("node-1") and m.json()["type"] == "control_rejected"
            ]
            # The orchestrator can: node-1 is cordoned (its node status says so).
            await orchestrator.publish(
                control_topic("node-1"), {"generation": 2, "cordoned": True}, retain=True
            )
            await orchestrator.wait_for(
                lambda m: m.topic == node_topic("node-1") and m.json()["cordoned"] is True,
                after=mark,
                what="node-1 cordoned by the orchestrator",
            )
            # node-2 read none of node-1's control documents, retained or live.
            await node_2.subscribe(f"{PREFIX}/node-2/executions/+/desired")
            await orchestrator.publish(desired_topic("node-2", "fence"), b"fence", qos=1)
            await node_2.wait_for(
                lambda m: m.topic == desired_topic("node-2", "fence"), what="node-2's fence"
            )
            assert from_node(node_2, "node-1") == []


@needs_tools
async def test_node_2_can_neither_ask_for_node_1s_logs_nor_read_its_replies(tls_broker: TlsBroker) -> None:
    request = {"request_id": "r1", "execution_id": "web", "stream": "stdout"}
    async with (
        TlsProbe(tls_broker, "orchestrator") as orchestrator,
        TlsProbe(tls_broker, "node-1") as node_1,
        TlsProbe(tls_broker, "node-2") as node_2,
    ):
        await orchestrator.subscribe(f"{PREFIX}/+/logs/+")
        await node_1.subscribe(logs_topic("node-1", "request"))
        await node_2.subscribe(logs_topic("node-2", "request"))
        for topic_filter in (f"{PREFIX}/node-1/logs/+", f"{PREFIX}/node-1/logs/#", f"{PREFIX}/+/logs/+", "#"):
            with contextlib.suppress(aiomqtt.MqttError):
                await node_2.subscribe(topic_filter)
        # node-2 cannot send node-1 a log request.
        for qos in (0, 1):
            await node_2.publish(
                logs_topic("node-1", "request"), {**request, "request_id": f"forged-{qos}"}, qos=qos
            )
        await orchestrator.publish(logs_topic("node-1", "request"), request, qos=1)
        got = await node_1.wait_for(
            lambda m: m.topic == logs_topic("node-1", "request"), what="the orchestrator's request"
        )
        assert got.json()["request_id"] == "r1", "the orchestrator's request, and before it none of node-2's"
        # node-1 replies on its own logs/R; the orchestrator reads it, node-2 does not.
        reply = {
            "request_id": "r1",
            "execution_id": "web",
            "node_id": "node-1",
            "stream": "stdout",
            "seq": 0,
            "offset": 0,
            "data": "secret log line of node-1\n",
            "eof": True,
            "error": None,
        }
        await node_1.publish(logs_topic("node-1", "r1"), reply, qos=1)
        await orchestrator.wait_for(lambda m: m.topic == logs_topic("node-1", "r1"), what="node-1's reply")
        # Nor may node-1 answer as node-2, nor node-2 as node-1.
        await node_1.publish(logs_topic("node-2", "r1"), reply, qos=1)
        await node_2.publish(logs_topic("node-1", "r2"), reply, qos=1)
        # The fence for node-2: a request for node-2 itself, which it reads, behind all of the above.
        await orchestrator.publish(logs_topic("node-2", "request"), {**request, "request_id": "fence"}, qos=1)
        await node_2.wait_for(lambda m: m.topic == logs_topic("node-2", "request"), what="node-2's fence")
        assert from_node(node_2, "node-1") == []
        await node_2.publish(logs_topic("node-2", "fence"), {"fence": True}, qos=1)
        await orchestrator.wait_for(
            lambda m: m.topic == logs_topic("node-2", "fence"), what="orchestrator's fence"
        )
        assert [m.topic for m in orchestrator.messages] == [
            logs_topic("node-1", "request"),
            logs_topic("node-1", "r1"),
            logs_topic("node-2", "request"),
            logs_topic("node-2", "fence"),
        ]
        assert [m.json()["request_id"] for m in node_1.messages] == ["r1"]


@needs_tools
async def test_node_2_cannot_read_node_1s_logs_from_a_real_agent(
    tls_broker: TlsBroker, state_dir: Path
) -> None:
    """End to end with logs on request: node-1's agent answers the orchestrator over TLS and the ACL;
    node-2 receives none of the replies, and its own request for node-1's logs never reaches the agent."""
    config = config_for(tls_broker, state_dir, "node-1", **tls_broker.agent_mqtt("node-1"))
    secret = "secret log line of node-1"
    command = ["sh", "-c", f"echo '{secret}'; exec sleep 300"]
    async with (
        TlsProbe(tls_broker, "orchestrator") as orchestrator,
        TlsProbe(tls_broker, "node-2") as node_2,
        running_agent(config),
    ):
        await orchestrator.subscribe(f"{PREFIX}/+/logs/+")
        await orchestrator.subscribe(status_topic("node-1", "web"))
        for topic_filter in (f"{PREFIX}/node-1/logs/+", f"{PREFIX}/node-1/logs/#", f"{PREFIX}/+/logs/+", "#"):
            with contextlib.suppress(aiomqtt.MqttError):
                await node_2.subscribe(topic_filter)
        await orchestrator.publish(
            desired_topic("node-1", "web"), desired("web", command=command), retain=True
        )
        await StatusLog(orchestrator, "node-1", "web").wait_state("running")
        # node-2 asks first: its requests are dropped by the broker, so the agent never answers them.
        for qos in (0, 1):
            forged = {"request_id": f"forged-{qos}", "execution_id": "web", "tail_bytes": 1024}
            await node_2.publish(logs_topic("node-1", "request"), forged, qos=qos)
        asked = {"request_id": "r1", "execution_id": "web", "tail_bytes": 1024}
        await orchestrator.publish(logs_topic("node-1", "request"), asked, qos=1)
        reply = await orchestrator.wait_for(
            lambda m: m.topic == logs_topic("node-1", "r1") and m.json()["eof"] is True, what="node-1's reply"
        )
        replies = [m.json() for m in orchestrator.messages if m.topic == logs_topic("node-1", "r1")]
        assert secret in "".join(r["data"] for r in replies), replies
        assert reply.json()["error"] is None
        # The fence for node-2: a message it may read (its own log request topic), behind node-1's replies.
        await node_2.subscribe(logs_topic("node-2", "request"))
        await orchestrator.publish(logs_topic("node-2", "request"), {"request_id": "fence"}, qos=1)
        await node_2.wait_for(lambda m: m.topic == logs_topic("node-2", "request"), what="node-2's fence")
        assert from_node(node_2, "node-1") == []
        # Behind the reply to r1 nothing came for node-2's requests: the agent's replies go out in order.
        await orchestrator.publish(logs_topic("node-1", "request"), {**asked, "request_id": "r2"}, qos=1)
        await orchestrator.wait_for(
            lambda m: m.topic == logs_topic("node-1", "r2") and m.json()["eof"] is True,
            what="the fence reply",
        )
        assert not [m for m in orchestrator.messages if "/logs/forged" in m.topic]


def connect_and_vanish(broker: TlsBroker, name: str, client_id: str, will_topic: str, will: bytes) -> None:
    """Connect as ``name`` with a retained QoS 1 will, then drop the connection as a crash does.

    paho, not aiomqtt: the test needs the moment between CONNACK and the end of the connection in its
    own hands, and the end must be a bare TCP close (no DISCONNECT, no TLS close_notify), which is what
    the kernel does for a process killed with -9.
    """
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    credentials = broker.credentials(name)
    client.tls_set_context(credentials["tls_context"])
    if "username" in credentials:
        client.username_pw_set(credentials["username"], credentials["password"])
    client.will_set(will_topic, will, qos=1, retain=True)
    answers: list[Any] = []
    client.on_connect = lambda _client, _userdata, _flags, reason, _properties: answers.append(reason)
    client.connect(broker.host, broker.port, keepalive=60)
    wait_until_sync(lambda: client.loop(timeout=0.05) == 0 and answers, 10, what=f"CONNACK for {client_id}")
    assert not answers[0].is_failure, answers
    raw = client.socket()
    assert isinstance(raw, ssl.SSLSocket), raw
    raw.shutdown(socket.SHUT_RDWR)  # SSLSocket.shutdown drops TLS and closes TCP without a close_notify
    raw.close()
    wait_until_sync(
        lambda: f"Client {client_id} closed its connection" in broker.log_tail(200),
        10,
        what=f"the broker noticed {client_id} gone",
    )


@needs_tools
async def test_node_2_cannot_leave_a_forged_last_will_for_node_1(tls_broker: TlsBroker) -> None:
    """mosquitto accepts any will at CONNECT; the ACL is applied when it is published."""
    async with TlsProbe(tls_broker, "orchestrator") as orchestrator:
        await orchestrator.subscribe(f"{PREFIX}/+/status")
        forged = b'{"state": "offline", "forged": true}'
        await asyncio.to_thread(
            connect_and_vanish, tls_broker, "node-2", "forger", node_topic("node-1"), forged
        )
        # The control and the fence: the same crash with a will on node-2's own status is published.
        own = b'{"state": "offline", "control": true}'
        await asyncio.to_thread(
            connect_and_vanish, tls_broker, "node-2", "control", node_topic("node-2"), own
        )
        await orchestrator.wait_for(
            lambda m: m.topic == node_topic("node-2") and m.payload == own, what="the control's will"
        )
        assert from_node(orchestrator, "node-1") == []
    # Nor was it retained.
    async with TlsProbe(tls_broker, "orchestrator") as late:
        await late.subscribe(f"{PREFIX}/+/status")
        await late.wait_for(lambda m: m.topic == node_topic("node-2") and m.retain, what="retained control")
        assert from_node(late, "node-1") == []


# --- certificates the agent or the broker refuses -------------------------------------------------------


@needs_tools
async def test_a_wrong_ca_is_refused_with_a_clear_error(
    password_broker: TlsBroker, pki: Pki, state_dir: Path, tmp_path: Path
) -> None:
    mqtt = as_yaml(password_broker.agent_mqtt("node-1", ca=pki.other / "ca.crt"))
    agent = AgentProcess(password_broker, tmp_path / "agent", "node-1", state_dir, mqtt=mqtt)
    agent.start()
    try:
        agent.wait_logged("broker unreachable", timeout=20)
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
    finally:
        agent.kill()
    lines = agent.log_lines()
    refusals = [line for line in lines if line.get("event") == "broker unreachable"]
    assert "certificate verify failed" in refusals[0]["error"], refusals[0]
    assert not any(line.get("event") == "connected" for line in lines)
    assert "New client connected" not in password_broker.log_tail(200)


def mqtt_connect(broker: TlsBroker, context: ssl.SSLContext | None) -> bytes | str:
    """A bare MQTT 3.1.1 CONNECT over a fresh socket: the broker's first 4 bytes, or the error."""
    client_id = b"bare"
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    packet = b"\x10" + bytes([len(body)]) + body
    try:
        with socket.create_connection((broker.host, broker.port), timeout=5) as raw:
            if context is None:
                raw.sendall(packet)
                return raw.recv(4)
            with context.wrap_socket(raw, server_hostname=broker.host) as tls:
                tls.sendall(packet)
                return tls.recv(4)
    except OSError as exc:  # ssl.SSLError included
        return repr(exc)


CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


@needs_tools
def test_the_mtls_broker_refuses_a_client_without_a_certificate_from_its_ca(tmp_path: Path, pki: Pki) -> None:
    broker = start_broker(tmp_path, "mtls", pki)
    try:
        assert mqtt_connect(broker, broker.client_tls("node-1")) == CONNACK_ACCEPTED  # the control
        stranger = broker.client_tls(None)
        stranger.load_cert_chain(pki.other / "node-1.crt", pki.other / "node-1.key")
        refused = {
            "certificate from another CA": mqtt_connect(broker, stranger),
            "no certificate": mqtt_connect(broker, broker.client_tls(None)),
            "plaintext": mqtt_connect(broker, None),
        }
    finally:
        broker.stop()
    for what, answer in refused.items():
        assert answer == b"" or isinstance(answer, str), (what, answer)  # closed or failed, never a CONNACK
    # The client may see the broker's alert or just the connection closing (TLS 1.3 finishes the client's
    # side of the handshake first); the broker's log says why it refused.
    log = broker.log_tail(500)
    assert log.count("New client connected") == 1, log  # the control only
    for reason in ("certificate verify failed", "peer did not return a certificate", "wrong version number"):
        assert reason in log, (reason, log)


# --- tls.required and the TLS configuration ---------------------------------------------------------------


def run_cli(tmp_path: Path, document: dict[str, Any], **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(document))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE_")} | env
    return subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=REPO_ROOT,
        check=False,
    )


def test_tls_required_from_the_environment_alone_stops_the_agent(tmp_path: Path) -> None:
    document = {
        "node_id": "node-1",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "log": {"format": "json"},
    }
    result = run_cli(tmp_path, document, RECONCILE_MQTT__TLS__REQUIRED="true")
    assert result.returncode == 2, result
    assert "mqtt.tls.required is true but mqtt.tls.ca_file is not set" in result.stderr
    assert "broker unreachable" not in result.stderr  # it never tried to connect


def test_an_unreadable_ca_file_stops_the_agent_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.crt"
    document = {
        "node_id": "node-1",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": "127.0.0.1", "port": 1, "tls": {"ca_file": str(missing), "required": True}},
        "log": {"format": "json"},
    }
    result = run_cli(tmp_path, document)
    assert result.returncode == 2, result
    assert f"mqtt.tls.ca_file: cannot read {missing}: no such file or directory" in result.stderr


def config_with(tls: TlsConfig | None, **mqtt: Any) -> AgentConfig:
    return AgentConfig(node_id="node-1", state_dir=Path("/nonexistent"), mqtt=MqttConfig(tls=tls, **mqtt))


def test_no_tls_section_is_plaintext_and_a_password_in_it_is_warned_about(tmp_path: Path) -> None:
    assert tls_context(config_with(None)) is None
    secret = tmp_path / "password"
    secret.write_text("x")
    with structlog.testing.capture_logs() as logs:
        assert tls_context(config_with(None, username="node-1", password_file=secret)) is None
    assert [e["event"] for e in logs] == ["the MQTT password is sent in plaintext: configure mqtt.tls"]


def test_a_tls_section_verifies_the_broker_with_tls_1_2_or_later(pki: Pki) -> None:
    for tls in (
        TlsConfig(ca_file=pki.ca),
        TlsConfig(ca_file=pki.ca, cert_file=pki.cert("node-1"), key_file=pki.key("node-1"), required=True),
        TlsConfig(),  # the system's CAs
    ):
        context = tls_context(config_with(tls))
        assert context is not None
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_tls_with_the_embedded_broker_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="embedded broker speaks plaintext MQTT only"):
        tls_context(config_with(TlsConfig(ca_file=pki.ca), embedded=True))


@pytest.mark.parametrize(
    ("fields", "at_fault", "message"),
    [
        ({"ca_file": "missing.crt"}, "missing.crt", "mqtt.tls.ca_file: cannot read {}: no such file"),
        ({"ca_file": "node-1.key"}, "node-1.key", "mqtt.tls.ca_file: {} holds no usable CA certificate"),
        (
            {"ca_file": "ca.crt", "cert_file": "node-1.key", "key_file": "node-1.key"},
            "node-1.key",
            "mqtt.tls.cert_file: {} holds no certificate",
        ),
        (
            {"ca_file": "ca.crt", "cert_file": "node-1.crt", "key_file": "node-2.key"},
            "node-2.key",
            "mqtt.tls.key_file: {} is not the key of the certificate in",
        ),
        (
            {"ca_file": "ca.crt", "cert_file": "node-1.crt", "key_file": "node-1.crt"},
            "node-1.crt",
            "mqtt.tls.key_file: {} holds no usable private key",
        ),
        (
            {"ca_file": "ca.crt", "cert_file": "node-1.crt", "key_file": "encrypted.key"},
            "encrypted.key",
            "mqtt.tls.key_file: {} is encrypted with a passphrase",
        ),
    ],
)
def test_a_bad_tls_file_is_a_config_error_naming_it(
    pki: Pki, fields: dict[str, str], at_fault: str, message: str
) -> None:
    encrypted = pki.dir / "encrypted.key"
    if not encrypted.exists():
        subprocess.run(
            [
                "openssl",
                "pkey",
                "-in",
                str(pki.key("node-1")),
                "-aes256",
                "-passout",
                "pass:x",
                "-out",
                str(encrypted),
            ],
            check=True,
        )
    tls = TlsConfig(**{key: pki.dir / name for key, name in fields.items()})
    with pytest.raises(ConfigError) as caught:
        tls_context(config_with(tls))
    assert caught.value.path == pki.dir / at_fault
    assert message.format(pki.dir / at_fault) in caught.value.message


def test_tls_required_needs_a_ca_file() -> None:
    with pytest.raises(ConfigError) as caught:
        tls_context(config_with(TlsConfig(required=True)))
    assert caught.value.path is None
    assert "mqtt.tls.required is true but mqtt.tls.ca_file is not set" in caught.value.message


def test_connect_hints_name_what_to_check() -> None:
    wrong_ca = Exception(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in "
        "certificate chain (_ssl.c:1006)"
    )
    assert "mqtt.tls.ca_file" in (connect_hint(wrong_ca) or "")
    mismatch = Exception(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate "
        "is not valid for '127.0.0.2'. (_ssl.c:1006)"
    )
    assert "mqtt.host" in (connect_hint(mismatch) or "")
    expired = Exception("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired")
    assert "expired" in (connect_hint(expired) or "")
    assert connect_hint(Exception("[Errno 111] Connection refused")) is None
    assert connect_hint(None) is None
