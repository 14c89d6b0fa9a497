"""trainguard.process against real processes: roots, descendants, bystanders, nesting.

Every process here is real (started in its own session, killed at teardown); the
"trainer" is a real ``.py`` file run by the real interpreter, because the job rule
recognises a training command by what it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.bystanders import start_bystanders
from helpers.common import PYTHON, wait_for

from trainguard import process as process_mod
from trainguard.config import Config, parse_config
from trainguard.process import (
    ProcessMatcher,
    _PidClock,
    job_processes,
    refresh,
    resumed_script_path,
    same_process,
    shell_script_argument,
)

SLEEP = "import time; time.sleep(120)"


class Spawner:
    """Starts real processes in their own session and kills every one at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, cwd=cwd, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    s = Spawner()
    yield s
    s.close()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A FluxGym-like root with two runs whose names share a prefix, and a trainer."""
    root = tmp_path / "fluxgym"
    for name in ("my-lora", "my-lora2"):
        (root / "outputs" / name).mkdir(parents=True)
    (tmp_path / "elsewhere" / "outputs" / "my-lora").mkdir(parents=True)
    (root / "train.py").write_text(SLEEP + "\n")
    (tmp_path / "elsewhere" / "train.py").write_text(SLEEP + "\n")
    return root


def config(root: Path, jobs: list[dict[str, object]] | None = None, **extra: object) -> Config:
    if jobs is None:
        jobs = [{"name": "my-lora", "output_dir": "outputs/my-lora",
                 "log_file": "outputs/my-lora/train.log", **extra},
                {"name": "my-lora2", "output_dir": "outputs/my-lora2"}]
    return parse_config({"jobs": jobs}, root / "trainguard.yaml")


def pids(matched: dict[str, list[process_mod.JobProcess]], name: str) -> set[int]:
    return {p.pid for p in matched[name]}


def test_relative_output_dir_resolves_against_each_process_own_cwd(
        tree: Path, spawn: Spawner) -> None:
    mine = spawn([PYTHON, "train.py", "--output_dir", "outputs/my-lora"], cwd=tree)
    # Same relative text, other cwd: it names elsewhere/outputs/my-lora, not the job.
    other = spawn([PYTHON, "train.py", "--output_dir", "outputs/my-lora"],
                  cwd=tree.parent / "elsewhere")
    matcher = ProcessMatcher(config(tree).jobs)
    got = wait_for(lambda: (m := matcher.match())["my-lora"] and m, what="the job's process")
    assert pids(got, "my-lora") == {mine.pid}
    assert other.pid not in pids(got, "my-lora2")


def test_prefix_sharing_dirs_and_flag_equals_value(tree: Path, spawn: Spawner) -> None:
    a = spawn([PYTHON, "train.py", "--output_dir=outputs/my-lora"], cwd=tree)
    b = spawn([PYTHON, str(tree / "train.py"),
               f"--output_dir={tree / 'outputs' / 'my-lora2'}"], cwd=tree.parent)
    matcher = ProcessMatcher(config(tree).jobs)
    got = wait_for(lambda: (m := matcher.match())["my-lora"] and m["my-lora2"] and m,
                   what="both jobs' processes")
    assert pids(got, "my-lora") == {a.pid}
    assert pids(got, "my-lora2") == {b.pid}


def test_bash_script_and_its_children_belong_to_the_job(tree: Path, spawn: Spawner) -> None:
    script = tree / "outputs" / "my-lora" / "train.sh"
    # The python child's own args do not name the job: it belongs by descent.
    script.write_text(f"{PYTHON} -c '{SLEEP}' --seed 42\necho done\n")
    job = config(tree, launch={"script": "outputs/my-lora/train.sh", "workdir": "."}).jobs[0]
    bash = spawn(["bash", "outputs/my-lora/train.sh"], cwd=tree)
    procs = wait_for(lambda: len(job_processes(job)) >= 2 and job_processes(job),
                     what="bash and its python child")
    assert procs[0].pid == bash.pid and procs[0].root  # roots first, then descendants
    child = [p for p in procs if p.ppid == bash.pid]
    assert len(child) == 1 and "--seed" in child[0].cmdline and not child[0].root


def test_shell_options_before_the_script_and_a_script_run_by_its_shebang(
        tree: Path, spawn: Spawner) -> None:
    script = tree / "outputs" / "my-lora" / "train.sh"
    script.write_text("#!/bin/bash\nsleep 120\n")
    script.chmod(0o755)
    job = config(tree, launch={"script": "outputs/my-lora/train.sh", "workdir": "."}).jobs[0]
    traced = spawn(["bash", "-e", "-o", "pipefail", "outputs/my-lora/train.sh"], cwd=tree)
    direct = spawn(["./train.sh"], cwd=script.parent)  # the kernel runs /bin/bash ./train.sh
    got = wait_for(lambda: (ps := {p.pid for p in job_processes(job) if p.root})
                   >= {traced.pid, direct.pid} and ps, what="both shells")
    assert {traced.pid, direct.pid} <= got


def test_resumed_copy_of_a_script_outside_the_output_dir_is_the_job(
        tree: Path, spawn: Spawner) -> None:
    """The remediator runs `bash <script>.trainguard-resume.sh`; that bash is the job too,
    even when nothing in its arguments names the output folder."""
    scripts = tree / "scripts"
    scripts.mkdir()
    script = scripts / "train.sh"
    script.write_text("sleep 120\n")
    copy = resumed_script_path(script)
    copy.write_text("sleep 120\n")
    cfg = parse_config({"jobs": [{"name": "j", "output_dir": str(tree / "outputs" / "my-lora"),
                                  "launch": {"script": str(script)}}]},
                       tree / "trainguard.yaml")
    p = spawn(["bash", copy.name], cwd=scripts)
    other = spawn(["bash", "-c", "sleep 120", "unrelated.trainguard-resume.sh"], cwd=scripts)
    got = wait_for(lambda: job_processes(cfg.jobs[0]), what="the resumed copy's process")
    assert p.pid in {x.pid for x in got}
    assert other.pid not in {x.pid for x in got}


def test_bystanders_that_name_the_folder_are_never_the_job(tree: Path, spawn: Spawner) -> None:
    """Issue 10's list, as real processes: none of them counts, the trainer does."""
    out = "outputs/my-lora"
    (tree / out / "train.log").write_text("")
    (tree / out / "train.sh").write_text("sleep 120\n")
    (tree / out / "x.yaml").write_text("")
    bystanders = list(start_bystanders(out, tree).values())
    spawn.procs.extend(bystanders)
    bystanders.append(spawn([PYTHON, "train.py", "--output_dir", f"{out}/converted"], cwd=tree))
    trainer = spawn([PYTHON, "train.py", "--output_dir", out], cwd=tree)
    job = config(tree, launch={"script": f"{out}/train.sh", "workdir": "."}).jobs[0]
    matcher = ProcessMatcher(config(tree, launch={"script": f"{out}/train.sh",
                                                  "workdir": "."}).jobs)
    got = wait_for(lambda: (m := matcher.match())["my-lora"] and m, what="the trainer")
    assert pids(got, "my-lora") == {trainer.pid}
    assert all(b.poll() is None for b in bystanders)  # they were alive, just not counted
    trainer.kill()
    trainer.wait()
    assert job_processes(job) == []  # the job is down although every bystander lives
    assert matcher.match()["my-lora"] == []


def test_nested_output_dirs_each_process_belongs_to_the_most_specific_job(
        tree: Path, spawn: Spawner) -> None:
    outer, inner = tree / "outputs" / "a", tree / "outputs" / "a" / "sub"
    inner.mkdir(parents=True)
    for d in (outer, inner):
        (d / "train.sh").write_text(f"{PYTHON} {tree / 'train.py'} --output_dir {d}\n")
    cfg = config(tree, jobs=[
        {"name": "a", "output_dir": "outputs/a",
         "launch": {"script": "outputs/a/train.sh", "workdir": "."}},
        {"name": "sub", "output_dir": "outputs/a/sub",
         "launch": {"script": "outputs/a/sub/train.sh", "workdir": "."}}])
    a = spawn(["bash", "outputs/a/train.sh"], cwd=tree)
    sub = spawn(["bash", "outputs/a/sub/train.sh"], cwd=tree)
    matcher = ProcessMatcher(cfg.jobs)
    got = wait_for(lambda: (m := matcher.match()) and len(m["a"]) == 2 and len(m["sub"]) == 2
                   and m, what="both trees")
    assert a.pid in pids(got, "a") and sub.pid in pids(got, "sub")
    assert not pids(got, "a") & pids(got, "sub")
    # The remediator's one-job view agrees when given every job.
    assert {p.pid for p in job_processes(cfg.jobs[0], cfg.jobs)} == pids(got, "a")


def test_output_dir_through_a_symlink_or_as_dot_still_matches(
        tree: Path, spawn: Spawner) -> None:
    real = tree / "outputs" / "my-lora"
    link = tree / "link-to-run"
    link.symlink_to(real, target_is_directory=True)
    by_link = spawn([PYTHON, str(tree / "train.py"), "--output_dir", "."], cwd=link)
    cfg_link = parse_config({"jobs": [{"name": "j", "output_dir": "link-to-run"}]},
                            tree / "trainguard.yaml")
    got = wait_for(lambda: job_processes(cfg_link.jobs[0]), what="the trainer through a link")
    assert [p.pid for p in got] == [by_link.pid]
    cfg_dot = parse_config({"jobs": [{"name": "j", "output_dir": "."}]},
                           real / "trainguard.yaml")
    assert [p.pid for p in job_processes(cfg_dot.jobs[0])] == [by_link.pid]


def test_a_configured_command_is_a_root_from_its_workdir_with_or_without_a_resume_flag(
        tree: Path, spawn: Spawner) -> None:
    cmd = [PYTHON, "train.py", "--config_file", "cfg.toml"]
    cfg = config(tree, jobs=[{"name": "c", "output_dir": "outputs/my-lora",
                              "launch": {"command": cmd, "workdir": ".",
                                         "resume_flag": "--resume_from_checkpoint"}}])
    plain = spawn(cmd, cwd=tree)
    resumed = spawn([*cmd, "--resume_from_checkpoint", "/x/checkpoint-10"], cwd=tree)
    elsewhere = spawn([PYTHON, "train.py", "--config_file", "cfg.toml"],
                      cwd=tree.parent / "elsewhere")
    got = wait_for(lambda: (ps := {p.pid for p in job_processes(cfg.jobs[0])}) and len(ps) >= 2
                   and ps, what="both command roots")
    assert got == {plain.pid, resumed.pid}
    assert elsewhere.pid not in got


def test_a_shell_that_execs_into_the_trainer_is_seen_after_the_exec(
        tree: Path, spawn: Spawner) -> None:
    """Caught between fork and exec, the pid first looks like `bash -c`; it is re-read
    while young, so the trainer it becomes is found under the same pid."""
    p = spawn(["bash", "-c", f"sleep 1.5; exec {PYTHON} train.py --output_dir outputs/my-lora"],
              cwd=tree)
    matcher = ProcessMatcher(config(tree).jobs)
    assert p.pid not in pids(matcher.match(), "my-lora")
    got = wait_for(lambda: pids(matcher.match(), "my-lora"), timeout=20, what="the exec")
    assert p.pid in got


def test_known_bystanders_are_not_re_read_each_pass(
        tree: Path, spawn: Spawner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_mod, "YOUNG_SECONDS", 0.0)
    trainer = spawn([PYTHON, "train.py", "--output_dir", "outputs/my-lora"], cwd=tree)
    matcher = ProcessMatcher(config(tree).jobs)
    wait_for(lambda: pids(matcher.match(), "my-lora"), what="the trainer")
    first = len([n for n in os.listdir("/proc") if n.isdigit()])
    matcher.match()
    # Only the job's own process and whatever the kernel may have started since are read.
    assert matcher.reads < first / 2, (matcher.reads, first)
    assert pids(matcher.match(), "my-lora") == {trainer.pid}


@pytest.mark.parametrize(("before", "last", "pid", "new"), [
    (100, 100, 50, False), (100, 120, 110, True), (100, 120, 130, False),
    (32700, 400, 32750, True), (32700, 400, 350, True), (32700, 400, 5000, False)])
def test_pid_clock_knows_which_pids_can_be_new(before: int, last: int, pid: int,
                                               new: bool) -> None:
    clock = _PidClock()
    clock.before, clock.last, clock.wrapped = before, last, False
    assert clock.may_be_new(pid) is new


@pytest.mark.parametrize(("before", "last", "expected"), [
    (100, 100, set()), (100, 120, {"110", "120"}), (32740, 60, {"32750", "50"}),
    (32700, 400, {"32750", "350", "50", "110", "120", "130"}),
    (100, 30000, {"110", "120", "130", "350", "5000", *(str(p) for p in range(1000, 1100))})])
def test_pid_clock_finds_the_pids_that_can_be_new_in_a_listing(
        before: int, last: int, expected: set[str]) -> None:
    """Short ranges are walked, long ones filter the listing: the same answer."""
    clock = _PidClock()
    clock.before, clock.last, clock.wrapped, clock.pid_max = before, last, False, 32768
    listing = {"50", "110", "120", "130", "350", "5000", "32750", "self", "net",
               *(str(p) for p in range(1000, 1100))}
    assert clock.among(listing) == expected
    assert expected == {n for n in listing if n.isdigit() and clock.may_be_new(int(n))}
    clock.wrapped = True  # more forks than pids since the last pass: every pid may be new
    assert clock.among(listing) == listing - {"self", "net"}


@pytest.mark.parametrize(("argv", "script"), [
    (["bash", "train.sh"], "train.sh"), (["/bin/sh", "-x", "t.sh", "a"], "t.sh"),
    (["bash", "-o", "pipefail", "t.sh"], "t.sh"), (["bash", "-c", "echo", "t.sh"], None),
    (["bash", "-ec", "echo"], None), (["vi", "train.sh"], None), (["bash"], None),
    (["cmd.exe", "/c", "train.bat"], "train.bat"), (["bash", "--", "t.sh"], "t.sh")])
def test_shell_script_argument(argv: list[str], script: str | None) -> None:
    assert shell_script_argument(argv) == script


def test_trainguard_never_matches_itself(tree: Path) -> None:
    code = textwrap.dedent("""
        import os, sys
        from pathlib import Path
        from trainguard.config import parse_config
        from trainguard.process import job_processes
        cfg = parse_config({"jobs": [{"name": "j", "output_dir": "outputs/my-lora"}]},
                           Path("trainguard.yaml").resolve())
        print(os.getpid(), [p.pid for p in job_processes(cfg.jobs[0])])
    """)
    (tree / "me.py").write_text(code)
    out = subprocess.run([PYTHON, "me.py", "--output_dir", "outputs/my-lora"],
                         cwd=tree, capture_output=True, text=True, check=True).stdout
    own, listed = out.split(" ", 1)
    assert own not in listed.strip("[]\n").split(", ")


def test_zombie_children_are_listed_but_not_alive(tree: Path, spawn: Spawner) -> None:
    # The parent never reaps its child, which stays a zombie under it.  The Popen object
    # is kept: a discarded one is reaped by Popen.__del__ (waitpid WNOHANG) whenever the
    # child has already exited, which on a loaded machine left no zombie at all.
    (tree / "parent.py").write_text(
        "import subprocess, time; child = subprocess.Popen(['true']); time.sleep(120)\n")
    parent = spawn([PYTHON, "parent.py", "--output_dir", "outputs/my-lora"], cwd=tree)
    job = config(tree).jobs[0]
    procs = wait_for(lambda: (z := [p for p in job_processes(job) if p.status == "zombie"])
                     and z, what="a zombie child")
    assert procs[0].ppid == parent.pid
    assert not procs[0].alive
    assert [p.alive for p in job_processes(job) if p.pid == parent.pid] == [True]


def test_same_process_tells_a_recycled_pid(tree: Path, spawn: Spawner) -> None:
    p = spawn([PYTHON, "train.py", "--output_dir", "outputs/my-lora"], cwd=tree)
    job = config(tree).jobs[0]
    jp = wait_for(lambda: job_processes(job), what="the process")[0]
    assert same_process(jp.pid, jp.create_time)
    assert not same_process(jp.pid, jp.create_time + 5.0)
    assert refresh(jp) is not None
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not same_process(jp.pid, jp.create_time)
    assert refresh(jp) is None
    assert job_processes(job) == []


def test_every_job_is_a_key_even_with_no_process(tmp_path: Path) -> None:
    cfg = parse_config({"jobs": [{"name": "a", "output_dir": "a"},
                                 {"name": "b", "output_dir": "b"}]}, tmp_path / "c.yaml")
    assert ProcessMatcher(cfg.jobs).match() == {"a": [], "b": []}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
