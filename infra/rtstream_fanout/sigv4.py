"""AWS Signature Version 4 for the worker's ``@connections`` requests.

botocore's ``SigV4Auth`` costs ~76 µs per request: it builds an ``AWSRequest``,
re-parses the URL and derives the signing key (four HMACs) every time. Here the
key is derived once per (secret, day, region, service) and cached, and a batch
of POSTs of one body to many connections shares everything but the path: the
body hash, the date, the canonical headers and the HMAC's keyed state. Each
request then costs one SHA-256 of its canonical request and one HMAC.

The output is byte-identical to botocore's ``SigV4Auth.add_auth`` for the same
inputs (tests compare the two over random inputs and against AWS's published
test vectors). Pure standard library: it lives in the worker package beside the
HTTP client that is its only user (Lambda handlers sign through boto3).

Credentials come from a provider with botocore's ``get_frozen_credentials()``
(its credential chain, injected); they are read once per batch, so a rotated
task-role credential is used from the next batch on, with a new signing key.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# botocore.auth.SIGNED_HEADERS_BLACKLIST: headers a proxy may change, never signed
UNSIGNED_HEADERS = frozenset({
    "baggage", "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "traceparent", "tracestate", "trailer", "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
})


class FrozenCredentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None = None


class CredentialProvider(Protocol):
    """botocore ``Credentials`` / ``RefreshableCredentials`` satisfy this."""

    def get_frozen_credentials(self) -> Any: ...


class StaticCredentials:
    def __init__(self, access_key: str, secret_key: str, token: str | None = None):
        self._frozen = FrozenCredentials(access_key, secret_key, token)

    def get_frozen_credentials(self) -> FrozenCredentials:
        return self._frozen


def amz_date(epoch_s: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch_s))


def derive_signing_key(secret_key: str, date_stamp: str, region: str, service: str) -> bytes:
    key = hmac.digest(f"AWS4{secret_key}".encode(), date_stamp.encode(), "sha256")
    key = hmac.digest(key, region.encode(), "sha256")
    key = hmac.digest(key, service.encode(), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


def normalize_path(path: str) -> str:
    """RFC 3986 dot-segment removal and no empty segments, as botocore does."""
    if not path:
        return "/"
    out: list[str] = []
    for segment in path.split("/"):
        if segment and segment != ".":
            if segment == "..":
                if out:
                    out.pop()
            else:
                out.append(segment)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and out else ""
    return first + "/".join(out) + last


def canonical_uri(path: str) -> str:
    """The path as sent (already percent-encoded), encoded once more: the
    double encoding AWS expects from every service but S3."""
    return quote(normalize_path(path), safe="/~")


def canonical_query(params: Iterable[tuple[str, Any]]) -> str:
    pairs = sorted((quote(k, safe="-_.~"), quote(str(v), safe="-_.~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_host(host: str, port: int | None, tls: bool) -> str:
    """The Host value botocore signs: lowercase, default port left out."""
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    if port is not None and port != (443 if tls else 80):
        host = f"{host}:{port}"
    return host


class SigV4Signer:
    """Signs requests for one region and service with cached signing keys."""

    def __init__(self, credentials: CredentialProvider, region: str, service: str = "execute-api",
                 *, clock: Callable[[], float] = time.time,
                 derive_key: Callable[[str, str, str, str], bytes] = derive_signing_key):
        if not region:
            raise ValueError("SigV4 signing needs a region")
        self.credentials = credentials
        self.region = region
        self.service = service
        self.clock = clock
        self.derive_key = derive_key
        self._key_for: tuple[str, str] | None = None
        self._key = b""

    def _frozen(self) -> FrozenCredentials:
        frozen = self.credentials.get_frozen_credentials()
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            raise ValueError("SigV4 signing needs credentials; none were found")
        return FrozenCredentials(frozen.access_key, frozen.secret_key, frozen.token or None)

    def signing_key(self, secret_key: str, date_stamp: str) -> bytes:
        # one cached key: it changes once a day, or when the credentials rotate
        if self._key_for != (secret_key, date_stamp):
            self._key = self.derive_key(secret_key, date_stamp, self.region, self.service)
            self._key_for = (secret_key, date_stamp)
        return self._key

    # ---- general form (what botocore's SigV4Auth.add_auth computes)
    def sign(self, method: str, host: str, path: str, *, params: Sequence[tuple[str, Any]] = (),
             headers: Sequence[tuple[str, str]] = (), body: bytes = b"", timestamp: str | None = None,
             payload_hash: str | None = None) -> list[tuple[str, str]]:
        """The headers to add to the request: ``X-Amz-Date``, ``X-Amz-Security-Token``
        (with a session token) and ``Authorization``. ``host`` is the canonical
        host (see :func:`canonical_host`) unless ``headers`` carry a Host;
        ``path`` is the path as sent; a ``Date`` header is not supported."""
        creds = self._frozen()
        stamp = timestamp or amz_date(self.clock())
        signed: dict[str, list[str]] = {}
        for name, value in headers:
            lname = name.lower()
            if lname in ("x-amz-date", "x-amz-security-token", "authorization"):
                continue  # replaced below, as botocore replaces them
            if lname == "date":
                raise ValueError("a Date header is not supported; X-Amz-Date is set")
            if lname not in UNSIGNED_HEADERS:
                signed.setdefault(lname, []).append(value)
            if lname == "x-amz-content-sha256" and payload_hash is None:
                payload_hash = value
        added = [("X-Amz-Date", stamp)]
        signed["x-amz-date"] = [stamp]
        if creds.token:
            added.append(("X-Amz-Security-Token", creds.token))
            signed["x-amz-security-token"] = [creds.token]
        if "host" not in signed:
            signed["host"] = [host]
        names = sorted(signed)
        canonical_headers = "\n".join(f"{n}:{','.join(' '.join(v.split()) for v in signed[n])}" for n in names)
        signed_headers = ";".join(names)
        body_hash = payload_hash or (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256)
        creq = "\n".join([method.upper(), canonical_uri(path), canonical_query(params), canonical_headers + "\n",
                          signed_headers, body_hash])
        scope = f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"
        sts = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(creq.encode()).hexdigest()}"
        signature = hmac.new(self.signing_key(creds.secret_key, stamp[:8]), sts.encode(), hashlib.sha256).hexdigest()
        added.append(("Authorization", f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
                                        f"SignedHeaders={signed_headers}, Signature={signature}"))
        return added

    # ---- fast form: one body to many paths
    def batch(self, method: str, host: str, body: bytes, *, timestamp: str | None = None) -> "BatchSigner":
        """A signer for requests that differ only in their path (signed headers:
        host, x-amz-date and, with a session token, x-amz-security-token)."""
        creds = self._frozen()
        stamp = timestamp or amz_date(self.clock())
        return BatchSigner(self, creds, method.upper(), host, body, stamp)


class BatchSigner:
    __slots__ = ("head", "tail", "sts_prefix", "mac", "auth_prefix", "date_lines")

    def __init__(self, signer: SigV4Signer, creds: FrozenCredentials, method: str, host: str, body: bytes, stamp: str):
        body_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        headers = f"host:{host}\nx-amz-date:{stamp}\n"
        signed_headers = "host;x-amz-date"
        lines = f"X-Amz-Date: {stamp}\r\n"
        if creds.token:
            headers += f"x-amz-security-token:{' '.join(creds.token.split())}\n"
            signed_headers += ";x-amz-security-token"
            lines += f"X-Amz-Security-Token: {creds.token}\r\n"
        scope = f"{stamp[:8]}/{signer.region}/{signer.service}/aws4_request"
        self.head = f"{method}\n".encode()
        self.tail = f"\n\n{headers}\n{signed_headers}\n{body_hash}".encode()
        self.sts_prefix = f"{ALGORITHM}\n{stamp}\n{scope}\n".encode()
        self.mac = hmac.new(signer.signing_key(creds.secret_key, stamp[:8]), digestmod=hashlib.sha256)
        self.auth_prefix = (f"{lines}Authorization: {ALGORITHM} Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={signed_headers}, Signature=").encode()
        self.date_lines = lines

    def header_lines(self, canonical_path: bytes) -> bytes:
        """``X-Amz-Date``/token/``Authorization`` header lines (CRLF-terminated)
        for the request whose canonical URI is ``canonical_path``."""
        creq = hashlib.sha256(self.head + canonical_path + self.tail).hexdigest()
        mac = self.mac.copy()
        mac.update(self.sts_prefix + creq.encode())
        return self.auth_prefix + mac.hexdigest().encode() + b"\r\n"
