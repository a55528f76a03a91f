"""Names a status file can carry: not too long, and never one file on a phone with another.

A job name whose status file name would pass the 255-byte limit is refused before it
runs; of names equal once case-folded and NFC-normalised (what macOS and Windows
compare), the one seen later is refused, naming the other, after a restart too.
"""

from __future__ import annotations

import unicodedata

import pytest

from filerexec.names import NAME_MAX, Kind, Spellings, classify, refusal
from tests.conftest import Host
from tests.util import wait_for

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def test_a_name_whose_status_file_is_too_long_is_no_job() -> None:
    fits, too_long = "a" * (NAME_MAX - len(".yaml")), "a" * (NAME_MAX - len(".yaml") + 1)
    assert classify(f"{fits}.yml").job == fits
    assert classify(f"{too_long}.yml").kind is Kind.OTHER  # a 255-byte file name
    why = refusal(f"sub/{too_long}.yml") or ""
    assert f"{NAME_MAX + 1} bytes" in why and "shorten" in why
    # Bytes count, not characters: 126 two-byte letters and .yaml pass 255 bytes.
    assert classify("é" * 126 + ".yml").kind is Kind.OTHER


@pytest.mark.parametrize(("first", "later"), [
    ("Backup", "backup"), (NFC, NFD), ("Nightly/a", "nightly/b"), ("x/ǅ", "x/ǆ"),
])
def test_spellings_that_one_filesystem_folds_clash_with_the_first(
        first: str, later: str) -> None:
    names = Spellings()
    assert names.add(first) is None and names.add(later) == first
    assert names.clash(first) is None and names.clash(later) == first
    assert names.add("other") is None and names.add("Nightly/c" if "/" in first else "x") is None


def refused(host: Host) -> dict[str, str]:
    return {r["file"]: r["reason"] for r in host.heartbeat().get("refused", [])}


def test_a_255_byte_job_name_is_refused_listed_and_the_daemon_serves(host: Host) -> None:
    name = "a" * 251 + ".yml"
    (host.spool / "jobs" / name).write_text("commands: touch should-not-run\n")
    host.start()
    why = wait_for(lambda: refused(host).get(name), what="the long name under refused:")
    assert "256 bytes" in why
    host.drop("ok.yaml", "commands: 'true'\n")
    host.wait_state("ok", "succeeded")
    assert not (host.spool / "should-not-run").exists()
    assert host.log.read_text().count("256 bytes") == 1  # logged when it appeared, once


@pytest.mark.slow
def test_case_and_normalisation_clashes_refuse_the_later_one_after_a_restart_too(
        host: Host) -> None:
    host.start()
    host.drop("Backup.yaml", "commands: echo first\n")
    host.wait_state("Backup", "succeeded")
    host.drop("backup.yaml", "commands: echo second\n")
    host.drop(f"{NFC}.yaml", "commands: echo nfc\n")
    host.wait_state(NFC, "succeeded")
    host.drop(f"{NFD}.yaml", "commands: echo nfd\n")
    wait_for(lambda: {"backup.yaml", f"{NFD}.yaml"} <= set(refused(host)),
             what="backup.yaml and the NFD name under refused:")
    assert "job 'Backup'" in refused(host)["backup.yaml"]
    assert "case-insensitive" in refused(host)[f"{NFD}.yaml"]
    assert host.status("backup") is None and host.status(NFD) is None
    host.stop()
    host.start()  # the same choice after a restart: the job the host knew keeps its name
    host.drop("marker.yaml", "commands: 'true'\n")
    host.wait_state("marker", "succeeded")
    assert {"backup.yaml", f"{NFD}.yaml"} <= set(refused(host))
    assert (host.status("Backup") or {})["runs"] == 1 and host.status("backup") is None
    # Renaming the later one away from the clash makes it a job of its own.
    (host.spool / "jobs" / "backup.yaml").rename(host.spool / "jobs" / "backup2.yaml")
    host.wait_state("backup2", "succeeded")


@pytest.mark.slow
def test_both_at_once_before_a_start_the_first_in_code_point_order_wins(host: Host) -> None:
    for name in ("report.yaml", "Report.yaml", "REPORT.yaml"):
        (host.spool / "jobs" / name).write_text("commands: 'true'\n")
    host.start()
    host.wait_state("REPORT", "succeeded")
    wait_for(lambda: {"Report.yaml", "report.yaml"} <= set(refused(host)),
             what="the later spellings under refused:")
    assert "job 'REPORT'" in refused(host)["report.yaml"]
