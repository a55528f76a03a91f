"""Lost events: thousands of job files arrive while the daemon is stopped (SIGSTOP), so
inotify's queue overflows; once continued, the rescan finds every job and each runs exactly
once, in bounded memory.

The issue asks for 20,000: on the 2-core CI machine those take about 160 s (measured: 156 s,
peak RSS 73 MiB; about 130 trivial jobs a second, status-file writes dominate), beyond this
test's budget. The default, 8,000, still overflows inotify's queue (16,384 events; each
delivery makes about four) many times over; LOST_EVENTS_JOBS=20000 runs the full size.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.conftest import Host
from tests.util import wait_for

JOBS = int(os.environ.get("LOST_EVENTS_JOBS", "8000"))
RSS_LIMIT = 400 * 1024 * 1024  # generous: the daemon holds every job's record in memory


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigstopped_daemon_misses_events_yet_runs_every_job_once(
        host: Host, tmp_path: Path) -> None:
    out = tmp_path / "ran"
    host.extra_args = ["--rescan", "2", "--max-parallel", "64"]
    proc = host.start()
    host.drop("warmup.yaml", "commands: 'true'\n")
    host.wait_state("warmup", "succeeded")
    daemon = psutil.Process(proc.pid)
    jobs = host.spool / "jobs"  # watched already: every delivery makes events
    text = f"commands: echo $FILEREXEC_JOB >> {out}\n"
    began = time.monotonic()
    proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(JOBS):  # each delivered as sync clients do: temp name, then rename
            tmp = jobs / f".syncthing.b{i}.yaml.tmp"
            tmp.write_text(text)
            os.replace(tmp, jobs / f"b{i}.yaml")
    finally:
        proc.send_signal(signal.SIGCONT)
    dropped = time.monotonic() - began
    db = host.ledger()
    peak = 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, daemon.memory_info().rss)
        (n,) = db.execute("SELECT COUNT(*) FROM runs WHERE finished IS NOT NULL").fetchone()
        return bool(n == JOBS + 1)

    try:
        wait_for(done, timeout=240, interval=0.5, what=f"all {JOBS} jobs to finish")
        per_job = Counter(job for (job,) in db.execute("SELECT job FROM runs"))
        outcomes = Counter(o for (o,) in db.execute("SELECT outcome FROM runs"))
    finally:
        db.close()
    took = time.monotonic() - began
    print(f"{JOBS} jobs: dropped in {dropped:.1f}s, all run after {took:.1f}s, "
          f"peak RSS {peak / 2**20:.0f} MiB")
    assert outcomes == {"succeeded": JOBS + 1}
    assert len(per_job) == JOBS + 1 and max(per_job.values()) == 1
    ran = Counter(out.read_text().split())
    assert len(ran) == JOBS and max(ran.values()) == 1
    assert peak < RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    assert proc.poll() is None
    assert "overflow" in host.log.read_text(), "inotify lost no event: the test proves nothing"
