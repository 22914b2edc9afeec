"""Which event loop a service's main coroutine runs on (``weir.core.event_loop``)."""

from __future__ import annotations

import asyncio
import sys
import warnings

import pytest
import uvloop

from weir.core.config import load_settings
from weir.core.errors import ConfigError
from weir.core.event_loop import loop_factory, run


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_when_it_is_installed() -> None:
    assert run(_loop_module(), loop="auto").startswith("uvloop")
    assert run(_loop_module(), loop="uvloop").startswith("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop


def test_asyncio_runs_on_the_standard_library_loop() -> None:
    assert run(_loop_module(), loop="asyncio").startswith("asyncio")
    assert loop_factory("asyncio") is None


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert run(_loop_module(), loop="auto").startswith("asyncio")
    main = _loop_module()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refused coroutine is closed, not left unawaited
        with pytest.raises(ConfigError, match="WEIR_EVENT_LOOP=uvloop, but uvloop is not"):
            run(main, loop="uvloop")
    assert main.cr_frame is None  # closed


def test_the_setting_is_read_from_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().event_loop == "auto"
    monkeypatch.setenv("WEIR_EVENT_LOOP", "asyncio")
    assert load_settings().event_loop == "asyncio"
    monkeypatch.setenv("WEIR_EVENT_LOOP", "tokio")
    with pytest.raises(ConfigError, match="event_loop"):
        load_settings()
