"""Drive the real deploy/run-stack.sh as a person at a terminal would: start it, read what
it prints, press Ctrl-C (SIGINT to its process group), and see how it ends."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from helpers.common import REPO, free_port

SCRIPT = REPO / "deploy" / "run-stack.sh"
VENV_BIN = REPO / ".venv" / "bin"


def write_config(folder: Path, jobs: list[dict[str, Any]] | None = None, *,
                 exporter_port: int | None = None, remediator_port: int | None = None,
                 remediator: Mapping[str, Any] | None = None,
                 exporter: Mapping[str, Any] | None = None) -> Path:
    """A trainguard config (with a 0600 token beside it) whose exporter and remediator
    listen on free ports, unless told which."""
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "secrets" / "webhook-token"
    token.parent.mkdir(exist_ok=True)
    token.write_text(secrets.token_urlsafe(24) + "\n")
    token.chmod(0o600)
    if jobs is None:
        (folder / "outputs" / "my-lora").mkdir(parents=True, exist_ok=True)
        jobs = [{"name": "my-lora", "output_dir": "outputs/my-lora"}]
    config = {
        "jobs": jobs,
        "exporter": {"listen": f"127.0.0.1:{exporter_port or free_port()}", **(exporter or {})},
        "remediator": {"listen": f"127.0.0.1:{remediator_port or free_port()}",
                       "token_file": "secrets/webhook-token", **(remediator or {})},
    }
    path = folder / "trainguard.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def script_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def run_script(*args: str, cwd: Path | None = None, timeout: float = 60.0,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """run-stack.sh to completion (for its refusals and --check).  Should it start the
    stack after all and run on, it gets SIGTERM, so that it stops what it started (its
    parts live in their own sessions: killing the script alone would orphan them)."""
    proc = subprocess.Popen(["bash", str(SCRIPT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=script_env(env),
                            stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"run-stack.sh still running after {timeout:.0f}s:\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _terminal_defaults() -> None:
    # What a shell does for a foreground command: default signal dispositions.  A test
    # runner started in the background may have SIGINT ignored, and an ignored signal
    # cannot be trapped, so without this the Ctrl-C tests would test nothing.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class RunStack:
    """One running deploy/run-stack.sh in its own process group (like a terminal job)."""

    def __init__(self, args: list[str], *, cwd: Path, log: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(["bash", str(SCRIPT), *args], cwd=cwd, env=script_env(env),
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_terminal_defaults)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self, timeout: float = 90.0) -> str:
        """Until it says it is up; its output so far.  Fails with the output if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if "Ctrl-C stops everything." in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"run-stack.sh exited {self.proc.returncode}:\n{text}")
            time.sleep(0.2)
        raise AssertionError(f"run-stack.sh not up after {timeout:.0f}s:\n{self.text()}")

    def component_pids(self) -> dict[str, int]:
        return {m[1]: int(m[2]) for m in re.finditer(r"run-stack\.sh: (\w+) started \(pid (\d+)",
                                                     self.text())}

    def urls(self) -> list[str]:
        return re.findall(r"http://127\.0\.0\.1:\d+/\S*", self.text().split(" up. ", 1)[-1])

    def ctrl_c(self) -> None:
        """What the terminal does on Ctrl-C: SIGINT to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            self._out.close()
        return rc

    def kill(self) -> None:
        """Teardown after a failed test: the script, then any component it left."""
        pids = self.component_pids()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in pids.values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if not self._out.closed:
            self._out.close()


def pid_alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1].split(" ", 1)[0] != "Z"
