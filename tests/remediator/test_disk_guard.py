"""The remediator refuses to resume into a disk that cannot hold one more save: a real hung
run on a real small filesystem (a tmpfs; tests/helpers/smallfs.py says when it falls
back), real HTTP, and the same alert delivered again once a person made room."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.common import wait_for
from helpers.remediator import (
    job_tree_pids,
    kill_tree,
    make_run,
    payload,
    thread_server,
    write_config,
)
from helpers.smallfs import small_fs

from trainguard.checkpoint import latest_usable
from trainguard.checkpoint.scanner import checkpoint_bytes

pytestmark = pytest.mark.slow
MiB = 1 << 20


def test_no_resume_into_a_full_disk_then_resumed_once_there_is_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with small_fs(tmp_path / "mnt", 32 * MiB, monkeypatch) as fs:
        run = make_run(fs.path, "lora", steps=30, extra=("--hang_at_step 25", "--hidden 8192"))
        proc = run.start()
        try:
            wait_for(lambda: run.events("hang"), timeout=120, what="the run to hang")
            hung = job_tree_pids(run)
            newest = latest_usable(run.output_dir)
            assert newest is not None and newest.name == "lora-step00000020-state"
            need = checkpoint_bytes(newest.path) or 0
            assert need > MiB
            free = fs.fill_to(need // 2)
            assert free < need
            config = write_config(tmp_path, [run], refused_recheck_seconds=0)
            body = payload(run.name)
            with thread_server(config) as client:
                client.post_alert(body)
                (inc,) = client.settled(run.name)
                assert inc["state"] == "refused", inc
                assert f"the disk of {run.output_dir}" in inc["reason"]
                assert "less than one more save needs" in inc["reason"]
                assert "lora-step00000020-state" in inc["reason"]
                assert job_tree_pids(run) == hung, "nothing was signalled"
                assert not [a for a in inc["actions"] if a["action"] == "kill"]

                fs.unfill()                    # a person made room
                client.post_alert(body)        # Alertmanager delivers it again
                wait_for(lambda: run.events("finish"), timeout=120,
                         what="the resumed run to finish")
                (inc,) = client.settled(run.name)
            assert inc["outcome"] == "resumed", inc
            starts = [e for e in run.events("start") if e.get("resume")]
            assert len(starts) == 1 and starts[0]["step"] == 20
        finally:
            kill_tree(job_tree_pids(run))
            proc.wait(30)
            time.sleep(0.2)
