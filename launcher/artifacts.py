"""Fetching and caching the engines' artifacts: Kafka jars and the Elasticsearch zip, from Maven Central.

Both land in the artifact cache (``settings.artifact_cache``, default ``~/.cache/riskstream``), outside the
repository and shared by every data dir. A finished fetch writes a marker file; when the marker is present
Maven is not called at all, so a second ``up`` works offline and without Maven. A fetch first tries Maven's
offline mode (the artifact may already be in ``~/.m2``), then the network.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
import zipfile
from pathlib import Path

from launcher.base import ServiceError, run_checked
from riskstream.hashing import sha256_file

log = logging.getLogger(__name__)

MARKER = ".riskstream-complete"

KAFKA_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>riskstream.launcher</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <!-- Kafka logs through slf4j; reload4j is the log4j 1.x binding its own distribution ships. -->
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
"""


def _maven(maven: str, service: str, args: list[str], *, cwd: Path, what: str) -> None:
    """Run Maven offline first (local repository), then online; raise a ServiceError naming the fix."""
    if shutil.which(maven) is None:
        raise ServiceError(
            service,
            f"{what} is not cached and Maven ({maven!r}) is not installed",
            "install Maven (apt-get install maven, or `make install`), or set RISKSTREAM_MAVEN to its path",
        )
    try:
        run_checked(service, [maven, "-q", "-o", "-B", *args], cause=f"fetching {what}", fix="", cwd=cwd)
        return
    except ServiceError:
        log.info("%s: not in the local Maven repository, fetching from Maven Central", what)
    run_checked(
        service,
        [maven, "-q", "-B", *args],
        cause=f"fetching {what} from Maven Central failed",
        fix="check network access to https://repo.maven.apache.org (proxy settings in ~/.m2/settings.xml), "
        "or copy a populated artifact cache to RISKSTREAM_CACHE_DIR",
        cwd=cwd,
    )


def kafka_libs(cache: Path, version: str, maven: str) -> Path:
    """The directory of Kafka's runtime jars (``libs/*`` on the classpath), fetched once."""
    home = cache / f"kafka-{version}"
    libs = home / "libs"
    if (home / MARKER).exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(KAFKA_POM.format(version=version), encoding="utf-8")
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
    try:
        _maven(
            maven,
            "kafka",
            [
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            cwd=home,
            what=f"Apache Kafka {version} jars",
        )
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise ServiceError("kafka", f"Maven fetched no kafka_2.13 jar for {version}", "check the version")
        if libs.exists():
            shutil.rmtree(libs)
        staging.rename(libs)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    (home / MARKER).write_text(version + "\n", encoding="utf-8")
    return libs


def elasticsearch_zip(cache: Path, version: str, maven: str) -> Path:
    """The integ-test zip of Elasticsearch ``version`` in the artifact cache, fetched once."""
    downloads = cache / "downloads"
    target = downloads / f"elasticsearch-{version}.zip"
    if target.exists() and (downloads / f"{target.name}.ok").exists():
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    _maven(
        maven,
        "elasticsearch",
        [
            "dependency:copy",
            f"-Dartifact=org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip",
            f"-DoutputDirectory={downloads}",
            "-Dmdep.overWriteReleases=true",
        ],
        cwd=downloads,
        what=f"Elasticsearch {version} (integ-test-zip)",
    )
    if not target.exists():
        raise ServiceError("elasticsearch", f"Maven did not produce {target}", "check the version")
    (downloads / f"{target.name}.ok").write_text(sha256_file(target) + "\n", encoding="utf-8")
    return target


def elasticsearch_home(cache: Path, dist_root: Path, version: str, maven: str) -> Path:
    """An unpacked Elasticsearch ``version`` under ``dist_root`` (readable by the service user)."""
    home = dist_root / f"elasticsearch-{version}"
    if (home / MARKER).exists():
        return home
    archive = elasticsearch_zip(cache, version, maven)
    dist_root.mkdir(parents=True, exist_ok=True)
    os.chmod(dist_root, 0o755)  # noqa: S103 - the service user reads the unpacked distribution
    staging = Path(tempfile.mkdtemp(prefix="unpack-", dir=dist_root))
    try:
        _unzip(archive, staging)
        roots = [p for p in staging.iterdir() if p.is_dir()]
        if len(roots) != 1 or not (roots[0] / "bin" / "elasticsearch").exists():
            raise ServiceError("elasticsearch", f"{archive} is not an Elasticsearch distribution", "delete it")
        if home.exists():
            shutil.rmtree(home)
        roots[0].rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for path in [home, *home.rglob("*")]:
        mode = path.stat().st_mode
        os.chmod(path, mode | stat.S_IRGRP | stat.S_IROTH | (0o055 if path.is_dir() or mode & 0o100 else 0))
    (home / MARKER).write_text(version + "\n", encoding="utf-8")
    return home


def _unzip(archive: Path, dest: Path) -> None:
    if shutil.which("unzip"):
        subprocess.run(["unzip", "-q", "-o", str(archive), "-d", str(dest)], check=True)
        return
    with zipfile.ZipFile(archive) as zf:  # keeps the executable bits that ZipFile.extractall drops
        for info in zf.infolist():
            extracted = Path(zf.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(extracted, mode)
