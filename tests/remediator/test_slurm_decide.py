"""Every decision about a job Slurm owns, from facts alone (decide is pure), and the
parts of remediator.slurm that read Slurm's words.

What must hold whatever the facts: a Slurm job is restarted through Slurm or not at all
(every Act carries a SlurmAction, and the executor for a Slurm job refuses a plan
without one); requeue when the job can be requeued and reads its resume argument,
otherwise cancel + resubmit the resumed copy, saying which and why.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers.decide_facts import NOW, base_facts

from remediator import slurm as sl
from remediator.decide import Act, Facts, Refuse, Skip, Wait, decide
from remediator.execute import DryRunExecutor, slurm_executor_for
from remediator.prepare import Candidate, Prepared
from trainguard.checkpoint import CheckpointInfo, Status
from trainguard.config import JobConfig, LaunchConfig, RemediatorConfig, SlurmConfig
from trainguard.ledger import ResumeLedger
from trainguard.process import JobProcess

# The base facts of tests/helpers/decide_facts.py, with a Slurm batch script and trainer.
PLAN = Prepared(checkpoint=None, flags=None, argv=("bash", "/r/train.sbatch"), copy=None,
                copy_bytes=None, copy_mode=0, env={}, env_source="test", python=None,
                workdir=Path("/r"), log_file=Path("/r/train.log"))
HUNG = JobProcess(pid=4242, ppid=1, create_time=NOW - 3600,
                  cmdline=("accelerate", "launch", "t.py", "--output_dir", "/r/out"),
                  status="sleeping", root=True)


def facts(**changes: object) -> Facts:
    return base_facts(PLAN, HUNG, **changes)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
INFO = CheckpointInfo(path=Path("/r/out/lora-step00000020-state"),
                      name="lora-step00000020-state", step=20,
                      step_source="train_state.json", epoch=1, status=Status.VALID,
                      problems=(), mtime=NOW - 60, rng_step=20, train_state_step=20,
                      numpy_module=None, final=False)
RESUME = dataclasses.replace(PLAN, checkpoint=Candidate(INFO),
                             copy=Path("/r/train.trainguard-resume.sbatch"), copy_bytes=b"x")


def job(state: str = "RUNNING", requeue: bool = True, batch: bool = True,
        restarts: int = 0) -> sl.SlurmJob:
    return sl.SlurmJob(job_id="7", name="lora", state=state, reason="None", requeue=requeue,
                       batch=batch, restarts=restarts, held=False)


def slurm(j: sl.SlurmJob | None = None, reads: bool = True,
          problem: str | None = None) -> sl.SlurmFacts:
    j = job() if j is None and problem is None else j
    return sl.SlurmFacts(job_id=None if j is None else j.job_id, source="SLURM_JOB_ID of pid 1",
                         job=j, cluster="tg", reads_resume_args=reads, problem=problem)


def test_a_hung_requeueable_job_is_requeued_and_its_processes_left_to_slurm() -> None:
    d = decide(facts(resume=RESUME, slurm=slurm(job(restarts=2))))
    assert isinstance(d, Act) and d.kill == (HUNG,)
    a = d.resume.slurm
    assert a is not None and (a.method, a.job_id, a.restarts, a.cluster) == \
        ("requeue", "7", 2, "tg")
    assert "requeueing Slurm job 7 (restart count 2 -> 3, found by SLURM_JOB_ID of pid 1)" \
        in d.resume.describe()


@pytest.mark.parametrize("state", ["FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                                   "PREEMPTED"])
def test_a_job_whose_run_ended_badly_is_requeued_too(state: str) -> None:
    d = decide(facts(resume=RESUME, processes=(), slurm=slurm(job(state))))
    assert isinstance(d, Act) and d.kill == () and d.resume.slurm is not None
    assert d.resume.slurm.method == "requeue" and d.resume.slurm.state == state


def test_a_job_that_cannot_be_requeued_is_cancelled_and_resubmitted_saying_why() -> None:
    d = decide(facts(resume=RESUME, slurm=slurm(job(requeue=False))))
    assert isinstance(d, Act) and d.resume.slurm is not None
    assert d.resume.slurm.method == "resubmit" and "Requeue=0" in d.resume.slurm.why
    assert "cancelling Slurm job 7 and submitting the resumed copy" in d.resume.describe()


def test_a_batch_script_without_resume_args_is_resubmitted_not_requeued_to_start_over() -> None:
    d = decide(facts(resume=RESUME, slurm=slurm(reads=False)))
    assert isinstance(d, Act) and d.resume.slurm is not None
    assert d.resume.slurm.method == "resubmit" and "resume-args" in d.resume.slurm.why


def test_no_resumed_copy_and_no_requeue_is_a_refusal() -> None:
    no_copy = dataclasses.replace(RESUME, copy=None, copy_bytes=None)
    d = decide(facts(resume=no_copy, slurm=slurm(job(requeue=False))))
    assert isinstance(d, Refuse) and "Requeue=0" in d.reason


@pytest.mark.parametrize(("state", "says"), [
    ("CANCELLED", "stopped on purpose"), ("COMPLETED", "exited 0"),
    ("PENDING", "already PENDING"), ("REQUEUE_HOLD", "already REQUEUE_HOLD"),
])
def test_slurm_states_that_need_nothing(state: str, says: str) -> None:
    d = decide(facts(resume=RESUME, processes=(), slurm=slurm(job(state))))
    assert isinstance(d, Skip) and says in d.reason


def test_a_completing_job_is_waited_for() -> None:
    d = decide(facts(resume=RESUME, processes=(), slurm=slurm(job("COMPLETING"))))
    assert isinstance(d, Wait) and d.kind == "slurm" and d.until == NOW + 5


def test_an_unknown_slurm_job_is_a_refusal_naming_why() -> None:
    d = decide(facts(resume=RESUME, slurm=slurm(problem="jobs named 'lora' are 2 (3, 4)")))
    assert isinstance(d, Refuse) and "2 (3, 4)" in d.reason


@pytest.mark.parametrize("state", ["RUNNING", "FAILED"])
def test_a_job_found_by_name_on_another_node_is_that_nodes(state: str) -> None:
    elsewhere = dataclasses.replace(slurm(dataclasses.replace(job(state), batch_host="gpu-b")),
                                    here=False)
    d = decide(facts(resume=RESUME, processes=(), slurm=elsewhere))
    assert isinstance(d, Skip) and "node gpu-b" in d.reason


def test_a_suspended_job_is_not_restarted() -> None:
    d = decide(facts(resume=RESUME, slurm=slurm(job("SUSPENDED"))))
    assert isinstance(d, Refuse) and "SUSPENDED" in d.reason


def test_the_general_rules_come_first_for_slurm_jobs_too() -> None:
    s = slurm()
    assert isinstance(decide(facts(resume=RESUME, slurm=s, paused=True)), Skip)
    assert isinstance(decide(facts(resume=RESUME, slurm=s, completed=True)), Skip)
    d = decide(facts(resume=RESUME, slurm=s, last_process_start=NOW - 10))
    assert isinstance(d, Skip) and "stale" in d.reason
    assert isinstance(decide(facts(resume=RESUME, slurm=s, writing=True)), Wait)


@pytest.mark.parametrize("state", sorted(sl.PENDING | sl.SETTLING | sl.RESTARTABLE
                                          | sl.FINISHED | {"SUSPENDED", "UNKNOWN"}))
@pytest.mark.parametrize("requeue", [True, False])
@pytest.mark.parametrize("reads", [True, False])
def test_every_act_for_a_slurm_job_goes_through_slurm(state: str, requeue: bool,
                                                      reads: bool) -> None:
    for procs in ((HUNG,), ()):
        d = decide(facts(resume=RESUME, processes=procs,
                         slurm=slurm(job(state, requeue=requeue), reads=reads)))
        if isinstance(d, Act):
            assert d.resume.slurm is not None and d.resume.slurm.job_id == "7"


def test_the_executor_for_a_slurm_job_refuses_a_plan_without_a_slurm_action(
        tmp_path: Path) -> None:
    (tmp_path / "t.sbatch").write_text("python t.py\n")
    j = JobConfig(name="lora", output_dir=tmp_path, launch=LaunchConfig(
        workdir=tmp_path, script=tmp_path / "t.sbatch", slurm=SlurmConfig("lora")))
    with pytest.raises(ValueError, match="outside Slurm"):
        slurm_executor_for(RemediatorConfig(), j, RESUME, "gpu-a")
    dry = slurm_executor_for(RemediatorConfig(dry_run=True), j, RESUME, "gpu-a")
    assert isinstance(dry, DryRunExecutor)


# --------------------------------------------------------------------------- reading Slurm


def test_scontrol_show_job_lines_are_read_field_by_field() -> None:
    running = sl.job_from(sl.parse_show((FIXTURES / "show-job-running.txt").read_text()))
    assert (running.job_id, running.name, running.state, running.requeue, running.batch,
            running.restarts, running.held) == ("3", "tg-demo", "RUNNING", True, True, 0, False)
    fields = sl.parse_show((FIXTURES / "show-job-running.txt").read_text())
    assert fields["WorkDir"] == "/tmp/i14x/work dir"   # values are not quoted
    assert fields["TRES"] == "cpu=1,node=1,billing=1"
    held = sl.job_from(sl.parse_show((FIXTURES / "show-job-requeued-held.txt").read_text()))
    assert (held.state, held.restarts, held.held, held.reason) == \
        ("PENDING", 1, True, "job_requeued_in_held_state")


def record(**changes: object) -> sl.ResumeRecord:
    base = sl.ResumeRecord(job="lora", host="gpu-a", checkpoint=str(INFO.path), step=20,
                           args=("--resume", str(INFO.path)), slurm_job_id="7", cluster="tg",
                           restart_count=1, written_at=NOW, ledger=ResumeLedger())
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("env", "applies"), [
    ({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1", "SLURM_CLUSTER_NAME": "tg"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1"}, True),
    # a later restart of the same job (Slurm requeued it itself): choose afresh
    ({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2", "SLURM_CLUSTER_NAME": "tg"}, False),
    # the first run, before any requeue
    ({"SLURM_JOB_ID": "7", "SLURM_CLUSTER_NAME": "tg"}, False),
    # job ids start again at 1 on a new cluster: an id alone names nothing
    ({"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1", "SLURM_CLUSTER_NAME": "other"}, False),
    ({"SLURM_JOB_ID": "8", "SLURM_RESTART_COUNT": "1", "SLURM_CLUSTER_NAME": "tg"}, False),
    ({}, False),
])
def test_a_resume_record_applies_to_the_run_it_was_written_for_only(
        env: dict[str, str], applies: bool) -> None:
    assert record().applies_to(env) is applies


def test_a_resubmissions_record_applies_to_no_run() -> None:
    assert not record(slurm_job_id=None).applies_to({"SLURM_RESTART_COUNT": "1"})


def test_resume_records_round_trip_and_reject_what_they_did_not_write() -> None:
    r = record()
    assert sl.ResumeRecord.from_json(r.to_json()) == r
    for bad in ({}, {"version": 2}, {**r.to_json(), "checkpoint": "relative/path"},
                {**r.to_json(), "args": "--resume x"}, {**r.to_json(), "restart_count": -1}):
        with pytest.raises(ValueError):
            sl.ResumeRecord.from_json(bad)


def test_prepared_plans_carry_no_slurm_action_until_decide_gives_one() -> None:
    assert RESUME.slurm is None and isinstance(RESUME, Prepared)
