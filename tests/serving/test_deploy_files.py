"""The shipped deployment files parse and agree with each other."""

from __future__ import annotations

from pathlib import Path

import yaml

from geolabel.serving.server import parse_model_config

SERVING = Path(__file__).resolve().parents[2] / "serving"


def test_models_config_parses():
    config = parse_model_config((SERVING / "models.config").read_text())
    (model,) = config.model_config_list.config
    assert model.name == "geolabel" and model.base_path == "/models/geolabel"
    assert model.model_version_policy.latest.num_versions == 2


def test_compose_and_k8s_manifests():
    compose = yaml.safe_load((SERVING / "docker-compose.yml").read_text())
    service = compose["services"]["tf-serving"]
    assert service["image"].startswith("tensorflow/serving:")
    assert "--model_config_file=/config/models.config" in service["command"]
    docs = list(yaml.safe_load_all((SERVING / "k8s" / "deployment.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/geolabel/metadata"
    embedded = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["models.config"]
    assert parse_model_config(embedded).model_config_list.config[0].name == "geolabel"
    svc = yaml.safe_load((SERVING / "k8s" / "service.yaml").read_text())
    assert {p["port"] for p in svc["spec"]["ports"]} == {8500, 8501}
