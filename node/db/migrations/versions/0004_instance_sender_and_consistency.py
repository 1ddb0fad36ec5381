"""instances remember their sender; series count their consistency warnings

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("sender_ae", sa.String(16), nullable=True))
        batch.add_column(sa.Column("sender_host", sa.String(64), nullable=True))
        batch.create_index("ix_instances_sop_instance_uid", ["sop_instance_uid"])
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("sop_uid_conflicts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("study_uid_conflicts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.drop_column("study_uid_conflicts")
        batch.drop_column("sop_uid_conflicts")
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_sop_instance_uid")
        batch.drop_column("sender_host")
        batch.drop_column("sender_ae")
