"""The compatibility verdict: the DESIGN.md §4 matrix, and reading another python."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from trainguard.checkpoint import CheckpointInfo, Status
from trainguard.checkpoint.compat import (
    ENV_NO_WEIGHTS_ONLY,
    REPAIR_NUMPY,
    Environment,
    parse_version,
    verdict,
)

INFO = CheckpointInfo(path=Path("/x/checkpoint-5"), name="checkpoint-5", step=5,
                      step_source="name", epoch=None, status=Status.VALID, problems=(),
                      mtime=0.0, rng_step=5, train_state_step=None, numpy_module="numpy._core")
OLD_NP = replace(INFO, numpy_module="numpy.core")


@pytest.mark.parametrize(("info", "env", "loads", "fixes", "repairs"), [
    (INFO, Environment("2.13.0", "1.15.0", "2.4.6"), True, {}, ()),
    (OLD_NP, Environment("2.13.0", "1.15.0", "2.4.6"), False, {}, (REPAIR_NUMPY,)),
    (OLD_NP, Environment("2.5.1", "1.1.0", "2.1.0"), False, {}, (REPAIR_NUMPY,)),
    (OLD_NP, Environment("2.6.0+cu124", "1.2.1", "1.26.4"), True, {}, ()),
    (INFO, Environment("2.6.0", "1.2.1", "1.26.4"), False, {}, (REPAIR_NUMPY,)),
    (OLD_NP, Environment("2.6.0", "0.33.0", "1.26.4"), False, {ENV_NO_WEIGHTS_ONLY: "1"}, ()),
    (OLD_NP, Environment("2.6.0", "1.0.1", "1.26.4"), False, {ENV_NO_WEIGHTS_ONLY: "1"}, ()),
    (OLD_NP, Environment("2.5.1", "0.33.0", "1.26.4"), True, {}, ()),
    (OLD_NP, Environment("2.7.0", "1.3.0", "1.24.4"), False, {}, ()),
    (OLD_NP, Environment("2.3.1", "1.3.0", "1.24.4"), True, {}, ()),
])
def test_matrix(info: CheckpointInfo, env: Environment, loads: bool,
                fixes: dict[str, str], repairs: tuple[str, ...]) -> None:
    v = verdict(info, env)
    assert (v.loads, dict(v.env_fixes), v.repairs) == (loads, fixes, repairs)
    assert bool(v.problems) == (not loads)


def test_keyerror_step_is_named_for_accelerate_0_32_to_0_33() -> None:
    v = verdict(OLD_NP, Environment("2.6.0", "0.32.1", "1.26.4"))
    assert any("KeyError: 'step'" in p for p in v.problems)
    v = verdict(OLD_NP, Environment("2.6.0", "0.34.2", "1.26.4"))
    assert any("silently" in p for p in v.problems)


def test_seed_case_asks_the_environment_not_the_file() -> None:
    """Seed 000: an sd-scripts epoch-end state (RNG step 0, train_state 360).  Where it
    loads as it is, nothing is asked; the seed's own stack (accelerate 0.33, torch 2.6)
    gets the environment fix, and no file repair, since none would help there."""
    seed = replace(INFO, name="kristy-000030-state", rng_step=0, train_state_step=360,
                   step=360, step_source="train_state.json", epoch=30)
    here = verdict(seed, Environment("2.13.0", "1.15.0", "2.4.6"))
    assert (here.loads, here.repairs, dict(here.env_fixes)) == (True, (), {})
    theirs = verdict(seed, Environment("2.6.0", "0.33.0", "2.4.6"))
    assert not theirs.loads and theirs.repairs == ()
    assert dict(theirs.env_fixes) == {ENV_NO_WEIGHTS_ONLY: "1"}
    assert any("KeyError: 'step'" in p for p in theirs.problems)


def test_missing_torch_or_broken_files_do_not_load() -> None:
    assert not verdict(INFO, Environment(None, "1.15.0", "2.4.6")).loads
    assert not verdict(replace(INFO, status=Status.INVALID), Environment.current()).loads


def test_versions_of_another_python_match_importlib_here() -> None:
    assert Environment.of_python(sys.executable) == Environment.current()
    assert Environment.current().torch is not None
    with pytest.raises(ValueError, match="cannot run"):
        Environment.of_python("/nonexistent/python")


def test_parse_version() -> None:
    assert parse_version("2.6.0+cu124") == (2, 6, 0)
    assert parse_version("1.1.0.dev0") == (1, 1, 0)
    assert parse_version("2.0") == (2, 0, 0)
    assert parse_version(None) is None and parse_version("abc") is None


def test_an_interpreter_asked_again_within_a_minute_is_not_started_again(
        tmp_path: Path) -> None:
    """A burst of incidents asks the run's python once, not once per incident; a changed
    interpreter file is asked again (a real executable that counts its own starts)."""
    starts = tmp_path / "starts"
    python = tmp_path / "python"
    python.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(starts)!r}, 'a').write('x')\n"
                      "print(json.dumps({'torch': '2.6.0', 'accelerate': '1.1.0', "
                      "'numpy': '2.1.0'}))\n")
    python.chmod(0o755)
    first = Environment.of_python(str(python))
    assert Environment.of_python(str(python)) == first == Environment(
        torch="2.6.0", accelerate="1.1.0", numpy="2.1.0")
    assert starts.read_text() == "x"
    python.write_text(python.read_text().replace("2.6.0", "2.7.1"))  # a new file version
    assert Environment.of_python(str(python)).torch == "2.7.1"
    assert starts.read_text() == "xx"
