"""A single Elasticsearch 8.x node from the integ-test zip on Maven Central.

The integ-test distribution carries only four modules (transport-netty4, apm, x-pack-core, x-pack-security):
security is present and switched off here (loopback only), and there are no ingest pipelines, painless, ILM or
data streams (riskstream uses plain monthly indices behind aliases). Elasticsearch refuses to run as root:
under root the node runs as the service user, and every directory it writes is owned by that user. It reads
``ES_JAVA_HOME`` (not ``JAVA_HOME``) and its configuration from ``ES_PATH_CONF``: a per-stack copy of the
distribution's config with our elasticsearch.yml.
"""

from __future__ import annotations

import logging
import pwd
import shutil
from pathlib import Path
from typing import Any

import httpx

from launcher.artifacts import elasticsearch_home
from launcher.base import (
    LOOPBACK_HOSTS,
    Health,
    ProcessRecord,
    Service,
    ServiceError,
    chown_tree,
    free_port,
    is_listening,
    port_is_free,
    require_loopback,
    spawn,
    split_host_port,
)
from launcher.es_compat import install_compat_plugin
from launcher.jvm import java_home
from launcher.settings import LauncherSettings

log = logging.getLogger(__name__)


def probe_elasticsearch(url: str, timeout: float = 2.0) -> Health:
    """Healthy when ``GET /`` reports an 8.x build and the cluster is yellow or green."""
    host, port = split_host_port(url, 9200)
    if not is_listening(port, host):
        return Health(False, detail=f"nothing listens on {host}:{port}")
    base = url.rstrip("/")
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            info = _node_info(client, base)
            if info is None:
                return Health(False, listening=True, detail=f"{base} answered but is not Elasticsearch")
            health = client.get(base + "/_cluster/health").json()
    except (httpx.HTTPError, ValueError) as exc:
        return Health(False, listening=True, detail=f"{base} does not answer as Elasticsearch: {exc!r}")
    version = str(info.get("number", ""))
    status = health.get("status")
    if not version.startswith("8."):
        return Health(False, version, f"Elasticsearch {version} is not 8.x (the client is 8.x)", listening=True)
    detail = (
        f"cluster {health.get('cluster_name')} status {status}, "
        f"build {info.get('build_flavor', '')} {str(info.get('build_hash', ''))[:8]}"
    )
    return Health(status in ("yellow", "green"), version, detail, listening=True)


def _node_info(client: httpx.Client, base: str) -> dict[str, Any] | None:
    """The ``version`` object of ``GET /``; from ``GET /_nodes/_local`` when the root endpoint is absent.

    The root endpoint lives in the ``rest-root`` module, which the integ-test zip does not carry; the launcher
    adds it back (:mod:`launcher.es_compat`), but a node started otherwise may lack it.
    """
    root = client.get(base + "/")
    if root.status_code == 200 and isinstance(root.json().get("version"), dict):
        version: dict[str, Any] = root.json()["version"]
        return version
    if root.headers.get("x-elastic-product") != "Elasticsearch":
        return None
    nodes = client.get(base + "/_nodes/_local", params={"filter_path": "nodes.*.version,nodes.*.build_*"})
    nodes.raise_for_status()
    for node in nodes.json().get("nodes", {}).values():
        return {
            "number": node.get("version"),
            "build_flavor": node.get("build_flavor"),
            "build_hash": node.get("build_hash"),
        }
    return None


class ElasticsearchService(Service):
    name = "elasticsearch"

    def __init__(
        self,
        settings: LauncherSettings,
        root: Path,
        previous: dict[str, Any],
        *,
        dist_root: Path,
        account: pwd.struct_passwd | None,
    ) -> None:
        self.settings = settings
        self.host, self.port = split_host_port(settings.es_url, 9200)
        self.root = root
        self.dist_root = dist_root
        self.account = account
        self.conf = root / "config"
        self.data = root / "data"
        self.logs = root / "logs"
        self.tmp = root / "tmp"
        self.log = root / "elasticsearch.log"
        prev = previous.get("transport_port")
        if self.host not in LOOPBACK_HOSTS:
            self.transport_port = 0  # refused in prepare(); status still probes the address
        elif isinstance(prev, int) and prev != self.port and port_is_free(prev, self.host):
            self.transport_port = prev
        else:
            self.transport_port = free_port(self.host, avoid={self.port})
        self._home: Path | None = None
        self._java_home: Path | None = None

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ports(self) -> dict[str, int]:
        return {"http": self.port, "transport": self.transport_port}

    def probe(self, timeout: float = 2.0) -> Health:
        return probe_elasticsearch(self.address, timeout)

    def yml(self) -> str:
        values = {
            "cluster.name": "riskstream",
            "node.name": "riskstream-1",
            "path.data": str(self.data),
            "path.logs": str(self.logs),
            "network.host": self.host,
            "http.host": self.host,
            "transport.host": self.host,
            "http.port": str(self.port),
            "transport.port": str(self.transport_port),
            "discovery.type": "single-node",
            # a nearly full developer disk must not turn indices read-only
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "action.auto_create_index": "true",
            # The integ-test zip carries x-pack-core and x-pack-security: without this line the first start
            # auto-configures TLS and passwords. Loopback only, single user: security stays off.
            "xpack.security.enabled": "false",
            "xpack.security.enrollment.enabled": "false",
        }
        return "# written by riskstream services up\n" + "".join(f"{k}: {v}\n" for k, v in values.items())

    def prepare(self) -> None:
        require_loopback(self.name, self.host, "RISKSTREAM_ES_URL")
        self._java_home = java_home(self.settings.java_home, self.name)
        self._home = elasticsearch_home(
            self.settings.artifact_cache, self.dist_root, self.settings.es_version, self.settings.maven
        )
        install_compat_plugin(self._home, self._java_home, self.settings.es_version)
        for directory in (self.root, self.data, self.logs, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        # A fresh copy of the distribution's config each time: nothing a previous start auto-configured lingers.
        if self.conf.exists():
            shutil.rmtree(self.conf)
        shutil.copytree(self._home / "config", self.conf)
        (self.conf / "elasticsearch.yml").write_text(self.yml(), encoding="utf-8")
        if self.account is not None:
            chown_tree(self.root, self.account)

    def start(self) -> ProcessRecord:
        if self._home is None or self._java_home is None:
            raise ServiceError(self.name, "start() before prepare()", "call prepare() first")
        heap = self.settings.es_heap
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.root),
            "ES_JAVA_HOME": str(self._java_home),
            "ES_PATH_CONF": str(self.conf),
            "ES_TMPDIR": str(self.tmp),
            # The launcher's own JVM probes the server's final JVM flags from a temporary directory that it leaves
            # behind; without this every start left one in /tmp.
            "CLI_JAVA_OPTS": f"-Djava.io.tmpdir={self.tmp}",
            "ES_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}",
        }
        argv = [str(self._home / "bin" / "elasticsearch")]
        return spawn(
            argv,
            env=env,
            log=self.log,
            cwd=self.root,
            user=self.account.pw_name if self.account is not None else None,
        )

    def extra_state(self) -> dict[str, Any]:
        return {
            "transport_port": self.transport_port,
            "version": self.settings.es_version,
            "home": str(self._home) if self._home else None,
            "data": str(self.data),
            "node_logs": str(self.logs),
        }
