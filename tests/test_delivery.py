"""Delivery of notifications from the ledger's outbox (DESIGN §9, issue 15): a target that is
down is retried for hours with a capped back-off and its events keep their order; a crash
between sending and marking sends the event again under the same ``id``; a receiver that
hangs slows no job; a target that needs Apprise, where Apprise is missing, is named at start
and its events wait."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from filerexec.config import Settings
from filerexec.delivery import GIVE_UP, MAX_BACKOFF, Delivery
from filerexec.ledger import Ledger
from filerexec.notify import Outgoing, trial_event
from filerexec.outbox import Outbox
from filerexec.sender import DeliveryError, send
from tests.conftest import Host
from tests.receiver import Receiver
from tests.test_notify import configure, events_of
from tests.util import wait_for

HOUR = 3600.0


class Flaky:
    """A sender whose ``down`` URLs fail until ``back`` is set; it records every try."""

    def __init__(self, down: set[str]) -> None:
        self.down, self.back = down, False
        self.tries: list[tuple[str, str, float]] = []  # (url, event id, when)
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def __call__(self, url: str, event: Mapping[str, Any]) -> str:
        self.tries.append((url, str(event["id"]), self.now))
        if url in self.down and not self.back:
            raise DeliveryError(f"cannot reach {url}: Connection refused")
        return "HTTP 200 OK"


def outbox_with(tmp_path: Path, *rows: tuple[str, str, float]) -> Path:
    """A ledger whose outbox holds one event per (id, target, created)."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.save([], events=[Outgoing(i, target, {**trial_event("h", at), "id": i}, at)
                            for i, target, at in rows])
    ledger.close()
    return path


def delivery(tmp_path: Path, ledger: Path, sender: Any, clock: Any = None,
             **targets: str) -> Delivery:
    """A worker on ``ledger`` driven by the test (its thread is not started)."""
    settings = Settings(tmp_path, "h", tmp_path / "state", notify=tuple(sorted(targets.items())),
                        notify_retry=10.0)
    worker = Delivery(settings, lambda run_id: tmp_path / run_id, sender=sender,
                      clock=clock or sender.clock)
    worker.outbox = Outbox(ledger)
    return worker


def test_a_target_down_for_hours_is_retried_in_order_and_its_events_are_kept(
        tmp_path: Path) -> None:
    ledger = outbox_with(tmp_path, ("e1", "down", 0.0), ("e2", "down", 1.0), ("e3", "up", 2.0))
    flaky = Flaky({"json://down"})
    worker = delivery(tmp_path, ledger, flaky, down="json://down", up="json://up")
    while flaky.now < 6 * HOUR:  # six hours of the worker's passes, every 10 s of them
        worker.deliver_due()
        flaky.now += 10.0
    tried = [(i, t) for url, i, t in flaky.tries if url == "json://down"]
    assert [i for url, i, _ in flaky.tries if url == "json://up"] == ["e3"]  # not held up
    assert {i for i, _ in tried} == {"e1"}  # e2 waits behind e1: the order is kept
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(tried)]
    assert gaps[:4] == [10.0, 20.0, 40.0, 80.0]  # doubling from notify_retry ...
    assert max(gaps) == MAX_BACKOFF and gaps[-3:] == [MAX_BACKOFF] * 3  # ... up to 15 min
    assert 20 < len(tried) < 40  # tried all along, not every pass, nor given up
    assert [row.id for row in worker.outbox.pending()] == ["e1", "e2"]  # type: ignore[union-attr]
    problem = dict(worker.problems())["down"]
    assert "Connection refused" in problem and f"retrying in {MAX_BACKOFF:g}s" in problem
    flaky.back = True  # the receiver is back: within one back-off, both go, in order
    start = flaky.now
    while worker.outbox.pending():  # type: ignore[union-attr]
        worker.deliver_due()
        flaky.now += 10.0
    assert flaky.now - start <= MAX_BACKOFF + 10.0
    assert [i for url, i, _ in flaky.tries[-2:]] == ["e1", "e2"]
    assert worker.problems() == ()


def test_an_event_is_given_up_only_after_three_days(tmp_path: Path) -> None:
    ledger = outbox_with(tmp_path, ("old", "down", 0.0))
    flaky = Flaky({"json://down"})
    worker = delivery(tmp_path, ledger, flaky, down="json://down")
    flaky.now = GIVE_UP - 1.0
    worker.deliver_due()
    assert [row.id for row in worker.outbox.pending()] == ["old"]  # type: ignore[union-attr]
    flaky.now = GIVE_UP + MAX_BACKOFF
    worker.deliver_due()
    assert worker.outbox.pending() == []  # type: ignore[union-attr]
    assert "given up" in dict(worker.problems())["down"]


def test_a_crash_between_sending_and_marking_sends_it_again_under_the_same_id(
        tmp_path: Path) -> None:
    with Receiver() as r:
        ledger = outbox_with(tmp_path, ("once", "ops", 0.0))
        first = delivery(tmp_path, ledger, send, clock=lambda: 1.0, ops=r.url("json"))

        def crash(*args: object) -> None:
            raise SystemExit("killed after the receiver answered, before the outbox was marked")

        first.outbox.sent = crash  # type: ignore[method-assign,union-attr]
        with pytest.raises(SystemExit):
            first.deliver_due()
        again = delivery(tmp_path, ledger, send, clock=lambda: 2.0, ops=r.url("json"))
        assert again.deliver_due() == 1
        assert again.deliver_due() == 0  # marked sent now: once more, and no more
    events = events_of(r)
    assert len(events) == 2 and events[0] == events[1]
    assert events[0]["id"] == "once"  # the receiver drops the copy by it


@pytest.mark.slow
def test_a_receiver_that_hangs_slows_no_job(host: Host, _isolated_config: Path) -> None:
    with socket.socket() as hanging:  # accepts connections (the kernel does), never answers
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(8)
        port = hanging.getsockname()[1]
        configure(_isolated_config, {"ops": f"json://127.0.0.1:{port}/hook"})
        host.start()
        host.drop("bad.yaml", "commands: exit 3\n")
        host.wait_state("bad", "failed")
        hanging.settimeout(5)
        conn, _ = hanging.accept()  # the worker is sending now, and waits for an answer
        with conn:
            conn.settimeout(5)
            assert conn.recv(4096).startswith(b"POST /hook")
            host.drop("next.yaml", "commands: echo on time\n")
            # Meanwhile the loop reads, runs and reports other jobs (the send's timeout is 15 s).
            host.wait_state("next", "succeeded", timeout=5)
            assert "notify" not in host.heartbeat()  # still in flight, not failed yet
        host.stop()


@pytest.mark.slow
def test_a_target_needing_apprise_where_it_is_missing_is_named_and_its_events_wait(
        host: Host, _isolated_config: Path) -> None:
    # The daemon as a host without Apprise sees it: the module cannot be found.
    host.entry = ["-c", "import sys; sys.modules['apprise'] = None\n"
                  "from filerexec.cli import main; sys.exit(main(sys.argv[1:]))"]
    with Receiver() as hook:
        configure(_isolated_config, {"chat": "tgram://bottoken/chatid", "ops": hook.url("json")})
        host.start()
        shown = wait_for(lambda: host.heartbeat().get("notify"), what="host.yaml's notify:")
        assert shown["chat"] == ("tgram:// needs Apprise (pip install 'filerexec[notify]'); its "
                                 "events wait until then")
        host.drop("bad.yaml", "commands: exit 3\n")
        host.wait_state("bad", "failed")
        wait_for(lambda: hook.got, what="the other target's event")
        host.stop()
    log = host.log.read_text()
    assert "notify target chat: tgram:// needs Apprise" in log  # said at start-up, in the log
    with host.ledger() as db:  # kept for a host that installs Apprise and restarts
        waiting = db.execute("SELECT target, sent, gave_up, last_error FROM outbox"
                             " WHERE target = 'chat'").fetchall()
    assert len(waiting) == 1 and waiting[0][1:3] == (None, None)
    assert "needs Apprise" in waiting[0][3]
    assert [e["job"] for e in events_of(hook)] == ["bad"]
