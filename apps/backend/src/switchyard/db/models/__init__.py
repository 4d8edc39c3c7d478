"""Every model, imported so that `Base.metadata` is complete."""

from switchyard.db.models.audit import AuditEvent
from switchyard.db.models.datasource import DataSourceConnection
from switchyard.db.models.dead_letter import DeadLetter
from switchyard.db.models.document import DocumentStatus, KnowledgeDocument
from switchyard.db.models.plan import Plan
from switchyard.db.models.task_definition import UNPLANNED, TaskDefinition
from switchyard.db.models.task_run import FINAL_STATES, RunState, TaskRun
from switchyard.db.models.tenant import (
    DEFAULT_TENANT_ID,
    Tenant,
    TenantDeletion,
    TenantStatus,
)
from switchyard.db.models.usage import LlmReservation, UsageCounter
from switchyard.db.models.user import (
    ApiKey,
    Invitation,
    Membership,
    OAuthClient,
    RefreshToken,
    Role,
    TokenPurpose,
    User,
    UserToken,
)
from switchyard.db.models.worker import WorkerSlots
from switchyard.db.models.workflow import (
    StepState,
    WorkflowDefinition,
    WorkflowRun,
    WorkflowState,
    WorkflowStep,
)

__all__ = [
    "DEFAULT_TENANT_ID",
    "FINAL_STATES",
    "UNPLANNED",
    "ApiKey",
    "AuditEvent",
    "DataSourceConnection",
    "DeadLetter",
    "DocumentStatus",
    "Invitation",
    "KnowledgeDocument",
    "LlmReservation",
    "Membership",
    "OAuthClient",
    "Plan",
    "RefreshToken",
    "Role",
    "RunState",
    "StepState",
    "TaskDefinition",
    "TaskRun",
    "Tenant",
    "TenantDeletion",
    "TenantStatus",
    "TokenPurpose",
    "UsageCounter",
    "User",
    "UserToken",
    "WorkerSlots",
    "WorkflowDefinition",
    "WorkflowRun",
    "WorkflowState",
    "WorkflowStep",
]
