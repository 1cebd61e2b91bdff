"""The broker JVMs of stepcare's local clusters, as the tests look for them in /proc."""

from __future__ import annotations

from pathlib import Path


def broker_pids(run_dir: Path | None = None) -> list[int]:
    """Pids of every live broker JVM started by stepcare (of one run folder, if given)."""
    marker = b"-Dstepcare.run.dir="
    if run_dir is not None:
        marker += str(run_dir.resolve()).encode() + b"\0"
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and b"kafka.Kafka" in cmdline and state not in ("Z", "X"):
            pids.append(int(proc.name))
    return pids
