"""``weir broker``: fetch, start, stop and report the local single-node Kafka broker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from weir.commands._options import EXIT_FAILURE, ConfigOption, settings_from
from weir.commands._output import JsonOption, print_json
from weir.core.errors import ConfigError

app = typer.Typer(help="Run the local single-node Kafka broker (KRaft).", no_args_is_help=True)
out = Console(soft_wrap=True)  # lines stay whole in pipes


def _broker(config: Path | None, *, secure: bool = False) -> Any:
    from weir.topics.broker import LocalBroker

    settings = settings_from(config)
    if secure:
        settings = settings.model_copy(
            update={"broker": settings.broker.model_copy(update={"secure": True})}
        )
    if not settings.uses_local_broker:
        raise ConfigError(
            f"WEIR_KAFKA_BOOTSTRAP points at {settings.kafka_bootstrap}; 'weir broker' manages"
            " only the local broker (unset it to use the local one)"
        )
    return LocalBroker(settings)


@app.command("start")
def broker_start(
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Serve a SASL_SSL listener (SCRAM users and a CA generated in the state"
            " directory; same as WEIR_BROKER_SECURE=true) and print how clients connect.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Fetch Kafka from Maven Central (once), start it on 127.0.0.1 and wait until it serves."""
    started = time.monotonic()
    broker = _broker(config, secure=secure)
    status = broker.start()
    out.print(
        f"kafka {status.version} running (pid {status.pid}) at {status.bootstrap}"
        f" in {time.monotonic() - started:.1f}s; logs: {status.log_file}"
    )
    if broker.security is not None:
        out.print("clients connect with (the password stays in its file):", highlight=False)
        for key, value in broker.client_environment().items():
            out.print(f"export {key}={value}", highlight=False, soft_wrap=True)


@app.command("stop")
def broker_stop(config: ConfigOption = None) -> None:
    """Stop the local broker (no-op when it is not running)."""
    _broker(config).stop()
    out.print("kafka stopped")


@app.command("status")
def broker_status(as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Say whether the local broker runs, where, and where its data and logs are (exit 1 if
    it does not run)."""
    status = _broker(config).status()
    if as_json:
        print_json(status)
        if not status.running:
            raise typer.Exit(EXIT_FAILURE)
        return
    state = "[green]running[/]" if status.running else "[red]stopped[/]"
    out.print(f"kafka {status.version}: {state} pid={status.pid} bootstrap={status.bootstrap}")
    out.print(f"data: {status.data_dir}\nlogs: {status.log_file}")
    if not status.running:
        raise typer.Exit(1)
