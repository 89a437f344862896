"""Packaging metadata that no import or model test would notice: every package ships the
repository's license, and every dependency on a sibling package is bounded to versions that
exist in this checkout.

uv resolves a sibling from the workspace whatever its specifier says (`uv lock` accepts a bound
that excludes it), so only these tests keep the bounds true; the `wheels` nox session checks the
built wheels and sdists themselves.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(path.parent for path in ROOT.glob("packages/*/pyproject.toml"))


def _project(package: Path) -> dict:
    return tomllib.loads((package / "pyproject.toml").read_text(encoding="utf-8"))["project"]


VERSIONS = {
    canonicalize_name(_project(p)["name"]): Version(_project(p)["version"]) for p in PACKAGES
}


def _next_breaking(version: Version) -> Version:
    """The first release allowed to break users: the next minor before 1.0, the next major after."""
    if version.major == 0:
        return Version(f"0.{version.minor + 1}")
    return Version(f"{version.major + 1}")


def _sibling_requirements() -> list[tuple[str, Requirement]]:
    found = []
    for package in PACKAGES:
        project = _project(package)
        declared = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            declared += extra
        for line in declared:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) in VERSIONS:
                found.append((package.name, requirement))
    return found


def test_packages_exist() -> None:
    assert PACKAGES, "no packages/*/pyproject.toml found"


@pytest.mark.parametrize("package", PACKAGES, ids=[p.name for p in PACKAGES])
def test_package_ships_the_repository_license(package: Path) -> None:
    # uv_build only packs license files from inside the package folder, so each keeps a copy.
    assert "LICENSE" in _project(package).get("license-files", [])
    copy = package / "LICENSE"
    assert copy.is_file(), f"{copy} is missing: cp LICENSE {copy.relative_to(ROOT)}"
    assert copy.read_bytes() == (ROOT / "LICENSE").read_bytes(), f"{copy} differs from LICENSE"


def test_some_package_depends_on_a_sibling() -> None:
    # Guards the parametrization below against silently testing nothing.
    assert _sibling_requirements()


@pytest.mark.parametrize(
    ("package", "requirement"),
    _sibling_requirements(),
    ids=[f"{package}->{req.name}" for package, req in _sibling_requirements()],
)
def test_sibling_dependency_is_bounded(package: str, requirement: Requirement) -> None:
    """Built wheels are installed next to siblings from other releases (pip, an index): each
    requirement must admit the sibling's version here and exclude its next breaking release."""
    version = VERSIONS[canonicalize_name(requirement.name)]
    specifier = requirement.specifier
    assert specifier.contains(version, prereleases=True), (
        f"{package}: {requirement} excludes {requirement.name} {version} from this checkout"
    )
    assert not specifier.contains(_next_breaking(version), prereleases=True), (
        f"{package}: {requirement} needs an upper bound below {_next_breaking(version)}"
    )
    assert any(spec.operator in (">=", ">", "==", "~=", "===") for spec in specifier), (
        f"{package}: {requirement} needs a lower bound"
    )
