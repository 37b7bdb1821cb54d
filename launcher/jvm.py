"""Finding a Java 17+ runtime for Kafka and Elasticsearch."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from launcher.base import ServiceError

PREFERRED = (Path("/usr/lib/jvm/java-17-openjdk-amd64"), Path("/usr/lib/jvm/java-17-openjdk-arm64"))
MIN_MAJOR = 17
JAVA_FIX = (
    "install a JDK 17 (apt-get install openjdk-17-jre-headless, or `make install`) or set RISKSTREAM_JAVA_HOME to one"
)


def java_home(configured: Path | None, service: str) -> Path:
    """The JDK home to use: the configured one, else Debian's Java 17, else the ``java`` on PATH."""
    if configured is not None:
        candidates = [configured]
    else:
        candidates = [p for p in PREFERRED if (p / "bin" / "java").exists()]
        on_path = shutil.which("java")
        if on_path:
            candidates.append(Path(on_path).resolve().parent.parent)
    for home in candidates:
        java = home / "bin" / "java"
        if not java.exists():
            continue
        major = java_major(java)
        if major is not None and major >= MIN_MAJOR:
            return home
        raise ServiceError(service, f"{java} is Java {major}, older than {MIN_MAJOR}", JAVA_FIX)
    where = str(configured) if configured else "on PATH or in /usr/lib/jvm"
    raise ServiceError(service, f"Java is missing (no java {where})", JAVA_FIX)


def java_major(java: Path) -> int | None:
    try:
        done = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major
