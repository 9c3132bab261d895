"""Token verification (PyJWT) producing a :class:`~rtstream.models.Principal`.

One algorithm is accepted per deployment: RS256 with keys from a JWKS URL when
``settings.jwks_url`` is set (production, Cognito-compatible), otherwise HS256
with ``settings.jwt_secret`` (dev). Accepting exactly one closes algorithm
confusion both ways. Tokens are never logged, not even in error messages.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt

from .errors import BackendUnavailable, Unauthorized
from .models import ROLES, Principal, is_identifier
from .settings import Settings

# A JWT in a query string or header: anything larger is not one of ours.
MAX_TOKEN_LENGTH = 8192
# Clock skew tolerated on exp/nbf/iat between the issuer and us.
LEEWAY_SECONDS = 5


class TokenVerifier:
    def __init__(self, settings: Settings, *, jwks_client: Any = None):
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        if settings.jwks_url or jwks_client is not None:
            self._algorithm = "RS256"
            self._secret = None
            self._jwks_url = settings.jwks_url
            self._jwks_client = jwks_client
        elif settings.jwt_secret:
            self._algorithm = "HS256"
            self._secret = settings.jwt_secret
            self._jwks_url = ""
            self._jwks_client = None
        else:
            raise ValueError("no token key configured: set RTSTREAM_JWT_SECRET (dev) or RTSTREAM_JWKS_URL")

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def _jwks(self) -> Any:
        if self._jwks_client is None:
            # Caches keys in-process: one fetch per cold start plus key rotations.
            self._jwks_client = jwt.PyJWKClient(self._jwks_url, cache_keys=True, lifespan=300)
        return self._jwks_client

    def _key(self, token: str) -> Any:
        if self._algorithm == "HS256":
            return self._secret
        try:
            return self._jwks().get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError as exc:
            raise BackendUnavailable("could not fetch the JWKS") from exc
        except (jwt.PyJWKClientError, jwt.DecodeError, jwt.InvalidTokenError) as exc:
            raise Unauthorized("token signing key not found") from exc

    def verify(self, token: str | None) -> Principal:
        if not token or not isinstance(token, str):
            raise Unauthorized("missing token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("malformed token") from exc
        # Checked before any key lookup: "none" and the other algorithm never reach a verifier.
        if header.get("alg") != self._algorithm:
            raise Unauthorized(f"token algorithm not accepted; expected {self._algorithm}")
        key = self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("token not yet valid") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("token issuer not accepted") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("token audience not accepted") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks required claim {exc.claim!r}") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("token signature invalid") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("token invalid") from exc
        return principal_from_claims(claims)


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    user_id = claims.get("sub")
    # Cognito ID tokens carry custom attributes as "custom:<name>"; both are signed claims.
    entity_id = claims.get("entity_id", claims.get("custom:entity_id"))
    role = claims.get("role", claims.get("custom:role", "user"))
    if not is_identifier(user_id):
        raise Unauthorized("token claim 'sub' is not a valid user id")
    if not is_identifier(entity_id):
        raise Unauthorized("token claim 'entity_id' missing or not a valid entity id")
    if role is None:
        role = "user"
    if role not in ROLES:
        raise Unauthorized("token claim 'role' not accepted")
    return Principal(user_id=user_id, entity_id=entity_id, role=role)


def issue_dev_token(
    secret: str,
    *,
    user_id: str,
    entity_id: str,
    role: str = "user",
    ttl_seconds: int = 3600,
    now: float | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """An HS256 token for dev and tests (what ``rtstream token`` prints)."""
    if not secret:
        raise ValueError("a secret is required (RTSTREAM_JWT_SECRET)")
    if not is_identifier(user_id) or not is_identifier(entity_id):
        raise ValueError("user_id and entity_id must be identifiers ([A-Za-z0-9_.@-], 1..128)")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": user_id, "entity_id": entity_id, "role": role, "iat": issued, "exp": issued + int(ttl_seconds)}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def extract_token(query: Mapping[str, Any] | None, headers: Mapping[str, Any] | None) -> str | None:
    """Token from ``?token=`` / ``?access_token=`` (browsers cannot set WebSocket
    headers) or ``Authorization: Bearer X`` (header names case-insensitive)."""
    for name in ("token", "access_token"):
        value = (query or {}).get(name)
        if isinstance(value, list):  # multi-value maps
            value = value[0] if value else None
        if isinstance(value, str) and value:
            return value
    for name, value in (headers or {}).items():
        if isinstance(name, str) and name.lower() == "authorization":
            if isinstance(value, list):
                value = value[0] if value else None
            token = _bearer(value if isinstance(value, str) else None)
            if token:
                return token
    return None
