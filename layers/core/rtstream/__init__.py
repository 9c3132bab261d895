"""realtime-streaming core: transport-independent logic, shipped as the Lambda layer.

The modules at this level never import boto3, redis or a web framework; they talk
to the ports in :mod:`rtstream.ports`. Vendor code lives in :mod:`rtstream.adapters`.
"""

__version__ = "0.1.0"
