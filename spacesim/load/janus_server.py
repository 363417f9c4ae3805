"""Janus in a network namespace of its own, reached over a veth pair: for load tests.

Janus never gathers loopback ICE candidates (FACTS.md), so a Janus on 127.0.0.1 cannot
carry media to a swarm on the same machine. `up` creates a namespace ``NAME`` with a
veth pair (``HOST_IF`` 10.213.K.1/30 on this side, ``NS_IF`` 10.213.K.2/30 inside),
sets ``accept_local=1`` (the kernel otherwise drops packets whose source address is
local, as both ends of the pair are), writes a Janus configuration restricted to that
interface (``ice_enforce_list``, the HTTP API on the namespace's address, only the
VideoRoom and AudioBridge plugins and the HTTP transport), starts ``janus`` inside
``ip netns exec`` and waits for its ``GET /janus/info``. `down` stops it and removes
the namespace (the veth pair goes with it). Every packet stays on this machine.

State (pid, addresses, interfaces, URL) is kept in ``STATE_ROOT/NAME/state.json`` so
`spacesim load --target janus://…` can find the process whose CPU and packets it reads
from ``/proc`` (`JanusMeter`). Root is needed
(namespaces, veth); the Janus executable comes from `spacesim.deps.ensure`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spacesim import deps

__all__ = [
    "DEFAULT_NAME",
    "STATE_ROOT",
    "JanusError",
    "JanusInstance",
    "JanusMeter",
    "down",
    "find",
    "janus_in_netns",
    "netns_down",
    "netns_link",
    "netns_up",
    "up",
    "veth_names",
]

DEFAULT_NAME = "spacesim-janus"
STATE_ROOT = Path(os.environ.get("SPACESIM_JANUS_STATE", "/tmp/spacesim-janus"))
HTTP_PORT = 8088
START_TIMEOUT = 20.0
_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
_PLUGINS_KEPT = ("libjanus_videoroom.so", "libjanus_audiobridge.so")
_TRANSPORTS_KEPT = ("libjanus_http.so",)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Janus processes this process started, by namespace (`down` reaps them).
_started: dict[str, subprocess.Popen[bytes]] = {}


class JanusError(RuntimeError):
    """Janus or its namespace could not be set up; the message says which step failed."""


@dataclass(frozen=True)
class JanusInstance:
    """A running Janus in its namespace: what `up` started."""

    name: str
    pid: int
    host_ip: str  # this side of the veth pair (the swarm's ICE address)
    ns_ip: str  # Janus's address inside the namespace
    host_if: str
    ns_if: str
    port: int
    workdir: str

    @property
    def url(self) -> str:
        """The target URL for `spacesim load --target` (VideoRoom)."""
        return f"janus://{self.ns_ip}:{self.port}/janus?plugin=videoroom"

    @property
    def http(self) -> str:
        return f"http://{self.ns_ip}:{self.port}/janus"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise JanusError(f"{' '.join(cmd)}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def veth_names(name: str, index: int) -> tuple[str, str, str, str]:
    if not 0 <= index <= 255:
        raise JanusError(f"index must be 0..255, got {index}")
    # Interface names are at most 15 characters.
    return f"sj{index}h", f"sj{index}n", f"10.213.{index}.1", f"10.213.{index}.2"


def _config(workdir: Path, ns_if: str, ns_ip: str, port: int) -> Path:
    """Janus's configuration folder: only what a load test needs, on the veth only."""
    conf = workdir / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    plugins = sorted(p.name for p in (_LIB / "plugins").glob("*.so") if p.name not in _PLUGINS_KEPT)
    transports = sorted(
        p.name for p in (_LIB / "transports").glob("*.so") if p.name not in _TRANSPORTS_KEPT
    )
    loggers = sorted(p.name for p in (_LIB / "loggers").glob("*.so"))
    (conf / "janus.jcfg").write_text(
        "general: {\n"
        f'  configs_folder = "{conf}"\n'
        f'  plugins_folder = "{_LIB / "plugins"}"\n'
        f'  transports_folder = "{_LIB / "transports"}"\n'
        f'  events_folder = "{_LIB / "events"}"\n'
        f'  loggers_folder = "{_LIB / "loggers"}"\n'
        "  debug_level = 3\n"
        "  session_timeout = 60\n"
        '  server_name = "spacesim-janus"\n'
        "}\n"
        "media: {\n"
        '  rtp_port_range = "20000-60000"\n'
        "}\n"
        "nat: {\n"
        f'  ice_enforce_list = "{ns_if}"\n'
        "  ignore_mdns = true\n"
        "}\n"
        f'plugins: {{\n  disable = "{",".join(plugins)}"\n}}\n'
        f'transports: {{\n  disable = "{",".join(transports)}"\n}}\n'
        f'loggers: {{\n  disable = "{",".join(loggers)}"\n}}\n'
        "events: {\n  broadcast = false\n}\n"
    )
    (conf / "janus.transport.http.jcfg").write_text(
        "general: {\n"
        '  json = "compact"\n'
        '  base_path = "/janus"\n'
        "  http = true\n"
        f"  port = {port}\n"
        f'  ip = "{ns_ip}"\n'
        "  https = false\n"
        "}\n"
        "admin: {\n  admin_http = false\n  admin_https = false\n}\n"
        "cors: {\n}\n"
    )
    (conf / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    (conf / "janus.plugin.audiobridge.jcfg").write_text("general: {\n}\n")
    return conf


def netns_up(name: str, host_if: str, ns_if: str, host_ip: str, ns_ip: str) -> None:
    _run("ip", "netns", "add", name)
    _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    _run("ip", "link", "set", ns_if, "netns", name)
    _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
    _run("ip", "link", "set", host_if, "up")
    ns = ("ip", "netns", "exec", name)
    _run(*ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
    _run(*ns, "ip", "link", "set", ns_if, "up")
    _run(*ns, "ip", "link", "set", "lo", "up")
    for iface in ("all", host_if):
        _run("sysctl", "-qw", f"net.ipv4.conf.{iface}.accept_local=1")
    for iface in ("all", ns_if):
        _run(*ns, "sysctl", "-qw", f"net.ipv4.conf.{iface}.accept_local=1")
    # No IPv6 on the pair: no router solicitations or DAD chatter, and Janus gathers
    # only the IPv4 candidate.
    _run("sysctl", "-qw", f"net.ipv6.conf.{host_if}.disable_ipv6=1", check=False)
    _run(*ns, "sysctl", "-qw", f"net.ipv6.conf.{ns_if}.disable_ipv6=1", check=False)


def netns_down(name: str, host_if: str) -> None:
    _run("ip", "link", "del", host_if, check=False)
    _run("ip", "netns", "del", name, check=False)


def netns_link(
    a: str, b: str, if_a: str, if_b: str, ip_a: str, ip_b: str, routes: tuple[str, str] = ("", "")
) -> None:
    """A veth pair between namespaces `a` and `b` (`ip_a`/30 in a, `ip_b`/30 in b), each
    end set up as `netns_up` sets its own (``accept_local``, no IPv6); `routes` are
    networks (CIDR, "" for none) that a, then b, reach through the other end (e.g. the
    other namespace's own veth to this one). Removed with either namespace."""
    _run("ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b)
    for ns, iface, ip, route, via in (
        (a, if_a, ip_a, routes[0], ip_b),
        (b, if_b, ip_b, routes[1], ip_a),
    ):
        _run("ip", "link", "set", iface, "netns", ns)
        cmd = ("ip", "netns", "exec", ns)
        _run(*cmd, "ip", "addr", "add", f"{ip}/30", "dev", iface)
        _run(*cmd, "ip", "link", "set", iface, "up")
        _run(*cmd, "sysctl", "-qw", f"net.ipv4.conf.{iface}.accept_local=1")
        _run(*cmd, "sysctl", "-qw", f"net.ipv6.conf.{iface}.disable_ipv6=1", check=False)
        if route:
            _run(*cmd, "ip", "route", "add", route, "via", via)


def _info(http: str, timeout: float = 2.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"{http}/info", timeout=timeout) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and ") Z " not in stat.read_text()


def up(
    name: str = DEFAULT_NAME, index: int = 0, port: int = HTTP_PORT, debug_level: int = 3
) -> JanusInstance:
    """Start Janus in namespace `name` (10.213.`index`.0/30); its `JanusInstance`.

    An instance of that name already running is stopped first. Fails with `JanusError`
    (namespace, veth, Janus or its HTTP API), having removed what it created.
    """
    janus = deps.ensure("janus")
    host_if, ns_if, host_ip, ns_ip = veth_names(name, index)
    down(name)
    workdir = STATE_ROOT / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    conf = _config(workdir, ns_if, ns_ip, port)
    netns_down(name, host_if)  # leftovers of a crashed run
    try:
        netns_up(name, host_if, ns_if, host_ip, ns_ip)
    except JanusError:
        netns_down(name, host_if)
        raise
    log = open(workdir / "janus.log", "wb")  # noqa: SIM115 - Janus writes it until down()
    cmd = ["ip", "netns", "exec", name, janus, "-F", str(conf), "-C",
           str(conf / "janus.jcfg"), "-d", str(debug_level), "-o"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    _started[name] = proc
    inst = JanusInstance(name, proc.pid, host_ip, ns_ip, host_if, ns_if, port, str(workdir))
    (workdir / "state.json").write_text(json.dumps(asdict(inst), indent=2) + "\n")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            tail = (workdir / "janus.log").read_text(errors="replace")[-2000:]
            down(name)
            raise JanusError(f"janus exited {proc.returncode}: {tail}")
        try:
            info = _info(inst.http, 1.0)
            if info.get("janus") == "server_info":
                return inst
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            down(name)
            raise JanusError(f"janus did not answer {inst.http}/info within {START_TIMEOUT} s")
        time.sleep(0.1)


def find(name: str | None = None, host: str | None = None) -> JanusInstance | None:
    """A running instance `up` started: by namespace `name`, or by Janus's address."""
    if not STATE_ROOT.is_dir():
        return None
    for state in sorted(STATE_ROOT.glob("*/state.json")):
        try:
            inst = JanusInstance(**json.loads(state.read_text()))
        except (ValueError, TypeError):
            continue
        wanted = (name is None or inst.name == name) and (host is None or inst.ns_ip == host)
        if wanted and _alive(inst.pid):
            return inst
    return None


def down(name: str = DEFAULT_NAME) -> bool:
    """Stop Janus and remove the namespace and veth pair; False if nothing was running."""
    state = STATE_ROOT / name / "state.json"
    found = False
    if state.is_file():
        try:
            inst = JanusInstance(**json.loads(state.read_text()))
        except (ValueError, TypeError):
            inst = None
        if inst is not None:
            found = _stop(inst.pid)
            netns_down(inst.name, inst.host_if)
        state.unlink(missing_ok=True)
    proc = _started.pop(name, None)
    if proc is not None:  # ours: reap it (`_stop` has signalled it)
        found = _stop(proc.pid) or found
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    if Path(f"/run/netns/{name}").exists():
        _run("ip", "netns", "del", name, check=False)
        found = True
    return found


def _stop(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM the process group `up` started (``ip netns exec`` execs janus), then KILL."""
    if not _alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


@contextlib.contextmanager
def janus_in_netns(name: str = DEFAULT_NAME, index: int = 0, **kw: Any) -> Iterator[JanusInstance]:
    """`up` for the block, `down` after it (tests, benchmarks)."""
    inst = up(name, index, **kw)
    try:
        yield inst
    finally:
        down(name)


class JanusMeter:
    """Janus's CPU (``/proc/PID/stat`` utime + stime, all its threads) and the UDP
    datagrams it sent (``/proc/PID/net/snmp`` ``Udp: OutDatagrams``, which counts the
    process's own network namespace: Janus is the only thing in it that sends).

    Those datagrams are the RTP packets it forwarded plus its RTCP and STUN (consent)
    packets -- a few percent more than the RTP alone with lite listeners; the HTTP API's
    TCP is not counted. The kernel keeps the counts, at no cost to Janus.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15 (proc(5))
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def packets(self) -> int:
        lines = [ln.split() for ln in Path(f"/proc/{self.pid}/net/snmp").read_text().splitlines()]
        names, values = (ln for ln in lines if ln and ln[0] == "Udp:")
        return int(values[names.index("OutDatagrams")])
