"""Who is calling: bearer tokens (or mTLS certificate names) -> an identity.

    client  bound to one tenant: opens programs and submits calls in that tenant only
    worker  bound to one worker id: registers, heartbeats, reports calls, watches decisions as it
    admin   the operator: everything, across tenants (ids unscoped)

Tokens come from a file (`--tokens-file`, env AGENTFLOW_TOKENS_FILE) or from the environment
(AGENTFLOW_TOKENS: the file's text). One credential a line, `#` starts a comment:

    <token>  client  <tenant>
    <token>  worker  <worker id>
    <token>  admin

The same lookup serves every front door (the gRPC scheduler and workers, an HTTP gateway):

    creds = Credentials.load(path=None, env=os.environ)   # or Credentials.parse(text, source=...)
    ident = creds.identify("Bearer abc")                   # Identity | None (None: refuse)
    ident.scope("p1")                                      # the service-wide id of a client's id

A client's program and call ids live in its tenant's scope (`tenant/id`), so another tenant's ids
are not just refused but unreachable: the same id names two different programs, and nothing a
client sends can tell it whether another tenant uses an id. Tenant names hold no "/", so scoped
ids never collide.

With no credentials configured the service is open (one trust domain, for loopback and tests):
every caller is an admin. A single shared `--token` keeps that meaning behind one secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

KINDS = ("client", "worker", "admin")
_NAME = re.compile(r"^[A-Za-z0-9._@:+-]{1,64}$")  # tenant and worker ids in a tokens file
_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # no "/": scoped ids stay unambiguous
MIN_TOKEN_CHARS = 16


class CredentialsError(ValueError):
    """A tokens file or variable that cannot be used; the message names it, the line and the fix."""


@dataclass(frozen=True, slots=True)
class Identity:
    kind: str  # client | worker | admin
    tenant: str | None = None  # clients
    worker_id: str | None = None  # workers

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    def scope(self, local_id: str) -> str:
        """The service-wide id of an id this caller names (clients: in their tenant's scope)."""
        return f"{self.tenant}/{local_id}" if self.kind == "client" and local_id else local_id

    def unscope(self, scoped_id: str) -> str:
        if self.kind == "client":
            prefix = f"{self.tenant}/"
            return scoped_id[len(prefix):] if scoped_id.startswith(prefix) else scoped_id
        return scoped_id

    def may_act_as_worker(self, worker_id: str) -> bool:
        return self.is_admin or (self.kind == "worker" and self.worker_id == worker_id)

    def describe(self) -> str:
        return {"client": f"client of tenant {self.tenant!r}", "worker": f"worker {self.worker_id!r}",
                "admin": "admin"}[self.kind]


OPEN = Identity("admin")  # every caller of a service without credentials


class Credentials:
    """Token -> identity. `open` when no credential is configured (everyone is an admin)."""

    def __init__(self, entries: Mapping[str, Identity] | None = None, *, source: str = "(none)"):
        self._by_token = dict(entries or {})
        self.source = source

    @property
    def open(self) -> bool:
        return not self._by_token

    def __len__(self) -> int:
        return len(self._by_token)

    @classmethod
    def shared(cls, token: str) -> Credentials:
        """One token for everyone (the pre-tenant `--token`): whoever holds it is an admin."""
        return cls({token: OPEN}, source="--token")

    @classmethod
    def parse(cls, text: str, *, source: str) -> Credentials:
        entries: dict[str, Identity] = {}
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            where = f"{source}:{n}"
            if len(parts) < 2 or parts[1] not in KINDS:
                raise CredentialsError(f"{where}: expected '<token> client <tenant>', '<token> worker <worker id>' "
                                       "or '<token> admin'")
            token, kind, rest = parts[0], parts[1], parts[2:]
            if len(token) < MIN_TOKEN_CHARS:
                raise CredentialsError(f"{where}: token is shorter than {MIN_TOKEN_CHARS} characters; use a random "
                                       "one (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
            if token in entries:
                raise CredentialsError(f"{where}: the same token is listed twice; every credential needs its own")
            if kind == "admin":
                if rest:
                    raise CredentialsError(f"{where}: an admin credential takes no subject")
                entries[token] = Identity("admin")
                continue
            if len(rest) != 1 or not _NAME.match(rest[0]):
                raise CredentialsError(f"{where}: {kind} needs one {'tenant' if kind == 'client' else 'worker id'} "
                                       "of 1-64 characters [A-Za-z0-9._@:+-]")
            if kind == "client":
                if not _TENANT.match(rest[0]):
                    raise CredentialsError(f"{where}: tenant {rest[0]!r} must match [A-Za-z0-9._-]{{1,64}}")
                entries[token] = Identity("client", tenant=rest[0])
            else:
                entries[token] = Identity("worker", worker_id=rest[0])
        if not entries:
            raise CredentialsError(f"{source}: holds no credential (one a line: '<token> client <tenant>', ...)")
        return cls(entries, source=source)

    @classmethod
    def load(cls, path: str | None = None, *, env: Mapping[str, str] | None = None,
             shared_token: str | None = None) -> Credentials:
        """From `path`, else AGENTFLOW_TOKENS_FILE, else AGENTFLOW_TOKENS (the file's text), else
        the shared token, else open."""
        env = os.environ if env is None else env
        path = path or env.get("AGENTFLOW_TOKENS_FILE") or None
        if path:
            p = Path(path)
            try:
                text = p.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise CredentialsError(f"cannot read the tokens file {path}: {getattr(exc, 'strerror', None) or exc}"
                                       ) from None
            return cls.parse(text, source=str(path))
        if env.get("AGENTFLOW_TOKENS"):
            return cls.parse(env["AGENTFLOW_TOKENS"].replace(";", "\n"), source="AGENTFLOW_TOKENS")
        if shared_token:
            return cls.shared(shared_token)
        return cls()

    def identify(self, authorization: str | None) -> Identity | None:
        """The identity behind an `authorization` header value ("Bearer TOKEN"); None: refuse."""
        if self.open:
            return OPEN
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization[7:]
        return self._by_token.get(token)

    def identify_metadata(self, metadata) -> Identity | None:
        if self.open:
            return OPEN
        for k, v in metadata or ():
            if k == "authorization":
                return self.identify(v)
        return None

    def token_for_worker(self, worker_id: str) -> str | None:
        for token, ident in self._by_token.items():
            if ident.kind == "worker" and ident.worker_id == worker_id:
                return token
        return None


def identity_of_certificate(common_name: str) -> Identity | None:
    """mTLS: a client certificate's common name "client:<tenant>", "worker:<id>" or "admin"."""
    kind, _, subject = common_name.partition(":")
    if kind == "admin" and not subject:
        return Identity("admin")
    if kind == "client" and _TENANT.match(subject):
        return Identity("client", tenant=subject)
    if kind == "worker" and _NAME.match(subject):
        return Identity("worker", worker_id=subject)
    return None


__all__ = ["Credentials", "CredentialsError", "Identity", "OPEN", "identity_of_certificate"]
