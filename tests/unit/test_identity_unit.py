"""The rules of agent/identity.py that need no broker: whose status is it, and what a takeover looks like."""

from __future__ import annotations

from agent.identity import Takeovers, other_online


def test_only_another_instance_online_is_a_conflict() -> None:
    assert other_online({"state": "online", "instance_id": "b"}, "a")
    assert other_online({"state": "online"}, "a"), "an agent from before instance ids is another agent"
    assert not other_online({"state": "online", "instance_id": "a"}, "a"), "a restart of this agent"
    assert not other_online({"state": "offline", "instance_id": "b"}, "a")
    assert not other_online(None, "a")


def test_three_short_sessions_in_a_row_are_a_takeover() -> None:
    takeovers = Takeovers(short_s=25.0)
    for at in (0.0, 1.0):
        takeovers.connected(at)
        assert not takeovers.ended(at + 0.1)
    takeovers.connected(2.0)
    assert takeovers.ended(2.1)
    assert takeovers.describe().startswith("3 sessions in a row were lost soon after they were made")


def test_a_long_session_or_a_failed_attempt_starts_the_count_again() -> None:
    takeovers = Takeovers(short_s=25.0)
    takeovers.connected(0.0)
    assert not takeovers.ended(0.1)
    takeovers.connected(1.0)
    assert not takeovers.ended(1.1)
    assert not takeovers.ended(2.0), "the broker refused or was unreachable: an outage, not a takeover"
    for at in (3.0, 4.0):
        takeovers.connected(at)
        assert not takeovers.ended(at + 0.1)
    takeovers.connected(5.0)
    assert not takeovers.ended(100.0), "a session that lasted is not a takeover"
    takeovers.connected(101.0)
    assert not takeovers.ended(101.1)
