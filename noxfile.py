"""The scratchformers test matrix. A bare `uv run nox` runs what CI runs.

Sessions:
    lint         ruff check, ruff format --check, uv lock --check, the GitHub workflow linters
    tests        one package's own tests/, in a venv holding only that package and its declared
                 dependencies (from uv.lock), parametrized by package and Python
    integration  the root tests/ (parity against transformers) against the whole workspace
    distributed  the slow root tests: the README's main job, two-process training, resume
    wheels       builds every wheel and sdist (each with the LICENSE), installs each wheel alone
                 with plain pip in a fresh venv and round-trips its main class through a save
                 and a load (tests/wheel_round_trip.py), and the README's plain-pip
                 installs of gpt2[train]: from the wheels, and from git subdirectories

The default selection runs `tests` on the default Python only; the full Python matrix is
`uv run nox -s tests`, one package's matrix is `uv run nox -s tests -- core-attention`... see
the README for the exact commands.
"""

from __future__ import annotations

import os
import shutil
import tarfile
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


def _locked_dependencies(session: nox.Session, python: str, package: str, *extras: str) -> None:
    """Install a package's third-party dependencies into ``python``'s venv, pinned by uv.lock.

    With them in place, plain pip below needs no index: it only has to find our packages,
    and a missing sibling fails instead of being downloaded.
    """
    requirements = Path(python).parent.parent / f"locked-{package}.txt"
    session.run(
        "uv",
        "export",
        "--frozen",
        f"--package={_distribution(package)}",
        *[f"--extra={extra}" for extra in extras],
        "--no-dev",
        "--no-emit-workspace",
        "--no-hashes",
        "--quiet",
        f"--output-file={requirements}",
        external=True,
    )
    session.run(
        "uv",
        "pip",
        "install",
        "--quiet",
        f"--python={python}",
        "-r",
        str(requirements),
        external=True,
    )


def _pip(session: nox.Session, python: str, *args: str) -> None:
    """Real pip as in an activated venv, ignoring any user pip.conf (no extra index or links)."""
    scripts = str(Path(python).parent)  # uv_build's hook looks for its uv-build binary on PATH
    session.run(
        python,
        "-m",
        "pip",
        *args,
        external=True,
        env={
            "PATH": os.pathsep.join([scripts, os.environ["PATH"]]),
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        },
    )


def _check_archives(session: nox.Session, dist: Path, package: str) -> None:
    """The wheel and the sdist of ``package`` carry the repository's LICENSE, and the wheel
    leaves ``scratchformers`` a namespace."""
    license_text = (ROOT / "LICENSE").read_bytes()
    distribution = _distribution(package).replace("-", "_")
    wheel = next(dist.glob(f"{distribution}-*.whl"))
    sdists = list(dist.glob(f"{distribution}-*.tar.gz"))
    if not sdists:
        session.error(f"no sdist was built for {package}")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        if "scratchformers/__init__.py" in names:
            session.error(
                f"{wheel.name} ships scratchformers/__init__.py; it must stay a namespace"
            )
        licenses = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
        if not licenses or archive.read(licenses[0]) != license_text:
            session.error(f"{wheel.name} does not ship the repository's LICENSE")
    with tarfile.open(sdists[0]) as archive:
        top = sdists[0].name.removesuffix(".tar.gz")
        try:
            shipped = archive.extractfile(f"{top}/LICENSE").read()
        except KeyError:
            shipped = None
        if shipped != license_text:
            session.error(f"{sdists[0].name} does not ship the repository's LICENSE")


def _snapshot_repository(session: nox.Session, repo: Path) -> str:
    """A git repository of the working tree as it is now (edits included), as a git+file URL,
    so pip's git install is tested offline against the code under test."""
    listed = session.run(
        "git",
        "ls-files",
        "--cached",
        "--others",
        "--exclude-standard",
        "-z",
        external=True,
        silent=True,
    )
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is listed too
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    git = ["git", "-C", str(repo), "-c", "user.name=nox", "-c", "user.email=nox@localhost"]
    session.run(*git, "init", "--quiet", external=True)
    session.run(*git, "add", "--all", external=True)
    session.run(*git, "commit", "--quiet", "--message=snapshot", external=True)
    return "git+" + repo.as_uri()


# The packages named on the command line came from git, with their module and license. Read from
# metadata only: the wheel route already ran the code, and every torch import costs seconds.
_FROM_GIT = """
import importlib.metadata, importlib.util, json, sys
for name in sys.argv[1:]:
    dist = importlib.metadata.distribution(name)
    origin = json.loads(dist.read_text("direct_url.json"))
    assert origin.get("vcs_info", {}).get("vcs") == "git", (name, origin)
    assert any(str(f).endswith(".dist-info/licenses/LICENSE") for f in dist.files), name
    module = "scratchformers." + name.removeprefix("scratchformers-").replace("-", "_")
    assert importlib.util.find_spec(module) is not None, module
    print(name, dist.version, "from", origin["url"], origin.get("subdirectory"))
"""


@nox.session(python=DEFAULT_PYTHON)
def wheels(session: nox.Session) -> None:
    """Every package builds a wheel and an sdist carrying the LICENSE; each wheel installs
    alone with plain pip and saves and loads its main class (tests/wheel_round_trip.py); and the README's plain-pip ways work: gpt2 with its
    [train] extra from the built wheels, and from git, one subdirectory per package."""
    workdir = Path(session.create_tmp()).absolute()  # pip runs build hooks from elsewhere
    shutil.rmtree(workdir)  # no wheel of an earlier run may stand in for this one
    dist = workdir / "dist"
    session.run("uv", "build", "--all-packages", f"--out-dir={dist}", external=True)
    pythons = {}
    for package in PACKAGES:
        _check_archives(session, dist, package)
        venv = workdir / f"alone-{package}"
        session.run(
            "uv",
            "venv",
            "--quiet",
            "--seed",
            f"--python={session.python}",
            str(venv),
            external=True,
        )
        python = pythons[package] = str(venv / "bin" / "python")
        _locked_dependencies(session, python, package)
        # --no-index: a sibling can only come from dist/, and nothing is downloaded.
        _pip(
            session,
            python,
            "install",
            "--quiet",
            "--no-index",
            f"--find-links={dist}",
            _distribution(package),
        )
        # A save-load round trip of the package's main class, not only an import: a missing
        # dependency may show only when a file is written (safetensors needs numpy to save).
        session.run(python, str(ROOT / "tests" / "wheel_round_trip.py"), package, external=True)

    # The README's commands, in the gpt2 venv now that its alone check is done.
    python = pythons["gpt2"]
    _locked_dependencies(session, python, "gpt2", "train")
    _pip(
        session,
        python,
        "install",
        "--quiet",
        "--no-index",
        f"--find-links={dist}",
        "scratchformers-gpt2[train]",
    )
    listing = session.run(
        str(Path(python).parent / "scratchformers"), "train", "--help", external=True, silent=True
    )
    if "  gpt2" not in listing.splitlines():
        session.error(f"`scratchformers train --help` lists no gpt2 recipe:\n{listing}")

    needed = ["core-attention", "training", "gpt2"]
    _pip(session, python, "uninstall", "--quiet", "--yes", *[_distribution(p) for p in needed])
    url = _snapshot_repository(session, workdir / "repo")
    backend = tomllib.loads((ROOT / "packages/gpt2/pyproject.toml").read_text())["build-system"]
    # pip's build isolation would fetch uv_build from an index; here the venv has it instead.
    session.run(
        "uv", "pip", "install", "--quiet", f"--python={python}", *backend["requires"], external=True
    )
    requirements = [
        f"{_distribution(p)}{'[train]' if p == 'gpt2' else ''} @ {url}#subdirectory=packages/{p}"
        for p in needed
    ]
    _pip(session, python, "install", "--quiet", "--no-index", "--no-build-isolation", *requirements)
    session.run(python, "-c", _FROM_GIT, *[_distribution(p) for p in needed], external=True)


@nox.session(python=DEFAULT_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Speed against transformers with the same weights; writes benchmarks/RESULTS.md (another
    shape or precision its own RESULTS-<size>-<precision>.md).

    Not part of the default run: timings belong in a report, not in a pass/fail test.
    Extra arguments go to the runner, e.g. `uv run nox -s bench -- --size gpt2 --precision bf16`.
    The decode benchmark runs alone: `uv run python -m benchmarks.decode`.
    """
    _sync(session, "--all-packages", "--group=dev")
    session.run("python", "-m", "benchmarks", *session.posargs)
