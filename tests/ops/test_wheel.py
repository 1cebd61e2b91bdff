"""The wheel, installed as a user would: built from the sources, put in a fresh venv outside the
checkout with its dependencies, and run as `stepcare` from elsewhere with no PYTHONPATH.

What the editable checkout cannot show: that the wheel carries its data (the Avro schemas, which
`streams/formats/schemas` only links to, and the policies), that `streams` then comes from the
venv's site-packages, and that score, simulate and replay give what the checkout gives. Needs
pip's index (or its cache) for the dependencies: without one the test is skipped, not failed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
# What the wheel is built from: the files the Dockerfile copies into its build stage. A copy, so
# the build writes no build/ or *.egg-info into the checkout and no stale build/lib leaks in.
SOURCES = ("pyproject.toml", "README.md", "schemas", "streams")
PIP_TIMEOUT = 900  # seconds for one pip command: the dependencies are ~150 MB without a cache
# pip's words for an index it cannot reach (connection refused, no DNS, no route, a proxy), or
# that lists no version at all of a requirement (setuptools for the build, say: it has hundreds).
NO_INDEX = re.compile(
    r"NewConnectionError|Temporary failure in name resolution|Name or service not known"
    r"|Network is unreachable|ProxyError|ConnectTimeoutError|connection broken by"
    r"|\(from versions: none\)"
)
# FACT-L answered 2 everywhere: every subscale item scores 2, so FACT-L is 68 (cli/test_score.py).
FACT_L_ITEMS = (
    *(f"GP{i}" for i in range(1, 8)),
    *(f"GS{i}" for i in range(1, 8)),
    *(f"GE{i}" for i in range(1, 7)),
    *(f"GF{i}" for i in range(1, 8)),
    *("B1", "C2", "L1", "L2", "C6", "L3", "L4", "B5", "L5"),
)
FORM = {"instrument": "FACT-L", "version": "4", "responses": dict.fromkeys(FACT_L_ITEMS, 2)}
SCORES = (
    '{"PWB": 14.0, "SWB": 14.0, "EWB": 12.0, "FWB": 14.0, "LCS": 14.0, '
    '"FACT_G": 54.0, "FACT_L": 68.0, "TOI": 42.0, "answered": 34}\n'
)
SIMULATE = ("simulate", "--patients", "20", "--weeks", "12", "--seed", "7")

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(3 * PIP_TIMEOUT)]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> tuple[str, str]:
    """Run ``cmd``, print it and what it wrote (the report quotes them); fail on a non-zero exit."""
    print(f"$ (cd {cwd} && {shlex.join(cmd)})")
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    for stream in (done.stdout, done.stderr):
        if stream.strip():
            print(stream.rstrip())
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"
    return done.stdout, done.stderr


def pip(python: Path, *args: str, cwd: Path, env: dict[str, str]) -> None:
    """``python -m pip ARGS``; skips the test if pip cannot reach its index."""
    cmd = [str(python), "-m", "pip", *args, "--disable-pip-version-check", "--quiet"]
    print(f"$ {shlex.join(cmd)}")
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
    )
    said = [line.strip() for line in (done.stdout + done.stderr).splitlines()]
    if done.returncode != 0 and (unreachable := [line for line in said if NO_INDEX.search(line)]):
        pytest.skip(f"pip {args[0]} cannot reach a package index: {unreachable[-1]}")
    assert done.returncode == 0, f"pip {args[0]}: exit {done.returncode}: {done.stderr[-2000:]}"


def without_summary_time(summary: str) -> str:
    """A command's summary line without its run time (`in 0.2 s`), which no two runs share."""
    return re.sub(r" in \d+\.\d s", "", summary)


@pytest.fixture(scope="module")
def outside_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no active venv."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} and not k.startswith("STEPCARE_")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, outside_env: dict[str, str]) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    pip(Path(sys.executable), "wheel", "--no-deps", "--wheel-dir", str(dist), str(source),
        cwd=dist, env=outside_env)  # fmt: skip
    (built,) = dist.glob("stepcare-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory, outside_env: dict[str, str]
) -> Path:
    """A fresh venv outside the checkout with the wheel and its dependencies installed."""
    root = tmp_path_factory.mktemp("venv")
    assert not root.is_relative_to(REPO)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    pip(root / "bin" / "python", "install", str(wheel), cwd=root, env=outside_env)
    return root


def test_the_wheel_carries_the_schemas_and_the_policies(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = {PurePosixPath(n) for n in archive.namelist()}
    print(f"{wheel.name}: {len(names)} files")

    def listed(folder: str, pattern: str) -> set[str]:
        return {n.name for n in names if str(n.parent) == folder and n.match(pattern)}

    schemas = listed("streams/formats/schemas", "*.avsc")
    released = listed("streams/formats/schemas/released", "*.avsc")
    policies = listed("streams/clinical/policies", "*.toml")
    for found in (schemas, released, policies):
        print(" ", ", ".join(sorted(found)))
    assert schemas == {p.name for p in (REPO / "schemas").glob("*.avsc")} != set()
    assert released == {p.name for p in (REPO / "schemas" / "released").glob("*.avsc")} != set()
    policies_dir = REPO / "streams" / "clinical" / "policies"
    assert policies == {p.name for p in policies_dir.glob("*.toml")} != set()


def test_the_installed_stepcare_scores_simulates_and_replays_as_the_checkout_does(
    venv: Path, tmp_path: Path, outside_env: dict[str, str]
) -> None:
    work = tmp_path / "work"  # the user's folder: neither the checkout nor the venv
    work.mkdir()
    python, stepcare = venv / "bin" / "python", str(venv / "bin" / "stepcare")

    where, _ = run(
        [str(python), "-c", "import streams, sysconfig; print(streams.__file__); "
         "print(sysconfig.get_path('purelib'))"],
        work, outside_env,
    )  # fmt: skip
    module, site_packages = where.splitlines()
    assert Path(module).is_relative_to(site_packages)
    assert Path(site_packages).is_relative_to(venv)

    (work / "form.json").write_text(json.dumps(FORM) + "\n")
    scores, _ = run([stepcare, "score", "form.json"], work, outside_env)
    assert scores == SCORES

    _, simulated = run([stepcare, *SIMULATE, "--output", "cohort.avro"], work, outside_env)
    assert simulated.startswith("simulated 20 patients under step-pc-2024")
    _, replayed = run(
        [stepcare, "replay", "--input", "cohort.avro", "--output", "escalations.jsonl"],
        work, outside_env,
    )  # fmt: skip

    # The same commands from the checkout (its own interpreter, PYTHONPATH on the checkout).
    checkout_env = outside_env | {"PYTHONPATH": str(REPO)}
    elsewhere = tmp_path / "checkout-run"
    elsewhere.mkdir()
    _, simulated_here = run(
        [sys.executable, "-m", "streams.cli", *SIMULATE, "--output", "cohort.avro"],
        elsewhere, checkout_env,
    )  # fmt: skip
    assert without_summary_time(simulated) == without_summary_time(simulated_here)
    _, expected = run(
        [sys.executable, "-m", "streams.cli", "replay", "--input", str(work / "cohort.avro"),
         "--output", str(tmp_path / "checkout-escalations.jsonl")],
        REPO, checkout_env,
    )  # fmt: skip
    assert without_summary_time(replayed) == without_summary_time(expected)
    escalations = (work / "escalations.jsonl").read_bytes()
    assert escalations == (tmp_path / "checkout-escalations.jsonl").read_bytes()
    count = len(escalations.splitlines())
    assert count > 0 and f"; {count} escalations (" in replayed
