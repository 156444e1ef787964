"""redis-server processes owned by a test: a plain server, a Cluster of three primaries, and a
primary watched by one Sentinel, each on free ports, stopped by the caller."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(1000):
        port = random.randrange(20_000, 50_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start(port: int, *args: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start redis-server on ``port`` (no persistence) and wait until it answers PING."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    deadline = time.monotonic() + 10  # bounded wait for the server to accept connections
    while time.monotonic() < deadline:
        if _answers(port):
            return proc
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"redis-server on port {port} did not start")


def start_cluster(workdir: Path) -> tuple[list[int], list[subprocess.Popen[bytes]]]:
    """Three primaries sharing the 16,384 slots; returns their ports and processes."""
    ports = [_free_cluster_port() for _ in range(3)]
    procs = [start(p, "--cluster-enabled", "yes", "--cluster-config-file",
                   f"nodes-{p}.conf", "--dir", str(workdir), cwd=workdir) for p in ports]
    subprocess.run(["redis-cli", "--cluster", "create",
                    *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                    "--cluster-yes"], check=True, capture_output=True, timeout=60)
    _wait_until_settled(ports)
    return ports, procs


def _cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], check=False,
                          capture_output=True, text=True, timeout=10).stdout


def _wait_until_settled(ports: list[int]) -> None:
    """Wait (bounded) until every node says the cluster is ok, knows every node and has the
    same slot map: ``create`` returns once the slots are assigned, and the nodes learn each
    other's by gossip afterwards; a client that starts before then meets MOVED replies."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        infos = [_cli(p, "cluster", "info") for p in ports]
        if all("cluster_state:ok" in i and f"cluster_known_nodes:{len(ports)}" in i
               and "cluster_slots_ok:16384" in i for i in infos):
            maps = {tuple(sorted(_cli(p, "cluster", "slots").split())) for p in ports}
            if len(maps) == 1:
                return
        time.sleep(0.1)
    raise RuntimeError("the Redis Cluster did not settle within 60 s")


def start_sentinel(workdir: Path, service: str) -> tuple[int, list[subprocess.Popen[bytes]]]:
    """A primary and one Sentinel monitoring it as ``service``; returns the Sentinel's port."""
    primary, sentinel = free_port(), free_port()
    procs = [start(primary)]
    conf = workdir / "sentinel.conf"
    conf.write_text(f"sentinel monitor {service} 127.0.0.1 {primary} 1\n")
    procs.append(subprocess.Popen(["redis-server", str(conf), "--sentinel", "--port",
                                   str(sentinel), "--bind", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _answers(sentinel):
        time.sleep(0.02)
    return sentinel, procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()
