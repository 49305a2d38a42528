"""The whole TFX pipeline on real shared tiles: loopback tile server + mock Overpass, tiny U-Net.

One pipeline root (SQLite MLMD) serves three runs, in one test so that parallel test
workers never repeat the first run:
1. a fresh run: fetch (OSM + clean) -> pretrain -> fine-tune -> evaluate -> push;
2. the same config again: fetch and training come from the cache, nothing new is pushed;
3. an unmeetable threshold (via the CLI): nothing is pushed and the run says why.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from tests.servers import MockOverpass

import tfx  # noqa: F401  (installed by make setup; a missing one must fail, not skip)

ZANZIBAR = "oam-osm/zanzibar-tz"
# 2 x 2 tiles of z19 each (512 x 512 px at ~0.3 m): OSM labels for pretraining, a clean file for fine-tuning
OSM_BBOX = [39.2404312, -6.0435881, 39.241777, -6.0422498]
CLEAN_BBOX = [39.2418045, -6.0449538, 39.2431503, -6.0436154]
TINY_BUDGET = {"epochs": 1, "steps_per_epoch": 2, "eval_steps": 2, "batch_size": 4, "options": {"crop": 64, "d4": False, "jitter": 0.0}}


@pytest.fixture(scope="module")
def servers(shared_data):
    from geolabel.data.tileserver import TileServer

    with TileServer(shared_data / ZANZIBAR / "tiles") as tiles, MockOverpass(shared_data / ZANZIBAR / "osm-buildings.geojson") as overpass:
        yield tiles, overpass


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, servers, shared_data):
    import yaml

    tiles, overpass = servers
    root = tmp_path_factory.mktemp("pipeline")
    config = {
        "name": "buildings",
        "pretrain": {"bbox": OSM_BBOX, "imagery": tiles.template("jpg"), "zoom": 19, "labels": "osm",
                     "overpass_url": overpass.url, "chip_size": 64, "options": {"connections": 4}},
        "finetune": {"bbox": CLEAN_BBOX, "imagery": tiles.template("jpg"), "zoom": 19,
                     "labels": str(shared_data / ZANZIBAR / "osm-buildings.geojson"), "chip_size": 64,
                     "options": {"default_class": "building", "connections": 4}},
        "model": {"name": "unet", "options": {"depth": 2, "width": 4}},
        "pretrain_budget": TINY_BUDGET,
        "finetune_budget": TINY_BUDGET,
        "thresholds": {"min_iou": 0.0, "max_regression": 0.0},
        "paths": {"root": str(root)},
    }
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_pipeline_end_to_end(config_file, capsys):
    from geolabel.pipelines.config import load_pipeline_config
    from geolabel.pipelines.pipeline import run_pipeline

    config = load_pipeline_config(config_file)
    first_run = config, run_pipeline(config)
    check_pushed_model_loads_and_predicts(first_run)
    check_mlmd_lineage(first_run)
    check_rerun_hits_the_cache(first_run)
    check_unmeetable_threshold_pushes_nothing(first_run, config_file, capsys)


def _store(config):
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(config.paths.resolved().metadata))


def check_pushed_model_loads_and_predicts(first_run):
    import tensorflow as tf

    config, report = first_run
    assert report.pushed, report.summary()
    assert set(report.executed) >= {"fetch_osm", "pretrain", "fetch_clean", "finetune", "evaluate", "push"}
    serving = os.path.join(config.paths.resolved().serving, "buildings")
    versions = [v for v in os.listdir(serving) if v.isdigit()]
    assert versions == [report.version] and report.destination == os.path.join(serving, report.version)
    assert os.path.isfile(os.path.join(report.destination, "saved_model.pb"))
    loaded = tf.saved_model.load(report.destination)
    out = loaded.signatures["serving_default"](images=tf.constant(np.full((2, 64, 64, 3), 120, np.float32)))
    assert out["probabilities"].shape == (2, 64, 64, 2) and out["classes"].shape == (2, 64, 64)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-4)


def check_mlmd_lineage(first_run):
    """MLMD: OSM examples -> pretrained model -> (+ clean examples) fine-tuned model -> blessing -> pushed model."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    config, report = first_run
    store = _store(config)
    type_name = {t.id: t.name for t in store.get_artifact_types()}
    pushed = [a for a in store.get_artifacts_by_type("PushedModel") if a.custom_properties["pushed"].int_value == 1]
    assert len(pushed) == 1

    def producer(artifact_id):
        events = [e for e in store.get_events_by_artifact_ids([artifact_id]) if e.type == pb.Event.OUTPUT]
        executions = store.get_executions_by_id([e.execution_id for e in events])
        return next(x for x in executions if x.last_known_state == pb.Execution.COMPLETE)

    def inputs(execution):
        ids = [e.artifact_id for e in store.get_events_by_execution_ids([execution.id]) if e.type == pb.Event.INPUT]
        found = {}
        for artifact in store.get_artifacts_by_id(ids):
            found.setdefault(type_name[artifact.type_id], []).append(artifact)
        return found

    push = producer(pushed[0].id)
    push_in = inputs(push)
    blessing, model = push_in["ModelBlessing"][0], push_in["Model"][0]
    assert blessing.custom_properties["blessed"].int_value == 1
    assert blessing.custom_properties["current_model_id"].int_value == model.id
    evaluate_in = inputs(producer(blessing.id))
    assert evaluate_in["Model"][0].id == model.id
    finetune_in = inputs(producer(model.id))
    clean = finetune_in["Examples"][0]
    assert evaluate_in["Examples"][0].id == clean.id
    base = finetune_in["Model"][0]  # warm start from the pretrained model
    assert "pretrain" in base.uri and "finetune" in model.uri
    osm = inputs(producer(base.id))["Examples"][0]
    assert osm.id != clean.id
    assert '"kind": "overpass"' in osm.custom_properties["manifest"].string_value
    assert osm.custom_properties["num_train_chips"].int_value > 0
    assert clean.custom_properties["split_names"].string_value or clean.properties["split_names"].string_value


def check_rerun_hits_the_cache(first_run):
    from geolabel.pipelines.pipeline import run_pipeline

    config, report = first_run
    again = run_pipeline(config)
    assert set(again.cached) == {"fetch_osm", "pretrain", "fetch_clean", "finetune"}, again.summary()
    assert again.pushed and again.version == report.version  # already served: not copied again
    serving = os.path.join(config.paths.resolved().serving, "buildings")
    assert [v for v in os.listdir(serving) if v.isdigit()] == [report.version]


def check_unmeetable_threshold_pushes_nothing(first_run, config_file, capsys):
    from geolabel.cli import main

    config, report = first_run
    main(["pipeline", "run", "--config", str(config_file), "--min-iou", "1.0"])
    out = capsys.readouterr().out
    assert "NOT pushed: IoU" in out and "below the threshold min_iou=1.0000" in out, out
    serving = os.path.join(config.paths.resolved().serving, "buildings")
    assert [v for v in os.listdir(serving) if v.isdigit()] == [report.version]
    assert glob.glob(os.path.join(config.paths.resolved().pipeline_root, "evaluate", "blessing", "*", "NOT_BLESSED"))


@pytest.mark.slow
def test_pipeline_with_remote_artifact_storage(config_file, tmp_path):
    """Artifacts and the serving path on a URL file system (TF's ram://), as on Kubeflow with gs://."""
    import tensorflow as tf

    from geolabel.pipelines.config import load_pipeline_config
    from geolabel.pipelines.pipeline import run_pipeline

    config = load_pipeline_config(config_file)
    config.paths.pipeline_root = "ram://geolabel/pipeline_root"
    config.paths.serving = "ram://geolabel/serving"
    config.paths.metadata = str(tmp_path / "metadata.sqlite")
    report = run_pipeline(config)
    assert report.pushed and report.destination.startswith("ram://geolabel/serving/buildings/"), report.summary()
    assert tf.io.gfile.exists(report.destination + "/saved_model.pb")
    assert tf.io.gfile.exists("ram://geolabel/pipeline_root/fetch_osm")
