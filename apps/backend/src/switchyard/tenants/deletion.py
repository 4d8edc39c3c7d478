"""A tenant's deletion: scheduled with a grace period (cancellable until it is due), then every
trace of the tenant erased by beat, and a tombstone kept.

Scheduling (`schedule`, by the tenant's owner or the platform superuser) records a
`TenantDeletion` due `delete_after` and an audit event; the tenant keeps working until then,
and the owner or the superuser may cancel it (`cancel`). Beat (`Eraser.erase_due`) then, for
each deletion due, in steps that are each safe to repeat (a pass that fails or a beat that
dies is taken up again by the next pass):

1. marks the tenant `deleting`: its tokens, keys and clients get 403 from then on, beat
   schedules nothing more for it;
2. cancels its runs not yet final (a started run stops at its worker's next cancel poll),
   and waits for the started ones to stop (WORKER_CANCEL_POLL_SECONDS and the time a
   cancelled run has to unwind);
3. erases what lives outside PostgreSQL: its objects (the tenant's prefix), its Chroma
   collections (every embedding space), its Neo4j nodes, its Redis keys (every key naming the
   tenant's id), its rows on the `analytics` bind;
4. deletes its rows in every tenant-owned table of the main database, in batches of
   TENANT_DELETION_BATCH_ROWS rows (each its own short transaction, resting
   TENANT_DELETION_REST_RATIO times as long as it took, as retention does, so other
   tenants' requests barely notice), then the users whose only tenant it was, then the tenant
   itself with the tombstone's `finished_at` and what was removed, in one transaction.

The tombstone (`tenant_deletions`: the tenant's id, when, at whose request, the counts) is all
that is left; the superuser lists them (`GET /tenants/deletions`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Table, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from switchyard.db.binds.models import UsageCounterCopy, UsageEvent
from switchyard.db.models import (
    DEFAULT_TENANT_ID,
    Membership,
    Tenant,
    TenantDeletion,
    User,
)
from switchyard.db.tenancy import tenant_owned_tables
from switchyard.documents.graph import graph_of
from switchyard.errors import ConflictError, NotFoundError
from switchyard.platform import audit
from switchyard.platform.runs import changes, ledger, retention
from switchyard.platform.runtime import ABANDON_AFTER_SECONDS
from switchyard.services.container import Services
from switchyard.tenants.repository import TenantsRepository

logger = logging.getLogger(__name__)

# Tables emptied first (the largest, and those others point at with ON DELETE SET NULL: a
# dead letter before its run, runs before their definitions); the rest follow by name.
FIRST: Final = ("dead_letters", "task_runs", "audit_events", "usage_counters")
REDIS_SCAN_COUNT: Final = 1000


def owned_tables() -> list[Table]:
    """Every table of the main database with a `tenant_id`, in the order they are emptied."""
    return sorted(
        tenant_owned_tables(),
        key=lambda t: (FIRST.index(t.name) if t.name in FIRST else len(FIRST), t.name),
    )


# --- Scheduling (the API) ---------------------------------------------------------------------


async def open_deletion(session: AsyncSession, tenant_id: uuid.UUID) -> TenantDeletion | None:
    """The tenant's deletion scheduled or under way, if any."""
    return await session.scalar(
        select(TenantDeletion).where(
            TenantDeletion.target_tenant_id == tenant_id,
            TenantDeletion.cancelled_at.is_(None),
            TenantDeletion.finished_at.is_(None),
        )
    )


async def schedule(
    session: AsyncSession, tenant_id: uuid.UUID, actor: str, grace: timedelta
) -> TenantDeletion:
    """Schedule the tenant's deletion `grace` from now; 409 when one is already scheduled."""
    tenant = await TenantsRepository(session).get_or_404(tenant_id)
    if tenant.id == DEFAULT_TENANT_ID:
        raise ConflictError("The platform's own tenant cannot be deleted.")
    if await open_deletion(session, tenant_id) is not None:
        raise ConflictError("This tenant's deletion is already scheduled.")
    deletion = TenantDeletion(
        target_tenant_id=tenant.id,
        requested_by=actor,
        delete_after=datetime.now(UTC) + grace,
    )
    session.add(deletion)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:  # another request scheduled it meanwhile
        raise ConflictError("This tenant's deletion is already scheduled.") from None
    audit.record(
        session,
        tenant_id,
        "tenant.deletion_scheduled",
        actor,
        ("tenant", tenant_id),
        {"delete_after": deletion.delete_after.isoformat()},
    )
    return deletion


async def cancel(session: AsyncSession, tenant_id: uuid.UUID, actor: str) -> TenantDeletion:
    """Cancel the tenant's scheduled deletion: 404 when none is, 409 once it has started."""
    deletion = await session.scalar(
        select(TenantDeletion)
        .where(
            TenantDeletion.target_tenant_id == tenant_id,
            TenantDeletion.cancelled_at.is_(None),
            TenantDeletion.finished_at.is_(None),
        )
        .with_for_update()
    )
    if deletion is None:
        raise NotFoundError("This tenant's deletion is not scheduled.")
    if deletion.started_at is not None:
        raise ConflictError("This tenant's deletion has started; it cannot be cancelled.")
    deletion.cancelled_at = datetime.now(UTC)
    deletion.cancelled_by = actor
    audit.record(session, tenant_id, "tenant.deletion_cancelled", actor, ("tenant", tenant_id))
    await session.flush()
    return deletion


async def tombstones(session: AsyncSession, limit: int) -> list[TenantDeletion]:
    """Deletions, newest first: scheduled, cancelled, under way and done."""
    statement = select(TenantDeletion).order_by(TenantDeletion.created_at.desc()).limit(limit)
    return list(await session.scalars(statement))


# --- Erasing (beat) ---------------------------------------------------------------------------

_DUE = text(
    """
    SELECT id FROM tenant_deletions
    WHERE cancelled_at IS NULL AND finished_at IS NULL AND delete_after <= now()
    ORDER BY delete_after
    """
)
_START = text(
    """
    WITH started AS (
        UPDATE tenant_deletions SET started_at = COALESCE(started_at, now()), updated_at = now()
        WHERE id = :deletion AND cancelled_at IS NULL AND finished_at IS NULL
        RETURNING target_tenant_id
    )
    UPDATE tenants SET status = 'deleting', updated_at = now()
    WHERE id = (SELECT target_tenant_id FROM started)
    """
)
_TARGET = text(
    """
    SELECT target_tenant_id FROM tenant_deletions
    WHERE id = :deletion AND cancelled_at IS NULL AND finished_at IS NULL AND started_at IS NOT NULL
    """
)
# Users whose only membership is the tenant's (and who are not the platform's superusers).
_ONLY_HERE = text(
    """
    SELECT m.user_id FROM memberships AS m
    JOIN users AS u ON u.id = m.user_id
    WHERE m.tenant_id = :tenant AND NOT u.is_superuser
      AND NOT EXISTS (
          SELECT 1 FROM memberships AS other
          WHERE other.user_id = m.user_id AND other.tenant_id <> :tenant
      )
    ORDER BY m.user_id
    """
)


class Eraser:
    """Erases the tenants whose deletion is due (beat runs it in the background)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.engine: AsyncEngine = services.database_engine

    async def erase_due(self) -> int:
        """Erase every tenant whose deletion is due; how many were."""
        async with self.engine.connect() as connection:
            due = list(await connection.scalars(_DUE))
        for deletion_id in due:
            await self.erase(deletion_id)
        return len(due)

    async def erase(self, deletion_id: uuid.UUID) -> dict[str, int]:
        """Every step of one deletion (each safe to repeat); what was removed."""
        async with self.engine.begin() as connection:
            await connection.execute(_START, {"deletion": deletion_id})
            tenant_id = await connection.scalar(_TARGET, {"deletion": deletion_id})
        if tenant_id is None:  # cancelled or finished meanwhile
            return {}
        started = time.monotonic()
        logger.info("tenant deletion started", extra={"tenant": str(tenant_id)})
        removed: dict[str, int] = {}
        removed["runs_cancelled"] = await self.cancel_runs(tenant_id)
        removed |= await self.erase_outside(tenant_id)
        for table in owned_tables():
            if table.name != "memberships":  # with the users, last (`finish`)
                removed[table.name] = await self.drain(table, tenant_id)
        removed["users"] = await self.finish(deletion_id, tenant_id, removed)
        removed["redis_keys"] += await self.erase_redis(tenant_id)  # written meanwhile
        logger.info(
            "tenant deleted",
            extra={
                "tenant": str(tenant_id),
                "seconds": round(time.monotonic() - started, 1),
                "removed": removed,
            },
        )
        return removed

    async def cancel_runs(self, tenant_id: uuid.UUID) -> int:
        """Cancel the tenant's runs not yet final; wait for the started ones to stop."""
        cancelled = stopping = 0
        rows = self.settings.tenant_deletion_batch_rows
        while True:
            async with self.engine.begin() as connection:
                changed = await ledger.cancel_tenant_runs(connection, tenant_id, rows)
            for run in changed:
                await changes.changed(self.services, run)
            cancelled += len(changed)
            stopping += sum(run.was_started for run in changed)
            if len(changed) < rows:
                break
        if stopping:
            await asyncio.sleep(
                self.settings.worker_cancel_poll_seconds + ABANDON_AFTER_SECONDS + 1
            )
        return cancelled

    async def erase_outside(self, tenant_id: uuid.UUID) -> dict[str, int]:
        """Its objects, vectors, graph nodes, Redis keys and rows on the other binds."""
        services = self.services
        removed = {"objects": 0, "vector_collections": 0, "graph_nodes": 0}
        objects = await services.objects.list(tenant_id)
        for start in range(0, len(objects), 16):
            await asyncio.gather(
                *(
                    services.objects.delete(tenant_id, info.key)
                    for info in objects[start : start + 16]
                )
            )
        removed["objects"] = len(objects)
        removed["vector_collections"] = await services.vectors.drop_every_space(tenant_id)
        graph = graph_of(services)
        if graph is not None:
            removed["graph_nodes"] = await graph.drop_tenant(tenant_id)
        removed["redis_keys"] = await self.erase_redis(tenant_id)
        for name, bind in services.binds.items():
            removed[f"{name}_rows"] = await erase_bind_rows(bind.engine, tenant_id)
        return removed

    async def erase_redis(self, tenant_id: uuid.UUID) -> int:
        """Every key naming the tenant's id (rate limits, caches, quota warnings)."""
        client = self.services.redis
        if client is None:
            return 0
        removed = 0
        for pattern in (f"*{tenant_id}*", f"*{tenant_id.hex}*"):
            batch: list[Any] = []
            async for key in client.scan_iter(match=pattern, count=REDIS_SCAN_COUNT):
                batch.append(key)
                if len(batch) >= REDIS_SCAN_COUNT:
                    removed += int(await client.unlink(*batch))
                    batch = []
            if batch:
                removed += int(await client.unlink(*batch))
        return removed

    async def drain(self, table: Table, tenant_id: uuid.UUID) -> int:
        """The tenant's rows of `table`, a batch per transaction, resting between batches as
        retention does."""
        settings = self.settings
        batch = retention.tenant_rows(table.name, tenant_id, settings.tenant_deletion_batch_rows)
        return await retention.drain(self.engine, batch, settings.tenant_deletion_rest_ratio)

    async def finish(
        self, deletion_id: uuid.UUID, tenant_id: uuid.UUID, removed: dict[str, int]
    ) -> int:
        """The users whose only tenant it was, the tenant itself (what is left of it goes with
        it) and the tombstone's end, in one transaction; how many users went."""
        async with self.engine.begin() as connection:
            await connection.execute(text("SET LOCAL lock_timeout = '5s'"))
            await connection.execute(text("SET LOCAL switchyard.audit_purge = 'on'"))
            users = list(await connection.scalars(_ONLY_HERE, {"tenant": tenant_id}))
            members = await connection.execute(
                delete(Membership).where(Membership.tenant_id == tenant_id)
            )
            removed["memberships"] = int(getattr(members, "rowcount", 0) or 0)
            if users:
                await connection.execute(delete(User).where(User.id.in_(users)))
            await connection.execute(delete(Tenant).where(Tenant.id == tenant_id))
            await connection.execute(
                update(TenantDeletion)
                .where(TenantDeletion.id == deletion_id)
                .values(
                    finished_at=func.now(),
                    updated_at=func.now(),
                    removed={**removed, "users": len(users)},
                )
            )
        return len(users)


async def erase_bind_rows(engine: AsyncEngine, tenant_id: uuid.UUID, rows: int = 10_000) -> int:
    """The tenant's rows on an extra bind (usage events and counters' copies), in batches."""
    removed = 0
    for model in (UsageEvent, UsageCounterCopy):
        while True:
            statement = delete(model).where(model.tenant_id == tenant_id)
            if engine.dialect.name in ("mysql", "mariadb"):
                statement = statement.with_dialect_options(mysql_limit=rows)
            async with engine.begin() as connection:
                result = await connection.execute(statement)
            count = int(getattr(result, "rowcount", 0) or 0)
            removed += count
            if count < rows or engine.dialect.name not in ("mysql", "mariadb"):
                break
    return removed
