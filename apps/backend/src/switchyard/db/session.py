"""What a unit of work does around its commit (Polar's enqueue-after-commit): actions that run
only once its changes are committed, and undos that run when it does not complete.

A route's service records its changes in the request's session and says what must follow:

    after_commit(session, publish_the_run)     # runs after COMMIT, never after a rollback
    on_failure(session, delete_the_object)     # runs when the route, the commit or an
                                               # after-commit action fails

`unit_of_work` is the one committer (the session dependency of `platform.dependencies` runs
each request in it)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.errors import SwitchyardError

logger = logging.getLogger(__name__)

Action = Callable[[], Awaitable[object]]
_KEY = "switchyard.unit_of_work"


@dataclass
class _Pending:
    after_commit: list[Action] = field(default_factory=list)
    on_failure: list[Action] = field(default_factory=list)


def _pending(session: AsyncSession) -> _Pending:
    pending = session.info.get(_KEY)
    if pending is None:
        pending = session.info[_KEY] = _Pending()
    assert isinstance(pending, _Pending)
    return pending


def after_commit(session: AsyncSession, action: Action) -> None:
    """Run `action` once `session`'s unit of work has committed, in the order added. If it
    raises, the actions after it do not run, the undos do, and the request fails with its
    error (a publish the broker refused answers 503)."""
    _pending(session).after_commit.append(action)


def on_failure(session: AsyncSession, undo: Action) -> None:
    """Run `undo` if the unit of work does not complete: the route fails (rolled back), the
    commit fails, or an after-commit action fails. Undos run newest first; each must be
    safe when there is nothing to undo (after a rollback the rows are gone already)."""
    _pending(session).on_failure.append(undo)


async def end_reads(session: AsyncSession) -> None:
    """Give a unit of work's connection back to the pool while it has only read (its next
    statement takes one again): before it waits on work that takes a connection of its own
    (a group commit), so that as many requests as the pool holds cannot hold every connection
    while that work waits for one. Its after-commit actions and undos stay pending, and the
    objects it read stay as they were read (detached: ending the transaction would expire
    them, and an expired attribute read outside a greenlet is an error)."""
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("end_reads: the unit of work has changes to write")
    session.expunge_all()
    await session.rollback()  # nothing to keep: the transaction only read


async def finish(session: AsyncSession, *, committed: bool) -> None:
    """After the commit (`committed`) or the rollback: the after-commit actions, or the undos."""
    pending: _Pending | None = session.info.pop(_KEY, None)
    if pending is None:
        return
    if committed:
        try:
            for action in pending.after_commit:
                await action()
        except BaseException:
            await _undo(pending)
            raise
    else:
        await _undo(pending)


async def _undo(pending: _Pending) -> None:
    for undo in reversed(pending.on_failure):
        try:
            await undo()
        except Exception as exc:  # the request's own error is the one to answer with
            logger.warning("undo of a failed unit of work failed", extra={"error": repr(exc)})


@asynccontextmanager
async def unit_of_work(session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """Commit `session` when the block ends, roll it back when it raises (a SwitchyardError
    with `persist_changes` commits first); then its after-commit actions, or its undos."""
    try:
        yield session
    except SwitchyardError as exc:
        if exc.persist_changes:
            await _commit(session)
        else:
            await session.rollback()
            await finish(session, committed=False)
        raise
    except BaseException:
        await session.rollback()
        await finish(session, committed=False)
        raise
    else:
        await _commit(session)


async def _commit(session: AsyncSession) -> None:
    try:
        await session.commit()
    except BaseException:
        await finish(session, committed=False)
        raise
    await finish(session, committed=True)
