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


def test_emf_line_names_the_scaled_metric():
    import json

    from rtstream_sse.config import SSEConfig
    from rtstream_sse.metrics import emf_line

    config = SSEConfig.from_env({"RTSTREAM_EMF_INTERVAL_S": "60", "RTSTREAM_SERVICE_NAME": "stack-sse"})
    record = json.loads(emf_line(config.emf_namespace, config.emf_service, active_connections=7, deliveries=3, now_ms=1))
    directive = record["_aws"]["CloudWatchMetrics"][0]
    assert directive["Dimensions"] == [["ServiceName"]] and record["ServiceName"] == "stack-sse"
    assert record["realtime_streaming.active_connections"] == 7


def test_dockerfile_runs_the_server_module():
    text = (ROOT / "infra" / "docker" / "sse.Dockerfile").read_text()
    assert 'CMD ["python", "-m", "rtstream_sse"]' in text
    for path in ("layers/core/rtstream", "infra/rtstream_sse", "clients/rtstream_client"):
        assert f"COPY {path} " in text and (ROOT / path).is_dir()
    assert "/healthz" in text and "STOPSIGNAL SIGTERM" in text
