"""``weir conversation show <id>``: a conversation's stored turns, as its steps see them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from weir.commands._output import JsonOption, print_json, print_table
from weir.core.config import load_settings
from weir.core.errors import ConversationNotFoundError
from weir.streams.conversation_store import read_conversation

__all__ = ["app"]

app = typer.Typer(help="Conversations kept by History steps.", no_args_is_help=True)
out = Console(soft_wrap=True)

Config = Annotated[str | None, typer.Option("--config", "-c", help="TOML settings file.")]


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("show")
def show(
    conversation_id: Annotated[str, typer.Argument(help="The conversation's id.")],
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", "-p", help="Its pipeline (else every one).")
    ] = None,
    as_json: JsonOption = False,
    config: Config = None,
) -> None:
    """The conversation's turns (oldest first), summary and trimming, per step."""
    settings = load_settings(config)
    found = asyncio.run(read_conversation(settings, conversation_id, pipeline=pipeline))
    if not found:
        where = f"pipeline {pipeline!r}" if pipeline else "any pipeline"
        raise ConversationNotFoundError(
            f"no step of {where} holds conversation {conversation_id!r} (it may have expired)"
        )
    if as_json:
        print_json(
            [
                {
                    "conversation_id": conversation_id,
                    "pipeline": name,
                    "step": step,
                    "turns": state.turns,
                    "summary": state.summary,
                    "dropped": state.dropped,
                    "updated_at": state.updated_at,
                }
                for name, step, state in found
            ]
        )
        return
    for name, step, state in found:
        out.print(
            f"conversation {conversation_id} · pipeline {name} · step {step} ·"
            f" {len(state.turns)} turns · {state.dropped} trimmed · updated"
            f" {_when(state.updated_at)} UTC"
        )
        if state.summary:
            out.print(f"summary of trimmed turns: {state.summary}", markup=False)
        table = Table("#", "at (UTC)", "role", "request", "content")
        for n, turn in enumerate(state.turns, 1):
            table.add_row(str(n), _when(turn.at), turn.role, turn.request_id, Text(turn.content))
        print_table(out, table)
