"""A tiny MQTT client for the walk-through, for machines without mosquitto-clients.

python -m examples.mqtt sub 'reconcile/v1/nodes/dev-node/#'
python -m examples.mqtt pub-desired dev-node hello-1 -- sh -c 'echo hello; sleep 30'
python -m examples.mqtt pub-desired dev-node hello-1 --generation 2 --state stopped
python -m examples.mqtt pub TOPIC PAYLOAD [--retain]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import aiomqtt


async def subscribe(args: argparse.Namespace) -> None:
    async with aiomqtt.Client(args.host, args.port) as client:
        await client.subscribe(args.filter, qos=1)
        async for message in client.messages:
            payload = message.payload.decode() if isinstance(message.payload, bytes) else message.payload
            print(message.topic.value, payload, flush=True)


async def publish(topic: str, payload: bytes, retain: bool, host: str, port: int) -> None:
    async with aiomqtt.Client(host, port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


def desired_document(args: argparse.Namespace) -> dict[str, object]:
    document: dict[str, object] = {
        "execution_id": args.execution,
        "generation": args.generation,
        "desired_state": {"state_type": args.state},
    }
    if args.command:
        document["spec"] = {"command": args.command, "validation": {"window_s": args.window}}
    return document


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.mqtt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    sub = parser.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("sub", help="print every message on a topic filter")
    s.add_argument("filter")
    p = sub.add_parser("pub", help="publish one message")
    p.add_argument("topic")
    p.add_argument("payload")
    p.add_argument("--retain", action="store_true")
    d = sub.add_parser("pub-desired", help="publish a retained desired document")
    d.add_argument("node")
    d.add_argument("execution")
    d.add_argument("--generation", type=int, default=1)
    d.add_argument("--state", choices=["pending", "running", "stopped"], default="running")
    d.add_argument("--window", type=float, default=3.0, help="validation.window_s")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.command = argv[split + 1 :]  # the workload's argv, after --
    try:
        if args.verb == "sub":
            asyncio.run(subscribe(args))
        elif args.verb == "pub":
            asyncio.run(publish(args.topic, args.payload.encode(), args.retain, args.host, args.port))
        else:
            topic = f"reconcile/v1/nodes/{args.node}/executions/{args.execution}/desired"
            payload = json.dumps(desired_document(args)).encode()
            asyncio.run(publish(topic, payload, True, args.host, args.port))
            print(f"{topic} {payload.decode()}")
    except KeyboardInterrupt:
        pass
    except aiomqtt.MqttError as exc:
        raise SystemExit(f"MQTT error: {exc}") from None


if __name__ == "__main__":
    main()
