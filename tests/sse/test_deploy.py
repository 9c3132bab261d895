"""The SSE deployment pieces: the nested stack lints and wires what the issue
asks (HTTPS ALB with a certificate, /healthz, idle timeout above the heartbeat,
autoscaling on connections), and the Dockerfile runs the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "infra" / "sse-service.yaml"


def test_stack_passes_cfn_lint():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    out = subprocess.run([str(cfn_lint), str(STACK)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stack_wiring():
    t = cfn_yaml.load(str(STACK))
    r = t["Resources"]
    listener = r["HttpsListener"]["Properties"]
    assert listener["Protocol"] == "HTTPS" and listener["Certificates"][0]["CertificateArn"] == {"Ref": "CertificateArn"}
    assert r["TargetGroup"]["Properties"]["HealthCheckPath"] == "/healthz"
    attrs = {a["Key"]: a["Value"] for a in r["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]}
    p = t["Parameters"]
    assert attrs["idle_timeout.timeout_seconds"] == {"Ref": "LoadBalancerIdleTimeoutSeconds"}
    assert p["LoadBalancerIdleTimeoutSeconds"]["Default"] > p["HeartbeatSeconds"]["Default"]
    scaling = r["ConnectionsScalingPolicy"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert scaling["MetricName"] == "realtime_streaming.active_connections"
    env = {e["Name"]: e["Value"] for e in r["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]}
    assert env["RTSTREAM_EMF_INTERVAL_S"] != "0" and env["RTSTREAM_SSE_PORT"] == "8080"


def test_emf_line_names_the_scaled_metric(capsys, monkeypatch):
    import json

    from rtstream_sse.config import SSEConfig
    from rtstream_sse.metrics import emit_emf

    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "realtime-streaming")  # must not add a `service` dimension
    config = SSEConfig.from_env({"RTSTREAM_EMF_INTERVAL_S": "60", "RTSTREAM_SERVICE_NAME": "stack-sse"})
    import time

    now_ms = int(time.time() * 1000)
    emit_emf(config.emf_namespace, config.emf_service, active_connections=7, deliveries=3, now_ms=now_ms)
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    directive = record["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "RealtimeStreaming" and record["_aws"]["Timestamp"] == now_ms
    assert directive["Dimensions"] == [["ServiceName"]] and record["ServiceName"] == "stack-sse"
    assert record["realtime_streaming.active_connections"] == [7]


def test_dockerfile_runs_the_server_module():
    text = (ROOT / "infra" / "docker" / "sse.Dockerfile").read_text()
    assert 'CMD ["python", "-m", "rtstream_sse"]' in text
    for path in ("layers/core/rtstream", "infra/rtstream_sse"):
        assert f"COPY {path} " in text and (ROOT / path).is_dir()
    # dev only: the dashboard and the dev tooling never go into the production image
    assert "COPY clients/" not in text and "COPY infra/rtstream_cli" not in text
    assert "/healthz" in text and "STOPSIGNAL SIGTERM" in text


# ---- every samconfig configuration renders task definitions that start -----------
#
# template.yaml is transformed with samtranslator (offline), its conditions and
# the nested stacks' Parameters are resolved with each samconfig environment's
# parameter_overrides, and each nested stack's TaskDefinition environment (on top
# of its Dockerfile's ENV) is what the container's entry point gets here, against
# moto (the SSM parameter, the tables) and the real test Redis. Only what cannot
# be the same on this machine is substituted (see LOCAL_SUBSTITUTES).

import copy
import json
import os
import re
import shlex
import signal
import socket
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import free_port, wait_for_port
from rtstream_cli import cloudformation

SAMCONFIG = ROOT / "samconfig.toml"
NESTED = {"FanoutService": ("fanout", "rtstream_fanout"), "SseService": ("sse", "rtstream_sse")}


def samconfig_environments() -> dict[str, dict[str, str]]:
    """{env: {"region", "stack_name", "overrides": {parameter: value}}} for every env that deploys."""
    config = tomllib.loads(SAMCONFIG.read_text())
    out = {}
    for env, sections in config.items():
        if not isinstance(sections, dict) or "deploy" not in sections:
            continue
        deploy = sections["deploy"]["parameters"]
        pairs = [p.split("=", 1) for p in shlex.split(deploy.get("parameter_overrides", ""))]
        stack = (sections.get("global", {}).get("parameters", {}).get("stack_name")
                 or config["default"]["global"]["parameters"]["stack_name"])
        out[env] = {"region": deploy.get("region", "us-east-1"), "stack_name": stack, "overrides": dict(pairs)}
    return out


class Intrinsics(cloudformation.Intrinsics):
    """The shared resolver, strict: every parameter needs a value or a default,
    and every resource of the template resolves to a placeholder."""

    def __init__(self, template: dict, given: dict, pseudo: dict[str, str]):
        missing = [n for n, spec in (template.get("Parameters") or {}).items() if n not in given and "Default" not in spec]
        assert not missing, f"parameters without a value or a default: {missing}"
        super().__init__(template, parameters=given, pseudo=pseudo,
                         resources={lid: f"{lid}-physical-id" for lid in template["Resources"]})

    def get_att(self, target: str) -> str:
        assert target.split(".", 1)[0] in self.template["Resources"], f"GetAtt of unknown {target}"
        return target


def transformed_template(overrides: dict[str, str], region: str) -> dict:
    from rtstream_cli.localstack.transform import sam_to_cloudformation
    from rtstream_cli.cloudformation import load_template

    template = copy.deepcopy(load_template(ROOT / "template.yaml"))
    for logical_id, resource in template["Resources"].items():  # what `sam package` does
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = f"s3://artifacts-bucket/{logical_id}.zip"
    return sam_to_cloudformation(template, overrides, region, "123456789012")


def dockerfile_env(name: str) -> dict[str, str]:
    """The image's ENV (one ENV instruction, ``K=V \\`` continuation lines)."""
    text = (ROOT / "infra" / "docker" / f"{name}.Dockerfile").read_text()
    block = re.search(r"^ENV (.+?)(?=^\S)", text, re.S | re.M).group(1)
    return dict(pair.split("=", 1) for pair in shlex.split(block.replace("\\\n", " ")))


def rendered_tasks() -> list[tuple[str, str, dict]]:
    """[(samconfig env, nested stack logical id, rendered container definition + env)]."""
    from rtstream_cli.cloudformation import load_template

    out = []
    for env, cfg in samconfig_environments().items():
        top = transformed_template(cfg["overrides"], cfg["region"])
        pseudo = {"AWS::Region": cfg["region"], "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
                  "AWS::StackName": cfg["stack_name"], "AWS::URLSuffix": "amazonaws.com"}
        resolve = Intrinsics(top, cfg["overrides"], pseudo)
        for logical_id in NESTED:
            resource = top["Resources"][logical_id]
            assert resource["Type"] == "AWS::CloudFormation::Stack"
            if not resolve.condition(resource["Condition"]):
                continue
            given = {k: v for k, v in resolve(resource["Properties"]["Parameters"]).items()}
            location = ROOT / resource["Properties"]["TemplateURL"]
            nested = load_template(location)
            nested_resolve = Intrinsics(nested, given, {**pseudo, "AWS::StackName": f"{cfg['stack_name']}-{logical_id}-X1"})
            (container,) = nested_resolve(nested["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"])
            container["env"] = {e["Name"]: str(e["Value"]) for e in container["Environment"]}
            container["task_role"] = nested_resolve(nested["Resources"]["TaskRole"]["Properties"])
            out.append((env, logical_id, container))
    return out


def test_every_samconfig_environment_deploys_both_container_services():
    rendered = {(env, logical_id) for env, logical_id, _ in rendered_tasks()}
    envs = samconfig_environments()
    assert {"dev", "prod"} <= set(envs)
    assert rendered == {(env, s) for env in envs for s in NESTED}


def test_sse_task_with_an_ssm_secret_may_read_exactly_that_parameter():
    for env, logical_id, container in rendered_tasks():
        if logical_id != "SseService":
            continue
        name = samconfig_environments()[env]["overrides"].get("JwtSecretParameterName", "")
        statements = [s for p in container["task_role"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
        ssm = [s for s in statements if "ssm:GetParameter" in str(s["Action"])]
        if name:
            assert container["env"]["RTSTREAM_JWT_SECRET_PARAM"] == name
            assert [s["Resource"] for s in ssm] == [f"arn:aws:ssm:us-east-1:123456789012:parameter{name}"]
        else:
            assert container["env"]["RTSTREAM_JWT_SECRET_PARAM"] == "" and not ssm


class _JwksServer:
    """A JWKS URL on loopback serving one RSA key (the prod configuration verifies RS256)."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, *, issuer: str, audience: str, user: str, entity: str) -> str:
        import jwt

        claims = {"sub": user, "entity_id": entity, "exp": int(time.time()) + 600, "iat": int(time.time())}
        if issuer:
            claims["iss"] = issuer
        if audience:
            claims["aud"] = audience
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _start(module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _wait_serving(proc: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the task exited {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing listening on {port}:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)


def _health_check(container: dict, port: int) -> int:
    """The task definition's HealthCheck command, run here against the local port."""
    command = container["HealthCheck"]["Command"]
    assert command[0] == "CMD" and command[1] == "python"
    container_port = str(container["PortMappings"][0]["ContainerPort"])
    argv = [sys.executable] + [a.replace(f":{container_port}/", f":{port}/") for a in command[2:]]
    return subprocess.run(argv, timeout=10, capture_output=True).returncode


# What cannot be the same on this machine (the task's image and network), and why.
LOCAL_SUBSTITUTES = {
    "REDIS_URL": "the test's redis-server instead of ElastiCache",
    "RTSTREAM_SSE_HOST": "loopback only on this shared machine",
    "RTSTREAM_SSE_PORT": "a free port",
    "RTSTREAM_WORKER_METRICS_HOST": "loopback only on this shared machine",
    "RTSTREAM_WORKER_METRICS_PORT": "a free port",
    "RTSTREAM_JWKS_URL": "a JWKS server on loopback (the configured issuer's keys are not ours)",
    "PYTHONPATH": "the image's /app is this checkout's installed packages",
}


def _task_environment(name: str, container: dict, **substitutes: str) -> dict[str, str]:
    env = {**dockerfile_env(name), **container["env"]}
    assert set(substitutes) <= set(LOCAL_SUBSTITUTES)
    env.update({k: v for k, v in substitutes.items() if k in env or k == "RTSTREAM_JWKS_URL" and env.get(k)})
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.parametrize("env_name,logical_id", [(e, s) for e in ("dev", "prod") for s in NESTED])
def test_rendered_task_starts_and_serves(env_name, logical_id, moto_endpoint, redis_url, tmp_path):
    import boto3
    import jwt as _jwt  # noqa: F401 - PyJWT present for the RS256 token

    from rtstream.auth import issue_dev_token
    from rtstream_cli.template import create_tables

    (container,) = [c for e, s, c in rendered_tasks() if (e, s) == (env_name, logical_id)]
    name, module = NESTED[logical_id]
    port = free_port()
    region = container["env"].get("AWS_REGION", "us-east-1")
    aws = {  # the task role's credentials; moto stands in for AWS
        "AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "PATH": os.environ["PATH"], "POWERTOOLS_TRACE_DISABLED": "true",
    }
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name=region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")
    create_tables(dynamodb, {"ConnectionsTable": container["env"]["CONNECTIONS_TABLE"],
                             "SubscriptionsTable": container["env"]["SUBSCRIPTIONS_TABLE"]})
    jwks = None
    secret = None
    try:
        if name == "sse":
            if container["env"].get("RTSTREAM_JWT_SECRET_PARAM"):
                secret = f"ssm-secret-{os.urandom(24).hex()}"
                boto3.client("ssm", endpoint_url=moto_endpoint, region_name=region, aws_access_key_id="testing",
                             aws_secret_access_key="testing").put_parameter(
                    Name=container["env"]["RTSTREAM_JWT_SECRET_PARAM"], Value=secret, Type="SecureString", Overwrite=True)
            if container["env"].get("RTSTREAM_JWKS_URL"):
                jwks = _JwksServer()
            env = _task_environment(name, container, REDIS_URL=redis_url, RTSTREAM_SSE_HOST="127.0.0.1",
                                    RTSTREAM_SSE_PORT=str(port), **({"RTSTREAM_JWKS_URL": jwks.url} if jwks else {}))
            # the configured key source is the only one: no literal secret sneaks in
            assert bool(env.get("RTSTREAM_JWT_SECRET")) + bool(env.get("RTSTREAM_JWT_SECRET_PARAM")) \
                + bool(env.get("RTSTREAM_JWKS_URL")) == 1
        else:
            env = _task_environment(name, container, REDIS_URL=redis_url, RTSTREAM_WORKER_METRICS_HOST="127.0.0.1",
                                    RTSTREAM_WORKER_METRICS_PORT=str(port))
        changed = {k for k in container["env"] if env.get(k) != container["env"][k]}
        assert changed <= set(LOCAL_SUBSTITUTES), changed
        log_path = tmp_path / f"{name}.log"
        proc = _start(module, {**env, **aws}, log_path)
        try:
            _wait_serving(proc, port, log_path)
            assert _health_check(container, port) == 0, log_path.read_text(errors="replace")[-3000:]
            if name == "sse":
                user, entity = "deploy-user", "deploy-entity"
                if jwks:
                    token = jwks.token(issuer=env.get("RTSTREAM_JWT_ISSUER", ""), audience=env.get("RTSTREAM_JWT_AUDIENCE", ""),
                                       user=user, entity=entity)
                else:
                    token = issue_dev_token(secret or env["RTSTREAM_JWT_SECRET"], user_id=user, entity_id=entity)
                url = f"http://127.0.0.1:{port}/events?topics=transactions.new&access_token={token}"
                with urllib.request.urlopen(url, timeout=10) as reply:
                    assert reply.status == 200
                    assert reply.headers["Content-Type"].startswith("text/event-stream")
                    assert reply.readline()  # the stream started: the token verified with the configured key
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/events?topics=transactions.new&access_token=x.y.z", timeout=10)
                assert refused.value.code == 401
            else:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                    assert reply.status == 200
        finally:
            _stop(proc)
        # a clean stop on SIGTERM (uvicorn re-raises the signal once it has shut down)
        log_text = log_path.read_text(errors="replace")
        assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in log_text, log_text[-3000:]
    finally:
        if jwks:
            jwks.close()


def test_metrics_are_not_reachable_through_the_public_load_balancer():
    t = cfn_yaml.load(str(STACK))
    r = t["Resources"]
    rules = [v["Properties"] for v in r.values() if v["Type"] == "AWS::ElasticLoadBalancingV2::ListenerRule"]
    listeners = {k for k, v in r.items() if v["Type"] == "AWS::ElasticLoadBalancingV2::Listener"}
    assert listeners == {"HttpsListener"}
    (rule,) = [p for p in rules if p["ListenerArn"] == {"Ref": "HttpsListener"}]
    (condition,) = rule["Conditions"]
    assert condition["Field"] == "path-pattern" and "/metrics*" in condition["PathPatternConfig"]["Values"]
    (action,) = rule["Actions"]
    assert action["Type"] == "fixed-response" and action["FixedResponseConfig"]["StatusCode"] in ("403", "404")
    # the rule is evaluated before the default forward (lower priority number than any other rule)
    assert rule["Priority"] == min(p["Priority"] for p in rules)
    # only the load balancer reaches the tasks, and only on the app port
    ingress = r["TaskSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(i["FromPort"], i["SourceSecurityGroupId"]) for i in ingress] == [(8080, {"Ref": "LoadBalancerSecurityGroup"})]


def test_ssm_secret_adapter_reads_decrypts_and_reports_a_missing_parameter_with_a_code(moto_endpoint, monkeypatch):
    import boto3

    from rtstream.adapters.ssm_secret import settings_with_jwt_secret
    from rtstream.errors import BackendUnavailable
    from rtstream.settings import Settings

    for k, v in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    name = f"/rtstream/test/sse-{os.urandom(4).hex()}"
    boto3.client("ssm").put_parameter(Name=name, Value="s" * 40, Type="SecureString")
    settings = Settings.from_env({"RTSTREAM_JWT_SECRET_PARAM": name})
    assert settings_with_jwt_secret(settings).jwt_secret == "s" * 40
    # a literal secret or a JWKS URL wins; nothing is read
    assert settings_with_jwt_secret(settings.replace(jwt_secret="literal")).jwt_secret == "literal"
    assert settings_with_jwt_secret(settings.replace(jwks_url="https://idp/jwks")).jwt_secret == ""
    with pytest.raises(BackendUnavailable) as missing:
        settings_with_jwt_secret(Settings(jwt_secret_param=name + "-missing"))
    assert missing.value.code == "unavailable" and name + "-missing" in missing.value.message


def test_sse_task_with_an_unreadable_ssm_parameter_stops_at_start_naming_it(moto_endpoint, redis_url, tmp_path):
    env = {"PATH": os.environ["PATH"], "AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "REDIS_URL": redis_url,
           "RTSTREAM_SSE_HOST": "127.0.0.1", "RTSTREAM_SSE_PORT": str(free_port()),
           "RTSTREAM_JWT_SECRET_PARAM": "/rtstream/test/never-created"}
    proc = subprocess.run([sys.executable, "-m", "rtstream_sse"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "could not read SSM parameter /rtstream/test/never-created" in proc.stderr


def test_samconfig_images_are_what_build_images_pushes():
    """infra/build-images.sh <env> pushes <account>.dkr.ecr.<region>.amazonaws.com/rtstream-<name>:<env>."""
    script = ROOT / "infra" / "build-images.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert 'repo="rtstream-$name"' in text and 'for name in fanout sse; do' in text
    assert '-t "$registry/$repo:$env_name"' in text and 'registry="$account.dkr.ecr.$region.amazonaws.com"' in text
    assert '-f "infra/docker/$name.Dockerfile"' in text
    assert all((ROOT / "infra" / "docker" / f"{name}.Dockerfile").exists() for name in ("fanout", "sse"))
    for env, cfg in samconfig_environments().items():
        for parameter, name in (("FanoutImage", "fanout"), ("SseImage", "sse")):
            assert re.fullmatch(rf"\d{{12}}\.dkr\.ecr\.{cfg['region']}\.amazonaws\.com/rtstream-{name}:{env}",
                                cfg["overrides"][parameter]), (env, parameter)
