"""`ffaudit dev`: local Elasticsearch and PostgreSQL for development and CI."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from audit.devtools import elasticsearch as es
from audit.devtools import postgres as pg

_RUNTIME = click.Path(file_okay=False, path_type=Path)


@click.group()
def dev() -> None:
    """Run the backing servers locally (`up` prints the URL on stdout)."""


@dev.group("elasticsearch")
@click.option("--port", type=click.IntRange(1, 65535), default=9200, show_default=True)
@click.option(
    "--runtime-dir",
    type=_RUNTIME,
    default=Path("/tmp/ffaudit-es"),  # noqa: S108  (a dev server's scratch space)
    show_default=True,
    help="Installation, data, logs, snapshots and the pid file.",
)
@click.option("--version", "version", default=es.ES_VERSION, show_default=True)
@click.option(
    "--heap",
    default=None,
    help=f"JVM -Xms/-Xmx of each node [default: {es.SINGLE_NODE_HEAP}; "
    f"{es.CLUSTER_NODE_HEAP} per node of a cluster].",
)
@click.option(
    "--java-home",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="JDK to run on [default: a Java 17 (or 21) found on the machine].",
)
@click.option(
    "--transport-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="A cluster's first transport port, the next nodes' following it [default: --port + 100].",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True)
@click.pass_context
def elasticsearch(
    ctx: click.Context,
    port: int,
    runtime_dir: Path,
    version: str,
    heap: str | None,
    java_home: Path | None,
    transport_port: int | None,
    timeout: float,
) -> None:
    """A single-node Elasticsearch on 127.0.0.1 (integ-test-zip from Maven Central), or a
    cluster of several (`up --nodes 3`).

    A runtime directory where `up --nodes N` started a cluster records its layout: `down`,
    `status`, `node` and a later `up` without --nodes act on that cluster.
    """
    ctx.obj = es.ElasticsearchConfig(
        version=version,
        port=port,
        runtime_dir=runtime_dir.absolute(),
        heap=heap,
        java_home=java_home,
        timeout_s=timeout,
        transport_port=transport_port,
    )


@elasticsearch.command("up")
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=None,
    help="Nodes (all master-eligible data nodes) on consecutive ports from --port "
    "[default: the layout recorded in --runtime-dir, else 1].",
)
@click.pass_obj
def es_up(config: es.ElasticsearchConfig, nodes: int | None) -> None:
    """Start it unless it is running and healthy (a cluster: green); print its URL, or
    every node's URL one a line, the first node's first."""
    config = es.recorded(config) if nodes is None else replace(config, nodes=nodes)
    es.up(config)
    for url in config.urls:
        click.echo(url)


@elasticsearch.command("down")
@click.pass_obj
def es_down(config: es.ElasticsearchConfig) -> None:
    """Stop the node (every node of the cluster) `up` started."""
    es.down(es.recorded(config))


@elasticsearch.command("status")
@click.pass_obj
def es_status(config: es.ElasticsearchConfig) -> None:
    """Exit 0 when it is healthy (yellow or green; a cluster with every node joined), 1
    otherwise."""
    sys.exit(0 if es.status(es.recorded(config)) else 1)


@elasticsearch.group("node")
def es_node() -> None:
    """One node of a cluster `up --nodes N` started, by number (1 to N), for fault drills."""


@es_node.command("stop")
@click.argument("number", type=click.IntRange(min=1))
@click.option("--kill", is_flag=True, help="SIGKILL its process group (a crash), no clean stop.")
@click.pass_obj
def es_node_stop(config: es.ElasticsearchConfig, number: int, kill: bool) -> None:
    """Stop node NUMBER (SIGTERM, or SIGKILL with --kill)."""
    config = es.recorded(config)
    if kill:
        es.kill_node(config, number)
    else:
        es.stop_node(config, number)


@es_node.command("start")
@click.argument("number", type=click.IntRange(min=1))
@click.pass_obj
def es_node_start(config: es.ElasticsearchConfig, number: int) -> None:
    """Start node NUMBER again and wait until it has joined the cluster; print its URL."""
    click.echo(es.start_node(es.recorded(config), number))


@dev.group("postgres")
@click.option("--port", type=click.IntRange(1, 65535), default=55432, show_default=True)
@click.option(
    "--runtime-dir",
    type=_RUNTIME,
    default=Path("/tmp/ffaudit-pg"),  # noqa: S108  (a dev server's scratch space)
    show_default=True,
    help="Cluster data directory, socket, log.",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True)
@click.pass_context
def postgres(ctx: click.Context, port: int, runtime_dir: Path, timeout: float) -> None:
    """A private PostgreSQL cluster on 127.0.0.1 (Debian's packages), role/db `ffaudit`."""
    ctx.obj = pg.PostgresConfig(port=port, runtime_dir=runtime_dir.absolute(), timeout_s=timeout)


@postgres.command("up")
@click.pass_obj
def pg_up(config: pg.PostgresConfig) -> None:
    """Start it (installing PostgreSQL if needed) unless it is healthy; print its URL."""
    click.echo(pg.up(config))


@postgres.command("down")
@click.pass_obj
def pg_down(config: pg.PostgresConfig) -> None:
    """Stop the cluster `up` started."""
    pg.down(config)


@postgres.command("status")
@click.pass_obj
def pg_status(config: pg.PostgresConfig) -> None:
    """Exit 0 when the `ffaudit` role can log in, 1 otherwise."""
    sys.exit(0 if pg.status(config) else 1)
