"""The HS256 secret from an SSM SecureString, for the container tasks (SSE
server, fan-out worker), through Powertools Parameters: decrypted, cached in
the process (``max_age``), read at start so a missing or unreadable parameter
stops the task at once with a coded error instead of refusing every client.

The Lambdas read the same parameter (``RTSTREAM_JWT_SECRET_PARAM``) through
:class:`~rtstream.adapters.lambda_runtime.LambdaRuntime`.
"""

from __future__ import annotations


from ..errors import BackendUnavailable
from ..settings import Settings

JWT_SECRET_PARAM_ENV = "RTSTREAM_JWT_SECRET_PARAM"
# A rotated secret is picked up by tasks started after this many seconds.
CACHE_SECONDS = 300


def read_secure_string(name: str, *, max_age: int = CACHE_SECONDS) -> str:
    """The decrypted value of SSM parameter ``name`` (cached ``max_age`` s)."""
    from aws_lambda_powertools.utilities.parameters import get_parameter
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    try:
        value = get_parameter(name, decrypt=True, max_age=max_age)
    except GetParameterError as exc:
        # the message names the parameter and the AWS error code, never the value
        raise BackendUnavailable(f"could not read SSM parameter {name}: {exc}") from exc
    if not isinstance(value, str) or not value:
        raise BackendUnavailable(f"SSM parameter {name} is empty")
    return value


def settings_with_jwt_secret(settings: Settings) -> Settings:
    """``settings`` with ``jwt_secret`` filled from ``RTSTREAM_JWT_SECRET_PARAM``
    when neither a literal secret nor a JWKS URL is configured."""
    name = settings.jwt_secret_param
    if settings.jwt_secret or settings.jwks_url or not name:
        return settings
    return settings.replace(jwt_secret=read_secure_string(name))
