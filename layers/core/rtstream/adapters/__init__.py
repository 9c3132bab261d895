"""Vendor edges: boto3, redis, API Gateway. Clients are injected (``client=``) and
vendor errors leave as :mod:`rtstream.errors`. Modules import their vendor SDKs
lazily where a Lambda cold start would otherwise pay for them."""
