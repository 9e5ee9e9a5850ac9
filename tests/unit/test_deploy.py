"""The team deployment in deploy/ holds together: the front ends share one database and one bucket, reach the
engine node, carry distinct names, use the keys the database and the store were given, and the balancer sends to
both. (`docker-compose -f deploy/compose.yaml config` also accepts it; CI has no Docker daemon to start it.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from aipc_chat.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def front_ends() -> dict[str, dict[str, str]]:
    services = compose()["services"]
    return {name: s["environment"] for name, s in services.items() if "AIPC_DATABASE_URL" in s.get("environment", {})}


def test_two_front_ends_share_the_database_and_the_bucket() -> None:
    fronts = front_ends()
    assert sorted(fronts) == ["front-a", "front-b"]
    shared = ("AIPC_DATABASE_URL", "AIPC_IMAGE_STORE_URL", "AIPC_S3_ENDPOINT", "AIPC_LLM_ENDPOINT",
              "AIPC_IMAGE_ENDPOINT", "AIPC_API_KEY")
    a, b = fronts.values()
    assert all(a[k] == b[k] for k in shared)
    assert a["AIPC_WORKER_NAME"] != b["AIPC_WORKER_NAME"]
    for env in fronts.values():  # every value is one the settings take
        settings = Settings(**{k.removeprefix("AIPC_").lower(): v for k, v in env.items() if k.startswith("AIPC_")})
        assert settings.database_url is not None and settings.image_store_url == "s3://aipc-images/pictures"


def test_the_front_ends_use_the_credentials_the_services_were_given() -> None:
    services = compose()["services"]
    env = front_ends()["front-a"]
    pg = services["postgres"]["environment"]
    assert env["AIPC_DATABASE_URL"] == (f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
                                        f"{pg['POSTGRES_DB']}")
    identity = json.loads((DEPLOY / "seaweedfs-s3.json").read_text())["identities"][0]["credentials"][0]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (identity["accessKey"], identity["secretKey"])
    bucket_env = services["bucket"]["environment"]
    assert (bucket_env["AWS_ACCESS_KEY_ID"], bucket_env["AWS_SECRET_ACCESS_KEY"]) == (
        identity["accessKey"], identity["secretKey"])
    assert "s3://aipc-images" in " ".join(services["bucket"]["command"])
    port = re.search(r"-s3.port=(\d+)", services["s3"]["command"])
    assert port is not None and env["AIPC_S3_ENDPOINT"] == f"http://s3:{port[1]}"


def test_the_engine_node_takes_the_front_ends_requests() -> None:
    services = compose()["services"]
    env = front_ends()["front-a"]
    assert env["AIPC_LLM_ENDPOINT"] == "http://engine:8000/v1" and env["AIPC_IMAGE_ENDPOINT"] == "http://engine:8000"
    assert "engine" in services["engine"]["environment"]["AIPC_ALLOWED_HOSTS"].split(",")  # its Host header


def test_the_balancer_sends_to_both_front_ends() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    assert re.findall(r"server (front-[ab]):8000", conf) == ["front-a", "front-b"]
    assert "proxy_buffering off" in conf  # streamed answers pass at once
    body_limit = int(re.search(r"client_max_body_size (\d+)m", conf)[1]) * 2**20  # type: ignore[index]
    assert body_limit >= Settings().max_body_bytes
