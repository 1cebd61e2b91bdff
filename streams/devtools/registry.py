"""A real schema registry for development, demos and tests: Apicurio Registry, no Docker.

Apicurio Registry speaks Confluent's schema registry API at ``/apis/ccompat/v7`` (what
confluent-kafka's ``SchemaRegistryClient``, Kafka Connect's converters, Flink and Spark talk
to). Its ready-to-run archive (``io.apicurio:apicurio-registry-app:VERSION:tar.gz:all``) is
fetched with Maven from Maven Central into the git-ignored cache, beside the broker's jars, and
unpacked there once; a second fetch downloads nothing.

The registry runs on 127.0.0.1 only, from a run folder holding its pid file
(``registry.pid``), its state (``registry.json``: pid, port, version) and its log
(``registry.log``), so ``stepcare registry stop`` in another process finds what ``stepcare
registry start`` left running. Storage is Apicurio's default in-memory H2 database: every
schema is gone when it stops (a registry for development and tests, not for production).

Compatibility: Apicurio's default is NONE where Confluent's is BACKWARD. stepcare sets BACKWARD
on each subject it registers (``PUT /config/<subject>``); the registry is also started with the
global rule ``apicurio.rules.global.compatibility=BACKWARD`` as a second line of defence. With
that rule an incompatible schema is refused (HTTP 409) on every subject, but ``GET /config``
still answers ``NONE``: the ccompat API reports its own default, not the global rule.

Unlike Confluent's registry, Apicurio 3.0.9 compares schema *text*, not the canonical form: the
same schema with other whitespace (a trailing newline) registers as a new version with a new
id. Register one text per schema: the one the serializer uses (confluent-kafka strips it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from streams.devtools.jars import BrokerError, Reporter, jvm_pids
from streams.devtools.jars import find_java as _broker_java
from streams.errors import StepcareError

APICURIO_VERSION = "3.0.9"  # the last line that runs on Java 17 (3.3.x needs Java 21)
DEFAULT_PORT = 8081  # Confluent's schema registry port, which clients expect
DEFAULT_RUN_DIR = Path(".run/registry")
HEAP_MB = 192
CCOMPAT_PATH = "/apis/ccompat/v7"
READY_PATH = "/health/ready"
PID_FILE = "registry.pid"
STATE_FILE = "registry.json"
LOG_FILE = "registry.log"
_MARKER = "-Dstepcare.registry.dir="  # on the JVM's command line: which run folder it serves
_ARTIFACT = "io.apicurio:apicurio-registry-app:{version}:tar.gz:all"
# Plugin 2.8 copies an artifact without reading its pom; 3.x reads the app's pom, whose parent
# (io.apicurio:apicurio-registry) is not on Maven Central, and fails.
_COPY_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:2.8:copy"


class RegistryError(StepcareError, RuntimeError):
    """The registry could not be fetched, started or stopped; the message says why."""


def ccompat_url(port: int, host: str = "127.0.0.1") -> str:
    """The Confluent-compatible API of a registry on ``port``: what clients are given."""
    return f"http://{host}:{port}{CCOMPAT_PATH}"


def app_dir(cache_dir: Path, version: str = APICURIO_VERSION) -> Path:
    return cache_dir / "apicurio-registry" / version


def runner_jar(folder: Path, version: str = APICURIO_VERSION) -> Path:
    return folder / f"apicurio-registry-app-{version}-runner.jar"


def fetch_registry(
    cache_dir: Path,
    version: str = APICURIO_VERSION,
    report: Reporter = print,
) -> Path:
    """Download and unpack Apicurio Registry ``version`` into the cache; its folder.

    Idempotent: once a fetch has completed (marker file ``.complete``), nothing is downloaded.
    Maven's local repository is the broker's (``<cache>/m2``), so CI caches one folder.
    """
    cache_dir = cache_dir.resolve()  # absolute: the registry runs in its own run dir
    folder = app_dir(cache_dir, version)
    if (folder / ".complete").is_file():
        return folder
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RegistryError(
            "Maven (mvn) is needed to fetch the schema registry: apt-get install maven"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    artifact = _ARTIFACT.format(version=version)
    report(f"fetching Apicurio Registry {version} from Maven Central into {folder} ...")
    started = time.monotonic()
    # A private staging folder next to the target: two fetches at once never mix their files,
    # and the rename below publishes a complete folder or nothing.
    with tempfile.TemporaryDirectory(prefix=f".{version}-", dir=folder.parent) as tmp:
        staging = Path(tmp)
        download = staging / "download"
        cmd = [
            mvn, "-B", "-q", f"-Dmaven.repo.local={cache_dir / 'm2'}", _COPY_GOAL,
            f"-Dartifact={artifact}", f"-DoutputDirectory={download}",
        ]  # fmt: skip
        try:  # cwd: an empty folder, so Maven never picks up a pom.xml lying around
            result = subprocess.run(
                cmd, cwd=staging, capture_output=True, text=True, check=False, timeout=1800
            )
        except subprocess.TimeoutExpired as exc:
            raise RegistryError(f"Maven did not fetch {artifact} within 30 min") from exc
        if result.returncode != 0:
            tail = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()][-4:]
            raise RegistryError(f"Maven could not fetch {artifact}: " + " | ".join(tail))
        maven_seconds = time.monotonic() - started
        archives = list(download.glob("*.tar.gz"))
        if len(archives) != 1:
            raise RegistryError(
                f"Maven fetched {artifact} but left no single .tar.gz in {download}"
            )
        archive_bytes = archives[0].stat().st_size
        unpacked = staging / "app"
        try:
            with tarfile.open(archives[0]) as tar:
                tar.extractall(unpacked, filter="data")  # no absolute paths, links out, devices
        except (tarfile.TarError, OSError) as exc:
            raise RegistryError(f"cannot unpack {archives[0].name}: {exc}") from exc
        if not runner_jar(unpacked, version).is_file():
            raise RegistryError(f"{archives[0].name} holds no {runner_jar(unpacked, version).name}")
        elapsed = time.monotonic() - started
        summary = {
            "version": version,
            "archive_bytes": archive_bytes,
            "maven_seconds": round(maven_seconds, 1),
            "seconds": round(elapsed, 1),
        }
        (unpacked / ".complete").write_text(json.dumps(summary) + "\n")
        if (folder / ".complete").is_file():  # another fetch finished first: keep its folder
            return folder
        shutil.rmtree(folder, ignore_errors=True)  # a folder left incomplete by a crash
        unpacked.rename(folder)
    report(
        f"fetched Apicurio Registry {version}: {archive_bytes / 1e6:.1f} MB archive "
        f"in {elapsed:.1f} s (Maven {maven_seconds:.1f} s, unpacking the rest)"
    )
    return folder


def find_java() -> str:
    """The java executable (JAVA_HOME first), Java 17 or newer; a RegistryError otherwise."""
    try:
        return _broker_java()
    except BrokerError as exc:
        raise RegistryError(str(exc)) from exc


def free_port() -> int:
    """A loopback port the kernel reports free right now (tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the registry when the process that started it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _is_ours(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) registry JVM of this run folder: a pid file may
    outlive its process, and the pid be reused by another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        return False
    return f"{_MARKER}{run_dir}".encode() + b"\0" in cmdline


def registry_pids(run_dir: Path | None = None) -> list[int]:
    """Pids of every live registry JVM started by stepcare (of one run folder, if given)."""
    return jvm_pids(_MARKER.encode(), run_dir)


class Registry:
    """One Apicurio Registry on 127.0.0.1, managed through a run folder.

    ``start()`` waits until ``/health/ready`` answers 200; ``stop()`` sends SIGTERM, waits and
    SIGKILLs it if needed. With ``die_with_parent=True`` (the test fixture) the kernel also kills
    the JVM if the starting process dies without running its teardown.
    """

    def __init__(
        self,
        run_dir: Path = DEFAULT_RUN_DIR,
        port: int = DEFAULT_PORT,
        *,
        version: str = APICURIO_VERSION,
        cache_dir: Path = Path(".cache"),
        heap_mb: int = HEAP_MB,
        die_with_parent: bool = False,
        report: Reporter = print,
    ) -> None:
        if not 1 <= port <= 65_535:
            raise RegistryError(f"port {port} is not a TCP port (1-65535)")
        self.run_dir = run_dir.resolve()
        self.port = port
        self.version = version
        self.cache_dir = cache_dir
        self.heap_mb = heap_mb
        self.die_with_parent = die_with_parent
        self.report = report
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- naming -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The registry's root (health, Apicurio's own API, its web console)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ccompat_url(self) -> str:
        """The Confluent-compatible API: the URL schema registry clients are given."""
        return ccompat_url(self.port)

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    # -- persistence --------------------------------------------------------------------------
    def _save(self) -> None:
        if self.pid is None:
            (self.run_dir / PID_FILE).unlink(missing_ok=True)
        else:
            (self.run_dir / PID_FILE).write_text(f"{self.pid}\n")
        state = {"pid": self.pid, "port": self.port, "version": self.version}
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path, report: Reporter = print) -> Registry | None:
        """The registry recorded in ``run_dir``, or None if none was started there."""
        path = run_dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
            registry = cls(
                run_dir, int(state["port"]), version=str(state["version"]), report=report
            )
            pid = state.get("pid")
            registry.pid = int(pid) if pid is not None else None
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{path} is not a registry state file ({exc}): remove it") from exc
        return registry

    def running(self) -> bool:
        return self.pid is not None and _is_ours(self.pid, self.run_dir)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> str:
        """Start the registry and wait until it is ready; its Confluent-compatible URL."""
        existing = Registry.load(self.run_dir, self.report)
        if existing is not None and existing.running():
            raise RegistryError(
                f"a schema registry from {self.run_dir} is already running at "
                f"{existing.ccompat_url}: stop it first (stepcare registry stop)"
            )
        if _port_in_use(self.port):
            raise RegistryError(
                f"port {self.port} on 127.0.0.1 is in use (another registry?): "
                "choose another with --port"
            )
        folder = fetch_registry(self.cache_dir, self.version, self.report)
        java = find_java()
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._launch(java, folder)
        self._save()
        try:
            self.wait_ready(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except BaseException:
            self.stop()
            raise
        self.report(
            f"Apicurio Registry {self.version} ready at {self.ccompat_url} "
            f"in {time.monotonic() - started:.1f} s"
        )
        return self.ccompat_url

    def _launch(self, java: str, folder: Path) -> None:
        cmd = [
            java, f"-Xmx{self.heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true", f"{_MARKER}{self.run_dir}",
            "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.banner.enabled=false",
            "-Dquarkus.http.access-log.enabled=false",  # one line a request otherwise
            '-Dquarkus.log.category."io.apicurio".level=WARN',  # its audit lines are INFO
            "-Dapicurio.rules.global.compatibility=BACKWARD",  # see the module's docstring
            "-jar", str(runner_jar(folder, self.version)),
        ]  # fmt: skip
        with open(self.log_path, "ab") as out:
            self._log_offset = out.tell()  # the log is appended to: its tail is this run's
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.run_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it cleanly
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self.pid = self._proc.pid

    def wait_ready(self, timeout: float) -> None:
        """Wait until ``/health/ready`` answers 200; a RegistryError with the log's tail if the
        JVM exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RegistryError(
                    f"the schema registry exited with status {self._proc.returncode} while "
                    f"starting; last log lines: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + READY_PATH, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:  # 503 while starting
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            time.sleep(0.25)
        raise RegistryError(
            f"the schema registry at {self.url} was not ready after {timeout:.0f} s ({last}); "
            f"last log lines: {self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the registry; SIGKILL it if it has not exited after ``timeout`` seconds."""
        if self.pid is not None and _is_ours(self.pid, self.run_dir):
            self._terminate(self.pid, timeout)
        self.pid = None
        if self.run_dir.is_dir():
            self._save()

    def _terminate(self, pid: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not _is_ours(pid, self.run_dir):
                return
            time.sleep(0.1)
        self.report(f"registry pid {pid} did not stop within {timeout:.0f} s: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _is_ours(pid, self.run_dir):
            self._reap()
            time.sleep(0.05)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.poll()

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the log worth reading (errors first), joined on one line."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errors = [ln for ln in kept if "ERROR" in ln or "Exception" in ln]
        tail = " | ".join((errors or kept)[-lines:])
        return tail[-600:] or "(empty log)"
