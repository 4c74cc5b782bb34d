"""A 3-node nats-server cluster with JetStream on 127.0.0.1 free ports (client ports and cluster
routes), each node with its own store directory, for tests of a replicated deployment."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats

from switchyard.processes import Managed, spawn, tool, wait_port

CLUSTER_NAME = "switchyard-test"


@dataclass
class Node:
    name: str
    port: int
    route_port: int
    store: Path
    proc: Managed | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class NatsCluster:
    nodes: list[Node]
    log_dir: Path
    stopped: list[Node] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def env_url(self) -> str:
        """The value of SWITCHYARD_NATS_URL: every node, comma-separated."""
        return ",".join(self.urls)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def _argv(self, node: Node) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{n.route_port}" for n in self.nodes if n is not node)
        return [tool("nats-server"), "-a", "127.0.0.1", "-p", str(node.port), "-n", node.name,
                "-js", "-sd", str(node.store), "--cluster_name", CLUSTER_NAME,
                "--cluster", f"nats://127.0.0.1:{node.route_port}", "--routes", routes]

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.store.mkdir(parents=True, exist_ok=True)
            node.proc = spawn(node.name, self._argv(node), self.log_dir)
        for node in self.nodes:
            wait_port(node.proc, node.port, 15)
        asyncio.run(self.wait_jetstream(timeout))

    async def wait_jetstream(self, timeout: float) -> None:
        """Until the cluster has a JetStream meta leader (account info answers through every node)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while True:
                try:
                    nc = await nats.connect(node.url, allow_reconnect=False, connect_timeout=2)
                    try:
                        await nc.jetstream().account_info()
                        break
                    finally:
                        await nc.close()
                except Exception as exc:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"JetStream of {node.name} not ready in {timeout}s; see {self.log_dir}") from exc
                    await asyncio.sleep(0.2)

    def kill(self, name: str) -> None:
        """SIGKILL: no lame-duck mode, no leadership handed over."""
        node = self.node(name)
        node.proc.kill()
        self.stopped.append(node)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.stop(timeout=5)


def free_ports(n: int) -> list[int]:
    """n different free ports (all held open while they are picked, so none comes twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def make_cluster(base: Path, size: int = 3, ports: list[int] | None = None) -> NatsCluster:
    """`ports`: 2 * size free ports (client and route port of each node); picked here if None."""
    ports = ports or free_ports(2 * size)
    nodes = [Node(f"n{i + 1}", ports[2 * i], ports[2 * i + 1], base / f"js-n{i + 1}") for i in range(size)]
    return NatsCluster(nodes, base / "log")
