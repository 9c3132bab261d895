"""Hosting the template's Lambda functions in-process: each function's handler
file is imported by path under a module name unique to one emulator and
function (its own "cold start"), and invoked in a thread pool with a
Lambda-like context.

Each function gets its own environment the way this project's handlers read
it: :data:`rtstream.adapters.lambda_runtime.FUNCTION_ENVIRONMENT` is set while
the handler module is imported and during each invocation, so functions with
different environments share one process and ``os.environ`` is never changed.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import itertools
import logging
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

from rtstream_cli.cloudformation import ACCOUNT_ID

from rtstream.adapters.lambda_runtime import FUNCTION_ENVIRONMENT

from .api import FunctionSpec

log = logging.getLogger("rtstream_gateway")
_instance_counter = itertools.count(1)


class LambdaContext:
    """The attributes and method of AWS's Python Lambda context object."""

    def __init__(self, spec: FunctionSpec, region: str):
        self.function_name = spec.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{spec.name}"
        self.memory_limit_in_mb = spec.memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{spec.name}"
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + spec.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class HandlerTimeout(Exception):
    pass


class LocalLambdaHost:
    """The template's functions, each with its own environment, in this process."""

    def __init__(self, functions: list[FunctionSpec], *, region: str,
                 environments: Mapping[str, Mapping[str, str]], max_workers: int = 16):
        self.region = region
        self._specs = {f.logical_id: f for f in functions}
        self._environments = {f.logical_id: dict(environments[f.logical_id]) for f in functions}
        # per function: a context with its environment set, copied for each invocation
        self._contexts: dict[str, contextvars.Context] = {}
        self._handlers: dict[str, Callable[[dict, Any], Any]] = {}
        self._modules: list[str] = []
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rtgw-lambda")
        self._instance = next(_instance_counter)

    def load(self) -> None:
        """Import every function's handler, within its environment (handlers read it at import)."""
        for spec in self._specs.values():
            context = contextvars.copy_context()
            context.run(FUNCTION_ENVIRONMENT.set, self._environments[spec.logical_id])
            self._contexts[spec.logical_id] = context
            self._handlers[spec.logical_id] = context.copy().run(self._import, spec)

    def _import(self, spec: FunctionSpec) -> Callable[[dict, Any], Any]:
        module_name = f"_rtstream_gateway_{self._instance}_{spec.logical_id}"
        file_spec = importlib.util.spec_from_file_location(module_name, spec.source_file)
        if file_spec is None or file_spec.loader is None:
            raise ImportError(f"cannot import {spec.source_file}")
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[module_name] = module
        self._modules.append(module_name)
        # Lambda puts the code directory on sys.path; helpers beside app.py import as on AWS.
        sys.path.insert(0, str(spec.code_dir))
        try:
            file_spec.loader.exec_module(module)
        finally:
            try:
                sys.path.remove(str(spec.code_dir))
            except ValueError:
                pass
        handler = getattr(module, spec.handler_attr, None)
        if not callable(handler):
            raise ImportError(f"{spec.source_file} has no callable {spec.handler_attr!r}")
        return handler

    async def invoke(self, spec: FunctionSpec, event: dict[str, Any]) -> Any:
        """Run the handler; raises what it raises, or HandlerTimeout after its Timeout."""
        handler = self._handlers[spec.logical_id]
        context = LambdaContext(spec, self.region)
        loop = asyncio.get_running_loop()
        # a fresh copy each time: one Context cannot be entered by two threads at once
        invocation = self._contexts[spec.logical_id].copy()
        future = loop.run_in_executor(self._pool, invocation.run, handler, event, context)
        try:
            return await asyncio.wait_for(future, timeout=spec.timeout_seconds)
        except asyncio.TimeoutError:
            log.warning("%s timed out after %.1fs (Lambda would have stopped it)", spec.name, spec.timeout_seconds)
            raise HandlerTimeout(spec.name) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for name in self._modules:
            sys.modules.pop(name, None)
        self._modules.clear()
