"""The template's DynamoDB tables, created locally (moto, `rtstream dev`, tests)
exactly as `template.yaml` declares them. Loading and intrinsics live in
:mod:`rtstream_cli.cloudformation`.
"""

from __future__ import annotations

from typing import Any

from .cloudformation import load_template, resources_of_type


def table_definitions(template: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    """``create_table`` keyword arguments for each ``AWS::DynamoDB::Table``.

    ``names`` maps a table's logical id to the name to create (locally there is
    no stack name to substitute). The TTL attribute, if any, is returned under
    the extra key ``"_ttl_attribute"`` for ``update_time_to_live``.
    """
    out = []
    for logical_id, resource in resources_of_type(template, "AWS::DynamoDB::Table").items():
        if logical_id not in names:
            raise KeyError(f"no local name given for table {logical_id}")
        props = resource["Properties"]
        kwargs: dict[str, Any] = {
            "TableName": names[logical_id],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if props.get("GlobalSecondaryIndexes"):
            kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        ttl = props.get("TimeToLiveSpecification") or {}
        if ttl.get("Enabled"):
            kwargs["_ttl_attribute"] = ttl["AttributeName"]
        out.append(kwargs)
    return out


def create_tables(dynamodb_client, names: dict[str, str], template: dict[str, Any] | None = None) -> list[str]:
    """Create the template's tables (idempotent) with an injected boto3 client."""
    template = template or load_template()
    created = []
    existing = set(dynamodb_client.list_tables().get("TableNames", []))
    for kwargs in table_definitions(template, names):
        ttl_attribute = kwargs.pop("_ttl_attribute", None)
        name = kwargs["TableName"]
        if name not in existing:
            dynamodb_client.create_table(**kwargs)
            dynamodb_client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
            if ttl_attribute:
                dynamodb_client.update_time_to_live(
                    TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute}
                )
            created.append(name)
    return created
