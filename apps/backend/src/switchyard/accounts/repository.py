"""Queries of the accounts domain within one tenant: its members and invitations."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.db.models import Invitation, Membership, User
from switchyard.db.repository import TenantRepository
from switchyard.errors import NotFoundError


class MemberRepository(TenantRepository[Membership]):
    model = Membership
    not_found = "No member {id}."

    async def of_user(self, user_id: uuid.UUID, *, lock: bool = False) -> Membership | None:
        statement = self.select(Membership.user_id == user_id)
        found: Membership | None = await self.session.scalar(
            statement.with_for_update() if lock else statement
        )
        return found

    async def of_user_or_404(self, user_id: uuid.UUID, *, lock: bool = False) -> Membership:
        found = await self.of_user(user_id, lock=lock)
        if found is None:
            raise NotFoundError(self.not_found.format(id=user_id))
        return found

    async def with_users(self) -> list[Any]:
        """(membership, user) of every member, oldest first."""
        statement = (
            self.select()
            .add_columns(User)
            .join(User, User.id == Membership.user_id)
            .order_by(Membership.created_at, Membership.id)
        )
        return list((await self.session.execute(statement)).all())

    async def of_email(self, email: str) -> Membership | None:
        found: Membership | None = await self.session.scalar(
            self.select().join(User, User.id == Membership.user_id).where(User.email == email)
        )
        return found


class InvitationRepository(TenantRepository[Invitation]):
    model = Invitation
    not_found = "No invitation {id}."

    async def open_for(self, email: str) -> Invitation | None:
        """The invitation of `email` not accepted or revoked (pending or expired)."""
        return await self.first(
            Invitation.email == email,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
        )

    @staticmethod
    async def by_token_id(session: AsyncSession, invitation_id: uuid.UUID) -> Invitation | None:
        """Any tenant's invitation, locked: the link's token names it (accepting needs no
        sign-in, so there is no tenant to scope the query by)."""
        found: Invitation | None = await session.scalar(
            select(Invitation).where(Invitation.id == invitation_id).with_for_update()
        )
        return found
