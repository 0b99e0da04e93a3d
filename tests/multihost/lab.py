"""Test hosts on one machine: a network namespace per host, joined by veth pairs to a bridge.

Each host (``ip netns`` named ``bmh-<host>``) has its own network stack, loopback and one
address in :data:`SUBNET` (a private /24 nothing else on the machine uses); the bridge in the
root namespace has ``.1`` so that the test process reaches the hosts it created and nothing
else. :meth:`Lab.close` kills every process left in the namespaces and removes namespaces,
veths and the bridge; :func:`remove_stale` does the same for a lab a killed test run left
behind (called before a new one is built).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "bmh-"
BRIDGE = "bmh-br0"
SUBNET = "10.231.7"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def namespace_pids(ns: str) -> list[int]:
    """Pids of every process in namespace ``ns`` (empty when it does not exist)."""
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


def kill_namespace(ns: str, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to every process of namespace ``ns``. Returns how many got it."""
    n = 0
    for pid in namespace_pids(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            n += 1
    return n


def remove_stale() -> list[str]:
    """Remove the namespaces, veths and bridge a previous lab left (their processes
    killed). Returns the namespaces removed."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(PREFIX):
            kill_namespace(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(("bmhv-", BRIDGE)):
            _ip("link", "del", name, check=False)
    return removed


@dataclass
class Host:
    """One test host: its namespace, address and state folder."""

    name: str
    address: str
    state_dir: Path

    @property
    def ns(self) -> str:
        return PREFIX + self.name


@dataclass
class Lab:
    """The bridge and the hosts built on it (see the module docstring)."""

    root: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        remove_stale()
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")

    def add_host(self, name: str, octet: int) -> Host:
        """Create host ``name`` at ``SUBNET.octet``. Returns it."""
        host = Host(name, f"{SUBNET}.{octet}", self.root / "hosts" / name)
        host.state_dir.mkdir(parents=True, exist_ok=True)
        veth = f"bmhv-{name}"[:15]
        _ip("netns", "add", host.ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        _ip("link", "set", veth, "master", BRIDGE, "up")
        _ip("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    def run(
        self,
        host: Host,
        cmd: Sequence[str],
        log_name: str,
        env: Mapping[str, str] | None = None,
        *,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen:
        """Start ``cmd`` inside ``host`` (as ``user`` when given), output to
        ``<root>/logs/<log_name>.log``. Returns the process."""
        log_path = self.root / "logs" / f"{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        prefix = ["ip", "netns", "exec", host.ns]
        if user:
            prefix += ["runuser", "-u", user, "--"]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [*prefix, *cmd],
                env=None if env is None else dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(cwd or self.root),
            )
        self.procs.append(proc)
        return proc

    def log(self, log_name: str) -> str:
        """The text of ``<root>/logs/<log_name>.log`` ('' when absent)."""
        path = self.root / "logs" / f"{log_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(
        self, log_name: str, text: str, timeout_s: float, proc=None, *, since: int = 0
    ) -> float:
        """Wait until ``text`` appears in the log after its first ``since`` characters.
        Returns the seconds waited.

        Raises:
            AssertionError: ``proc`` exited first or the time ran out (the log tail shown).
        """
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if text in self.log(log_name)[since:]:
                return time.monotonic() - started
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.5)
        tail = self.log(log_name)[-3000:]
        raise AssertionError(f"{log_name}: no {text!r} within {timeout_s:.0f} s; log:\n{tail}")

    def cut(self, name: str, connected: bool) -> None:
        """Take host ``name``'s link down (a network partition: its processes run on, cut
        off from every other host) or up again."""
        _ip("link", "set", f"bmhv-{name}"[:15], "up" if connected else "down")

    def reaches(self, name: str, address: str, port: int) -> bool:
        """Whether a process on host ``name`` can open a TCP connection to ``address:port``."""
        probe = f"</dev/tcp/{address}/{port}"
        ns = self.hosts[name].ns
        done = _ip("netns", "exec", ns, "timeout", "3", "bash", "-c", probe, check=False)
        return done.returncode == 0

    def kill_host(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Kill every process of host ``name`` (a host death). Returns how many."""
        return kill_namespace(self.hosts[name].ns, sig)

    def close(self) -> None:
        """Stop every process of every host (SIGTERM, then SIGKILL), remove the network."""
        for host in self.hosts.values():
            kill_namespace(host.ns, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            namespace_pids(h.ns) for h in self.hosts.values()
        ):
            time.sleep(0.3)
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for host in self.hosts.values():
            kill_namespace(host.ns)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        remove_stale()
