"""Neo4j, through the official async driver: the client's lifecycle, its queries' execution and
its probe. What the graph holds and how it is queried is the documents domain's
(`documents.graph`). Without NEO4J_URI there is no client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, LiteralString

from switchyard.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from neo4j import AsyncDriver

    from switchyard.settings import Settings


class GraphDisabledError(ServiceUnavailableError):
    code = "graph_disabled"

    def __init__(self) -> None:
        super().__init__("The knowledge graph needs NEO4J_URI, which is not set.")


class Neo4j:
    """The driver (its pool belongs to the services container) and the database it uses."""

    def __init__(self, driver: AsyncDriver, database: str | None = None) -> None:
        self.driver = driver
        self.database = database

    @classmethod
    def from_settings(cls, settings: Settings) -> Neo4j:
        from neo4j import AsyncGraphDatabase

        assert settings.neo4j_uri is not None
        driver = AsyncGraphDatabase.driver(
            settings.neo4j_uri,
            auth=(settings.neo4j_user, settings.neo4j_password.get_secret_value()),
            max_connection_pool_size=settings.neo4j_max_pool_size,
            connection_timeout=settings.neo4j_connection_timeout_seconds,
            connection_acquisition_timeout=settings.neo4j_acquisition_timeout_seconds,
        )
        return cls(driver, settings.neo4j_database)

    async def execute(
        self, query: LiteralString, parameters: dict[str, Any], *, write: bool
    ) -> list[dict[str, Any]]:
        """The records of `query` (a constant: input only ever goes in as `$parameters`)."""
        from neo4j import RoutingControl

        routing = RoutingControl.WRITE if write else RoutingControl.READ
        result = await self.driver.execute_query(
            query, parameters, routing_=routing, database_=self.database
        )
        return [record.data() for record in result.records]

    async def probe(self) -> None:
        await self.driver.verify_connectivity()

    async def close(self) -> None:
        await self.driver.close()


def create_neo4j(settings: Settings) -> Neo4j | None:
    return Neo4j.from_settings(settings) if settings.neo4j_uri else None
