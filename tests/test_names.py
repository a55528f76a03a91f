"""Which names under jobs/ are jobs: the shared sync-names table, then the edge cases."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filerexec.names import Classified, Kind, classify, is_skipped_dir, job_name

# A copy of shared/sync-names.tsv kept with the tests, so a clone never skips it.
TABLE = Path(__file__).resolve().parent / "data" / "sync-names.tsv"


def table_rows() -> list[tuple[str, str, str | None]]:
    rows = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind, _engine, job = line.split("\t")
            rows.append((name, kind, None if job == "-" else job))
    return rows




@pytest.mark.parametrize(("name", "kind", "job"), table_rows())
def test_sync_names_table(name: str, kind: str, job: str | None) -> None:
    assert classify(name) == Classified(Kind(kind), job)


@pytest.mark.parametrize(("path", "expected"), [
    # sub-folders: the name keeps its folder, and a conflict belongs to the job beside it
    ("nightly/db.yaml", Classified(Kind.JOB, "nightly/db")),
    ("a/b/c.yml", Classified(Kind.JOB, "a/b/c")),
    ("nightly/db.sync-conflict-20261128-050429-5TKYFLG.yaml",
     Classified(Kind.CONFLICT, "nightly/db")),
    ("nightly/.db.yaml.swp", Classified(Kind.TEMP)),
    ("nightly/.hidden.yaml", Classified(Kind.META)),
    ("nightly/README.txt", Classified(Kind.OTHER)),
    # suffixes match in any case; the name keeps its own
    ("Backup.YAML", Classified(Kind.JOB, "Backup")),
    ("df.Yml.TXT", Classified(Kind.JOB, "df")),
    ("notes.md", Classified(Kind.OTHER)),
    ("backup.yaml.bak", Classified(Kind.OTHER)),
    ("backup.txt", Classified(Kind.OTHER)),
    # a .yaml.txt job's copies carry the marker before the last extension
    ("df.yaml.sync-conflict-20261128-050429-5TKYFLG.txt", Classified(Kind.CONFLICT, "df")),
    ("df.yaml (Jane's conflicted copy 2018-09-21).txt", Classified(Kind.CONFLICT, "df")),
    # Dropbox: other languages, numbered copies, name clashes
    ("b (Copie en conflit de Jean 2019-03-02).yaml", Classified(Kind.CONFLICT, "b")),
    ("b (copia in conflitto di Anna 2019-03-02).yaml", Classified(Kind.CONFLICT, "b")),
    ("b (Ivan конфликтующая копия 2019-03-02).yaml", Classified(Kind.CONFLICT, "b")),
    ("b (Taro の競合コピー 2019-03-02).yaml", Classified(Kind.CONFLICT, "b")),
    ("b (Jane's conflicted copy 2018-09-21 (1)).yaml", Classified(Kind.CONFLICT, "b")),
    ("b (Unicode Encoding Conflict).yaml", Classified(Kind.CONFLICT, "b")),
    ("b (Selective Sync Conflict).yaml", Classified(Kind.CONFLICT, "b")),
    # Nextcloud case clash, Resilio numbered, rclone old and new, a copy of a copy
    ("b (case clash from 2025-04-10 093612).yaml", Classified(Kind.CONFLICT, "b")),
    ("b.Conflict1.yaml", Classified(Kind.CONFLICT, "b")),
    ("b.yaml..path1", Classified(Kind.CONFLICT, "b")),
    ("b.yml..path2", Classified(Kind.CONFLICT, "b")),
    ("b.yaml.conflict12", Classified(Kind.CONFLICT, "b")),
    ("b.sync-conflict-20261128-050429-5TKYFLG.sync-conflict-20261129-050429-AAAAAAA.yaml",
     Classified(Kind.CONFLICT, "b")),
    # a conflicted copy of something that is not a job is not our business
    ("notes (Jane's conflicted copy 2018-09-21).md", Classified(Kind.OTHER)),
    ("README.sync-conflict-20261128-050429-5TKYFLG.txt", Classified(Kind.OTHER)),
    # numbered duplicates and OneDrive's device suffix cannot be told from chosen names
    ("job (1).yaml", Classified(Kind.JOB, "job (1)")),
    ("job 2.yaml", Classified(Kind.JOB, "job 2")),
    ("job-DESKTOP-ABC123.yaml", Classified(Kind.JOB, "job-DESKTOP-ABC123")),
    ("deploy (conflict test).yaml", Classified(Kind.JOB, "deploy (conflict test)")),
    # temp files, metadata
    ("backup.yaml.crdownload", Classified(Kind.TEMP)),
    ("#backup.yaml#", Classified(Kind.TEMP)),
    (".~lock.backup.yaml#", Classified(Kind.TEMP)),
    ("Icon\r", Classified(Kind.META)),
    ("Thumbs.db", Classified(Kind.META)),
    (".owncloudsync.log", Classified(Kind.META)),
    (".sync_0a.db", Classified(Kind.META)),
    (".yaml", Classified(Kind.META)),
    (".env", Classified(Kind.META)),
    (".stversions/backup~20261128-050429.yaml", Classified(Kind.META)),
    (".git/x.yaml", Classified(Kind.META)),
    ("@eaDir/backup.yaml", Classified(Kind.META)),
])
def test_classify(path: str, expected: Classified) -> None:
    assert classify(path) == expected


@pytest.mark.parametrize("path", [
    "../backup.yaml", "a/../backup.yaml", "./backup.yaml", "a/./b.yaml", "/backup.yaml",
    "a//b.yaml", "a/", "", "back\nup.yaml", "tab\there.yaml", "dir\x1b/b.yaml", "b\x7f.yaml",
    "b\x85.yaml", "x (Jane's conflicted copy 2018-09-21)\x00.yaml",
])
def test_unsafe_names_are_other(path: str) -> None:
    assert classify(path) == Classified(Kind.OTHER)


def test_job_name() -> None:
    assert job_name("nightly/db.yaml.txt") == "nightly/db"
    assert job_name("backup.sync-conflict-20261128-050429-5TKYFLG.yaml") is None
    assert job_name(".stfolder") is None


@pytest.mark.parametrize(("name", "skipped"), [
    (".stversions", True), (".dropbox.cache", True), (".sync", True), (".git", True),
    (".tmp.drivedownload", True), (".anything", True), ("@eaDir", True),
    ("nightly", False), ("stversions", False),
])
def test_is_skipped_dir(name: str, skipped: bool) -> None:
    assert is_skipped_dir(name) is skipped


def test_long_hostile_names_are_quick() -> None:
    hostile = [" (" * 2000 + "conflict 2020-01-01" * 50 + ".yaml",
               ".Conflict" * 3000 + ".yaml", "a" + " (conflicted copy 2020-01-01)" * 500 + ".yaml"]
    start = time.perf_counter()
    for name in hostile:
        classify(name)
    assert time.perf_counter() - start < 1.0


def assert_safe_verdict(path: str) -> None:
    verdict = classify(path)
    assert isinstance(verdict.kind, Kind)
    assert (verdict.job is not None) == (verdict.kind in (Kind.JOB, Kind.CONFLICT))
    if verdict.job is not None:
        segments = verdict.job.split("/")
        assert all(segment not in ("", ".", "..") for segment in segments)
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in verdict.job)


@given(st.lists(st.sampled_from(["a", "..", ".", "", "b.yaml", "x.yml.txt", ".h", "\n",
                                 " (conflicted copy 2020-01-01)", ".sync-conflict-", "~"]),
                min_size=1, max_size=6),
       st.sampled_from(["/", ""]))
def test_classify_path_like_text(pieces: list[str], sep: str) -> None:
    assert_safe_verdict(sep.join(pieces))


@given(st.text(max_size=300))
def test_classify_never_raises_nor_names_unsafe_jobs(path: str) -> None:
    assert_safe_verdict(path)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "sync-names.tsv"


@pytest.mark.skipif(not SHARED.exists(), reason="no shared/ beside this clone to compare with")
def test_the_copy_of_the_table_is_the_shared_one() -> None:
    assert TABLE.read_text(encoding="utf-8") == SHARED.read_text(encoding="utf-8")
