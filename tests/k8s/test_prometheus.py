"""A real Prometheus scrapes the running Triton; its HTTP API must return Triton's built-in
series and plantdx's own (predictions per class, confidence histogram, rejections)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from plantdx.serving.prometheus import PrometheusServer, prometheus_binary, scrape_config, target_of


def test_scrape_config_is_valid_prometheus_yaml(tmp_path: Path) -> None:
    import shutil
    import subprocess

    text = scrape_config(["127.0.0.1:8002", "10.1.2.3:8002"], interval_s=5)
    doc = yaml.safe_load(text)
    job = doc["scrape_configs"][0]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8002", "10.1.2.3:8002"]
    assert job["metrics_path"] == "/metrics" and job["scrape_interval"] == "5s"
    assert target_of("http://127.0.0.1:8002/metrics") == "127.0.0.1:8002"
    with pytest.raises(ValueError):
        scrape_config([])
    promtool = shutil.which("promtool")
    if promtool:
        (tmp_path / "p.yml").write_text(text)
        check = subprocess.run(
            [promtool, "check", "config", str(tmp_path / "p.yml")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.triton
def test_prometheus_scrapes_builtin_and_custom_series(
    triton_server, triton_metrics_text: str, tmp_path: Path
) -> None:
    if prometheus_binary() is None:
        pytest.skip("prometheus is not installed (./dev.sh test installs Debian's package)")
    from plantdx.serving.server import free_port

    wanted = {
        "built-in success counter": 'nv_inference_request_success{model="plantdx"}',
        "built-in latency summary": 'nv_inference_request_summary_us_count{model="plantdx"}',
        "predictions per class": "sum(plantdx_predictions_total) > 0",
        "confidence histogram": 'plantdx_prediction_confidence_bucket{le="+Inf"} > 0',
        "rejections by reason": 'plantdx_preprocess_rejections_total{reason="not_an_image"} >= 1',
        "cache hits series": "nv_cache_num_hits_per_model",
    }
    with PrometheusServer(
        targets=[target_of(triton_server.metrics_url)], workdir=tmp_path, port=free_port()
    ) as prom:
        deadline = time.monotonic() + 30
        results: dict[str, list] = {}
        while time.monotonic() < deadline:
            results = {name: prom.query(expr) for name, expr in wanted.items()}
            if all(results.values()):
                break
            time.sleep(0.5)
        missing = [name for name, r in results.items() if not r]
        assert not missing, f"Prometheus has no {missing}"
        up = prom.query('up{job="plantdx-triton"}')
        assert up and up[0]["value"][1] == "1"
        classes = {r["metric"]["class"] for r in prom.query("plantdx_predictions_total")}
        assert classes and all(classes)
