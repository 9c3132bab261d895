"""Deploying `template.yaml` itself into a LocalStack-compatible emulator.

The pipeline mirrors `sam build && sam package && sam deploy`, offline:

- ``build``: the layer (its sources + ``pip install -r requirements.txt`` into
  ``<build>/<Layer>/python``) and each function's ``CodeUri``, zipped.
- ``transform``: upload the zips to S3 at the endpoint, point ``CodeUri`` /
  ``ContentUri`` at them, and run aws-sam-translator with a managed-policy
  loader that needs no network.
- ``adapt``: the ONE place where the CloudFormation template is changed for an
  emulator, each change listed with its reason; the settings an emulator drops
  are applied by API after the deploy. ``template.yaml`` stays right for AWS.
- ``stack``: CloudFormation create/delete at the endpoint, the stack's
  endpoints and tables from its outputs and resources.
- ``services``: the fan-out worker and SSE server as local processes
  configured from the deployed stack (on AWS they are ECS tasks).
"""

from __future__ import annotations

from .stack import DeployedStack, DeployError, deploy_stack, destroy_stack, describe_deployed  # noqa: F401
