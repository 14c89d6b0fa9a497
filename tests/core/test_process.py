"""trainguard.process against real processes: cwd-relative args, trees, look-alike runs."""

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
from helpers.common import PYTHON, wait_for

from trainguard.config import Config, parse_config
from trainguard.process import ProcessMatcher, job_processes, refresh, same_process

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
    """A FluxGym-like root with two runs whose names share a prefix."""
    root = tmp_path / "fluxgym"
    for name in ("my-lora", "my-lora2"):
        (root / "outputs" / name).mkdir(parents=True)
    (tmp_path / "elsewhere" / "outputs" / "my-lora").mkdir(parents=True)
    return root


def config(root: Path, **extra: object) -> Config:
    jobs = [{"name": "my-lora", "output_dir": "outputs/my-lora",
             "log_file": "outputs/my-lora/train.log", **extra},
            {"name": "my-lora2", "output_dir": "outputs/my-lora2"}]
    return parse_config({"jobs": jobs}, root / "trainguard.yaml")


def pids(matched: dict[str, list[object]], name: str) -> set[int]:
    return {p.pid for p in matched[name]}  # type: ignore[attr-defined]


def test_relative_args_resolve_against_each_process_own_cwd(tree: Path, spawn: Spawner) -> None:
    mine = spawn([PYTHON, "-c", SLEEP, "--output_dir", "outputs/my-lora"], cwd=tree)
    # Same relative text, other cwd: it names elsewhere/outputs/my-lora, not the job.
    other = spawn([PYTHON, "-c", SLEEP, "--output_dir", "outputs/my-lora"],
                  cwd=tree.parent / "elsewhere")
    matcher = ProcessMatcher(config(tree).jobs)
    got = wait_for(lambda: matcher.match() if pids(matcher.match(), "my-lora") else None,
                   what="the job's process")
    assert mine.pid in pids(got, "my-lora")
    assert other.pid not in pids(got, "my-lora")
    assert other.pid not in pids(got, "my-lora2")


def test_prefix_sharing_dirs_and_flag_equals_value(tree: Path, spawn: Spawner) -> None:
    a = spawn([PYTHON, "-c", SLEEP, "--output_dir=outputs/my-lora"], cwd=tree)
    b = spawn([PYTHON, "-c", SLEEP, f"--output_dir={tree / 'outputs' / 'my-lora2'}"],
              cwd=tree.parent)
    matcher = ProcessMatcher(config(tree).jobs)
    got = wait_for(lambda: (m := matcher.match())["my-lora"] and m["my-lora2"] and m,
                   what="both jobs' processes")
    assert pids(got, "my-lora") == {a.pid}
    assert pids(got, "my-lora2") == {b.pid}


def test_bash_script_and_its_children_belong_to_the_job(tree: Path, spawn: Spawner) -> None:
    script = tree / "outputs" / "my-lora" / "train.sh"
    # The python child's own args do not mention the job: it belongs by descent.
    script.write_text(f"{PYTHON} -c '{SLEEP}' --seed 42\necho done\n")
    job = config(tree, launch={"script": "outputs/my-lora/train.sh", "workdir": "."}).jobs[0]
    bash = spawn(["bash", "outputs/my-lora/train.sh"], cwd=tree)
    procs = wait_for(lambda: len(job_processes(job)) >= 2 and job_processes(job),
                     what="bash and its python child")
    by_pid = {p.pid: p for p in procs}
    assert bash.pid in by_pid
    child = [p for p in procs if p.ppid == bash.pid]
    assert len(child) == 1 and "--seed" in child[0].cmdline
    assert not any("my-lora" in a for a in child[0].cmdline)
    assert procs[0].pid == bash.pid  # roots first, then descendants


def test_script_path_alone_identifies_the_job(tree: Path, spawn: Spawner) -> None:
    script = tree / "outputs" / "my-lora" / "train.sh"
    script.write_text("sleep 120\n")
    cfg = parse_config({"jobs": [{"name": "j", "output_dir": "/nonexistent/out",
                                  "launch": {"script": str(script)}}]},
                       tree / "trainguard.yaml")
    p = spawn(["bash", "train.sh"], cwd=script.parent)
    got = wait_for(lambda: job_processes(cfg.jobs[0]), what="the script's process")
    assert p.pid in {x.pid for x in got}


def test_resumed_copy_of_a_script_outside_the_output_dir_is_the_job(
        tree: Path, spawn: Spawner) -> None:
    """The remediator runs `bash <script>.trainguard-resume.sh`; that bash is the job too,
    even when nothing in its arguments names the output folder."""
    from trainguard.process import resumed_script_path

    scripts = tree / "scripts"
    scripts.mkdir()
    script = scripts / "train.sh"
    script.write_text("sleep 120\n")
    copy = resumed_script_path(script)
    copy.write_text("sleep 120\n")
    cfg = parse_config({"jobs": [{"name": "j", "output_dir": "/nonexistent/out",
                                  "launch": {"script": str(script)}}]},
                       tree / "trainguard.yaml")
    p = spawn(["bash", copy.name], cwd=scripts)
    other = spawn(["bash", "-c", "sleep 120", "unrelated.trainguard-resume.sh"], cwd=scripts)
    got = wait_for(lambda: job_processes(cfg.jobs[0]), what="the resumed copy's process")
    assert p.pid in {x.pid for x in got}
    assert other.pid not in {x.pid for x in got}


def test_log_viewers_are_not_the_job(tree: Path, spawn: Spawner) -> None:
    log = tree / "outputs" / "my-lora" / "train.log"
    log.write_text("")
    viewer = spawn([PYTHON, "-c", SLEEP, "-f", "outputs/my-lora/train.log"], cwd=tree)
    job = spawn([PYTHON, "-c", SLEEP, "--output_dir", "outputs/my-lora"], cwd=tree)
    matcher = ProcessMatcher(config(tree).jobs)
    got = wait_for(lambda: matcher.match() if pids(matcher.match(), "my-lora") else None,
                   what="the job's process")
    assert pids(got, "my-lora") == {job.pid}
    assert viewer.poll() is None  # it was alive, just not counted


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
    out = subprocess.run([PYTHON, "-c", code, "--config", "outputs/my-lora/x.yaml"],
                         cwd=tree, capture_output=True, text=True, check=True).stdout
    own, listed = out.split(" ", 1)
    assert own not in listed.strip("[]\n").split(", ")


def test_zombie_children_are_listed_but_not_alive(tree: Path, spawn: Spawner) -> None:
    # The parent never reaps its child, which stays a zombie under it.  The Popen object
    # is kept: a discarded one is reaped by Popen.__del__ (waitpid WNOHANG) whenever the
    # child has already exited, which on a loaded machine left no zombie at all.
    code = "import subprocess, time; child = subprocess.Popen(['true']); time.sleep(120)"
    parent = spawn([PYTHON, "-c", code, "--output_dir", "outputs/my-lora"], cwd=tree)
    job = config(tree).jobs[0]
    procs = wait_for(lambda: (z := [p for p in job_processes(job) if p.status == "zombie"])
                     and z, what="a zombie child")
    assert procs[0].ppid == parent.pid
    assert not procs[0].alive
    assert [p.alive for p in job_processes(job) if p.pid == parent.pid] == [True]


def test_same_process_tells_a_recycled_pid(tree: Path, spawn: Spawner) -> None:
    p = spawn([PYTHON, "-c", SLEEP, "outputs/my-lora"], cwd=tree)
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
