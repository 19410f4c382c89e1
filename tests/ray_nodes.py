"""A real Ray cluster of several nodes on 127.0.0.1, started with ``ray start`` as a user would.

Every node is its own ``ray start --block`` process in a session of its own, with ports of its own
(several raylets share this host), so that one node can be killed alone, all its processes at once
(raylet, object store, workers), as when a machine goes down. ``ray stop`` is never used: it would
stop every Ray process on the host, the test session's own cluster included.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model_servers import free_port

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 150 * 1024 * 1024  # small: the pools of the tests are a few MB


def _node_ports() -> list[str]:
    """Ports that would otherwise default to fixed numbers shared by every node of this host."""
    low = free_port()
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        # worker ports: a range of this node's own, away from the other nodes' ranges
        f"--min-worker-port={low}",
        f"--max-worker-port={low + 40}",
    ]


class LocalCluster:
    """A head node with no CPUs (so that all the work runs on worker nodes) and worker nodes
    added and killed by the test. Each worker node carries a custom resource named after it, so
    that the test knows which nodes the cluster counts as alive."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: it holds Unix sockets
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []
        head = ["--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={self.temp_dir}", "--include-dashboard=false"]
        self.head = self._start("head", head)
        self._wait_until(lambda alive: alive is not None, [self.head], "the head node never answered")

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"ray-{len(self.nodes)}-{name}.log", "w")  # noqa: SIM115 (kept open with the node)
        proc = subprocess.Popen(
            [
                RAY,
                "start",
                "--block",
                "--disable-usage-stats",
                "--node-ip-address=127.0.0.1",
                f"--object-store-memory={OBJECT_STORE_BYTES}",
                *_node_ports(),
                *args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.nodes.append(proc)
        return proc

    def add_worker(self, name: str, num_cpus: int, *, attempts: int = 4) -> subprocess.Popen:
        """A worker node, once the cluster counts it alive. Ray gives a starting raylet a fixed 30 s
        to register (``ray._private.node``), which a busy 2-core machine can miss: a node that gave
        up starting is started again; only one that registered is returned."""
        for _ in range(attempts):
            args = [f"--address={self.address}", f"--num-cpus={num_cpus}", f"--resources={json.dumps({name: 1})}"]
            node = self._start(name, args)
            if self._wait_until(lambda alive: alive is not None and name in alive, [self.head, node], None):
                return node
            self.kill(node)
        raise AssertionError(f"worker node {name} never started: see {self.log_dir}")

    def kill(self, node: subprocess.Popen) -> None:
        """SIGKILL every process of the node at once: no clean shutdown, as when its machine dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=60)

    def alive_resources(self) -> set[str] | None:
        """The resource names of the nodes the cluster's GCS counts as alive, asked from a driver of
        its own; None while the cluster does not answer."""
        probe = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False, configure_logging=False); "
            "print(sorted({r for n in ray.nodes() if n['Alive'] for r in n['Resources']}))"
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", probe], env=self.env, capture_output=True, text=True, timeout=120
            )
        except subprocess.TimeoutExpired:  # a GCS still starting on a busy machine: ask again
            return None
        if done.returncode != 0:
            return None
        return set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))

    def _wait_until(
        self, condition, watched: list[subprocess.Popen], failure: str | None, guard_s: float = 300
    ) -> bool:
        """Poll the cluster until ``condition(alive_resources())``; False (or ``failure`` raised) when
        a watched node process exits first."""
        deadline = time.monotonic() + guard_s  # a guard against a hang, not a condition of a test
        while not condition(self.alive_resources()):
            if any(n.poll() is not None for n in watched) or time.monotonic() > deadline:
                if failure is None:
                    return False
                raise AssertionError(f"{failure}: see {self.log_dir}")
            time.sleep(0.5)
        return True

    def close(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
