"""The job table's kept orders (issue 12): a step reads what changed and what is due, never
every waiting job — and what it reads is what a pass over every job would say."""

from __future__ import annotations

import pytest

from filerexec import jobtable
from filerexec.jobtable import JobTable, _Order
from filerexec.machine import Exited, FileRead, Launch, Spawned, Timing, next_due
from tests.test_after import valid
from tests.test_machine import T


def test_an_order_gives_the_smallest_current_keys_and_skips_stale_ones() -> None:
    order: _Order[float] = _Order()
    for name, key in (("a", 5.0), ("b", 1.0), ("c", 3.0)):
        order.set(name, key)
    order.set("b", 9.0)  # changed: its old entry is stale
    order.set("c", None)  # gone
    assert order.first() == 5.0 and len(order) == 2
    assert order.smallest(1) == ["a"] and order.smallest(5) == ["a", "b"]
    assert order.smallest(upto=8.0) == ["a"]  # they stay in the order
    order.set("c", 3.0)
    order.set("c", None)
    order.set("c", 3.0)  # pushed twice with one key: comes out once
    assert order.smallest() == ["c", "a", "b"]


def test_a_mostly_stale_order_is_rebuilt_with_what_is_current() -> None:
    order: _Order[float] = _Order()
    for i in range(1000):
        order.set("a", float(i))
    assert len(order._heap) <= 2 * len(order) + 64
    assert order.smallest() == ["a"] and order.first() == 999.0


def _waiting(n: int) -> JobTable:
    table = JobTable(T)
    for i in range(n):
        name = f"j{i:04d}"
        table.apply(name, FileRead(valid("commands: x\ntimeout: 1h\n", name, seen=float(i)), 1.0))
    return table


def test_a_step_does_not_read_through_every_waiting_job(monkeypatch: pytest.MonkeyPatch) -> None:
    table = _waiting(2000)
    calls = []

    def counted(job: object, timing: Timing) -> float | None:
        calls.append(job)
        return next_due(job, timing)  # type: ignore[arg-type]

    monkeypatch.setattr(jobtable, "next_due", counted)
    for now in (2.0, 3.0, 4.0):  # three steps with nothing changed
        assert table.tick(now) == [] and table.next_timer() is None
        table.check_after(now)
        assert [j.name for j in table.first_due(2)] == ["j0000", "j0001"]
        assert table.running() == []
    assert calls == []  # a pass over the 2,000 would ask 2,000 times a step


def test_a_launch_and_an_exit_move_a_job_through_the_orders() -> None:
    table = _waiting(3)
    table.apply("j0000", Launch("r0", 2.0))
    table.apply("j0000", Spawned(10, 1.0))
    assert [n for n, _ in table.running()] == ["j0000"]
    assert [j.name for j in table.first_due(3)] == ["j0001", "j0002"]  # first come first
    assert table.next_timer() == pytest.approx(2.0 + 3600)  # its timeout
    table.apply("j0000", Exited(0, 3.0))
    assert table.running() == [] and table.next_timer() is None
    assert [j.name for j in table.first_due(3)] == ["j0001", "j0002"]
