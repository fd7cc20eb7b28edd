"""Several "hosts" on one machine: network namespaces joined by a bridge, for tests of a
multi-host deployment (issue 20) — and the servers that run on them: etcd, PostgreSQL managed
by Patroni, HAProxy.

:class:`Lan` makes a bridge in the calling (root) namespace, with the first address of a
private /24 that no interface of the machine uses yet (the operator's machine: the test runs
there), and one namespace per host (:meth:`Lan.host`) joined to the bridge by a veth pair, with
the next address. Traffic stays between those addresses: the hosts have no route but their
subnet. :meth:`Host.kill` kills every process of a host (all the namespace's processes) and
takes its link down; :meth:`Host.link` takes the link down or up (a partition). :meth:`Lan.close`
kills what is left and removes the namespaces and the bridge. Names carry a tag made of this
process's id, so parallel test runs do not meet.

:func:`start_etcd`, :func:`start_patroni`, :func:`start_haproxy` and :func:`start_keepalived`
write their configuration under the host's directory and start the Debian packages' binaries in
the host's namespace (Patroni and PostgreSQL as the ``postgres`` system user, which ``initdb``
requires). Two HAProxy hosts share one floating address (:meth:`Lan.spare_address`) that
keepalived (VRRP) keeps on one of them: no single balancer is a single point of failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.dbserver import PG_BIN

_lans = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _used_subnets() -> set[ipaddress.IPv4Network]:
    out = _ip("-o", "-4", "addr", "show").stdout
    nets = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.add(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_subnets()
    start = os.getpid() % 200
    for i in range(200):
        net = ipaddress.IPv4Network(f"10.{200 + (start + i) % 50}.{(start * 7 + i) % 250}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free private /24 for the test network")


@dataclass
class Host:
    """One host: a network namespace, its address on the bridge and a directory of its own."""

    lan: Lan
    name: str
    netns: str
    veth: str  # the root side of the host's veth pair (the host side is named ``eth0``)
    address: str
    dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: Sequence[str], *, user: str | None = None) -> list[str]:
        """``argv`` run in this host's namespace (as ``user`` if given)."""
        prefix = ["ip", "netns", "exec", self.netns]
        if user is not None:
            prefix += ["runuser", "-u", user, "--"]
        return [*prefix, *argv]

    def start(
        self,
        argv: Sequence[str],
        log_name: str,
        *,
        user: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process on this host, its output in ``<host dir>/<log_name>.log``."""
        log = (self.dir / f"{log_name}.log").open("ab")
        proc = subprocess.Popen(
            self.command(argv, user=user), stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=cwd, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, user: str | None = None, timeout: float = 60) -> str:
        return subprocess.run(
            self.command(argv, user=user), check=True, capture_output=True, text=True,
            timeout=timeout,
        ).stdout  # fmt: skip

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """The host dies: every process in its namespace is killed (SIGKILL), its link goes
        down."""
        self.link(up=False)
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def signal_all(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process of the host (``SIGSTOP`` freezes it where it is,
        ``SIGCONT`` lets it go on)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def link(self, *, up: bool) -> None:
        """Take the host's network link down (a partition) or up again."""
        _ip("link", "set", self.veth, "up" if up else "down")

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Lan:
    """``with Lan(base_dir) as lan: db1 = lan.host("db1")`` (see the module docstring)."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        base_dir.mkdir(parents=True, exist_ok=True)
        for parent in (base_dir, *base_dir.parents):  # postgres must reach the hosts' dirs
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
        self.tag = f"{os.getpid() % 100000}x{next(_lans)}"
        self.bridge = f"ykb{self.tag}"[:15]
        self.net = _free_subnet()
        self._addresses = self.net.hosts()
        self.gateway = str(next(self._addresses))  # the root namespace: the test's side
        self.hosts: dict[str, Host] = {}
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.net.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def host(self, name: str) -> Host:
        n = len(self.hosts) + 1
        netns = f"ykt{self.tag}-{name}"
        veth = f"ykv{self.tag}{n}"[:15]
        address = str(next(self._addresses))
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        for args in (
            ("addr", "add", f"{address}/{self.net.prefixlen}", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("netns", "exec", netns, "ip", *args)
        d = self.base_dir / name
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "postgres", "postgres")
        host = Host(self, name, netns, veth, address, d)
        self.hosts[name] = host
        return host

    def spare_address(self) -> str:
        """An address of the subnet that no host has: a floating (virtual) address."""
        return str(next(self._addresses))

    def close(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.kill()
            _ip("netns", "del", host.netns, check=False)
            _ip("link", "del", host.veth, check=False)
        _ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(what: str, probe: object, timeout: float = 60.0, every: float = 0.2) -> float:
    """Wait until ``probe()`` is true; the seconds it took. Raises TimeoutError."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if probe():  # type: ignore[operator]
                return time.monotonic() - started
        except Exception:
            pass
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


# --- etcd ------------------------------------------------------------------------------------


def start_etcd(hosts: Sequence[Host]) -> None:
    """A 3.4 etcd cluster, one member per host (client port 2379, peer port 2380)."""
    cluster = ",".join(f"{h.name}=http://{h.address}:2380" for h in hosts)
    for h in hosts:
        data = h.dir / "etcd"
        h.start(
            ["etcd", "--name", h.name, "--data-dir", str(data),
             "--listen-client-urls", f"http://{h.address}:2379",
             "--advertise-client-urls", f"http://{h.address}:2379",
             "--listen-peer-urls", f"http://{h.address}:2380",
             "--initial-advertise-peer-urls", f"http://{h.address}:2380",
             "--initial-cluster", cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", f"ykt-{h.lan.tag}",
             "--heartbeat-interval", "100", "--election-timeout", "1000"],
            "etcd",
        )  # fmt: skip
    for h in hosts:
        wait_for(
            f"etcd on {h.name}", lambda h=h: http_status(f"http://{h.address}:2379/health") == 200
        )


# --- PostgreSQL under Patroni ----------------------------------------------------------------

SUPERUSER_PASSWORD = "ykt-test-superuser"
REPLICATION_PASSWORD = "ykt-test-replication"
PATRONI_TTL = 10


def start_patroni(host: Host, etcd: Sequence[Host], *, synchronous: bool = True) -> None:
    """PostgreSQL managed by Patroni on ``host`` (REST API on 8008, PostgreSQL on 5432),
    the cluster's state in ``etcd``. The first to start bootstraps the cluster (``initdb``),
    the others join it as streaming replicas. ``synchronous``: Patroni's synchronous mode
    (a commit returns once a replica has it)."""
    net = str(host.lan.net)
    conf = {
        "scope": f"ykt{host.lan.tag}",
        "name": host.name,
        "log": {"level": "INFO"},
        "restapi": {"listen": f"{host.address}:8008", "connect_address": f"{host.address}:8008"},
        "etcd3": {"hosts": [f"{h.address}:2379" for h in etcd]},
        "bootstrap": {
            "dcs": {
                "ttl": PATRONI_TTL, "loop_wait": 1, "retry_timeout": 3,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": synchronous,
                "postgresql": {
                    "use_pg_rewind": True,
                    "parameters": {"wal_level": "replica", "hot_standby": "on",
                                   "max_wal_senders": 10, "max_replication_slots": 10,
                                   "wal_log_hints": "on", "max_connections": 200},
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"{host.address}:5432",
            "connect_address": f"{host.address}:5432",
            "data_dir": str(host.dir / "pgdata"),
            "bin_dir": str(PG_BIN),
            "pgpass": str(host.dir / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                "replication": {"username": "replicator", "password": REPLICATION_PASSWORD},
                "rewind": {"username": "postgres", "password": SUPERUSER_PASSWORD},
            },
            # a client host that died (a balancer) holds no session's locks for long: its
            # dead connections are found by TCP keepalive in about 11 s, not the system's 2 h
            "parameters": {"unix_socket_directories": str(host.dir), "tcp_keepalives_idle": 5,
                           "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3},
            "pg_hba": [
                "local all all trust",
                f"host replication replicator {net} scram-sha-256",
                f"host all all {net} scram-sha-256",
            ],
        },
    }  # fmt: skip
    path = host.dir / "patroni.yml"
    path.write_text(json.dumps(conf, indent=1))  # JSON is YAML
    shutil.chown(path, "postgres", "postgres")
    host.start(["patroni", str(path)], "patroni", user="postgres")


def patroni_role(host: Host) -> str | None:
    """The role Patroni's REST API reports for ``host`` (``primary``/``replica``), or None."""
    try:
        with urllib.request.urlopen(f"http://{host.address}:8008/patroni", timeout=2) as r:
            info = json.load(r)
    except (OSError, ValueError):
        return None
    if info.get("state") != "running":
        return None
    role = str(info.get("role"))
    return "primary" if role == "master" else role  # Patroni 3.0 still says "master"


def patroni_cluster(host: Host) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{host.address}:8008/cluster", timeout=2) as r:
        return dict(json.load(r))


# --- HAProxy ---------------------------------------------------------------------------------

PG_PORT = 5000
API_PORT = 8080


def start_haproxy(
    host: Host, db: Sequence[Host], api: Sequence[Host], api_port: int
) -> subprocess.Popen[bytes]:
    """HAProxy on ``host``, listening on every address of the host (its own, and the floating
    address while keepalived gives it to this host): PostgreSQL on :data:`PG_PORT` sent to the
    node whose Patroni says it is the primary (``GET /primary`` answers 200 only there; sessions
    to a node marked down are cut, so clients reconnect to the new primary; TCP keepalives
    towards the clients, so the session of a client that vanished is closed within seconds
    instead of holding its transaction's locks until ``timeout client``), the API on
    :data:`API_PORT` balanced over ``api`` nodes checked by ``GET /healthz`` (a connection that
    a node refuses or does not accept within 500 ms is tried on the other, ``option
    redispatch``; a request sent already is never sent twice). Every API request is logged
    (``haproxy.log``: the server it went to, its status and how it ended) with its ``X-Call``
    header, which tests set to tell their requests apart."""
    lines = [
        "global", "  maxconn 2000", "  log stdout format raw local0",
        f"  stats socket {host.dir / 'haproxy.sock'} mode 600 level admin",
        "defaults", "  mode tcp", "  timeout connect 500ms", "  timeout client 60s",
        "  timeout server 60s", "  timeout check 1s", "  log global",
        "listen postgres", f"  bind :{PG_PORT}", "  option httpchk GET /primary",
        # a client that vanished (host dead, network cut) is noticed in about 11 s and its
        # server session closed: PostgreSQL rolls its transaction back and frees its row locks
        "  option clitcpka", "  clitcpka-idle 5s", "  clitcpka-intvl 2s", "  clitcpka-cnt 3",
        "  http-check expect status 200",
        "  default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions",
        *(f"  server {h.name} {h.address}:5432 check port 8008" for h in db),
        "listen api", f"  bind :{API_PORT}", "  mode http", "  balance roundrobin",
        "  option httplog", "  http-request capture req.hdr(X-Call) len 80",
        "  option forwardfor",
        "  option httpchk GET /healthz", "  http-check expect status 200",
        "  retries 2", "  option redispatch 1", "  timeout client 30s", "  timeout server 30s",
        "  default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions",
        *(f"  server {h.name} {h.address}:{api_port} check" for h in api),
    ]  # fmt: skip
    path = host.dir / "haproxy.cfg"
    path.write_text("\n".join(lines) + "\n")
    return host.start(["haproxy", "-db", "-f", str(path)], "haproxy")


def start_keepalived(hosts: Sequence[Host], vip: str, haproxy_pids: Sequence[int]) -> None:
    """keepalived (VRRP only) on each of ``hosts``, their HAProxy's process id beside them:
    the floating address ``vip`` is held by one host at a time, the first while it lives (the
    highest priority), else the next. The hosts speak VRRP to each other by unicast (one
    advertisement a second: a backup takes over about 3.6 s after the holder falls silent, and
    announces the address by gratuitous ARP). A host whose HAProxy process is gone (checked
    every second, twice in a row) gives the address up at once. ``nopreempt``: a holder that
    comes back does not take the address back (one move per fault, not two)."""
    prefix = hosts[0].lan.net.prefixlen
    for n, (h, pid) in enumerate(zip(hosts, haproxy_pids, strict=True)):
        peers = [p.address for p in hosts if p is not h]
        conf = f"""global_defs {{
  router_id {h.name}
  enable_script_security
  script_user root
}}
vrrp_script haproxy_alive {{
  script "/bin/kill -0 {pid}"
  interval 1
  fall 2
  rise 2
}}
vrrp_instance balancer {{
  state BACKUP
  nopreempt
  interface eth0
  virtual_router_id 51
  priority {150 - 10 * n}
  advert_int 1
  unicast_src_ip {h.address}
  unicast_peer {{
    {chr(10).join("    " + p for p in peers).strip()}
  }}
  virtual_ipaddress {{
    {vip}/{prefix} dev eth0
  }}
  track_script {{
    haproxy_alive
  }}
}}
"""
        path = h.dir / "keepalived.conf"
        path.write_text(conf)
        h.start(
            ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
             "--no-syslog", "--use-file", str(path), "--pid", str(h.dir / "keepalived.pid"),
             "--vrrp_pid", str(h.dir / "keepalived-vrrp.pid")],
            "keepalived",
        )  # fmt: skip
        if n == 0:  # the first takes the address before the others start (no election race)
            wait_for(f"{vip} on {h.name}", lambda h=h: holds_address(h, vip), 30)


def holds_address(host: Host, address: str) -> bool:
    """Whether ``address`` is on the host's interface now."""
    out = host.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"], timeout=10)
    return f" {address}/" in out


def haproxy_status(host: Host) -> dict[tuple[str, str], str]:
    """``{(proxy, server): status}`` (``UP``, ``DOWN``, ...) from HAProxy's stats socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(str(host.dir / "haproxy.sock"))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out = {}
    for line in data.decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        cols = line.split(",")
        if cols[1] not in ("FRONTEND", "BACKEND"):
            out[(cols[0], cols[1])] = cols[17].split()[0] if cols[17] else ""
    return out


def haproxy_calls(host: Host) -> dict[str, tuple[str, int, str]]:
    """``{X-Call header: (server, status, termination state)}`` from HAProxy's API log."""
    out = {}
    for m in _HTTPLOG.finditer(host.log("haproxy")):
        out[m["call"]] = (m["server"], int(m["status"]), m["term"])
    return out


_HTTPLOG = re.compile(
    r" (?P<backend>[\w.-]+)/(?P<server>[\w<>.-]+) \S+ (?P<status>-?\d+) \S+ \S+ \S+ "
    r"(?P<term>\S{4}) \S+ \S+ \{(?P<call>[^}]*)\}"
)


# --- the database tier as a whole ------------------------------------------------------------


def database_url(lb: Host | str, database: str = "postgres", driver: str = "postgresql") -> str:
    """A URL through HAProxy's PostgreSQL port on ``lb`` (a balancer host, or the balancers'
    floating address): always the primary."""
    at = lb if isinstance(lb, str) else lb.address
    return f"{driver}://postgres:{SUPERUSER_PASSWORD}@{at}:{PG_PORT}/{database}"


def start_database_tier(
    db: Sequence[Host],
    lb: Host | Sequence[Host],
    api: Sequence[Host] = (),
    api_port: int = 8000,
    vip: str | None = None,
) -> str:
    """etcd on ``db`` and the last balancer host (three members: one host may die), Patroni
    with PostgreSQL on ``db`` (the first bootstraps and is the primary; the others are
    synchronous replicas), HAProxy on each balancer host once it sends PostgreSQL clients to
    the primary only, and database ``ykt`` created. Several balancer hosts share the floating
    address ``vip`` (:func:`start_keepalived`, the first holds it). Returns the address the
    clients use: ``vip``, or the one balancer's own."""
    import psycopg

    lbs = [lb] if isinstance(lb, Host) else list(lb)
    if len(lbs) > 1 and vip is None:
        raise ValueError("several balancer hosts need a floating address")
    etcd = [*db, lbs[-1]]
    start_etcd(etcd)
    start_patroni(db[0], etcd)
    wait_for(f"{db[0].name} primary", lambda: patroni_role(db[0]) == "primary", 90)
    for h in db[1:]:
        start_patroni(h, etcd)

    def replicas_in_sync() -> bool:
        members = patroni_cluster(db[0])["members"]
        sync = {m["name"] for m in members if m["role"] == "sync_standby"}
        return bool(sync) and all(m["state"] == "running" for m in members)

    wait_for("a synchronous replica", replicas_in_sync, 90)
    pids = [start_haproxy(h, db, api, api_port).pid for h in lbs]

    def on_primary(h: Host) -> bool:
        status = haproxy_status(h)
        return {s for (px, s), st in status.items() if px == "postgres" and st == "UP"} == {
            db[0].name
        }

    for h in lbs:
        wait_for(f"HAProxy on {h.name} on the primary", lambda h=h: on_primary(h))
    address = lbs[0].address
    if vip is not None:
        start_keepalived(lbs, vip, pids)
        address = vip
    with psycopg.connect(database_url(address), autocommit=True) as conn:
        conn.execute("CREATE DATABASE ykt")
    return address
