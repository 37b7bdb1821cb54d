"""The stack: start, stop and inspect the configured services of one data dir.

State (pids with their start times, ports, versions, log paths) is a JSON file,
``<data_dir>/services/state.json``, written atomically under an exclusive lock, so two ``up`` calls on the same
data dir never race. ``up`` is idempotent: a healthy service is reported and left alone. A failed ``up`` stops
everything that this call started before raising, so nothing is left half-running. ``down`` stops only
processes recorded in the state file that are verifiably still the processes it launched.

Under root, Elasticsearch and PostgreSQL run as the service user. When that user cannot reach the data dir
(``/root`` is 0700), their directories live in ``/var/lib/riskstream/stacks/<hash of the data dir>/`` with a
symlink from ``<data_dir>/services/<name>``; the unpacked Elasticsearch goes to ``/var/lib/riskstream/dist``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from launcher.base import (
    Health,
    ProcessRecord,
    Service,
    ServiceError,
    ensure_system_user,
    port_is_free,
    reachable_by,
    require_loopback,
    running_as_root,
    stop_process_group,
    tail,
)
from launcher.settings import KNOWN_SERVICES, LauncherSettings

log = logging.getLogger(__name__)

SYSTEM_ROOT = Path("/var/lib/riskstream")
STATE_VERSION = 1
ADDRESS_SETTING = {
    "kafka": "RISKSTREAM_KAFKA_BOOTSTRAP",
    "elasticsearch": "RISKSTREAM_ES_URL",
    "postgres": "RISKSTREAM_DATABASE_URL (or RISKSTREAM_POSTGRES_PORT)",
}


@dataclass
class ServiceStatus:
    """One service as `up`, `down` and `status` report it."""

    name: str
    address: str
    healthy: bool
    version: str | None
    managed: bool
    action: str = ""
    pid: int | None = None
    log: str | None = None
    detail: str = ""
    ports: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Stack:
    """The services of one data dir (one ``LauncherSettings``)."""

    def __init__(self, settings: LauncherSettings) -> None:
        self.settings = settings
        self.dir = settings.data_dir / "services"
        self.state_path = self.dir / "state.json"

    # ---- state ------------------------------------------------------------------------------------------------

    def load_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": STATE_VERSION, "services": {}}
        except ValueError:
            log.warning("ignoring unreadable state file %s", self.state_path)
            return {"version": STATE_VERSION, "services": {}}
        state.setdefault("services", {})
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _record(entry: dict[str, Any]) -> ProcessRecord | None:
        if "pid" not in entry:
            return None
        return ProcessRecord(
            pid=int(entry["pid"]), start_ticks=int(entry.get("start_ticks", 0)), log=str(entry.get("log", ""))
        )

    # ---- where things live ------------------------------------------------------------------------------------

    def _account(self, name: str) -> pwd.struct_passwd | None:
        """The user a service runs as: None (this user) unless we are root and the engine refuses root."""
        if name == "kafka" or not running_as_root():
            return None
        return ensure_system_user(self.settings.service_user)

    def _runtime_root(self, name: str, account: pwd.struct_passwd | None, *, create: bool) -> Path:
        """Where a service's files live; with ``create``, make the fallback dir and its symlink (see module doc)."""
        link = self.dir / name
        if link.is_symlink():
            return link.resolve()
        if account is None or reachable_by(self.dir, account):
            return link
        key = hashlib.sha256(str(self.dir).encode()).hexdigest()[:12]
        target = SYSTEM_ROOT / "stacks" / key / name
        if not create:
            return target
        for parent in (SYSTEM_ROOT, SYSTEM_ROOT / "stacks", SYSTEM_ROOT / "stacks" / key):
            parent.mkdir(exist_ok=True)
            parent.chmod(0o755)
        target.mkdir(exist_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            if link.exists():
                shutil.rmtree(link)
            link.symlink_to(target)
        return target

    def _dist_root(self, account: pwd.struct_passwd | None) -> Path:
        cache = self.settings.artifact_cache
        if account is None or reachable_by(cache, account):
            return cache
        return SYSTEM_ROOT / "dist"

    def service(self, name: str, previous: dict[str, Any] | None = None, *, create: bool = False) -> Service:
        """The service object for ``name``; ``create`` prepares its directories (only `up` needs them)."""
        previous = previous or {}
        if name == "kafka":
            from launcher.kafka import KafkaService

            return KafkaService(self.settings, self.dir / "kafka", previous)
        account = self._account(name)
        root = self._runtime_root(name, account, create=create)
        if name == "elasticsearch":
            from launcher.elasticsearch import ElasticsearchService

            return ElasticsearchService(
                self.settings, root, previous, dist_root=self._dist_root(account), account=account
            )
        if name == "postgres":
            from launcher.postgres import PostgresService

            return PostgresService(self.settings, root, previous, account=account)
        raise ValueError(f"unknown service {name!r}; choose from {list(KNOWN_SERVICES)}")

    # ---- operations -------------------------------------------------------------------------------------------

    def up(self, names: list[str] | None = None) -> list[ServiceStatus]:
        """Start every named service that is not already healthy; wait for health; roll back on failure."""
        names = names if names is not None else self.settings.wanted_services()
        results: list[ServiceStatus] = []
        started: list[tuple[Service, ProcessRecord]] = []
        with self._locked():
            state = self.load_state()
            try:
                for name in names:
                    results.append(self._up_one(name, state, started))
            except BaseException:
                for svc, record in reversed(started):
                    log.warning("stopping %s (pid %s) started by this failed `up`", svc.name, record.pid)
                    stop_process_group(record, svc.stop_signal, self.settings.stop_timeout)
                    state["services"].pop(svc.name, None)
                self._save_state(state)
                raise
        return results

    def _up_one(self, name: str, state: dict[str, Any], started: list[tuple[Service, ProcessRecord]]) -> ServiceStatus:
        previous = state["services"].get(name, {})
        svc = self.service(name, previous)
        record = self._record(previous)
        managed = record is not None and record.alive()
        health = svc.probe()
        if health.healthy:
            return self._status(svc, health, previous if managed else {}, managed, "already running")
        if managed and record is not None:
            # ours, alive, not healthy yet: a previous `up` is still starting it (or it hangs)
            health = self._wait_healthy(svc, record)
            return self._status(svc, health, previous, True, "already running")
        if previous:
            state["services"].pop(name, None)  # stale entry of a process that is gone
        require_loopback(name, svc.host, ADDRESS_SETTING[name])
        for role, port in svc.ports().items():
            if not port_is_free(port, svc.host):
                what = "the client" if role in ("client", "http") else f"the {role}"
                holder = (
                    f"another process that is not a healthy {name} ({health.detail})"
                    if health.listening
                    else "another socket (not listening: an outgoing connection may be using it as its local "
                    "port; prefer ports below 32768, outside the kernel's ephemeral range)"
                )
                raise ServiceError(
                    name,
                    f"port {port} ({what} port) on {svc.host} is taken by {holder}",
                    f"stop the process on port {port} (`ss -ltnp 'sport = :{port}'` shows it) or choose another "
                    f"address with {ADDRESS_SETTING[name]}",
                )
        svc = self.service(name, previous, create=True)
        svc.prepare()
        record = svc.start()
        started.append((svc, record))
        entry = {
            "pid": record.pid,
            "start_ticks": record.start_ticks,
            "log": record.log,
            "address": svc.address,
            "ports": svc.ports(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **svc.extra_state(),
        }
        state["services"][name] = entry
        self._save_state(state)
        health = self._wait_healthy(svc, record)
        svc.after_healthy()
        return self._status(svc, health, entry, True, "started")

    def _wait_healthy(self, svc: Service, record: ProcessRecord) -> Health:
        deadline = time.monotonic() + self.settings.start_timeout
        health = Health(False)
        while time.monotonic() < deadline:
            if not record.alive():
                raise ServiceError(
                    svc.name,
                    f"the {svc.name} process (pid {record.pid}) exited during start-up",
                    f"read {record.log}; the last lines are below",
                    log_tail=tail(Path(record.log)),
                )
            health = svc.probe()
            if health.healthy:
                return health
            time.sleep(0.5)
        raise ServiceError(
            svc.name,
            f"not healthy after {self.settings.start_timeout:.0f}s ({health.detail})",
            f"read {record.log}; raise RISKSTREAM_START_TIMEOUT on a slow or busy machine",
            log_tail=tail(Path(record.log)),
        )

    def _status(self, svc: Service, health: Health, entry: dict[str, Any], managed: bool, action: str) -> ServiceStatus:
        version = entry.get("version") if managed and entry.get("version") else health.version
        if managed and svc.name == "postgres":
            version = health.version
        return ServiceStatus(
            name=svc.name,
            address=svc.address,
            healthy=health.healthy,
            version=version,
            managed=managed,
            action=action if managed else (f"{action} (not started by this launcher)" if health.healthy else action),
            pid=int(entry["pid"]) if managed and "pid" in entry else None,
            log=entry.get("log") if managed else None,
            detail=health.detail,
            ports=entry.get("ports") or svc.ports(),
        )

    def status(self, names: list[str] | None = None) -> list[ServiceStatus]:
        """Health and version of each service at its configured address, whoever started it."""
        state = self.load_state()
        names = names if names is not None else self._names_with_state(state)
        results = []
        for name in names:
            previous = state["services"].get(name, {})
            svc = self.service(name, previous)
            record = self._record(previous)
            managed = record is not None and record.alive()
            health = svc.probe()
            action = "running" if health.healthy else ("starting or unhealthy" if managed else "stopped")
            results.append(self._status(svc, health, previous if managed else {}, managed, action))
        return results

    def _names_with_state(self, state: dict[str, Any]) -> list[str]:
        wanted = set(self.settings.wanted_services()) | set(state["services"])
        return [s for s in KNOWN_SERVICES if s in wanted]

    def down(self, names: list[str] | None = None, *, purge: bool = False) -> list[ServiceStatus]:
        """Stop the services this launcher started (gracefully, then SIGKILL); optionally delete their data."""
        results = []
        with self._locked():
            state = self.load_state()
            targets = names if names is not None else self._names_with_state(state)
            for name in reversed([s for s in KNOWN_SERVICES if s in targets]):
                previous = state["services"].get(name, {})
                svc = self.service(name, previous)
                record = self._record(previous)
                still_healthy = False
                if record is not None and stop_process_group(record, svc.stop_signal, self.settings.stop_timeout):
                    action = "stopped"
                elif svc.probe(timeout=1.0).healthy:
                    still_healthy = True
                    action = "left running (not started by this launcher)"
                else:
                    action = "not running"
                state["services"].pop(name, None)
                self._save_state(state)
                if purge and self._purge(name):
                    action += ", data deleted"
                results.append(
                    ServiceStatus(
                        name=name,
                        address=svc.address,
                        healthy=still_healthy,
                        version=previous.get("version"),
                        managed=record is not None,
                        action=action,
                        pid=record.pid if record else None,
                        log=previous.get("log"),
                    )
                )
        return list(reversed(results))

    def _purge(self, name: str) -> bool:
        """Delete a service's data in this data dir (and its fallback dir); True if there was any."""
        link = self.dir / name
        if link.is_symlink():
            target = link.resolve()
            link.unlink()
            shutil.rmtree(target, ignore_errors=True)
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # the per-stack folder under /var/lib/riskstream, once empty
            return True
        if link.exists():
            shutil.rmtree(link, ignore_errors=True)
            return True
        return False
