"""Access control mechanisms; the app supplies the meaning.

The kernel does not know what a workspace, a role or a scope is. The app
implements :class:`WorkspaceChecker` / :class:`ScopeChecker`, registers them
with ``workspace_access.set_checker(...)`` / ``scope_access.set_checker(...)``,
and the dependencies here enforce the answers, failing closed.
"""

from app_kernel.access.deps import (
    require_scope,
    require_workspace_member,
    require_workspace_owner,
    require_workspace_role,
)
from app_kernel.access.errors import AccessNotConfigured
from app_kernel.access.protocols import ScopeChecker, WorkspaceChecker
from app_kernel.access.scope import ScopeAccess, check_scope, scope_access
from app_kernel.access.workspace import WorkspaceAccess, workspace_access

__all__ = (
    "AccessNotConfigured",
    "ScopeAccess",
    "ScopeChecker",
    "WorkspaceAccess",
    "WorkspaceChecker",
    "check_scope",
    "require_scope",
    "require_workspace_member",
    "require_workspace_owner",
    "require_workspace_role",
    "scope_access",
    "workspace_access",
)
