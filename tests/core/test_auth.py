"""Token verification: every attack of the contract is refused with ``unauthorized``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rtstream.auth import TokenVerifier, extract_token, issue_dev_token
from rtstream.errors import Unauthorized
from rtstream.models import Principal
from rtstream.settings import Settings

SECRET = "unit-test-secret-0123456789abcdef0123456789"
ISS = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_TEST"
AUD = "dashboard-client"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra):
    now = int(time.time())
    base = {"sub": "user-1", "entity_id": "entity-1", "role": "user", "iat": now, "exp": now + 600}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def hs():
    return TokenVerifier(Settings(jwt_secret=SECRET))


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(rsa_key):
    """A real HTTP server serving the JWKS, read by PyJWT's real PyJWKClient."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
    server.shutdown()
    server.server_close()


@pytest.fixture
def rs(jwks_url):
    return TokenVerifier(Settings(jwks_url=jwks_url, jwt_issuer=ISS, jwt_audience=AUD))


def rs_token(rsa_key, kid="k1", **extra):
    return jwt.encode(claims(iss=ISS, aud=AUD, **extra), rsa_key, algorithm="RS256", headers={"kid": kid})


def refused(verifier, token, reason=None):
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    assert info.value.code == "unauthorized" and info.value.status == 401
    if reason:
        assert reason in info.value.message
    # never echo the token
    if isinstance(token, str) and len(token) > 20:
        assert token not in info.value.message
    return info.value


# ---- HS256 (dev) -----------------------------------------------------------------


def test_hs256_valid(hs):
    token = issue_dev_token(SECRET, user_id="user-1", entity_id="entity-1", role="admin")
    assert hs.verify(token) == Principal("user-1", "entity-1", "admin")


def test_role_defaults_to_user(hs):
    token = jwt.encode(claims(role=None), SECRET, algorithm="HS256")
    assert hs.verify(token).role == "user"


def test_alg_none_refused(hs):
    token = jwt.encode(claims(), None, algorithm="none")
    refused(hs, token, "algorithm")


def test_alg_none_handcrafted_refused(hs):
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    refused(hs, f"{header}.{payload}.")
    header2 = b64(json.dumps({"alg": "None"}).encode())
    refused(hs, f"{header2}.{payload}.")


def test_expired_refused(hs):
    token = jwt.encode(claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), SECRET, algorithm="HS256")
    refused(hs, token, "expired")


def test_not_yet_valid_refused(hs):
    token = jwt.encode(claims(nbf=int(time.time()) + 3600), SECRET, algorithm="HS256")
    refused(hs, token, "not yet valid")


def test_exp_required(hs):
    token = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
    refused(hs, token, "exp")


def test_tampered_payload_refused(hs):
    token = issue_dev_token(SECRET, user_id="user-1", entity_id="entity-1")
    header, payload, sig = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["entity_id"] = "victim-entity"
    refused(hs, f"{header}.{b64(json.dumps(forged).encode())}.{sig}", "signature")


def test_tampered_signature_refused(hs):
    token = issue_dev_token(SECRET, user_id="user-1", entity_id="entity-1")
    head, _, sig = token.rpartition(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    refused(hs, f"{head}.{flipped}")


def test_wrong_secret_refused(hs):
    refused(hs, issue_dev_token("another-secret-0123456789abcdef012345", user_id="u", entity_id="e"), "signature")


def test_rs256_token_refused_when_hs256_configured(hs, rsa_key):
    refused(hs, rs_token(rsa_key), "algorithm")


def test_other_hmac_algorithms_refused(hs):
    refused(hs, jwt.encode(claims(), SECRET * 2, algorithm="HS512"), "algorithm")


def test_wrong_issuer_and_audience_refused_when_configured():
    v = TokenVerifier(Settings(jwt_secret=SECRET, jwt_issuer="rtstream", jwt_audience="dash"))
    ok = issue_dev_token(SECRET, user_id="u", entity_id="e", issuer="rtstream", audience="dash")
    assert v.verify(ok).user_id == "u"
    refused(v, issue_dev_token(SECRET, user_id="u", entity_id="e", issuer="evil", audience="dash"), "issuer")
    refused(v, issue_dev_token(SECRET, user_id="u", entity_id="e", issuer="rtstream", audience="other"), "audience")
    refused(v, issue_dev_token(SECRET, user_id="u", entity_id="e"))  # neither claim


MISSING = object()


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", MISSING),
        ("sub", ""),
        ("sub", 42),
        ("sub", "a#b"),
        ("entity_id", MISSING),
        ("entity_id", ""),
        ("entity_id", "e1#transactions.new"),
        ("entity_id", "e1:entity:e2"),
        ("entity_id", ["e1"]),
        ("entity_id", "x" * 129),
        ("role", "superuser"),
        ("role", 1),
    ],
)
def test_bad_claims_refused(hs, claim, value):
    payload = claims()
    if value is MISSING:
        del payload[claim]
    else:
        payload[claim] = value
    refused(hs, jwt.encode(payload, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("token", [None, "", "not-a-jwt", "a.b.c", "x" * 9000, "....."])
def test_garbage_refused(hs, token):
    refused(hs, token)


def test_no_key_configured_is_a_configuration_error():
    with pytest.raises(ValueError):
        TokenVerifier(Settings())


# ---- RS256 via JWKS (production) ----------------------------------------------------


def test_rs256_valid(rs, rsa_key):
    assert rs.verify(rs_token(rsa_key, role="agent")) == Principal("user-1", "entity-1", "agent")


def test_rs256_cognito_custom_attribute_claims(rs, rsa_key):
    token = jwt.encode(
        {k: v for k, v in claims(iss=ISS, aud=AUD, **{"custom:entity_id": "entity-7", "custom:role": "admin"}).items() if k not in ("entity_id", "role")},
        rsa_key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    assert rs.verify(token) == Principal("user-1", "entity-7", "admin")


def test_rs256_wrong_issuer_refused(rs, rsa_key):
    token = jwt.encode(claims(iss="https://evil.example", aud=AUD), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    refused(rs, token, "issuer")


def test_rs256_wrong_audience_refused(rs, rsa_key):
    token = jwt.encode(claims(iss=ISS, aud="someone-else"), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    refused(rs, token, "audience")


def test_rs256_expired_refused(rs, rsa_key):
    refused(rs, rs_token(rsa_key, exp=int(time.time()) - 60), "expired")


def test_rs256_not_yet_valid_refused(rs, rsa_key):
    refused(rs, rs_token(rsa_key, nbf=int(time.time()) + 600), "not yet valid")


def test_rs256_signed_by_other_key_refused(rs):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(rs, rs_token(other), "signature")


def test_rs256_unknown_kid_refused(rs, rsa_key):
    refused(rs, rs_token(rsa_key, kid="unknown"))


def test_algorithm_confusion_hs256_signed_with_public_key_refused(rs, rsa_key):
    """The classic attack: HS256 with the RSA public key (which is public) as the HMAC secret."""
    public_pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    payload = b64(json.dumps(claims(iss=ISS, aud=AUD)).encode())
    sig = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    refused(rs, f"{header}.{payload}.{sig}", "algorithm")


def test_rs256_alg_none_refused(rs):
    header = b64(json.dumps({"alg": "none", "kid": "k1"}).encode())
    refused(rs, f"{header}.{b64(json.dumps(claims(iss=ISS, aud=AUD)).encode())}.")


def test_dev_secret_token_refused_when_rs256_configured(rs):
    refused(rs, issue_dev_token(SECRET, user_id="u", entity_id="e", issuer=ISS, audience=AUD), "algorithm")


# ---- issuing and extracting -------------------------------------------------------


def test_issue_dev_token_claims():
    token = issue_dev_token(SECRET, user_id="u1", entity_id="e1", role="agent", ttl_seconds=60, now=1_000_000)
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded == {"sub": "u1", "entity_id": "e1", "role": "agent", "iat": 1_000_000, "exp": 1_000_060}


@pytest.mark.parametrize("kwargs", [{"user_id": "a b"}, {"entity_id": "e#1"}, {"role": "root"}, {"ttl_seconds": 0}])
def test_issue_dev_token_refuses_bad_input(kwargs):
    args = {"user_id": "u", "entity_id": "e", **kwargs}
    with pytest.raises(ValueError):
        issue_dev_token(SECRET, **args)


def test_extract_token():
    assert extract_token({"token": "q1"}, None) == "q1"
    assert extract_token({"access_token": "q2"}, {}) == "q2"
    assert extract_token(None, {"Authorization": "Bearer h1"}) == "h1"
    assert extract_token({}, {"authorization": "bearer h2"}) == "h2"
    assert extract_token({}, {"AUTHORIZATION": "Bearer   h3  "}) == "h3"
    assert extract_token({"token": ["m1", "m2"]}, None) == "m1"
    assert extract_token({"other": "x"}, {"Authorization": "Basic dXNlcjpwYXNz"}) is None
    assert extract_token({"token": ""}, {"Authorization": "Bearer"}) is None
    assert extract_token(None, None) is None
