"""The one hook after a run changed state, whoever changed it (the worker, a cancel, the
dead-letter archive, a hand-back): its followers hear of it (the run's event on Redis), and a
run that became final gives its slot of its tenant's share to the next waiting run
(platform.runs.admission). Both are best effort after the ledger's commit: the ledger is the
truth, followers re-read it when they connect, and the sweeps admit within seconds."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Protocol

from switchyard.platform import events

if TYPE_CHECKING:
    from switchyard.services.container import Services


class ChangedRun(events.RunLike, Protocol):
    @property
    def tenant_id(self) -> uuid.UUID: ...


async def changed(services: Services, run: ChangedRun) -> None:
    """Call once the change is committed."""
    events.publish(services.announcer, services.settings.cache_namespace, run)
    if run.state.final and services.admission is not None:
        await services.admission.try_release(run.tenant_id)
