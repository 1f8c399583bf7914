"""No execution is ever stuck: every effect may fail, with any exception type, at any point.

A property test over the real runtime, the real store and real processes (no broker: desired documents go
straight into the runtime's queue). The executor and the prober are the real ones with faults injected
around them: before a call, or after it did its work (for the calls that are safe to repeat). Whatever
fails, each execution must reach a state that says what happened (completed, failed, stopped), no
workload may be left running, and the agent must keep deciding.
"""

from __future__ import annotations

import asyncio
import errno
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import runtime as runtime_module
from agent.core.events import DesiredReceived
from agent.core.model import Absent, Execution, ProcessRef
from agent.executors.process import ProcessExecutor, ProcessTableError, SpawnError
from agent.probes import Prober
from agent.protocol import Accepted, Spec, Topics, parse_desired
from agent.results.publishers import Publishers
from agent.store import Store
from tests.support.agent import desired, kill_group, pid_alive
from tests.support.leftovers import remove_cgroups
from tests.support.runtime import standalone_runtime
from tests.support.wait import wait_until

T = TypeVar("T")
NODE = "node-1"
SETTLED = {"completed", "failed", "stopped"}
FAULTS: tuple[Callable[[], BaseException], ...] = (
    lambda: OSError(errno.EMFILE, "Too many open files"),
    lambda: ProcessTableError(errno.EMFILE, "cannot read /proc/1/stat: Too many open files"),
    lambda: RuntimeError("can't start new thread"),
    MemoryError,
    lambda: ValueError("embedded null byte"),
    lambda: KeyError("surprise"),
    lambda: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
)


class Faults:
    """Decides, call by call, whether an effect fails and how; seeded, so an example replays."""

    def __init__(self, seed: int, rate: float, budget: int) -> None:
        self._random = random.Random(seed)
        self._rate = rate
        self._budget = budget  # at most this many: a fault that never ends is an outage, not a fault
        self.injected = 0

    def maybe(self) -> None:
        if self.injected < self._budget and self._random.random() < self._rate:
            self.injected += 1
            raise self._random.choice(FAULTS)()

    def after(self) -> bool:
        return self._random.random() < 0.5


class FaultyExecutor(ProcessExecutor):
    def __init__(self, state_dir: Path, faults: Faults) -> None:
        super().__init__(state_dir)
        self.faults = faults
        self.pids: set[int] = set()

    def _idempotent(self, call: Callable[[], T]) -> T:
        after = self.faults.after()
        if not after:
            self.faults.maybe()
        result = call()
        if after:
            self.faults.maybe()
        return result

    async def spawn(self, execution_id: str, attempt: int, spec: Spec) -> ProcessRef:
        self.faults.maybe()  # before: a spawn that did its work must report it (it is not idempotent)
        ref = await super().spawn(execution_id, attempt, spec)
        self.pids.add(ref.pid)
        return ref

    def _start(self, execution_id: str, attempt: int, spec: Spec) -> ProcessRef:
        self.faults.maybe()  # inside the worker thread, where the executor must turn it into SpawnError
        return super()._start(execution_id, attempt, spec)

    async def wait(self, ref: ProcessRef) -> None:
        after = self.faults.after()
        if not after:
            self.faults.maybe()
        await super().wait(ref)
        if after:
            self.faults.maybe()

    def outcome(self, execution_id: str, attempt: int) -> Any:
        return self._idempotent(lambda: super(FaultyExecutor, self).outcome(execution_id, attempt))

    def signal(self, ref: ProcessRef, name: str) -> bool:
        return self._idempotent(lambda: super(FaultyExecutor, self).signal(ref, name))

    def remove(self, execution_id: str) -> None:
        self._idempotent(lambda: super(FaultyExecutor, self).remove(execution_id))


class FaultyProber(Prober):
    faults: Faults

    def sync(self, state: Execution | Absent) -> None:
        self.faults.maybe()
        super().sync(state)


COMMANDS = {
    "exits-0": ["true"],
    "exits-1": ["false"],
    "short": ["sleep", "0.3"],
    "long": ["sleep", "30"],
}


def document(execution_id: str, generation: int, state: str, command: str, probe: bool) -> DesiredReceived:
    body = desired(execution_id, generation, state, COMMANDS[command])
    body["spec"]["restart"] = {"policy": "on-failure", "max_restarts": 2, "backoff_s": 0.05}
    body["spec"]["validation"] = {"window_s": 0.2, "deadline_s": 5}
    body["spec"]["stop"] = {"grace_s": 0.3}
    if probe:
        body["spec"]["probe"] = {"exec": {"command": ["true"]}, "period_s": 0.1}
    parsed = parse_desired(execution_id, json.dumps(body).encode(), 1 << 20)
    assert isinstance(parsed, Accepted), parsed
    return DesiredReceived(parsed.document, parsed.digest)


async def scenario(
    state_dir: Path, seed: int, rate: float, budget: int, plan: list[tuple[str, bool]]
) -> None:
    faults = Faults(seed, rate, budget)
    store = Store(state_dir / "agent.db", NODE)
    executor = FaultyExecutor(state_dir, faults)
    runtime = standalone_runtime(
        store,
        executor,
        Topics("reconcile/v1", NODE),
        Publishers.local_only(state_dir / "results"),
        FaultyProber,
    )
    assert isinstance(runtime.prober, FaultyProber)
    runtime.prober.faults = faults
    task = asyncio.create_task(runtime.run(), name="runtime")
    ids = [f"e{i}" for i in range(len(plan))]
    try:
        for execution_id, (command, probe) in zip(ids, plan, strict=True):
            runtime.submit(execution_id, document(execution_id, 1, "running", command, probe))
        await asyncio.sleep(0.4)  # part of the scenario: let some run before they are asked to stop
        for execution_id, (command, probe) in zip(ids, plan, strict=True):
            runtime.submit(execution_id, document(execution_id, 2, "stopped", command, probe))

        def settled() -> bool:
            return all(
                (e := runtime.executions.get(i)) is not None and e.state_type in SETTLED and not e.active
                for i in ids
            )

        await wait_until(
            settled,
            timeout=30,
            what=(
                f"every execution settled (faults injected: {faults.injected}; states: "
                f"{ {i: runtime.executions[i].state_type for i in ids if i in runtime.executions} })"
            ),
        )
        assert not task.done(), "the runtime stopped deciding"
        await wait_until(
            lambda: not any(pid_alive(p) for p in executor.pids), timeout=10, what="no workload left"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for pid in executor.pids:
            if pid_alive(pid):
                kill_group(pid)
        remove_cgroups(state_dir)
        store.close()


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # the same examples every run: a property test that is also a reliable CI test
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0.1, 0.3, 0.6]),
    budget=st.integers(1, 12),
    plan=st.lists(st.tuples(st.sampled_from(sorted(COMMANDS)), st.booleans()), min_size=1, max_size=4),
)
def test_whatever_an_effect_raises_no_execution_is_left_waiting(
    tmp_path_factory: Any, seed: int, rate: float, budget: int, plan: list[tuple[str, bool]]
) -> None:
    state_dir = tmp_path_factory.mktemp("faults")
    # The retries' backoff (up to 5 s) is not what is tested: that they end is.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime_module, "EFFECT_RETRY_MAX_S", 0.2)
        asyncio.run(scenario(state_dir, seed, rate, budget, plan))


def test_a_spawn_error_is_what_the_executor_raises_for_any_fault_inside_it(tmp_path: Path) -> None:
    faults = Faults(seed=1, rate=1.0, budget=1000)
    executor = FaultyExecutor(tmp_path, faults)
    spec = Spec.model_validate({"command": ["true"]})
    for _ in range(20):
        try:
            executor._spawn("e", 1, spec)
        except SpawnError:
            continue
        raise AssertionError("the fault was not raised")
