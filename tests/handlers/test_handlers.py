"""Each handler with captured API Gateway WebSocket events (tests/events/*.json),
DynamoDB in moto (tables from template.yaml), a real Redis."""

from __future__ import annotations

import io
import json
import time

import pytest

from rtstream import keys, streams
from rtstream.adapters.dynamodb import DynamoDBRegistry
from rtstream.settings import Settings


CID = "TF9dteHXoAMCJ5g="


@pytest.fixture
def registry(dynamodb_client, tables):
    return DynamoDBRegistry(dynamodb_client, connections_table=tables["ConnectionsTable"], subscriptions_table=tables["SubscriptionsTable"])


def fanout_entries(redis_client, entity="entity-1"):
    part = keys.fanout_stream(keys.partition_of(entity, Settings())).name
    return [streams.decode(fields) for _, fields in redis_client.xrange(part)]


def body(result):
    return json.loads(result["body"])


def with_connection(event, cid):
    event["requestContext"]["connectionId"] = cid
    return event


# ---- authorizer ----------------------------------------------------------------------


@pytest.mark.parametrize("event_name", ["authorizer_query_token", "authorizer_header_token"])
def test_authorizer_allows_valid_token(load_event, load_handler, token, event_name):
    authorizer = load_handler("authorizer")
    event = load_event(event_name, token=token(role="agent"))
    result = authorizer(event)
    assert result["principalId"] == "user-1"
    assert result["context"] == {"userId": "user-1", "entityId": "entity-1", "role": "agent"}
    (statement,) = result["policyDocument"]["Statement"]
    assert statement == {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": event["methodArn"]}


@pytest.mark.parametrize(
    "make_token",
    [
        lambda t: "",  # missing
        lambda t: "garbage",
        lambda t: t(ttl_seconds=1, now=time.time() - 3600),  # expired
        lambda t: t()[:-4] + "AAAA",  # tampered signature
        lambda t: __import__("jwt").encode({"sub": "u", "entity_id": "e", "exp": int(time.time()) + 60}, None, algorithm="none"),
    ],
    ids=["missing", "garbage", "expired", "tampered", "alg-none"],
)
def test_authorizer_refuses_with_a_deny_policy(load_event, load_handler, token, make_token, capsys):
    authorizer = load_handler("authorizer")
    log_stream = io.StringIO()
    # Powertools loggers of one service share a handler bound to the first stdout seen
    previous = authorizer.module.logger.registered_handler.setStream(log_stream)
    bad = make_token(token)
    event = load_event("authorizer_query_token", token=bad)
    if not bad:
        event["queryStringParameters"] = {}
        event["multiValueQueryStringParameters"] = {}
    refusal = authorizer(event)  # API Gateway (and MiniStack): 403
    assert refusal["policyDocument"]["Statement"] == [
        {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": event["methodArn"]}]
    assert refusal["context"] == {}
    authorizer.module.logger.registered_handler.setStream(previous)
    logged = log_stream.getvalue() + capsys.readouterr().out
    assert "connection refused by the authorizer" in logged
    if len(bad) > 10:
        assert bad not in logged  # never log tokens


def test_authorizer_reads_secret_from_ssm_once(load_event, load_handler, monkeypatch, moto_endpoint, token):
    import boto3

    ssm = boto3.client("ssm", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"/rtstream/test/jwt-{time.time_ns()}"
    secret = "ssm-stored-secret-0123456789abcdef0123456789"
    ssm.put_parameter(Name=name, Value=secret, Type="SecureString")
    monkeypatch.delenv("RTSTREAM_JWT_SECRET")
    monkeypatch.setenv("RTSTREAM_JWT_SECRET_PARAM", name)
    authorizer = load_handler("authorizer")
    from rtstream.auth import issue_dev_token

    good = issue_dev_token(secret, user_id="user-9", entity_id="entity-9")
    assert authorizer(load_event("authorizer_query_token", token=good))["principalId"] == "user-9"
    ssm.delete_parameter(Name=name)  # read once per cold start: still works
    assert authorizer(load_event("authorizer_query_token", token=good))["principalId"] == "user-9"
    refused = authorizer(load_event("authorizer_query_token", token=token()))  # signed with the env secret
    assert refused["policyDocument"]["Statement"][0]["Effect"] == "Deny"


# ---- $connect / $disconnect ------------------------------------------------------------


def test_connect_records_connection(load_event, load_handler, registry):
    connect = load_handler("connect")
    event = load_event("connect")
    connected_at = event["requestContext"]["connectedAt"]
    assert connect(event) == {"statusCode": 200}
    conn = registry.get_connection(CID)
    assert conn.user_id == "user-1" and conn.entity_id == "entity-1" and conn.principal.role == "user"
    assert conn.source_ip == "203.0.113.10"
    assert conn.connected_at_ms == connected_at
    assert conn.expires_at == connected_at // 1000 + 7200 + 300


def test_connect_refuses_over_the_per_user_limit(load_event, load_handler, registry, monkeypatch):
    monkeypatch.setenv("RTSTREAM_MAX_CONNECTIONS_PER_USER", "2")
    connect = load_handler("connect")
    results = []
    for i in range(3):
        event = with_connection(load_event("connect"), f"conn{i}=")
        results.append(connect(event))
    assert [r["statusCode"] for r in results] == [200, 200, 429]
    assert registry.get_connection("conn2=") is None


def test_connect_without_authorizer_context_is_refused(load_event, load_handler, registry):
    connect = load_handler("connect")
    event = load_event("connect")
    del event["requestContext"]["authorizer"]
    assert connect(event)["statusCode"] == 401
    assert registry.get_connection(CID) is None


def test_disconnect_removes_connection_and_subscriptions(load_event, load_handler, registry, redis_client):
    load_handler("connect")(load_event("connect"))
    subscribe = load_handler("subscribe")
    assert body(subscribe(load_event("subscribe")))["type"] == "subscribed"
    assert registry.subscribers("entity-1", "transactions.new")
    assert load_handler("disconnect")(load_event("disconnect")) == {"statusCode": 200}
    assert registry.get_connection(CID) is None
    assert registry.subscribers("entity-1", "transactions.new") == []
    changed = [e for e in fanout_entries(redis_client) if isinstance(e, streams.SubscriptionsChanged)]
    assert changed[-1] == streams.SubscriptionsChanged("entity-1", ("transactions.new",), CID)


def test_disconnect_of_unknown_connection_is_fine(load_event, load_handler):
    assert load_handler("disconnect")(load_event("disconnect")) == {"statusCode": 200}


# ---- subscribe / unsubscribe ----------------------------------------------------------------


def test_subscribe_route_response_and_records(load_event, load_handler, registry, redis_client):
    load_handler("connect")(load_event("connect"))
    result = load_handler("subscribe")(load_event("subscribe"))
    assert result["statusCode"] == 200
    assert body(result) == {"type": "subscribed", "topic": "transactions.new", "cursor": "0-0"}
    (sub,) = registry.subscribers("entity-1", "transactions.new")
    assert sub.connection_id == CID and sub.filters.sources == ("data_pool",) and sub.filters.min_amount == 10.0
    assert isinstance(fanout_entries(redis_client)[-1], streams.SubscriptionsChanged)


def test_subscribe_since_queues_replay_and_answers_nothing(load_event, load_handler, registry, redis_client):
    load_handler("connect")(load_event("connect"))
    result = load_handler("subscribe")(load_event("subscribe_since"))
    assert result == {"statusCode": 200}  # no body: the fan-out sends subscribed + replay
    (sub,) = registry.subscribers("entity-1", "*")
    assert sub.pending_replay
    # on the partition's replay lane, not behind its live events
    replay_lane = keys.replay_stream(keys.partition_of("entity-1", Settings())).name
    req = [streams.decode(fields) for _, fields in redis_client.xrange(replay_lane)][-1]
    assert isinstance(req, streams.ReplayRequest)
    assert (req.marker, req.connection_id, req.since, req.topic) == (sub.pending_replay, CID, "1795608000000-0", "*")


def test_subscribe_never_reaches_another_entity(load_event, load_handler, registry):
    load_handler("connect")(load_event("connect"))
    result = load_handler("subscribe")(load_event("subscribe_other_entity"))
    assert body(result)["code"] == "invalid_message"
    assert registry.subscribers("entity-2", "transactions.new") == []
    # a well-formed frame still subscribes the token's entity only
    event = load_event("subscribe")
    assert body(load_handler("subscribe")(event))["type"] == "subscribed"
    assert registry.subscribers("entity-2", "transactions.new") == []
    assert registry.subscribers("entity-1", "transactions.new")


def test_unsubscribe(load_event, load_handler, registry):
    load_handler("connect")(load_event("connect"))
    load_handler("subscribe")(load_event("subscribe"))
    unsubscribe = load_handler("unsubscribe")
    assert body(unsubscribe(load_event("unsubscribe"))) == {"type": "unsubscribed", "topic": "transactions.new"}
    assert registry.subscribers("entity-1", "transactions.new") == []
    assert body(unsubscribe(load_event("unsubscribe")))["code"] == "not_subscribed"


# ---- ping / presence / $default -----------------------------------------------------------------


def test_route_response(load_handler):
    module = load_handler("ping").module
    assert module.route_response([]) == {"statusCode": 200}
    assert module.route_response([{"type": "pong", "timestamp": 1}, {"type": "x"}]) == {"statusCode": 200, "body": '{"type":"pong","timestamp":1}'}


def test_every_message_route_runs_the_same_module(load_handler):
    files = {load_handler(name).module.__file__ for name in ("subscribe", "unsubscribe", "ping", "presence", "default")}
    assert len(files) == 1 and files.pop().endswith("functions/messages/app.py")


def test_ping(load_event, load_handler):
    before = int(time.time() * 1000)
    reply = body(load_handler("ping")(load_event("ping")))
    assert reply["type"] == "pong" and before <= reply["timestamp"] <= int(time.time() * 1000)


def test_presence_lists_the_entitys_users(load_event, load_handler):
    connect = load_handler("connect")
    connect(load_event("connect"))
    second = with_connection(load_event("connect"), "second=")
    connect(second)
    other = with_connection(load_event("connect"), "other=")
    other["requestContext"]["authorizer"].update(userId="user-2", principalId="user-2", entityId="entity-2")
    connect(other)
    reply = body(load_handler("presence")(load_event("presence")))
    assert reply == {"type": "presence", "users": [{"userId": "user-1", "connections": 2, "transports": ["websocket"]}]}


def test_agent_presence_forbidden(load_event, load_handler):
    event = load_event("presence")
    event["requestContext"]["authorizer"]["role"] = "agent"
    assert body(load_handler("presence")(event))["code"] == "forbidden"


@pytest.mark.parametrize(
    "event_name, frame, code",
    [
        ("default_invalid_json", None, "invalid_message"),
        ("default_unknown_type", '{"type":"bogus"}', "invalid_message"),
        # the captured frame is a client trying to publish: refused for every role
        ("default_unknown_type", None, "forbidden"),
    ],
)
def test_default_answers_error_frame(load_event, load_handler, event_name, frame, code):
    event = load_event(event_name)
    if frame is not None:
        event["body"] = frame
    reply = body(load_handler("default")(event))
    assert reply["type"] == "error" and reply["code"] == code and reply["message"]


def test_default_base64_binary_frame(load_event, load_handler):
    import base64

    event = load_event("default_unknown_type")
    event["body"] = base64.b64encode(b"\xff\xfe not utf-8").decode()
    event["isBase64Encoded"] = True
    assert body(load_handler("default")(event))["code"] == "invalid_message"


def test_rate_limited_then_closed_through_management_api(load_event, load_handler, monkeypatch, moto_endpoint):
    monkeypatch.setenv("RTSTREAM_RATE_BURST", "2")
    monkeypatch.setenv("RTSTREAM_RATE_PER_SECOND", "0.001")
    monkeypatch.setenv("RTSTREAM_RATE_VIOLATIONS_BEFORE_CLOSE", "2")
    from rtstream.adapters.lambda_runtime import LambdaRuntime

    # the handler over a runtime of our own, so its @connections client can be watched
    runtime = LambdaRuntime()
    ping = load_handler("ping", runtime=runtime)
    deleted, posted = [], []
    client = runtime.pusher(moto_endpoint).client

    def record(params, model, **_):  # botocore's hook: each call's parameters (the call then goes to moto)
        if model.name == "DeleteConnection":
            deleted.append(params["ConnectionId"])
        elif model.name == "PostToConnection":
            posted.append((params["ConnectionId"], json.loads(params["Data"]), list(deleted)))

    client.meta.events.register("before-parameter-build.apigatewaymanagementapi", record)
    replies = [ping(load_event("ping")) for _ in range(4)]
    codes = [body(r).get("code", "ok") for r in replies[:3]]
    assert codes == ["ok", "ok", "rate_limited"]
    # the 2nd refusal closes the connection: its reason goes first through
    # @connections (DELETE cannot carry a close code), then the DELETE; no route body
    assert "body" not in replies[3]
    assert [(cid, frame["code"], before) for cid, frame, before in posted] == [(CID, "policy_violation", [])]
    assert deleted == [CID]


# ---- metrics the alarms and dashboards read ------------------------------------------------


def emf_values(stdout: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in stdout.splitlines():
        if line.startswith('{"_aws"'):
            doc = json.loads(line)
            for directive in doc["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    out.setdefault(metric["Name"], []).extend(doc[metric["Name"]])
    return out


CLOSES = [
    # status, reason, connection age (s), abnormal drop?
    (1000, "Connection Closed Normally", 60, False),  # client or @connections DELETE
    (1001, "", 60, False),  # a browser leaving the page
    (1001, "Going away", 600, True),  # API Gateway's idle timeout
    (1000, "", 7200, True),  # closed at the 2-hour maximum, whatever the status says
    (1006, "Connection closed abnormally", 60, True),  # network gone
    (1011, "Internal error", 60, True),
    (None, None, 60, True),  # no status at all
]


def test_disconnect_counts_every_close_and_only_abnormal_drops(load_event, load_handler, capsys):
    from rtstream import metrics as names

    disconnect = load_handler("disconnect")  # one cold start, every kind of close
    for status, reason, age_s, dropped in CLOSES:
        event = load_event("disconnect")
        ctx = event["requestContext"]
        ctx["connectedAt"] = ctx["requestTimeEpoch"] - age_s * 1000
        for key, value in (("disconnectStatusCode", status), ("disconnectReason", reason)):
            if value is None:
                ctx.pop(key, None)
            else:
                ctx[key] = value
        capsys.readouterr()
        assert disconnect(event) == {"statusCode": 200}
        emitted = emf_values(capsys.readouterr().out)
        assert emitted[names.CONNECTIONS_CLOSED] == [1.0], (status, reason)
        assert emitted.get(names.CONNECTIONS_DROPPED) == ([1.0] if dropped else None), (status, reason, age_s)


def test_subscribe_reports_fresh_or_resumed_once_per_connection(load_event, load_handler, capsys):
    from rtstream import metrics as names

    connect, subscribe = load_handler("connect"), load_handler("subscribe")
    for cid in ("fresh-1", "resumed-1"):
        assert connect(with_connection(load_event("connect"), cid))["statusCode"] == 200
    capsys.readouterr()
    subscribe(with_connection(load_event("subscribe"), "fresh-1"))
    subscribe(with_connection(load_event("subscribe_since"), "resumed-1"))
    subscribe(with_connection(load_event("subscribe"), "resumed-1"))  # not the first any more
    assert emf_values(capsys.readouterr().out)[names.RECONNECTION_RATE] == [float(names.FRESH), float(names.RESUMED)]


def test_housekeeping_handler_sweeps_and_counts(load_event, load_handler, registry, capsys):
    from rtstream import metrics as names
    from rtstream.models import Connection, Principal, Subscription

    now = int(time.time())
    principal = Principal("user-1", "entity-1", "user")
    registry.add_connection(Connection("stale-1", principal, connected_at_ms=(now - 8000) * 1000, expires_at=now - 1))
    registry.put_subscription(Subscription("stale-1", "entity-1", "*", expires_at=now - 1))
    load_handler("connect")(load_event("connect"))
    capsys.readouterr()
    summary = load_handler("housekeeping")({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})
    assert summary["connectionsSwept"] == 1 and summary["active"] == {"websocket": 1, "sse": 0} and summary["errors"] == []
    emitted = emf_values(capsys.readouterr().out)
    assert emitted[names.STALE_CONNECTIONS_SWEPT] == [1.0]
    assert sorted(emitted[names.ACTIVE_CONNECTIONS]) == [0.0, 1.0, 1.0]  # total 1, websocket 1, sse 0 (dimensions: tests/monitoring)
    assert registry.get_connection("stale-1") is None and registry.connection_subscriptions("stale-1") == []
