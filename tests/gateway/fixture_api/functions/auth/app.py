"""Fixture authorizer: the token names the outcome (allow-<user>, deny, unauthorized, crash)."""


def handler(event, context):
    token = (event.get("queryStringParameters") or {}).get("token", "")
    if token == "unauthorized":
        raise Exception("Unauthorized")
    if token == "crash":
        raise RuntimeError("authorizer bug")
    effect = "Allow" if token.startswith("allow-") else "Deny"
    return {
        "principalId": token.removeprefix("allow-") or "nobody",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}],
        },
        "context": {"userId": token.removeprefix("allow-"), "entityId": "entity-1", "role": "user"},
    }
