"""Notifications (DESIGN §9): what is news, the event, each kind of target, and delivery
through the ledger's outbox to real HTTP receivers on 127.0.0.1 — never lost, never
blocking, retried while a receiver is down, surviving kill -9."""

from __future__ import annotations

import base64
import email.header
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from filerexec import sender
from filerexec.admission import Admission
from filerexec.config import Settings
from filerexec.machine import Job, Readiness, Run, State, Version
from filerexec.notify import (
    EVENTS,
    Choice,
    cap_tail,
    choice_of,
    command_env,
    event_id,
    is_news,
    json_request,
    kind,
    make_event,
    ntfy_request,
    target_problems,
    targets_for,
    trial_event,
)
from filerexec.spec import SpecError, parse_job
from tests.conftest import Host
from tests.receiver import Receiver, free_port
from tests.util import wait_for

ON = ("failed", "killed", "lost", "expired", "rejected")


def ended(state: State = State.FAILED, code: int = 3, run_id: str = "r1") -> Job:
    run = Run(run_id, "ab" * 32, started=1000.0, finished=1002.5, exit_code=code, outcome=state)
    return Job("backup", state=state, reason=f"exit code {code}", run=run, runs=2)


def test_only_a_job_coming_to_rest_is_news() -> None:
    job = ended()
    assert is_news(None, job)
    assert is_news((State.RUNNING, "r1"), job)
    assert not is_news((State.FAILED, "r1"), job)  # committed again: no second event
    assert is_news((State.FAILED, "r0"), job)  # the next run failing too is news
    assert not is_news(None, Job("x", state=State.RUNNING))
    assert not is_news(None, Job("x", state=State.PENDING))


def test_the_event_carries_the_fields_and_no_environment() -> None:
    event = make_event(ended(), "office", "last line")
    assert set(event) == {"id", "job", "host", "state", "reason", "exit_code", "started",
                          "finished", "duration_s", "digest", "runs", "log_tail"}
    assert (event["job"], event["host"], event["state"], event["exit_code"]) == (
        "backup", "office", "failed", 3)
    assert event["duration_s"] == 2.5 and event["runs"] == 2 and event["digest"] == "ab" * 6
    assert event["id"] == event_id("office", ended()) != event_id("office", ended(run_id="r2"))
    assert event_id("office", ended()) != event_id("home", ended())
    invalid = Job("bad", state=State.INVALID, reason="line 1: no commands",
                  version=Version(Readiness.INVALID, seen=5.0), run=ended().run)
    event = make_event(invalid, "office", "")
    assert event["exit_code"] is None and event["started"] is None  # the old run is not this


def test_log_tail_is_capped_in_lines_and_bytes_and_can_be_off() -> None:
    out = b"".join(b"line %d\n" % i for i in range(100))
    assert cap_tail(out, 3) == "line 97\nline 98\nline 99"
    assert len(cap_tail(b"x" * 100_000, 10).encode()) <= 2048
    assert cap_tail(out, 0) == ""


def test_targets_come_from_the_job_or_the_host_defaults() -> None:
    job, known = ended(), ["phone", "ops"]
    assert targets_for(job, Choice(), ["phone"], ON, known) == ["phone"]
    assert targets_for(job, Choice(("ops",)), ["phone"], ON, known) == ["ops"]
    assert targets_for(job, Choice(()), ["phone"], ON, known) == []  # notify: false
    assert targets_for(ended(State.SUCCEEDED, 0), Choice(), ["phone"], ON, known) == []
    assert targets_for(ended(State.SUCCEEDED, 0), Choice(on=("succeeded",)), ["phone"], ON,
                       known) == ["phone"]
    assert targets_for(job, Choice(), [], ON, known) == []  # notify_default: none


# --- a job file's own choice: `notify:` and `notify_on:` --------------------------------------


def chosen(text: str) -> Choice:
    spec = parse_job(text, "j")
    return choice_of(Job("j", state=State.FAILED, version=Version(Readiness.VALID, spec)))


def test_a_job_file_names_its_targets_and_states() -> None:
    assert chosen("commands: ls\nnotify: phone\n") == Choice(("phone",))
    assert chosen("commands: ls\nnotify: [phone, ops, phone]\n") == Choice(("phone", "ops"))
    for none in ("false", "no", "[]", "none", "None"):  # DESIGN §9's `notify: false`, and kin
        assert chosen(f"commands: ls\nnotify: {none}\n") == Choice(()), none
    assert chosen("commands: ls\nnotify:\n") == Choice()  # left empty: the host's default
    assert chosen("commands: ls\n") == Choice()
    assert chosen("commands: ls\nnotify_on: [Failed, succeeded]\n") == Choice(
        on=("failed", "succeeded"))
    assert chosen("commands: ls\nnotify_on: succeeded\n") == Choice(on=("succeeded",))
    assert chosen("commands: ls\nnotify_on: []\n") == Choice(on=())
    # Who is told is not what runs: adding `notify:` to a job that ran does not run it again.
    assert parse_job("commands: ls\nnotify: phone\nnotify_on: [lost]\n", "j").digest == \
        parse_job("commands: ls\n", "j").digest


def test_a_run_killed_by_deleting_its_file_keeps_the_files_choice() -> None:
    from filerexec.ledger import job_from_record, job_to_record
    from filerexec.machine import Exited, FileMissing, FileRead, Tick
    from tests.test_machine import History, version

    for text, choice in (("notify: [phone]\nnotify_on: [killed]", Choice(("phone",), ("killed",))),
                         ("notify: false", Choice(())), ("", Choice())):
        h = History()
        h(FileRead(version(f"commands: sleep 100\n{text}\n"), 1))
        h.launch(1)
        h(FileMissing(10))
        h(Tick(20))  # the deletion counts: the file's version is gone, the kill is sent
        h(Exited(-15, 21))
        assert h.job.state is State.KILLED and h.job.version is None
        assert choice_of(h.job) == choice, text  # the run still knows whom to tell
        assert choice_of(job_from_record(job_to_record(h.job))) == choice  # after a restart


@pytest.mark.parametrize(("text", "where", "words"), [
    ("notify: true", (2, 9), "does not say which target"),
    ("notify: 'my phone'", (2, 9), "must name a notification target, not 'my phone'"),
    ("notify: [phone, {a: b}]", (2, 17), "not `key: value` lines"),
    ("notify:\n  - phone\n  - [x]", (4, 5), "not a list"),
    ("notify_on: [failed, runnin]", (2, 21), "'runnin' is not a state a job comes to rest in"),
    ("notify_on: running", (2, 12), "'running' is not a state"),
    ("notify_on: {failed: 1}", (2, 12), "is not a state"),
])
def test_a_wrong_notify_key_is_shown_where_it_is(text: str, where: tuple[int, int],
                                                 words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_job(f"commands: ls\n{text}\n", "j")
    assert (caught.value.line, caught.value.column) == where
    assert words in caught.value.message
    if "notify_on" in text:
        assert ", ".join(EVENTS) in str(caught.value.hint)


def test_an_unknown_target_makes_the_job_invalid_with_the_known_names(tmp_path: Path) -> None:
    settings = Settings(tmp_path, "office", tmp_path / "state",
                        notify=(("ops", "json://127.0.0.1:9/"), ("phone", "ntfy://x/y")))
    admit = Admission(settings, tmp_path / "keys", None)
    verdict = admit("j", b"commands: ls\nnotify:\n  - phone\n  - opz\n", 0.0)
    assert verdict.readiness is Readiness.INVALID and verdict.spec is None
    assert verdict.problem == ("line 4, column 5: `notify` names the target `opz`, which this "
                               "host does not have (its targets: ops, phone). "
                               "Hint: did you mean `ops`?")
    assert admit("j", b"commands: ls\nnotify: [phone, ops]\n", 0.0).readiness is \
        Readiness.VALID
    # Another host's job names that host's targets: none of this one's business.
    assert admit("j", b"commands: ls\nhost: lab\nnotify: gpu-chat\n", 0.0).readiness is \
        Readiness.OTHER_HOST
    bare = Admission(Settings(tmp_path, "office", tmp_path / "state"), tmp_path / "keys", None)
    assert "(its targets: none)" in str(bare("j", b"commands: ls\nnotify: phone\n", 0).problem)
    assert bare("j", b"commands: ls\nnotify: false\n", 0.0).readiness is Readiness.VALID


def test_each_kind_of_url_is_addressed_as_its_receiver_expects() -> None:
    event = make_event(ended(), "höst", "tail")
    req = ntfy_request("ntfys://user:pa%20ss@ntfy.example.org/my-topic", event)
    assert req.url == "https://ntfy.example.org/my-topic"
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"user:pa ss").decode()
    assert email.header.decode_header(req.headers["Title"])[0][0] == \
        "backup failed on höst".encode()
    assert req.headers["Priority"] == "high" and req.body == b"exit code 3\n\ntail"
    assert ntfy_request("ntfy://tk_abc@127.0.0.1:8080/t", event).headers[
        "Authorization"] == "Bearer tk_abc"
    assert ntfy_request("ntfys://just-a-topic", event).url == "https://ntfy.sh/just-a-topic"
    req = json_request("json://127.0.0.1:9/hook?x=1", event)
    assert req.url == "http://127.0.0.1:9/hook?x=1" and json.loads(req.body) == event
    assert [kind(u) for u in ("NTFYS://a/b", "jsons://a", "command:/bin/x", "tgram://t/c")] == [
        "ntfy", "json", "command", "apprise"]
    assert command_env(event)["FILEREXEC_EXIT_CODE"] == "3"


def test_set_up_problems_name_the_target() -> None:
    problems = target_problems({"chat": "tgram://t/c", "phone": "ntfy://x/y"}, ["ghost"],
                               apprise=False)
    assert "pip install 'filerexec[notify]'" in problems["chat"]
    assert "not a target" in problems["ghost"] and "phone" in problems["ghost"]
    assert "phone" not in problems
    assert target_problems({"chat": "tgram://t/c"}, [], apprise=True) == {}


# --- sending to real receivers ------------------------------------------------------------


def test_ntfy_and_json_reach_a_real_http_server() -> None:
    event = make_event(ended(), "office", "the <last> line")
    with Receiver() as r:
        assert sender.send(r.url("ntfy", "/topic"), event).startswith("HTTP 200")
        assert sender.send(r.url("json"), event).startswith("HTTP 200")
    ntfy, hook = r.got
    assert (ntfy.method, ntfy.path, ntfy.headers["Title"]) == ("POST", "/topic",
                                                                "backup failed on office")
    assert ntfy.headers["Content-Type"].startswith("text/plain")
    assert ntfy.body.decode() == "exit code 3\n\nthe <last> line"
    assert (hook.method, hook.path, hook.headers["Content-Type"]) == ("POST", "/hook",
                                                                       "application/json")
    assert hook.json() == event


def test_a_receiver_error_is_a_delivery_error_with_its_answer() -> None:
    with Receiver(status=503) as r, pytest.raises(sender.DeliveryError, match="HTTP 503"):
        sender.send(r.url("json"), trial_event("h", 0.0))
    with pytest.raises(sender.DeliveryError, match=r"cannot reach http://127\.0\.0\.1") as e:
        sender.send(f"json://user:pw-secret@127.0.0.1:{free_port()}/topic-secret?token=secret",
                    trial_event("h", 0.0))
    assert "secret" not in str(e.value)  # what host.yaml and the log show carries no token


def test_log_tail_follows_the_hosts_setting_and_is_capped(tmp_path: Path) -> None:
    from filerexec.delivery import Notices

    (tmp_path / "r1").write_bytes(b"".join(b"line %d\n" % i for i in range(5000)))
    job = ended()
    for lines, tail in ((0, ""), (2, "line 4998\nline 4999")):
        settings = Settings(tmp_path, "h", tmp_path / "state", notify=(("ops", "json://x/"),),
                            notify_default=("ops",), notify_log_tail=lines)
        [event] = Notices(settings, lambda run_id: tmp_path / run_id)(job, 0.0)
        assert event.event["log_tail"] == tail
    settings = Settings(tmp_path, "h", tmp_path / "state", notify=(("ops", "json://x/"),),
                        notify_default=("ops",), notify_log_tail=10_000)
    [event] = Notices(settings, lambda run_id: tmp_path / run_id)(job, 0.0)
    assert 0 < len(event.event["log_tail"].encode()) <= 2048


def test_a_command_target_gets_the_event_in_variables(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    hook = tmp_path / "hook.py"
    hook.write_text("import json, os, sys\n"
                    f"json.dump(dict(os.environ), open({str(out)!r}, 'w'))\n"
                    "print('took it')\n")
    answer = sender.send(f"command:{sys.executable} {hook}", make_event(ended(), "h", "t"))
    env = json.loads(out.read_text())
    assert answer.endswith("took it")
    assert (env["FILEREXEC_JOB"], env["FILEREXEC_STATE"], env["FILEREXEC_EXIT_CODE"]) == (
        "backup", "failed", "3")
    with pytest.raises(sender.DeliveryError, match="exited with 2"):
        sender.send(f"command:{sys.executable} -c 'raise SystemExit(2)'", trial_event("h", 0.0))


def test_apprise_sends_to_a_local_url() -> None:
    assert sender.apprise_available(), "the test extras install Apprise"
    event = make_event(ended(), "office", "tail")
    with Receiver() as r:
        assert "Apprise" in sender._apprise(r.url("json"), event)  # Apprise's own json://
        assert "Apprise" in sender.send(r.url("form"), event)  # a scheme only Apprise knows
    posted, form = r.got
    assert posted.json()["title"] == "backup failed on office"
    assert "exit code 3" in posted.json()["message"]
    assert b"backup+failed+on+office" in form.body


# --- the daemon: the outbox, delivery, restarts --------------------------------------------


def configure(config: Path, targets: dict[str, str], **more: Any) -> None:
    config.write_text(yaml.safe_dump({"notify": targets, "notify_default": list(targets),
                                      "notify_retry": "0.2s", **more}))


def events_of(r: Receiver) -> list[dict[str, Any]]:
    return [got.json() for got in r.got]


@pytest.mark.slow
def test_a_failed_job_is_delivered_once_and_a_succeeded_one_not(
        host: Host, _isolated_config: Path) -> None:
    with Receiver() as hook, Receiver() as ntfy:
        configure(_isolated_config, {"ops": hook.url("json"), "phone": ntfy.url("ntfy", "/t")})
        host.start()
        host.drop("ok.yaml", "commands: echo fine\n")
        host.drop("bad.yaml", "commands: echo 'about to fail'; exit 3\n"
                  "env: {SECRET_TOKEN: hunter2}\n")
        host.wait_state("ok", "succeeded")
        host.wait_state("bad", "failed")
        wait_for(lambda: hook.got and ntfy.got, what="both targets to get the event")
        host.stop()
        host.start()  # a restart re-sends nothing: the outbox marked it sent
        host.drop("worse.yaml", "commands: exit 4\n")
        wait_for(lambda: len(hook.got) >= 2, what="the second failure's event")
        host.stop()
    events = events_of(hook)
    assert [(e["job"], e["state"], e["exit_code"]) for e in events] == [
        ("bad", "failed", 3), ("worse", "failed", 4)]
    assert "about to fail" in events[0]["log_tail"]
    assert "hunter2" not in json.dumps(events)  # the job printed it, but env is not sent
    assert len(ntfy.got) == 2 and ntfy.got[0].headers["Title"] == "bad failed on testhost"


@pytest.mark.slow
def test_a_receiver_that_is_down_is_retried_shown_and_slows_no_job(
        host: Host, _isolated_config: Path) -> None:
    port = free_port()
    configure(_isolated_config, {"ops": f"json://127.0.0.1:{port}/hook"})
    host.start()
    host.drop("bad.yaml", "commands: exit 3\n")
    host.drop("next.yaml", "commands: echo still running jobs\n")
    host.wait_state("bad", "failed")
    host.wait_state("next", "succeeded")  # the failing target holds nothing up
    shown = wait_for(lambda: host.heartbeat().get("notify"), what="host.yaml's notify:")
    assert "cannot reach http://127.0.0.1" in shown["ops"] and "retrying" in shown["ops"]
    with Receiver(port=port) as r:
        wait_for(lambda: r.got, what="the event once the receiver is up")
        wait_for(lambda: "notify" not in host.heartbeat(), what="host.yaml to clear notify:")
    assert [e["job"] for e in events_of(r)] == ["bad"]


@pytest.mark.slow
def test_an_event_survives_kill_9_before_delivery(host: Host, _isolated_config: Path) -> None:
    port = free_port()
    configure(_isolated_config, {"ops": f"json://127.0.0.1:{port}/hook"})
    host.start()
    host.drop("bad.yaml", "commands: exit 3\n")
    host.wait_state("bad", "failed")
    wait_for(lambda: host.heartbeat().get("notify"), what="a failed delivery")
    host.stop(signal.SIGKILL)  # the state is committed, the event not delivered
    with Receiver(port=port) as r:
        host.start()
        wait_for(lambda: r.got, what="the event after the restart")
        host.stop()
    assert [(e["job"], e["state"]) for e in events_of(r)] == [("bad", "failed")]


@pytest.mark.slow
def test_a_default_that_is_not_a_target_is_named_at_start(
        host: Host, _isolated_config: Path) -> None:
    # (A target needing Apprise where it is missing: tests/test_delivery.py.)
    configure(_isolated_config, {"a": "ntfy://127.0.0.1:9/t"}, notify_default=["ghost"])
    host.start()
    shown = wait_for(lambda: host.heartbeat().get("notify"), what="host.yaml's notify:")
    assert shown == {"ghost": "named by notify_default, but not a target (the targets: a)"}


@pytest.mark.slow
def test_a_job_file_chooses_its_targets_end_to_end(host: Host, _isolated_config: Path) -> None:
    with Receiver() as phone, Receiver() as ops:
        configure(_isolated_config, {"phone": phone.url("json"), "ops": ops.url("json")},
                  notify_default=["ops"])
        host.start()
        host.drop("mine.yaml", "commands: exit 3\nnotify: [phone]\n")
        host.drop("quiet.yaml", "commands: exit 4\nnotify: false\n")
        host.drop("empty.yaml", "commands: exit 5\nnotify: []\n")
        host.drop("fine.yaml", "commands: echo ok\nnotify: phone\nnotify_on: [succeeded]\n")
        host.drop("typo.yaml", "commands: exit 6\nnotify: phnoe\n")
        for job, state in (("mine", "failed"), ("quiet", "failed"), ("empty", "failed"),
                           ("fine", "succeeded")):
            host.wait_state(job, state)
        typo = host.wait_state("typo", "invalid")
        # Events go out in the order they were committed: once this one, committed after
        # all the others, has reached the default target, any event of theirs would have too.
        host.drop("last.yaml", "commands: exit 7\n")
        host.wait_state("last", "failed")
        wait_for(lambda: ops.got, what="the default target's event")
        wait_for(lambda: len(phone.got) >= 2, what="the phone's two events")
        host.stop()
    assert [(e["job"], e["state"]) for e in events_of(ops)] == [("last", "failed")]
    assert sorted((e["job"], e["state"]) for e in events_of(phone)) == [
        ("fine", "succeeded"), ("mine", "failed")]
    assert "line 2, column 9" in typo["reason"] and "(its targets: ops, phone)" in typo["reason"]
    assert "did you mean `phone`?" in typo["reason"] and typo.get("exit_code") is None


def test_notify_test_sends_a_test_event_to_each_target_and_says_which_failed(
        _isolated_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from filerexec.cli import main

    with Receiver() as hook:
        down = f"json://127.0.0.1:{free_port()}/hook"
        configure(_isolated_config, {"ops": hook.url("json"), "gone": down})
        assert main(["notify", "test", "ops"]) == 0
        assert [(e["job"], e["state"], e.get("test")) for e in events_of(hook)] == [
            ("(test)", "test", True)]
        assert main(["notify", "test"]) == 1  # every target: one receiver is not there
        assert len(hook.got) == 2
    out, err = capsys.readouterr()
    assert "ops: sent" in out and "gone: not sent:" in err
    assert main(["notify", "test", "nosuch"]) == 2
    assert "no notification target 'nosuch'" in capsys.readouterr().err
