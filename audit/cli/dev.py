"""`ffaudit dev`: local Elasticsearch and PostgreSQL for development and CI."""

from __future__ import annotations

import sys
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
@click.option("--heap", default="512m", show_default=True, help="JVM -Xms/-Xmx.")
@click.option(
    "--java-home",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="JDK to run on [default: a Java 17 (or 21) found on the machine].",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True)
@click.pass_context
def elasticsearch(
    ctx: click.Context,
    port: int,
    runtime_dir: Path,
    version: str,
    heap: str,
    java_home: Path | None,
    timeout: float,
) -> None:
    """A single-node Elasticsearch on 127.0.0.1 (integ-test-zip from Maven Central)."""
    ctx.obj = es.ElasticsearchConfig(
        version=version,
        port=port,
        runtime_dir=runtime_dir.absolute(),
        heap=heap,
        java_home=java_home,
        timeout_s=timeout,
    )


@elasticsearch.command("up")
@click.pass_obj
def es_up(config: es.ElasticsearchConfig) -> None:
    """Start it unless it is running and healthy; print its URL."""
    click.echo(es.up(config))


@elasticsearch.command("down")
@click.pass_obj
def es_down(config: es.ElasticsearchConfig) -> None:
    """Stop the node `up` started."""
    es.down(config)


@elasticsearch.command("status")
@click.pass_obj
def es_status(config: es.ElasticsearchConfig) -> None:
    """Exit 0 when the node is healthy (yellow or green), 1 otherwise."""
    sys.exit(0 if es.status(config) else 1)


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
