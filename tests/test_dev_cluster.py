"""`ffaudit dev elasticsearch` cluster layout, without starting Elasticsearch: ports,
directories, the elasticsearch.yml each node gets, the recorded layout later commands use,
and the refusals that come before anything is installed. (tests/ingest/test_cluster.py
starts a real cluster and crashes its nodes.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from audit.devtools import ProvisioningError
from audit.devtools import elasticsearch as es


def yml(path: Path) -> dict[str, object]:
    """Our elasticsearch.yml: one `key: <JSON>` a line."""
    out: dict[str, object] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(": ")
        out[key] = orjson.loads(value)
    return out


def test_a_single_node_keeps_its_layout(tmp_path: Path) -> None:
    config = es.ElasticsearchConfig(runtime_dir=tmp_path)
    assert config.urls == [config.url] == ["http://127.0.0.1:9200"]
    assert config.jvm_heap == "512m"
    node = config.node(1)
    assert (node.dir, node.pid_file, node.console_log) == (
        tmp_path,
        tmp_path / "elasticsearch.pid",
        tmp_path / "console.log",
    )
    assert node.config_dir == config.home / "config"
    (node.config_dir).mkdir(parents=True)
    (tmp_path / "data").mkdir()
    es._write_config(config, node)
    settings = yml(node.config_dir / "elasticsearch.yml")
    assert settings["discovery.type"] == "single-node"
    assert settings["cluster.name"] == "ffaudit-dev"
    assert "transport.port" not in settings
    assert settings["path.data"] == str(tmp_path / "data")
    with pytest.raises(ProvisioningError):
        config.node(2)


def test_cluster_nodes_get_consecutive_ports_and_their_own_directories(tmp_path: Path) -> None:
    config = es.ElasticsearchConfig(runtime_dir=tmp_path, port=9250, nodes=3)
    assert config.urls == [f"http://127.0.0.1:{p}" for p in (9250, 9251, 9252)]
    assert [n.transport_port for n in config.all_nodes] == [9350, 9351, 9352]
    assert config.jvm_heap == "256m"
    assert config.cluster_name == "ffaudit-dev-9250"
    third = config.node(3)
    assert third.name == "ffaudit-dev-3"
    assert third.dir == tmp_path / "node-3"
    assert third.config_dir == tmp_path / "node-3" / "config"
    explicit = es.ElasticsearchConfig(runtime_dir=tmp_path, port=9250, nodes=3, transport_port=9400)
    assert [n.transport_port for n in explicit.all_nodes] == [9400, 9401, 9402]

    (third.dir / "data").mkdir(parents=True)
    third.config_dir.mkdir()
    es._write_config(config, third)
    first_start = yml(third.config_dir / "elasticsearch.yml")
    assert "discovery.type" not in first_start
    assert first_start["discovery.seed_hosts"] == [f"127.0.0.1:{p}" for p in (9350, 9351, 9352)]
    assert first_start["cluster.initial_master_nodes"] == [f"ffaudit-dev-{n}" for n in (1, 2, 3)]
    assert first_start["transport.port"] == "9352"
    assert first_start["http.port"] == "9252"
    assert first_start["path.data"] == str(third.dir / "data")
    assert first_start["path.repo"] == str(tmp_path / "snapshots")  # shared by all nodes
    # Once the node has joined a cluster (its data directory is not empty), no bootstrapping.
    (third.dir / "data" / "_state").mkdir()
    es._write_config(config, third)
    assert "cluster.initial_master_nodes" not in yml(third.config_dir / "elasticsearch.yml")


def test_later_commands_use_the_layout_up_recorded(tmp_path: Path) -> None:
    plain = es.ElasticsearchConfig(runtime_dir=tmp_path)
    assert es.recorded(plain) == plain
    cluster = es.ElasticsearchConfig(runtime_dir=tmp_path, port=9250, nodes=3, heap="300m")
    es._record_layout(cluster)
    again = es.recorded(plain)
    assert (again.nodes, again.port, again.heap) == (3, 9250, "300m")
    assert again.urls == cluster.urls
    assert [n.transport_port for n in again.all_nodes] == [9350, 9351, 9352]


def test_a_cluster_does_not_start_beside_a_running_single_node(tmp_path: Path) -> None:
    # A live pid (this process) in the single node's pid file: that node "runs".
    (tmp_path / "elasticsearch.pid").write_text(f"{os.getpid()}\n")
    config = es.ElasticsearchConfig(runtime_dir=tmp_path, port=29250, nodes=3)
    with pytest.raises(ProvisioningError, match="another Elasticsearch layout"):
        es.up(config)
    assert not config.home.exists()  # refused before installing anything


def _taken_port_after_a_reserved_one() -> tuple[socket.socket, socket.socket]:
    """A listening socket on port P and a bound, not listening, SO_REUSEADDR socket on P-1.

    The reservation keeps P-1 from any other process (the first node's transport port in the
    test below: CI once had it in use by a stranger) while the probe, which binds with
    SO_REUSEADDR as Elasticsearch does, still finds it free: Linux lets two SO_REUSEADDR
    sockets share a port while neither listens.
    """
    for _ in range(50):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        reserved = socket.socket()
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            reserved.bind(("127.0.0.1", int(taken.getsockname()[1]) - 1))
        except OSError:
            taken.close()
            reserved.close()
            continue
        return taken, reserved
    raise AssertionError("no free port below an ephemeral one in 50 tries")


def test_a_port_in_use_is_refused_before_installing(tmp_path: Path) -> None:
    taken, reserved = _taken_port_after_a_reserved_one()
    with taken, reserved:
        port = int(taken.getsockname()[1])
        # The taken port is the second node's transport port; the first node's is free.
        config = es.ElasticsearchConfig(
            runtime_dir=tmp_path, port=29260, nodes=2, transport_port=port - 1
        )
        with pytest.raises(ProvisioningError, match=f"port {port} of ffaudit-dev-2 is in use"):
            es.up(config)
    assert not config.home.exists()


def test_node_commands_name_a_node_of_the_layout(tmp_path: Path) -> None:
    es._record_layout(es.ElasticsearchConfig(runtime_dir=tmp_path, port=29270, nodes=3))
    argv = [sys.executable, "-m", "audit", "dev", "elasticsearch", "--runtime-dir", str(tmp_path)]
    wrong = subprocess.run(
        [*argv, "node", "stop", "4"], capture_output=True, text=True, check=False
    )
    assert wrong.returncode == 2
    assert "no node 4: the configuration has 3" in wrong.stderr
    # Nothing runs: stopping (or killing) a node of the layout is a no-op, not an error.
    idle = subprocess.run(
        [*argv, "node", "stop", "--kill", "2"], capture_output=True, text=True, check=False
    )
    assert idle.returncode == 0, idle.stderr
    assert "ffaudit-dev-2 is not running" in idle.stderr
    status = subprocess.run([*argv, "status"], capture_output=True, text=True, check=False)
    assert status.returncode == 1
    assert "ffaudit-dev-3 at http://127.0.0.1:29272: not running" in status.stderr
