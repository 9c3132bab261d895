"""The worker's SigV4 signer: byte-identical to botocore's ``SigV4Auth`` for the
same inputs (random inputs, both the general and the batch form) and to AWS's
published Signature Version 4 test suite; signing keys cached per day and
credentials, re-derived when either changes."""

from __future__ import annotations

import datetime
import json
import random
import string
from pathlib import Path

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from rtstream_fanout.sigv4 import (
    SigV4Signer,
    StaticCredentials,
    canonical_host,
    canonical_uri,
    derive_signing_key,
)

SUITE = json.loads((Path(__file__).parent / "data" / "sigv4_test_suite.json").read_text())


class SigV4AuthAt(botocore.auth.SigV4Auth):
    """botocore's SigV4Auth.add_auth, step for step, at a given instant instead of now."""

    def __init__(self, credentials, service, region, when):
        super().__init__(credentials, service, region)
        self.when = when

    def add_auth(self, request):
        request.context["timestamp"] = self.when.strftime(botocore.auth.SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        canonical_request = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical_request)
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))


def botocore_headers(*, method, url, headers, body, params, creds, region, service, when):
    """What botocore's SigV4Auth.add_auth adds, at the instant ``when``."""
    request = AWSRequest(method=method, url=url, data=body, params=list(params))
    for name, value in headers:
        request.headers[name] = value
    SigV4AuthAt(Credentials(*creds), service, region, when).add_auth(request)
    added = {"X-Amz-Date": request.headers["X-Amz-Date"], "Authorization": request.headers["Authorization"]}
    if creds[2]:
        added["X-Amz-Security-Token"] = request.headers["X-Amz-Security-Token"]
    return added


@pytest.mark.parametrize("case", SUITE["cases"], ids=[c["name"] for c in SUITE["cases"]])
def test_aws_signature_v4_test_suite(case):
    signer = SigV4Signer(StaticCredentials(SUITE["access_key"], SUITE["secret_key"], case["token"]),
                         SUITE["region"], SUITE["service"])
    added = dict(signer.sign(case["method"], "", case["path"], params=[tuple(p) for p in case["params"]],
                             headers=[tuple(h) for h in case["headers"]], body=case["body"].encode(),
                             timestamp=SUITE["timestamp"]))
    assert added["Authorization"] == case["authorization"]
    assert added["X-Amz-Date"] == SUITE["timestamp"]
    assert added.get("X-Amz-Security-Token") == case["token"]


def test_batch_form_matches_the_test_suite_for_a_vanilla_post():
    case = next(c for c in SUITE["cases"] if c["name"] == "post-vanilla")
    signer = SigV4Signer(StaticCredentials(SUITE["access_key"], SUITE["secret_key"]), SUITE["region"], SUITE["service"])
    lines = signer.batch("POST", "example.amazonaws.com", b"", timestamp=SUITE["timestamp"]).header_lines(b"/")
    assert lines == f"X-Amz-Date: {SUITE['timestamp']}\r\nAuthorization: {case['authorization']}\r\n".encode()


_PATH_CHARS = string.ascii_letters + string.digits + "-._~%@=+!$&'()*,;: /" + "é中😀"
_VALUE_CHARS = string.ascii_letters + string.digits + " \t-_.:;,/\"=+@"


def _random_case(rng: random.Random):
    tls = rng.random() < 0.7
    hostname = rng.choice(["abc123.execute-api.eu-west-1.amazonaws.com", "Example.AmazonAWS.com", "127.0.0.1", "localhost"])
    port = rng.choice([None, None, 443, 80, 8443, rng.randint(1024, 65535)])
    url_host = hostname + (f":{port}" if port else "")
    path = "/" + "".join(rng.choice(_PATH_CHARS) for _ in range(rng.randint(0, 60)))
    if rng.random() < 0.3:
        path = rng.choice(["/prod/@connections/", "/a/./b/../c//d/"]) + path.lstrip("/")
    params = [("".join(rng.choice(_VALUE_CHARS) for _ in range(rng.randint(1, 8))),
               "".join(rng.choice(_VALUE_CHARS) for _ in range(rng.randint(0, 8)))) for _ in range(rng.choice([0, 0, 1, 3]))]
    headers = []
    for _ in range(rng.choice([0, 0, 1, 2, 4])):
        name = rng.choice(["Content-Type", "X-Custom", "x-custom", "User-Agent", "Connection", "X-Amz-Meta-A", "Accept"])
        headers.append((name, "".join(rng.choice(_VALUE_CHARS) for _ in range(rng.randint(0, 20)))))
    body = rng.randbytes(rng.choice([0, 0, 1, 100, 5000]))
    method = rng.choice(["GET", "POST", "DELETE", "PUT", "post"])
    secret = "".join(rng.choice(string.ascii_letters + string.digits + "/+") for _ in range(40))
    token = rng.choice([None, "".join(rng.choice(string.ascii_letters + string.digits + "/+=") for _ in range(rng.randint(20, 900)))])
    creds = (f"AKIA{rng.randrange(10**12):012d}", secret, token)
    region = rng.choice(["us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1"])
    service = rng.choice(["execute-api", "service", "dynamodb"])
    when = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=rng.randrange(10**9))
    return tls, hostname, port, url_host, path, params, headers, body, method, creds, region, service, when


def test_byte_identical_to_botocore_over_random_inputs():
    rng = random.Random(1205)
    for _ in range(600):
        tls, hostname, port, url_host, path, params, headers, body, method, creds, region, service, when = _random_case(rng)
        expected = botocore_headers(method=method, url=f"{'https' if tls else 'http'}://{url_host}{path}",
                                    headers=headers, body=body, params=params, creds=creds, region=region,
                                    service=service, when=when)
        signer = SigV4Signer(StaticCredentials(*creds), region, service, clock=when.timestamp)
        host = canonical_host(hostname, port, tls)
        assert dict(signer.sign(method, host, path, params=params, headers=headers, body=body)) == expected, (path, headers)
        # the batch form (what the poster uses: no extra headers, no query)
        plain = botocore_headers(method=method, url=f"{'https' if tls else 'http'}://{url_host}{path}",
                                 headers=[], body=body, params=[], creds=creds, region=region, service=service, when=when)
        lines = signer.batch(method, host, body).header_lines(canonical_uri(path).encode())
        order = ["X-Amz-Date", "X-Amz-Security-Token", "Authorization"]
        assert lines == "".join(f"{k}: {plain[k]}\r\n" for k in order if k in plain).encode(), path


class Rotating:
    """A credential provider whose keys change, like a task role's."""

    def __init__(self):
        self.current = ("AKIA1", "secret-one", "token-one")
        self.reads = 0

    def get_frozen_credentials(self):
        self.reads += 1
        return Credentials(*self.current).get_frozen_credentials()


def test_signing_key_is_cached_per_day_and_credentials():
    provider = Rotating()
    now = [datetime.datetime(2026, 12, 5, 23, 59, 58, tzinfo=datetime.timezone.utc).timestamp()]
    derived = []
    signer = SigV4Signer(provider, "eu-west-1", clock=lambda: now[0],
                         derive_key=lambda *a: derived.append(a) or derive_signing_key(*a))

    def sign_batch():
        return signer.batch("POST", "h.example", b"x").header_lines(b"/dev/%40connections/a")

    for _ in range(3):
        sign_batch()
    assert derived == [("secret-one", "20261205", "eu-west-1", "execute-api")]
    now[0] += 5  # past midnight: a new day's key
    sign_batch()
    assert derived[-1][1] == "20261206" and len(derived) == 2
    provider.current = ("AKIA2", "secret-two", "token-two")  # rotated: the next batch uses the new key
    lines = sign_batch()
    assert derived[-1][0] == "secret-two" and len(derived) == 3
    assert b"Credential=AKIA2/20261206/" in lines and b"X-Amz-Security-Token: token-two" in lines
    assert provider.reads == 5  # once per batch, not per request


def test_missing_credentials_or_region_are_refused():
    class Nothing:
        def get_frozen_credentials(self):
            return None

    with pytest.raises(ValueError):
        SigV4Signer(Nothing(), "us-east-1").batch("POST", "h", b"")
    with pytest.raises(ValueError):
        SigV4Signer(StaticCredentials("a", "b"), "")
