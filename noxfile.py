"""The scratchformers test matrix. A bare `uv run nox` runs what CI runs.

Sessions:
    lint         ruff check, ruff format --check, uv lock --check, the GitHub workflow linters
    tests        one package's own tests/, in a venv holding only that package and its declared
                 dependencies (from uv.lock), parametrized by package and Python
    integration  the root tests/ (parity against transformers) against the whole workspace
    distributed  the slow root tests: the README's main job, two-process training, resume
    wheels       builds every wheel and sdist, installs each wheel alone in a fresh venv, imports it

The default selection runs `tests` on the default Python only; the full Python matrix is
`uv run nox -s tests`, one package's matrix is `uv run nox -s tests -- core-attention`... see
the README for the exact commands.
"""

from __future__ import annotations

import os
import shutil
import tomllib
import zipfile
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYTHONS = ["3.11", "3.12", "3.13"]
DEFAULT_PYTHON = PYTHONS[0]
PACKAGES = sorted(path.parent.name for path in ROOT.glob("packages/*/pyproject.toml"))

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _add_pyenv_pythons_to_path() -> None:
    """Make pyenv's extra interpreters visible to uv and nox, which only search PATH.

    On GitHub Actions setup-uv / setup-python provide them instead; either way a missing one
    fails the session (error_on_missing_interpreters) instead of being skipped.
    """
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not versions.is_dir():
        return
    wanted = [
        str(folder / "bin")
        for folder in sorted(versions.iterdir())
        if any(folder.name.startswith(f"{python}.") for python in PYTHONS)
    ]
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *wanted])


_add_pyenv_pythons_to_path()
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
os.environ.update(OFFLINE)

nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", f"tests-{DEFAULT_PYTHON}", "integration", "distributed", "wheels"]


def _distribution(package: str) -> str:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"][
        "name"
    ]


def _import_name(package: str) -> str:
    return f"scratchformers.{package.replace('-', '_')}"


def _sync(session: nox.Session, *args: str) -> None:
    """Install from uv.lock into this session's venv (never re-resolving: --frozen).

    Workspace packages are built and installed as wheels (--no-editable), as users get them;
    uv would reuse a cached build of an unchanged version number, so they are always rebuilt.
    """
    rebuild = [f"--reinstall-package={_distribution(package)}" for package in PACKAGES]
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--no-editable",
        *rebuild,
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    """Style, formatting, a current lock file, and valid GitHub workflows."""
    _sync(session, "--only-group=dev")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("uv", "lock", "--check", external=True)
    workflows = sorted(str(path) for path in ROOT.glob(".github/workflows/*.yml"))
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
    session.run("zizmor", "--offline", "--no-progress", "--config=.github/zizmor.yml", *workflows)


@nox.session(python=PYTHONS)
@nox.parametrize("package", PACKAGES, ids=PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """One package's tests with only that package and its declared dependencies installed.

    A dependency the package uses but forgot to declare is missing here, so its tests fail.
    """
    _sync(session, f"--package={_distribution(package)}", "--group=test")
    session.run("pytest", f"packages/{package}/tests", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def integration(session: nox.Session) -> None:
    """The root tests/: parity with transformers' reference code, across the workspace."""
    _sync(session, "--all-packages", "--group=dev")
    session.run("pytest", "tests", "-m", "not slow", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def distributed(session: nox.Session) -> None:
    """The slow end-to-end root tests: the main job, and two-process training via accelerate."""
    _sync(session, "--all-packages", "--group=dev")
    session.run("pytest", "tests", "-m", "slow", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def wheels(session: nox.Session) -> None:
    """Every package builds a wheel and an sdist, and each wheel installs alone and imports."""
    workdir = Path(session.create_tmp())
    shutil.rmtree(workdir)  # no wheel of an earlier run may stand in for this one
    dist = workdir / "dist"
    session.run("uv", "build", "--all-packages", f"--out-dir={dist}", external=True)
    # Pin third-party dependencies to the lock so the installs below hit the uv cache.
    constraints = dist / "constraints.txt"
    session.run(
        "uv",
        "export",
        "--frozen",
        "--all-packages",
        "--no-hashes",
        "--no-emit-workspace",
        f"--output-file={constraints}",
        external=True,
        silent=True,
    )
    for package in PACKAGES:
        distribution = _distribution(package).replace("-", "_")
        wheel = next(dist.glob(f"{distribution}-*.whl"))
        if not list(dist.glob(f"{distribution}-*.tar.gz")):
            session.error(f"no sdist was built for {package}")
        with zipfile.ZipFile(wheel) as archive:
            if "scratchformers/__init__.py" in archive.namelist():
                session.error(
                    f"{wheel.name} ships scratchformers/__init__.py; it must stay a namespace"
                )
        venv = workdir / f"alone-{package}"
        session.run("uv", "venv", "--quiet", f"--python={session.python}", str(venv), external=True)
        python = str(venv / "bin" / "python")
        session.run(
            "uv",
            "pip",
            "install",
            "--quiet",
            f"--python={python}",
            f"--find-links={dist}",
            f"--constraint={constraints}",
            # Our wheels keep their version number between builds: never take a cached one.
            *[f"--refresh-package={_distribution(p)}" for p in PACKAGES],
            str(wheel),
            external=True,
        )
        session.run(
            python,
            "-c",
            f"import {_import_name(package)} as m; print(m.__name__, 'imports')",
            external=True,
        )


@nox.session(python=DEFAULT_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Speed against transformers with the same weights; writes benchmarks/RESULTS.md.

    Not part of the default run: timings belong in a report, not in a pass/fail test.
    Extra arguments go to the runner, e.g. `uv run nox -s bench -- --size gpt2`.
    """
    _sync(session, "--all-packages", "--group=dev")
    session.run("python", "-m", "benchmarks", *session.posargs)
