"""TrainingDiskLow from a real small filesystem: a tmpfs, real accelerate checkpoints, the
exporter's collectors reading it, and promtool evaluating the shipped rule on exactly the
values the exporter published."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_testlib import PROMETHEUS_DIR, run_tool
from helpers.common import TINY_TRAIN
from helpers.smallfs import small_fs

from exporter.server import build_registry
from trainguard.checkpoint import latest_usable
from trainguard.config import parse_config

pytestmark = pytest.mark.slow
MiB = 1 << 20


def scrape(config_file: Path) -> dict[str, float]:
    """The exporter's disk and checkpoint series for job lora, as a scrape renders them."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry, _ = build_registry(parse_config(yaml.safe_load(config_file.read_text()),
                                              config_file))
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if s.labels.get("training_job") == "lora" and s.name in (
                    "trainguard_job_filesystem_avail_bytes",
                    "trainguard_checkpoint_latest_size_bytes"):
                out[s.name] = s.value
    return out


def test_disk_low_fires_through_promtool_on_what_the_exporter_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with small_fs(tmp_path / "mnt", 24 * MiB, monkeypatch) as fs:
        out = fs.path / "outputs" / "lora"
        # Real states of ~1.5 MB each (a wider model than the default).
        subprocess.run([sys.executable, str(TINY_TRAIN), "--output_dir", str(out),
                        "--output_name", "lora", "--max_train_steps", "4",
                        "--save_every_n_steps", "2", "--save_state", "--step_seconds", "0",
                        "--hidden", "8192"], check=True, capture_output=True, timeout=120)
        config = tmp_path / "trainguard.yaml"
        config.write_text(yaml.safe_dump({"jobs": [{"name": "lora", "output_dir": str(out)}]}))
        newest = latest_usable(out)
        assert newest is not None
        size = sum(f.stat().st_size for f in newest.path.rglob("*") if f.is_file())
        assert size > MiB

        m = scrape(config)
        assert m["trainguard_checkpoint_latest_size_bytes"] == size
        assert m["trainguard_job_filesystem_avail_bytes"] == fs.avail()
        roomy = m["trainguard_job_filesystem_avail_bytes"]
        assert roomy > 1.5 * size

        # Leave room for about one more save, not for a save and a half.
        tight = fs.fill_to(int(1.2 * size))
        assert size <= tight < 1.5 * size
        m = scrape(config)
        assert m["trainguard_job_filesystem_avail_bytes"] == tight

    # promtool: the shipped rules, fed the two scrapes (roomy for 10 minutes, then tight)
    # and a live run; the alert pends one evaluation, then fires.
    labels = 'instance="127.0.0.1:9842",job="trainguard-exporter",training_job="lora"'
    test = {
        "rule_files": [str(PROMETHEUS_DIR / "rules" / "tunables.yml"),
                       str(PROMETHEUS_DIR / "rules" / "trainguard.rules.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f"trainguard_job_filesystem_avail_bytes{{{labels}}}",
                 "values": f"{roomy:.0f}x9 {tight:.0f}x10"},
                {"series": f"trainguard_checkpoint_latest_size_bytes{{{labels}}}",
                 "values": f"{size}x20"},
                {"series": f"trainguard_job_process_up{{{labels}}}", "values": "1x20"},
                {"series": f"trainguard_job_process_start_time_seconds{{{labels}}}",
                 "values": "0x20"},
                {"series": f"trainguard_checkpoint_writing{{{labels}}}", "values": "0x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "9m", "alertname": "TrainingDiskLow", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "TrainingDiskLow", "exp_alerts": []},
            ],
        }],
    }
    # Firing at 11m, with the free bytes and the checkpoint's size in its words.
    test["tests"][0]["alert_rule_test"].append(  # type: ignore[index]
        {"eval_time": "11m", "alertname": "TrainingDiskLow", "exp_alerts": [
            {"exp_labels": {"training_job": "lora", "remediate": "false",
                            "severity": "warning"},
             "exp_annotations": {
                 "summary": f"lora: {humanize1024(tight)}B free where it saves; the next "
                            "checkpoint may not fit",
                 "description": (
                     f"The filesystem of training job lora's output folder has "
                     f"{humanize1024(tight)}B free, less than trainguard:tunable:"
                     "disk_free_checkpoint_ratio times its newest usable checkpoint "
                     f"({humanize1024(size)}B). A save that does not fit dies half-written. "
                     "Free space there (old checkpoints you do not need, caches); trainguard "
                     "will not resume the run into a disk that cannot hold one more save.")}}]})
    path = tmp_path / "disk_low_test.yml"
    path.write_text(yaml.safe_dump(test))
    out = run_tool(["promtool", "test", "rules", str(path)])
    assert "SUCCESS" in out


def humanize1024(v: float) -> str:
    """Prometheus' template function humanize1024 (template/template.go): %.4g and a
    binary prefix, "ki" for kibi."""
    if abs(v) <= 1:
        return f"{v:.4g}"
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix = p
        v /= 1024
    return f"{v:.4g}{prefix}"
