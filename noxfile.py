"""nox sessions: ``tests`` (the default), ``oldest``, ``lint`` and ``demo``.

Python is pinned to 3.11: the only local torch 2.14.1 wheels are cp311 (see
reference/tooling-facts.md section 6). Virtualenvs are reused between runs because a fresh
one with torch is several GB and takes over a minute to install; ``nox -R`` skips the install.
"""

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The test suite as CI runs it (slow checks: ``nox -s tests -- -m slow``)."""
    session.install("-c", ".ci/constraints.txt", "-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def oldest(session: nox.Session) -> None:
    """The test suite on the oldest torch, torchvision and open_clip pyproject.toml allows
    (.ci/oldest.txt; CUDA builds from PyPI, several GB)."""
    session.install("-c", ".ci/oldest.txt", "-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, benchmarks and this file."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "lafite", "tests", "bench", "noxfile.py", *session.posargs)


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """The README's main job: Table 5 on the built-in world in a throwaway workspace."""
    session.install("-e", ".")
    home = session.create_tmp()
    session.env["LAFITE_HOME"] = f"{home}/lafite-workspace"
    session.run("lafite-repro", "run", "table5", "--scale", "smoke", *session.posargs)
    session.run("lafite-repro", "list")
