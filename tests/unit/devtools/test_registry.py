"""The registry script's parts that need no JVM: fetching (with a stand-in for Maven), its state
file, and the one-line errors."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from streams import cli
from streams.devtools.registry import (
    Registry,
    RegistryError,
    app_dir,
    ccompat_url,
    fetch_registry,
)

ARCHIVE = "apicurio-registry-app-3.0.9-all.tar.gz"


def test_the_confluent_compatible_url() -> None:
    assert ccompat_url(8081) == "http://127.0.0.1:8081/apis/ccompat/v7"
    assert Registry(Path("/run"), 18081).ccompat_url == "http://127.0.0.1:18081/apis/ccompat/v7"


def fake_maven(bin_dir: Path, archive: bytes | None, *, fail: str = "") -> Path:
    """An ``mvn`` on PATH that logs its arguments and "downloads" ``archive`` (or fails)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "archive").write_bytes(archive or b"")
    script = bin_dir / "mvn"
    script.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys\n"
        "here = pathlib.Path(__file__).parent\n"
        "(here / 'calls').open('a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"if {fail!r}:\n"
        f"    print('[ERROR] line one'); print({fail!r}); sys.exit(1)\n"
        "out = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('-DoutputDirectory='))\n"
        "pathlib.Path(out).mkdir(parents=True, exist_ok=True)\n"
        f"(pathlib.Path(out) / {ARCHIVE!r}).write_bytes((here / 'archive').read_bytes())\n"
    )
    script.chmod(0o755)
    return script


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


APP = {"apicurio-registry-app-3.0.9-runner.jar": b"PK-runner", "lib/a.jar": b"PK-a"}


def test_fetch_unpacks_the_archive_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_maven(tmp_path / "bin", tar_gz(APP))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    cache = tmp_path / "cache"
    lines: list[str] = []

    folder = fetch_registry(cache, report=lines.append)

    assert folder == app_dir(cache.resolve())
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        ".complete",
        "apicurio-registry-app-3.0.9-runner.jar",
        "lib",
        "lib/a.jar",
    ]
    assert (folder / "lib" / "a.jar").read_bytes() == b"PK-a"
    (call,) = (tmp_path / "bin" / "calls").read_text().splitlines()
    assert call.startswith(f"-B -q -Dmaven.repo.local={cache.resolve() / 'm2'} ")
    assert " org.apache.maven.plugins:maven-dependency-plugin:2.8:copy " in call
    assert " -Dartifact=io.apicurio:apicurio-registry-app:3.0.9:tar.gz:all " in call
    assert [p.name for p in folder.parent.iterdir()] == ["3.0.9"], "no staging folder left"
    assert lines[0].startswith("fetching Apicurio Registry 3.0.9 from Maven Central into ")
    assert lines[1].startswith("fetched Apicurio Registry 3.0.9: 0.0 MB archive in ")

    assert fetch_registry(cache, report=lines.append) == folder  # cached: Maven not called
    assert len((tmp_path / "bin" / "calls").read_text().splitlines()) == 1
    assert len(lines) == 2


def test_fetch_without_maven_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RegistryError) as error:
        fetch_registry(tmp_path / "cache")
    assert str(error.value) == (
        "Maven (mvn) is needed to fetch the schema registry: apt-get install maven"
    )


def test_a_maven_failure_is_one_line_with_its_last_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_maven(tmp_path / "bin", None, fail="[ERROR] Could not resolve artifact")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(RegistryError) as error:
        fetch_registry(tmp_path / "cache")
    assert str(error.value) == (
        "Maven could not fetch io.apicurio:apicurio-registry-app:3.0.9:tar.gz:all: "
        "[ERROR] line one | [ERROR] Could not resolve artifact"
    )
    assert not app_dir(tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"lib/a.jar": b"PK"}, "holds no apicurio-registry-app-3.0.9-runner.jar"),
        ({**APP, "../escape.jar": b"PK"}, "cannot unpack " + ARCHIVE),
    ],
    ids=["no runner jar", "a path out of the folder"],
)
def test_a_bad_archive_is_refused_and_nothing_is_cached(
    members: dict[str, bytes], reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_maven(tmp_path / "bin", tar_gz(members))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(RegistryError, match=reason):
        fetch_registry(tmp_path / "cache", report=lambda line: None)
    assert not app_dir(tmp_path / "cache").exists()
    assert not (tmp_path / "escape.jar").exists()
    assert list(app_dir(tmp_path / "cache").parent.iterdir()) == []


def test_a_state_file_that_is_not_ours_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text(json.dumps({"pid": 1}))
    with pytest.raises(RegistryError, match=r"registry.json is not a registry state file"):
        Registry.load(tmp_path)


def test_status_of_nothing_started_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["registry", "status", "--run-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out == f"not running ({tmp_path})\n"


@pytest.mark.parametrize("port", ["0", "65536"])
def test_a_port_out_of_range_is_one_line(
    port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["registry", "start", "--port", port, "--run-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"stepcare: port {port} is not a TCP port (1-65535)\n"
