"""Every model, imported so that `Base.metadata` is complete."""

from switchyard.db.models.datasource import DataSourceConnection
from switchyard.db.models.document import DocumentStatus, KnowledgeDocument
from switchyard.db.models.tenant import Tenant, TenantStatus

__all__ = [
    "DataSourceConnection",
    "DocumentStatus",
    "KnowledgeDocument",
    "Tenant",
    "TenantStatus",
]
