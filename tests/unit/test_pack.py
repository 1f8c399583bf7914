"""The results archive (agent/results/pack.py): deterministic bytes, links kept as links, the size cap."""

from __future__ import annotations

import gzip
import os
import tarfile
import threading
from pathlib import Path

import pytest

from agent.executors.logs import rotate
from agent.results.errors import PublishError
from agent.results.pack import pack


def tree(root: Path) -> tuple[Path, Path]:
    output, run = root / "output-1", root / "run"
    output.mkdir(parents=True)
    run.mkdir()
    (output / "b.txt").write_text("bee")
    (output / "a").mkdir()
    (output / "a" / "tool").write_text("#!/bin/sh\n")
    (output / "a" / "tool").chmod(0o700)
    (output / "link").symlink_to("/etc/passwd")
    os.mkfifo(output / "fifo")
    (run / "stdout.log").write_text("out\n")
    return output, run


def names(path: Path) -> list[tuple[str, str, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.type.decode(), m.mode) for m in tar.getmembers()]


def test_the_same_results_pack_to_the_same_bytes(tmp_path: Path) -> None:
    output, run = tree(tmp_path)
    first = pack(tmp_path / "one.tar.gz", output, run, 0, 10**6)
    # Times, owners' names and the order of creation differ; the content does not.
    os.utime(output / "b.txt", (1, 1))
    (output / "b.txt").chmod(0o600)
    second = pack(tmp_path / "two.tar.gz", output, run, 0, 10**6)
    assert first.sha256 == second.sha256
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    assert first.size_bytes == (tmp_path / "one.tar.gz").stat().st_size
    assert first.files == 6  # exit_code, stdout, stderr, b.txt, tool, link
    with gzip.open(tmp_path / "one.tar.gz") as gz:
        gz.read(1)
        assert gz.mtime == 0  # type: ignore[attr-defined]


def test_entries_are_sorted_normalised_and_links_are_not_followed(tmp_path: Path) -> None:
    output, run = tree(tmp_path)
    packed = pack(tmp_path / "r.tar.gz", output, run, 3, 10**6)
    assert names(packed.path) == [
        ("exit_code", "0", 0o644),
        ("stdout", "0", 0o644),
        ("stderr", "0", 0o644),
        ("output", "5", 0o755),
        ("output/a", "5", 0o755),
        ("output/a/tool", "0", 0o755),
        ("output/b.txt", "0", 0o644),
        ("output/link", "2", 0o777),  # the FIFO is left out
    ]
    with tarfile.open(packed.path) as tar:
        assert tar.getmember("output/link").linkname == "/etc/passwd"
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in tar.getmembers()} == {(0, 0, "", "", 0)}
        exit_code = tar.extractfile("exit_code")
        assert exit_code is not None
        assert exit_code.read() == b"3\n"


def test_a_rotated_log_is_packed_whole(tmp_path: Path) -> None:
    output, run = tree(tmp_path)
    rotate(run / "stdout.log", keep=3)
    (run / "stdout.log").write_text("after\n")
    packed = pack(tmp_path / "r.tar.gz", output, run, 0, 10**6)
    with tarfile.open(packed.path) as tar:
        stdout = tar.extractfile("stdout")
        assert stdout is not None
        assert stdout.read() == b"out\nafter\n"


def test_no_output_directory_packs_an_empty_one(tmp_path: Path) -> None:
    packed = pack(tmp_path / "r.tar.gz", tmp_path / "missing", tmp_path / "no-run", None, 10**6)
    assert [n for n, _, _ in names(packed.path)] == ["exit_code", "stdout", "stderr", "output"]


def test_an_output_directory_replaced_by_a_link_is_archived_as_that_link(tmp_path: Path) -> None:
    (tmp_path / "output-1").symlink_to("/etc")
    packed = pack(tmp_path / "r.tar.gz", tmp_path / "output-1", tmp_path, 0, 10**6)
    assert names(packed.path)[-1] == ("output", "2", 0o777)


def test_over_the_cap_fails_for_good_and_leaves_nothing(tmp_path: Path) -> None:
    output, run = tree(tmp_path)
    (output / "big").write_bytes(b"x" * 5000)
    with pytest.raises(PublishError) as caught:
        pack(tmp_path / "r.tar.gz", output, run, 0, 4000)
    assert caught.value.retryable is False
    assert "over the limit of 4000 (limits.max_results_bytes)" in caught.value.reason
    assert list(tmp_path.glob("*.tar.gz*")) == []
    assert list(tmp_path.glob(".*partial")) == []


def test_a_pack_under_way_ends_when_told_to_stop(tmp_path: Path) -> None:
    output, run = tree(tmp_path)
    stop = threading.Event()
    stop.set()
    with pytest.raises(PublishError) as caught:
        pack(tmp_path / "r.tar.gz", output, run, 0, 10**6, stop=stop)
    assert caught.value.retryable is True
    assert list(tmp_path.glob("*.tar.gz*")) == []
