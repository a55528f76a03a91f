"""The config file: parsing, errors naming key and line, precedence, `config show`, serve."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from filerexec import cli
from filerexec.config import (
    DAY,
    ConfigError,
    parse_config,
    parse_size,
    resolve,
)


def test_sizes() -> None:
    assert parse_size("1MiB") == 1024 * 1024
    assert parse_size("512KiB") == 512 * 1024
    assert parse_size("1.5 GiB") == 3 * 512 * 1024 * 1024
    assert parse_size(4096) == parse_size("4096") == parse_size("4096B") == 4096
    for bad in ("1MB", "-1", "lots", True, -5, 1.5):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)


def test_every_key_parses_with_the_job_files_forms(tmp_path: Path) -> None:
    text = ("spool: ../sp\nhost: office-pc\nmax_parallel: 4\nrescan_interval: 1m30s\n"
            "heartbeat_interval: 45\ndelete_grace: 3s\nkill_grace: 1m\nlog_cap: 512KiB\n"
            "retention: 2d\nrequire_signature: true\nallow: [alice, bob]\npoll: true\n"
            "state_dir: ~/st\n")
    found = {k: v for k, (v, _) in parse_config(text, tmp_path / "c" / "config.yaml").items()}
    assert found == {
        "spool": tmp_path / "c" / "../sp", "host": "office-pc", "max_parallel": 4,
        "rescan_interval": 90.0, "heartbeat_interval": 45.0, "delete_grace": 3.0,
        "kill_grace": 60.0, "log_cap": 512 * 1024, "retention": 2 * DAY,
        "require_signature": True, "allow": ("alice", "bob"), "poll": True,
        "state_dir": Path.home() / "st"}
    assert parse_config("") == {} and parse_config("# nothing set\n") == {}


@pytest.mark.parametrize(("text", "line", "words"), [
    ("host: a\nmax_paralel: 4\n", 2, "unknown key `max_paralel` (did you mean `max_parallel`?)"),
    ("max_parallel: 0\n", 1, "`max_parallel`: must be a whole number of at least 1, not 0"),
    ("host: a\n\nretention: soon\n", 3, "`retention`: 'soon' is not a duration"),
    ("log_cap: 1MB\n", 1, "`log_cap`: '1MB' is not a size"),
    ("rescan_interval: 0\n", 1, "`rescan_interval`: 0 is too short: at least 0.1s"),
    ("require_signature: maybe\n", 1, "`require_signature`: must be true or false"),
    ("host: a\nhost: b\n", 2, "`host` is set twice (also on line 1)"),
    ("host: a\nkill_grace: [1\n", 3, "not valid YAML"),
    ("- a\n- b\n", 1, "must be a mapping"),
])
def test_errors_name_the_key_and_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("/etc/fx.yaml"))
    assert info.value.line == line
    assert words in str(info.value) and str(info.value).startswith(
        f"config file {Path('/etc/fx.yaml')}, line {line}: ")  # \etc\fx.yaml on Windows


def test_precedence_default_file_environment_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("spool: sp\nhost: from-file\nmax_parallel: 3\nstate_dir: /file/state\n")
    env = {"FILEREXEC_CONFIG": str(cfg), "FILEREXEC_STATE_DIR": "/env/state"}
    eff = resolve({"host": "from-flag", "rescan_interval": None}, environ=env)
    assert eff.values["host"] == "from-flag" and eff.sources["host"] == "flag --host"
    assert eff.values["max_parallel"] == 3 and eff.sources["max_parallel"] == f"config file {cfg}"
    assert eff.values["state_dir"] == Path("/env/state")
    assert eff.sources["state_dir"] == "FILEREXEC_STATE_DIR"
    assert eff.values["rescan_interval"] == 10.0 and eff.sources["rescan_interval"] == "default"
    assert eff.values["spool"] == tmp_path / "sp"  # relative to the config file
    settings = eff.settings()
    assert (settings.host, settings.max_parallel, settings.spool) == (
        "from-flag", 3, (tmp_path / "sp").resolve())
    assert settings.state_dir.parent == Path("/env/state/spools")
    assert settings.retention == 7 * DAY and settings.allow == ()


def test_missing_files(tmp_path: Path) -> None:
    absent = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"does not exist \(named by FILEREXEC_CONFIG\)"):
        resolve({}, environ={"FILEREXEC_CONFIG": str(absent)})
    with pytest.raises(ConfigError, match=r"does not exist \(named by --config\)"):
        resolve({}, config=absent, environ={})
    with pytest.raises(ConfigError, match="no SPOOL given, and no `spool:` in"):
        resolve({}, environ={"FILEREXEC_CONFIG": "/dev/null"}).settings()


def test_config_show_prints_values_and_sources(
        _isolated_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _isolated_config.write_text("retention: 36h\nlog_cap: 2MiB\n")
    assert cli.main(["config", "show", "/srv/sp", "--kill-grace", "10s", "--poll"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"# config file: {_isolated_config}"
    assert f"retention: 36h  # config file {_isolated_config}" in lines
    assert f"log_cap: 2MiB  # config file {_isolated_config}" in lines
    assert "kill_grace: 10s  # flag --kill-grace" in lines
    assert "poll: true  # flag --poll" in lines
    assert f"spool: {Path('/srv/sp')}  # argument" in lines
    assert "max_parallel: 16  # default" in lines
    assert "require_signature: false  # default" in lines and "allow: []  # default" in lines
    # What it prints is a config file: the values read back as they were set.
    shown = yaml.safe_load(out)
    assert shown["retention"] == "36h" and shown["kill_grace"] == "10s"


def test_bad_config_file_is_a_usage_error_naming_the_key(
        _isolated_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _isolated_config.write_text("spool: /x\nheartbeat_interval: often\n")
    assert cli.main(["status"]) == cli.USAGE
    err = capsys.readouterr().err
    assert f"config file {_isolated_config}, line 2: `heartbeat_interval`" in err


def test_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "/x", "--log-cap", "huge"])
    assert info.value.code == cli.USAGE and "'huge' is not a size" in capsys.readouterr().err


def test_serve_takes_spool_host_and_settings_from_the_config_file(
        _isolated_config: Path, spool: Path, tmp_path: Path) -> None:
    _isolated_config.write_text(f"spool: {spool}\nhost: cfghost\nmax_parallel: 1\n"
                                f"state_dir: {tmp_path / 'state'}\n")
    # Two jobs that would fail if they ran at once: max_parallel 1 must serialise them.
    guard = tmp_path / "guard"
    pause = "ping -n 2 127.0.0.1" if os.name == "nt" else "sleep 0.3"  # cmd.exe on Windows
    for name in ("a", "b"):
        job = spool / "jobs" / f"{name}.yaml"
        job.write_text(f"commands:\n  - mkdir {guard}\n  - {pause}\n  - rmdir {guard}\n")
        os.utime(job, (time.time() - 60, time.time() - 60))  # synced a while ago: settled
    done = subprocess.run([sys.executable, "-m", "filerexec", "serve", "--once"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    docs = [yaml.safe_load((spool / "status" / "cfghost" / f"{n}.yaml").read_text())
            for n in ("a", "b")]
    assert [d["state"] for d in docs] == ["succeeded", "succeeded"], docs
    assert list((tmp_path / "state" / "spools").iterdir())


def test_notify_on_takes_the_states_a_job_comes_to_rest_in() -> None:
    found = parse_config("notify_on: [failed, succeeded]\nnotify: {my.phone_1: 'ntfy://x/y'}\n")
    assert found["notify_on"][0] == ("failed", "succeeded")
    assert found["notify"][0] == (("my.phone_1", "ntfy://x/y"),)
    with pytest.raises(ConfigError, match=r"line 1: `notify_on`: 'running' is not a state a "
                                          r"job comes to rest in \(the states: succeeded, "):
        parse_config("notify_on: [running]\n")
    with pytest.raises(ConfigError, match=r"'my phone' is not a target name"):
        parse_config("notify: {my phone: 'ntfy://x/y'}\n")
