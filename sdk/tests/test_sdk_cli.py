"""The `tessera` CLI: end to end in a subprocess (streaming, exit codes, Ctrl-C), jobs commands in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from fake_gateway import API_KEY, CHUNKS, FakeGateway

from tessera import cli


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tessera", *args], capture_output=True, text=True, timeout=20,
                          env={**os.environ, **(env or {})})


def test_text_streams_to_stdout_and_summarizes_on_stderr(server: FakeGateway) -> None:
    # Address and key from the environment, generation flags after the prompt.
    proc = _cli("text", "2+3?", "--max-tokens", "16", "--seed", "3", "--tau-conf", "0.5",
                env={"TESSERA_ADDRESS": server.address, "TESSERA_API_KEY": API_KEY})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(CHUNKS) + "\n"
    assert "6 tokens, 1.50 tokens/forward, first chunk 0.25s, total 1.00s" in proc.stderr
    (req,) = server.rec.requests
    assert (req.request.params.max_tokens, req.request.params.seed, req.request.params.tau_conf) == (16, 3, 0.5)
    assert req.idempotency_key


def test_invalid_argument_exits_2_with_one_line_message(server: FakeGateway) -> None:
    proc = _cli("--address", server.address, "--api-key", API_KEY, "text", "bad")
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("tessera: error: INVALID_ARGUMENT: invalid request")
    assert "request.params.temperature: must be in [0, 10]" in line


def test_ctrl_c_cancels_the_stream_and_the_job(server: FakeGateway) -> None:
    # The child starts with SIGINT at its default, as under a terminal: in full CI runs the CLI twice
    # ignored the SIGINT (it ran to the end, exit 0), as if this process handed SIGINT down ignored
    # or blocked, which both survive exec (the failure message shows this process's state).
    # -X faulthandler: if the CLI ever hangs instead, SIGABRT prints every thread's stack.
    parent = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    run = ("import signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
           "signal.signal(signal.SIGINT, signal.default_int_handler); "
           "from tessera.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", run, "text", "slowstream",
                             "--address", server.address, "--api-key", API_KEY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.read(len(CHUNKS[0])) == CHUNKS[0].encode()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"the CLI did not exit within 20 s of Ctrl-C; its stacks:\n{err.decode(errors='replace')}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (err, parent)
    assert b"cancelled (job job-" in err and b"Traceback" not in err
    assert server.rec.stream_cancelled.wait(2)
    assert len(server.rec.cancelled_jobs) == 1 and server.rec.cancelled_jobs[0].startswith("job-")


def test_other_errors_exit_1(server: FakeGateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--address", server.address, "jobs", "get", "j1"]) == 1  # no API key
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli.main(["jobs", "get", "nope", "--address", server.address, "--api-key", API_KEY]) == 1
    assert "NOT_FOUND: job 'nope' not found" in capsys.readouterr().err
    assert cli.main(["text", "x", "--address", server.address, "--timeout", "-1"]) == 2


def test_jobs_commands(server: FakeGateway, capsys: pytest.CaptureFixture[str]) -> None:
    conn = ["--address", server.address, "--api-key", API_KEY]
    assert cli.main(["jobs", "submit", "2+3?", "--max-tokens", "9", *conn]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "JOB_STATE_QUEUED" and job["spec"]["text"]["params"]["max_tokens"] == 9
    assert cli.main(["jobs", "get", job["id"], *conn]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job["id"]
    assert cli.main(["jobs", "watch", job["id"], "--after", "4", *conn]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event_id"] for e in events] == ["5", "6"] and events[0]["result"]["text"]["text"] == "".join(CHUNKS)
    assert cli.main(["jobs", "cancel", job["id"], *conn]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "JOB_STATE_CANCELLED"
    assert cli.main(["jobs", "submit", "again", *conn]) == 0
    capsys.readouterr()
    assert cli.main(["jobs", "list", "--page-size", "1", *conn]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("job-2\tQUEUED\t0%\t") and "--page-token 1" in out.err
