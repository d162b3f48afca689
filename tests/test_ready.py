"""``GET /api/ready`` as a probe sees it: 503 before the launchers have started, 200 while
the gateway serves, 503 once shutdown began. In process, with Starlette's test client:
uvicorn only listens once startup is done and stops listening before shutdown, so over a
socket only the 200 can be seen."""

from __future__ import annotations

from starlette.testclient import TestClient

from raygate.app import create_app
from raygate.config import GatewayConfig
from raygate.launchers.local import LocalLauncher


def test_ready_is_503_before_startup_and_after_shutdown() -> None:
    app = create_app(GatewayConfig(default_launcher="local"), {"local": LocalLauncher()})
    client = TestClient(app)  # not entered: the lifespan has not run
    r = client.get("/api/ready")
    assert r.status_code == 503
    assert r.json() == {"reason": "Service Unavailable", "message": "raygate is starting"}
    assert client.get("/api/health").status_code == 200  # alive all the same

    with TestClient(app) as serving:
        r = serving.get("/api/ready")
        assert r.status_code == 200
        assert r.json() == {"status": "ready", "kernels": 0, "launchers": ["local"]}

    r = client.get("/api/ready")
    assert r.status_code == 503
    assert r.json()["message"] == "raygate is shutting down"
