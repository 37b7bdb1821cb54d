"""Building blocks of the launcher: the error type, ports, processes and the service base class.

Every service (Kafka, Elasticsearch, PostgreSQL) is a :class:`Service` with four steps: ``prepare`` (fetch the
artifacts, write its configuration), ``command`` (the argv and environment of its process), ``probe`` (is the
address healthy, and which version answers) and a stop signal. The orchestration (state file, idempotence,
rollback of a failed ``up``) lives in :mod:`launcher.stack`.

Processes start in their own session (``start_new_session``), so a service that forks (the Elasticsearch CLI
starts the server JVM) is stopped as one process group. A pid from the state file is trusted only when the
process still has the start time recorded when it was launched: a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ServiceError(RuntimeError):
    """A service could not be started or stopped. ``str()`` names the cause and the fix."""

    def __init__(self, service: str, cause: str, fix: str, *, log_tail: str = "") -> None:
        self.service = service
        self.cause = cause
        self.fix = fix
        self.log_tail = log_tail
        message = f"{service}: {cause}\n  fix: {fix}"
        if log_tail:
            message += f"\n  last log lines:\n{_indent(log_tail, '    ')}"
        super().__init__(message)


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


@dataclass
class Health:
    """What a probe found at a service's address."""

    healthy: bool
    version: str | None = None
    detail: str = ""
    listening: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProcessRecord:
    """A process this launcher started, as kept in the state file."""

    pid: int
    start_ticks: int
    log: str
    argv: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return process_start_ticks(self.pid) == self.start_ticks


# ---- ports ----------------------------------------------------------------------------------------------------


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """``"127.0.0.1:9092"`` -> ("127.0.0.1", 9092); the first entry of a comma-separated list."""
    first = address.split(",", maxsplit=1)[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    first = first.split("/", 1)[0]
    if "@" in first:
        first = first.rsplit("@", 1)[1]
    if first.startswith("["):
        host, _, rest = first[1:].partition("]")
        port = rest.lstrip(":")
    elif first.count(":") == 1:
        host, port = first.split(":")
    else:
        host, port = first, ""
    return host or "127.0.0.1", int(port) if port else default_port


def require_loopback(service: str, host: str, setting: str) -> None:
    if host not in LOOPBACK_HOSTS:
        raise ServiceError(
            service,
            f"{setting} names host {host!r}; the launcher only starts services on loopback",
            f"point {setting} at 127.0.0.1 (remote clusters are used as they are, without `services up`)",
        )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def is_listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


SERVICE_PORT_RANGE = (20000, 32767)  # below the kernel's ephemeral range (32768-60999 on Linux)


def free_port(host: str = "127.0.0.1", avoid: set[int] | None = None) -> int:
    """A port free right now, for internal ports (KRaft controller, ES transport) and the test fixtures.

    Chosen below the ephemeral range, so an outgoing connection cannot grab it between this check and the
    service's bind; the kernel's choice is the fallback.
    """
    avoid = avoid or set()
    rng = random.Random()
    for _ in range(100):
        port = rng.randint(*SERVICE_PORT_RANGE)
        if port not in avoid and port_is_free(port, host) and not is_listening(port, host, timeout=0.2):
            return port
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise RuntimeError("no free port found")


# ---- processes ------------------------------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux /proc), or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_process_group(record: ProcessRecord, sig: int, timeout: float) -> bool:
    """Signal the group of a process we started, wait up to ``timeout``, then SIGKILL. True if it was running.

    The group id equals the leader's pid (``start_new_session``). The leader is verified by its start time; if
    the leader is gone but group members remain (a forked server), they are still ours: the pgid of a dead
    leader cannot be reused while members hold it.
    """
    pgid = record.pid
    leader_alive = record.alive()
    members = group_members(pgid)
    if not leader_alive and not members:
        return False
    if not leader_alive and process_start_ticks(pgid) is not None:
        # the pid was recycled by an unrelated process and no member of our group is left: leave it alone
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_members(pgid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and group_members(pgid):
        _reap(pgid)
        time.sleep(0.1)
    _reap(pgid)
    return True


def _reap(pid: int) -> None:
    """Collect an exited child of this process (the test fixtures start services as children)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def spawn(
    argv: list[str],
    *,
    env: Mapping[str, str],
    log: Path,
    cwd: Path,
    user: str | None = None,
) -> ProcessRecord:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log``; as ``user`` when given."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        out.flush()
        kwargs: dict[str, Any] = {}
        if user is not None:
            entry = pwd.getpwnam(user)
            kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
    ticks = process_start_ticks(proc.pid)
    # Popen keeps a handle; the launcher tracks the process by pid from here on. Detach the handle so Python
    # does not warn about a still-running child when the CLI exits.
    proc.returncode = 0
    return ProcessRecord(pid=proc.pid, start_ticks=ticks or 0, log=str(log), argv=argv)


def run_checked(
    service: str,
    argv: list[str],
    *,
    cause: str,
    fix: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
    user: str | None = None,
) -> str:
    """Run a short helper command (Maven, initdb, the Kafka storage formatter); raise ServiceError if it fails."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    try:
        done = subprocess.run(
            argv,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
    except FileNotFoundError as exc:
        raise ServiceError(service, f"{cause}: {argv[0]} not found", fix) from exc
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(service, f"{cause}: {argv[0]} did not finish within {timeout:.0f}s", fix) from exc
    if done.returncode != 0:
        output = (done.stdout + "\n" + done.stderr).strip()
        raise ServiceError(
            service,
            f"{cause}: `{' '.join(argv[:3])} ...` exited with {done.returncode}",
            fix,
            log_tail="\n".join(output.splitlines()[-25:]),
        )
    return done.stdout


# ---- users and directories ------------------------------------------------------------------------------------


def running_as_root() -> bool:
    return os.geteuid() == 0


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """The account that runs Elasticsearch and PostgreSQL under root; created (no login, no home) if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    run_checked(
        "launcher",
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        cause=f"cannot create the system user {name!r}",
        fix=f"create it yourself (useradd --system {name}) or set RISKSTREAM_SERVICE_USER to an existing user",
        timeout=30,
    )
    return pwd.getpwnam(name)


def reachable_by(path: Path, account: pwd.struct_passwd) -> bool:
    """True when ``account`` can traverse every existing ancestor of ``path`` (search permission)."""
    groups = {account.pw_gid}
    for parent in [path, *path.parents]:
        try:
            st = parent.stat()
        except FileNotFoundError:
            continue
        if account.pw_uid == 0:
            continue
        if st.st_uid == account.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return False
    return True


def chown_tree(path: Path, account: pwd.struct_passwd) -> None:
    os.chown(path, account.pw_uid, account.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), account.pw_uid, account.pw_gid)


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box = [time.monotonic()]
    yield box
    box[0] = time.monotonic() - box[0]


class Service(ABC):
    """One engine the launcher can start on this machine."""

    name: str = ""
    host: str = "127.0.0.1"
    stop_signal: int = signal.SIGTERM

    @property
    @abstractmethod
    def address(self) -> str:
        """The client-facing address (bootstrap, URL), as the settings name it."""

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Ports this service binds, by role (the first is the client port)."""

    @abstractmethod
    def probe(self, timeout: float = 2.0) -> Health:
        """Health and version at :attr:`address` (whoever runs it)."""

    @abstractmethod
    def prepare(self) -> None:
        """Fetch artifacts and write configuration; may raise ServiceError. Idempotent."""

    @abstractmethod
    def start(self) -> ProcessRecord:
        """Start the process (after :meth:`prepare`), returning its record."""

    def extra_state(self) -> dict[str, Any]:
        """Anything worth keeping in the state file besides the process (ports, versions, paths)."""
        return {}

    def after_healthy(self) -> None:  # noqa: B027 - optional hook
        """Post-start work (PostgreSQL creates the configured database)."""
