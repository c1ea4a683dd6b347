"""Who calls the front door: one function, so tenant-bound credentials can replace it in one place.

Today the front door accepts the service's bearer token (`agentflow serve --token`, the same one
its gRPC callers send) and every caller is the tenant "default". When the service binds tokens to
tenants, `tenant_for` is the function to point at that table: it gets the Authorization header and
returns the tenant, or raises `Unauthorized`.
"""

from __future__ import annotations

import hmac


class Unauthorized(Exception):
    pass


def tenant_for(authorization: str | None, *, token: str | None) -> str:
    if token is None:
        return "default"
    want = f"Bearer {token}"
    if authorization is None or not hmac.compare_digest(authorization.encode(), want.encode()):
        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer ...; the service's --token)")
    return "default"


__all__ = ["Unauthorized", "tenant_for"]
