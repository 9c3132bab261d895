"""Fixture handler for every route: records each event (JSON lines in
$GATEWAY_TEST_RECORD) and echoes what the tests need to see."""

import json
import time

import helper  # a module beside app.py: Lambda puts the code directory on sys.path
from rtstream.adapters.lambda_runtime import function_environment

# The function's environment as this project's handlers read it (os.environ on
# Lambda; the emulator's per-function mapping locally).
ENV = dict(function_environment())
COLD_START_ENV = {k: v for k, v in ENV.items() if k.startswith("FIXTURE_")}


def handler(event, context):
    with open(ENV["GATEWAY_TEST_RECORD"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\n")
    route = event["requestContext"]["routeKey"]
    if route == "$connect":
        status = (event.get("queryStringParameters") or {}).get("connect_status")
        return {"statusCode": int(status) if status else 200}
    if route == "$disconnect":
        return {"statusCode": 200}
    body = json.loads(event["body"]) if not event["isBase64Encoded"] and event["body"].startswith("{") else {}
    if body.get("sleep"):
        time.sleep(float(body["sleep"]))
    if body.get("fail"):
        raise RuntimeError("handler bug")
    reply = {
        "route": route,
        "size": len(event["body"]),
        "event": event if body.get("show_event") else None,
        "env": COLD_START_ENV if body.get("show_env") else None,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function": context.function_name,
        "helper": helper.NAME,
    }
    return {"statusCode": 200, "body": json.dumps(reply)}
