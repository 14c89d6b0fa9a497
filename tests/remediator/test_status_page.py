"""The status page in a real browser: Debian's chromium, headless, the DOM it rendered.

Two real runs: one died at start with a missing module (the remediator did not relaunch
it), one hangs at step 25 with states saved at 10 and 20.  The page must tell a person,
in words, what happened (the incident's reason and the run's error) and what trainguard
will do next for each job, and the commands to pause and re-arm.  Readable without
JavaScript: the page has no script, and the text of the DOM Chromium built equals the
text of the markup as served (nothing is made by a script).  No screenshot is compared:
the test reads the rendered DOM's text.  (Chromium's --dump-dom itself needs scripts on:
it reads the DOM through a script, so "JS off" is shown by the comparison instead.)
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from helpers.common import wait_for
from helpers.remediator import (
    job_tree_pids,
    kill_tree,
    make_run,
    payload,
    thread_server,
    write_config,
)

pytestmark = pytest.mark.slow

# The flags the machine notes give for Chromium here: no sandbox as root, no GPU, and no
# background connections (this machine's network is closed).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise AssertionError("chromium is not installed (scripts/bootstrap.sh installs it)")
    return path


def text_of(markup: str) -> str:
    """Markup's text: tags and the style sheet dropped, entities decoded, spaces folded."""
    text = re.sub(r"<style.*?</style>", " ", markup, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return " ".join(text.split())


def rendered(url: str, profile: Path) -> str:
    """The DOM Chromium built for ``url``, serialized."""
    proc = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                           url], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def test_the_page_shows_why_and_what_next_in_a_real_browser(tmp_path: Path) -> None:
    dead = make_run(tmp_path, "nomod", extra=("--require_module library.train_util",),
                    once=False)
    dead.start().wait(120)
    hung = make_run(tmp_path, "lora", steps=30, extra=("--hang_at_step 25",))
    proc = hung.start()
    try:
        wait_for(lambda: hung.events("hang"), timeout=120, what="the run to hang")
        config = write_config(tmp_path, [dead, hung])
        with thread_server(config) as client:
            client.post_alert(payload(dead.name, alertname="TrainingProcessDown",
                                      starts=time.time()))
            (inc,) = client.settled(dead.name)
            assert inc["state"] == "failed_permanently"
            time.sleep(5.5)   # past the page's own cache of the last look
            dom = rendered(client.url + "/", tmp_path / "profile")
            served = requests.get(client.url + "/", timeout=10).text
    finally:
        kill_tree(job_tree_pids(hung))
        proc.wait(30)

    text = text_of(dom)
    assert "<script" not in served.lower() and text == text_of(served)
    # The incident: its outcome, the run's error and the reason, in the table.
    assert "failed_permanently" in text
    assert "configuration: ModuleNotFoundError: No module named 'library'" in text
    assert "not relaunched: a restart would fail the same way" in text
    # The dead job: its state and what happens next (nothing, and why, and the fix).
    assert "failed, not relaunched (incident 1)" in text
    assert ("Nothing: the run failed and was not relaunched (ModuleNotFoundError: No "
            "module named 'library'). Fix it: install it into the Python the run uses"
            in text)
    # The hung job: alive, how far it got, its newest checkpoint, and what comes next.
    assert "lora-step00000020-state: step 20" in text
    assert "running: " in text and "step 24/30" in text   # it hangs before step 25
    assert ("If the run hangs, stalls or dies: stops what is left of it and resumes it "
            "from lora-step00000020-state (step 20); 0 of 3 restarts used in the last "
            "1 h." in text)
    # How to pause and re-arm, for this config.
    assert f"trainguard pause lora --config {config}" in text
    assert f"trainguard remediator reset nomod --config {config}" in text
