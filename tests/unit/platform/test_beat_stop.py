"""A stopping beat exits within its bound even when its tick or its release of the lead waits
on a backend that died with it (a SIGKILLed standalone takes its PostgreSQL and Redis along;
in a CI run its beat outlived it by more than 45 s)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from switchyard.roles import beat


def test_the_signal_asks_the_loop_to_stop_and_ends_the_process_if_it_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    stop = asyncio.Event()

    beat._stop_within(stop, 0.05)

    assert stop.is_set()  # the loop ends its tick and lets go of the lead...
    deadline = time.monotonic() + 5
    while not exits:  # ...or the process ends when it has not within the bound
        assert time.monotonic() < deadline, "the process was not ended"
        time.sleep(0.01)
    assert exits == [0]
