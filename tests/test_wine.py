"""The Windows stage: test modules run under the official Windows CPython in Wine.

tests/wine.py prepares Wine's prefix and Windows Python (cached); each test here runs a set of
modules with Windows pytest and fails with its output. Skipped only where Wine is not installed
and ``FILEREXEC_REQUIRE_WINE`` is unset (``.ci/run`` installs Wine and sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import wine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(os.name == "nt", reason="this stage starts Windows from Linux")]

# Modules whose every test applies to Windows, or skips with a reason there.
PORTABLE = ("tests/test_spool.py", "tests/test_names.py", "tests/test_spec.py",
            "tests/test_machine.py", "tests/test_config.py", "tests/test_service.py",
            "tests/test_signing.py", "tests/test_process.py")
# A real `filerexec serve` with cmd.exe jobs, run on its own (its daemons and jobs are Windows
# processes too; the prefix is emptied with wineserver -k after it).
END_TO_END = "tests/test_windows.py"


@pytest.fixture(scope="module")
def winpy() -> wine.WinePython:
    try:
        return wine.prepare()
    except wine.WineUnavailable as e:
        if os.environ.get("FILEREXEC_REQUIRE_WINE"):
            raise
        pytest.skip(str(e))


def run_pytest(winpy: wine.WinePython, *modules: str) -> None:
    code, out = winpy.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                          "-o", "addopts=", *modules)
    assert code == 0, f"Windows pytest exited {code}:\n{out[-20000:]}"
    assert " passed" in out, out[-5000:]


def test_windows_python_is_the_official_cpython_under_wine(winpy: wine.WinePython) -> None:
    code, out = winpy.run("-c", "import os, sys, filerexec; "
                          "print(os.name, sys.version.split()[0], filerexec.__file__)")
    assert code == 0, out
    name, version, where = out.split()
    assert (name, version) == ("nt", "3.11.9")
    assert where == wine.windows_path(wine.ROOT / "filerexec" / "__init__.py")


def test_portable_modules_pass_on_windows(winpy: wine.WinePython) -> None:
    run_pytest(winpy, *PORTABLE)



def test_a_real_daemon_serves_cmd_jobs_on_windows(winpy: wine.WinePython) -> None:
    run_pytest(winpy, END_TO_END)


def test_the_harness_finds_wine_by_the_names_each_release_gives_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian 12 has wine (a script) and wine64; Debian 13's Wine 10 may have wine only."""
    monkeypatch.delenv("FILEREXEC_WINE", raising=False)
    monkeypatch.setattr(wine, "LIB", str(tmp_path / "lib"))
    only64 = tmp_path / "only64"
    only64.mkdir()
    for name in ("wine64", "wineserver"):
        (only64 / name).write_text("#!/bin/sh\n")
        (only64 / name).chmod(0o755)
    assert wine.tool("wine", str(only64)) == str(only64 / "wine64")
    assert wine.tool("wineserver", str(only64)) == str(only64 / "wineserver")
    (only64 / "wine").write_text("#!/bin/sh\n")
    (only64 / "wine").chmod(0o755)
    assert wine.tool("wine", str(only64)) == str(only64 / "wine")  # the plain name first
    with pytest.raises(wine.WineUnavailable, match="apt-get install wine"):
        wine.tool("wine", str(tmp_path / "empty"))
    monkeypatch.setenv("FILEREXEC_WINE", "/opt/wine-10/bin/wine")
    assert wine.tool("wine", str(tmp_path / "empty")) == "/opt/wine-10/bin/wine"
