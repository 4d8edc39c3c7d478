"""accounts: members (active, one owner), invitations, one-time user tokens, OAuth clients,
and the append-only audit log

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_OWNER = "role = 'owner'"
PENDING = "accepted_at IS NULL AND revoked_at IS NULL"

# Appended, never changed: an UPDATE is refused; a DELETE only by the retention purge (which
# sets switchyard.audit_purge for its transaction) or as its tenant is deleted.
APPEND_ONLY = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND (
        current_setting('switchyard.audit_purge', true) = 'on'
        OR NOT EXISTS (SELECT 1 FROM tenants WHERE id = OLD.tenant_id)
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$
"""
TRIGGER = """
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
"""


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def _id() -> sa.Column[object]:
    return sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid())


def upgrade() -> None:
    op.add_column("users", sa.Column("email_verified_at", sa.DateTime(timezone=True)))
    # Accounts that exist already signed up before verification existed: they count as verified.
    op.execute("UPDATE users SET email_verified_at = created_at")
    op.add_column(
        "memberships",
        sa.Column("is_active", sa.Boolean(), server_default="true", nullable=False),
    )
    # Exactly one owner: where a tenant has several already, the oldest keeps it.
    op.execute(
        """
        UPDATE memberships SET role = 'admin'
        WHERE role = 'owner' AND id NOT IN (
            SELECT DISTINCT ON (tenant_id) id FROM memberships
            WHERE role = 'owner' ORDER BY tenant_id, created_at, id
        )
        """
    )
    op.create_index(
        "ix_memberships_one_owner",
        "memberships",
        ["tenant_id"],
        unique=True,
        postgresql_where=sa.text(ONE_OWNER),
    )
    op.create_table(
        "oauth_clients",
        _id(),
        sa.Column(
            "tenant_id",
            sa.Uuid(),
            sa.ForeignKey(
                "tenants.id", ondelete="CASCADE", name="fk_oauth_clients_tenant_id_tenants"
            ),
            nullable=False,
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("client_id", sa.String(40), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.String(64)), nullable=False),
        sa.Column(
            "created_by",
            sa.Uuid(),
            sa.ForeignKey(
                "users.id", ondelete="SET NULL", name="fk_oauth_clients_created_by_users"
            ),
        ),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_oauth_clients"),
        sa.UniqueConstraint("client_id", name="uq_oauth_clients_client_id"),
    )
    op.create_index("ix_oauth_clients_tenant_id", "oauth_clients", ["tenant_id"])
    op.create_table(
        "user_tokens",
        _id(),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_user_tokens_user_id_users"),
            nullable=False,
        ),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_user_tokens"),
        sa.CheckConstraint(
            "purpose IN ('password_reset', 'verify_email')", name="ck_user_tokens_token_purpose"
        ),
    )
    op.create_index("ix_user_tokens_user_id_purpose", "user_tokens", ["user_id", "purpose"])
    op.create_table(
        "invitations",
        _id(),
        sa.Column(
            "tenant_id",
            sa.Uuid(),
            sa.ForeignKey(
                "tenants.id", ondelete="CASCADE", name="fk_invitations_tenant_id_tenants"
            ),
            nullable=False,
        ),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "invited_by",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="SET NULL", name="fk_invitations_invited_by_users"),
        ),
        sa.Column("sent_count", sa.Integer(), server_default="1", nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column(
            "accepted_by",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="SET NULL", name="fk_invitations_accepted_by_users"),
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_invitations"),
        sa.CheckConstraint(
            "role IN ('owner', 'admin', 'member')", name="ck_invitations_invitation_role"
        ),
    )
    op.create_index("ix_invitations_tenant_id", "invitations", ["tenant_id"])
    op.create_index(
        "ix_invitations_pending_email",
        "invitations",
        ["tenant_id", "email"],
        unique=True,
        postgresql_where=sa.text(PENDING),
    )
    op.create_table(
        "audit_events",
        _id(),
        sa.Column(
            "tenant_id",
            sa.Uuid(),
            sa.ForeignKey(
                "tenants.id", ondelete="CASCADE", name="fk_audit_events_tenant_id_tenants"
            ),
            nullable=False,
        ),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32)),
        sa.Column("target_id", sa.String(200)),
        sa.Column("request_id", sa.String(128)),
        sa.Column("address", sa.String(64)),
        sa.Column(
            "details", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index(
        "ix_audit_events_tenant_id_created_at", "audit_events", ["tenant_id", "created_at", "id"]
    )
    op.create_index(
        "ix_audit_events_tenant_id_action", "audit_events", ["tenant_id", "action", "created_at"]
    )
    op.create_index("ix_audit_events_created_at", "audit_events", ["created_at"])
    op.execute(APPEND_ONLY)
    op.execute(TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
    op.execute("DROP FUNCTION audit_events_append_only()")
    op.drop_table("audit_events")
    op.drop_table("invitations")
    op.drop_table("user_tokens")
    op.drop_table("oauth_clients")
    op.drop_index("ix_memberships_one_owner", table_name="memberships")
    op.drop_column("memberships", "is_active")
    op.drop_column("users", "email_verified_at")
