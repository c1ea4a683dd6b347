"""Who calls the front door: the service's credentials (runtime/service/auth.py), as an OpenAI API key.

    Authorization: Bearer <token>  ──Credentials.identify──>  Identity(kind, tenant, worker_id)

    client  its tenant: its requests open and join programs of that tenant only (program ids and
            cache keys carry it), and the debug routes show that tenant's programs and graphs only
    admin   the operator: requests run as tenant "default"; the debug routes show every tenant;
            the only kind that may read /metrics (service-wide figures: other tenants' traffic)
    worker  refused (403): a worker's credential reports calls, it does not make them

The credentials are the scheduler's own (`--tokens-file` / AGENTFLOW_TOKENS_FILE / AGENTFLOW_TOKENS,
or the shared `--token`, whose holder is an admin); with none configured the service is open and
every caller is an admin, as over gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentflow.runtime.service.auth import Credentials

ADMIN_TENANT = "default"  # the tenant an admin's (or an open service's) requests run in


class Unauthorized(Exception):
    status = 401
    code = "invalid_api_key"


class Forbidden(Exception):
    status = 403
    code = "permission_denied"


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str  # where its programs live
    admin: bool  # sees every tenant (debug routes, /metrics)

    def sees(self) -> str | None:
        """The tenant whose programs and graphs this caller may read; None: all of them."""
        return None if self.admin else self.tenant


def credentials_for(token: str | None = None, credentials: Credentials | None = None) -> Credentials:
    if credentials is not None:
        return credentials
    return Credentials.shared(token) if token else Credentials()


def caller_for(authorization: str | None, credentials: Credentials) -> Caller:
    ident = credentials.identify(authorization)
    if ident is None:
        raise Unauthorized("missing or unknown API key (Authorization: Bearer <a client token of the service's "
                           "--tokens-file, or its --token>)")
    if ident.kind == "client":
        return Caller(tenant=ident.tenant, admin=False)
    if ident.kind == "admin":
        return Caller(tenant=ADMIN_TENANT, admin=True)
    raise Forbidden(f"this credential is {ident.describe()}'s: workers cannot call the OpenAI API; use a client "
                    "credential")


def tenant_for(authorization: str | None, *, token: str | None = None,
               credentials: Credentials | None = None) -> str:
    """The tenant a request runs in (Unauthorized / Forbidden when it may not run)."""
    return caller_for(authorization, credentials_for(token, credentials)).tenant


__all__ = ["ADMIN_TENANT", "Caller", "Forbidden", "Unauthorized", "caller_for", "credentials_for", "tenant_for"]
