"""Reading `template.yaml`: the one source of the local system's wiring.

The emulator, `rtstream dev`, `deploy-local` and the tests all read tables,
routes and functions from here, so local and cloud cannot drift.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = PROJECT_ROOT / "template.yaml"

_INTRINSICS = (
    "Ref", "Condition", "GetAtt", "Sub", "Join", "Select", "Split", "FindInMap", "GetAZs",
    "ImportValue", "If", "Not", "Equals", "And", "Or", "Base64", "Cidr", "Transform",
)


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags into their long form."""


def _make_constructor(name: str):
    key = "Ref" if name in ("Ref", "Condition") else f"Fn::{name}"

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        if name == "Condition":
            return {"Condition": value}
        return {key: value}

    return construct


for _name in _INTRINSICS:
    _CfnLoader.add_constructor(f"!{_name}", _make_constructor(_name))


def load_template(path: str | Path = TEMPLATE_PATH) -> dict[str, Any]:
    return _load(str(Path(path).resolve()))


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def resources_of_type(template: dict[str, Any], type_name: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in (template.get("Resources") or {}).items() if r.get("Type") == type_name}


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
