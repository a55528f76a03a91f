"""A job printing without end must not fill the host's disk (output.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from filerexec import output
from filerexec.output import SLACK, TICK, Trimmer, free_head
from filerexec.render import split_log
from tests.conftest import Host
from tests.util import wait_for

MIB = 1024 * 1024


def test_free_head_keeps_the_size_and_the_tail_and_frees_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "run.out"
    with open(path, "ab") as out:  # the job's own descriptor, O_APPEND
        out.write(b"h" * 8 * MIB + b"tail\n")
        out.flush()
        assert free_head(path, MIB)
        out.write(b"more\n")  # lands at the end, after the hole
    data = path.read_bytes()
    assert len(data) == 8 * MIB + 10 and data.endswith(b"tail\nmore\n")
    assert path.stat().st_blocks * 512 <= MIB + 2 * 4096
    assert not free_head(path, MIB)  # nothing more to free


@pytest.mark.slow
def test_a_job_printing_200_mb_leaves_a_few_log_caps_on_disk_and_its_tail(
        host: Host, tmp_path: Path) -> None:
    chunk, chunks = 64 * 1024, 3200  # 200 MiB, at about 25 MiB/s
    script = tmp_path / "print.py"
    script.write_text(
        "import sys, time\n"
        f"line = b'x' * {chunk - 1} + b'\\n'\n"
        f"for i in range({chunks}):\n"
        "    sys.stdout.buffer.write(line)\n"
        "    sys.stdout.flush()\n"
        "    time.sleep(0.002)\n"
        "print('LAST LINE', flush=True)\n")
    host.start()  # log_cap: the default 1 MiB
    host.drop("chatty.yaml", f"commands: {sys.executable} {script}\n")
    runs = host.state / "spools"
    peak = 0
    deadline = time.monotonic() + 120
    while (host.status("chatty") or {}).get("state") != "succeeded":
        assert time.monotonic() < deadline, f"still {host.status('chatty')}"
        for out in runs.glob("*/runs/*.out"):
            try:
                peak = max(peak, out.stat().st_blocks * 512)
            except FileNotFoundError:
                continue
        time.sleep(0.01)  # sampling the disk use; the loop ends on the job's state
    assert peak <= 4 * MIB, f"{peak / MIB:.1f} MiB of raw output on disk at once"
    assert peak > MIB + SLACK // 2, "the raw output was never even one log cap (not seen?)"
    offset, tail = split_log((host.status_dir / "chatty.log").read_bytes())
    assert tail.endswith(b"x\nLAST LINE\n") and len(tail) <= MIB
    assert offset + len(tail) == chunks * chunk + len(b"LAST LINE\n")  # the count is true


def test_the_trimmer_looks_every_tick_not_at_every_launch_or_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    looks: list[float] = []
    path = tmp_path / "run.out"

    def look(seen: Path, keep: int) -> None:  # other tests' trimmers may still be looking
        if seen == path:
            looks.append(time.monotonic())

    monkeypatch.setattr(output, "free_head", look)
    trimmer = Trimmer(MIB)
    watched = time.monotonic()
    trimmer.watch(path)
    wait_for(lambda: looks, what="the first look")
    assert looks[0] >= watched + 0.9 * TICK  # a new output is empty: not read as its job starts
    looks.clear()
    start = time.monotonic()
    for _ in range(100):  # a burst's launches and steps
        trimmer.watch(path)
        trimmer.only([path])
        time.sleep(0.002)
    elapsed = time.monotonic() - start
    assert len(looks) <= elapsed / TICK + 2, f"{len(looks)} looks in {elapsed:.2f} s"
    trimmer.only([])
