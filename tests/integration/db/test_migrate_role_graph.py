"""`migrate` creates the graph's constraints when NEO4J_URI is set."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import URL

from switchyard.documents.graph import CONSTRAINTS
from switchyard.roles import migrate
from switchyard.services.neo4j import Neo4j
from switchyard.settings import Settings
from tests.unit.test_graph_queries import RecordingDriver


async def test_migrate_creates_graph_constraints(
    monkeypatch: pytest.MonkeyPatch, database_url: URL
) -> None:
    driver = RecordingDriver()
    closed: list[bool] = []

    class Recorded(Neo4j):
        async def close(self) -> None:
            closed.append(True)

    def fake_neo4j(settings: Settings) -> Neo4j:
        assert settings.neo4j_uri == "bolt://graph.example:7687"
        return Recorded(driver)  # type: ignore[arg-type]

    monkeypatch.setattr(migrate, "create_neo4j", fake_neo4j)
    await migrate.prepare_database(Settings(neo4j_uri="bolt://graph.example:7687"), database_url)
    assert [call[0] for call in driver.calls] == list(CONSTRAINTS)
    assert closed == [True]


async def test_migrate_fails_clearly_when_the_graph_is_unreachable(database_url: URL) -> None:
    settings = Settings(
        neo4j_uri="bolt://127.0.0.1:9", neo4j_password="x-real", neo4j_connection_timeout_seconds=1
    )
    with pytest.raises(Exception, match=r"(?i)connect|unavailable"):
        await migrate.prepare_database(settings, database_url)
