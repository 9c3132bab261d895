"""`sam package` + the SAM transform, offline.

``package`` uploads the built zips to an S3 bucket at the endpoint and points
each ``CodeUri`` / ``ContentUri`` at its object (what ``sam package`` does for
AWS). ``sam_to_cloudformation`` runs aws-sam-translator locally, with a
managed-policy loader that reads the translator's bundled policy map instead
of calling IAM, so no network and no real account are needed.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from .build import Artifact

SAM_TRANSFORM = "AWS::Serverless-2016-10-31"


class OfflineManagedPolicyLoader:
    """``ManagedPolicyLoader`` replacement: AWS managed policy name -> ARN from
    the map shipped inside aws-sam-translator (no ``iam:ListPolicies``)."""

    def load(self) -> dict[str, str]:
        data = resources.files("samtranslator").joinpath("internal/data/aws_managed_policies.json").read_text()
        policies = json.loads(data)
        # the bundled file is keyed by partition: {"aws": {name: arn}, ...}
        return dict(policies.get("aws", policies))


def artifact_bucket(account_id: str, region: str) -> str:
    return f"rtstream-deploy-local-{account_id}-{region}"


def package(template: dict[str, Any], artifacts: dict[str, Artifact], s3_client, bucket: str, prefix: str) -> dict[str, Any]:
    """Upload ``artifacts`` and return a copy of ``template`` that points at them."""
    try:
        s3_client.head_bucket(Bucket=bucket)
    except Exception:
        s3_client.create_bucket(Bucket=bucket)
    packaged = copy.deepcopy(template)
    resources_ = packaged.get("Resources") or {}
    for logical_id, artifact in artifacts.items():
        key = f"{prefix}/{artifact.logical_id}-{artifact.sha256[:16]}.zip"
        s3_client.upload_file(str(artifact.zip_path), bucket, key)
        props = resources_[logical_id].setdefault("Properties", {})
        location = {"Bucket": bucket, "Key": key}
        if artifact.kind == "layer":
            props["ContentUri"] = location
        else:
            props["CodeUri"] = location
    return packaged


def sam_to_cloudformation(template: dict[str, Any], parameter_values: dict[str, Any], region: str,
                          account_id: str) -> dict[str, Any]:
    """The plain CloudFormation template SAM would deploy."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator
    from samtranslator.utils.py27hash_fix import to_py27_compatible_template, undo_mark_unicode_str_in_template

    declared = template.get("Transform")
    transforms = declared if isinstance(declared, list) else [declared] if declared else []
    if SAM_TRANSFORM not in transforms:
        return copy.deepcopy(template)
    values = dict(parameter_values)
    values.setdefault("AWS::Region", region)
    values.setdefault("AWS::AccountId", account_id)
    values.setdefault("AWS::Partition", "aws")
    fragment = copy.deepcopy(template)
    # samtranslator.translator.transform.transform() without its boto3 default
    # session, which needs a configured region; this one is offline and explicit.
    to_py27_compatible_template(fragment, values)
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    policies = OfflineManagedPolicyLoader().load()
    translated = translator.translate(fragment, parameter_values=values, get_managed_policy_map=lambda: policies)
    return undo_mark_unicode_str_in_template(translated)
