"""What a tenant used, for its owners and admins: `GET /api/v1/usage` (recorded by
services.usage where each use happens)."""
