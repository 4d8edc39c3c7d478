"""What the documents domain offers routes: its knowledge graph (503 naming NEO4J_URI)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from switchyard.documents.graph import KnowledgeGraph, require_graph
from switchyard.platform.dependencies import ServicesDep


async def get_graph(services: ServicesDep) -> KnowledgeGraph:
    """The knowledge graph, or 503 naming NEO4J_URI."""
    return require_graph(services)


GraphDep = Annotated[KnowledgeGraph, Depends(get_graph)]
