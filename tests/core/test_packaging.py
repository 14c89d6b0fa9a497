"""pyproject.toml as setuptools reads it on every `pip install`: no deprecation wall."""

from __future__ import annotations

import warnings

import setuptools  # the build backend (in every venv pip builds with)
import tomllib
from helpers.common import REPO


def test_pyproject_reads_without_deprecation_warnings() -> None:
    """setuptools' own reading of pyproject.toml, the step that printed ~30 lines of
    ``project.license as a TOML table is deprecated`` on each install."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    noisy = [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught
             if issubclass(w.category, (DeprecationWarning, UserWarning))
             or "Deprecat" in w.category.__name__]
    assert not noisy, noisy
    assert dist.metadata.license_expression == "Apache-2.0"


def test_build_requirement_admits_the_license_string() -> None:
    """An SPDX license string needs setuptools >= 77; the build requirement must say so,
    or an older backend would refuse (or misread) the field."""
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = doc["build-system"]["requires"]
    spec = next(r for r in reqs if r.replace(" ", "").startswith("setuptools"))
    floor = int(spec.split(">=", 1)[1].split(".")[0])
    assert isinstance(doc["project"]["license"], str)
    assert floor >= 77, spec
    installed = int(setuptools.__version__.split(".")[0])
    assert installed >= floor, f"this .venv's setuptools {setuptools.__version__} < {spec}"
