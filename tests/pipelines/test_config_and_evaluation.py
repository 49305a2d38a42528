"""Pipeline config parsing/validation and the evaluator's scoring and blessing rule (no TFX run)."""

from __future__ import annotations

import pytest

from geolabel.errors import InputError
from geolabel.pipelines.config import LOCAL_BEAM_ARGS, PipelineConfig, load_pipeline_config
from geolabel.pipelines.evaluation import bless

SOURCE = "pretrain:\n  bbox: [39.19, -6.17, 39.2, -6.16]\n  imagery: http://127.0.0.1:9/{z}/{x}/{y}.jpg\n  zoom: 19\n"
CLEAN = "finetune:\n  bbox: [39.19, -6.17, 39.2, -6.16]\n  imagery: img.tif\n  labels: clean.geojson\n"


def test_example_config_loads_and_checks():
    from pathlib import Path

    import geolabel.pipelines

    config = load_pipeline_config(Path(geolabel.pipelines.__file__).with_name("example.yaml"))
    sources = (config.pretrain.imagery, config.pretrain.labels, config.finetune.imagery, config.finetune.labels)
    assert all(value.startswith("sample:") for value in sources)  # offline: the bundled sample only
    assert config.beam_args == LOCAL_BEAM_ARGS


def test_sections_become_dataclasses_and_paths_resolve(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SOURCE + CLEAN + "thresholds: {min_iou: 0.3}\npaths: {root: out}\n")
    config = load_pipeline_config(path)
    assert config.thresholds.min_iou == 0.3 and config.thresholds.max_regression == 0.0
    resolved = config.paths.resolved()
    assert resolved.metadata.endswith("out/metadata.sqlite") and resolved.serving.endswith("out/serving")
    assert "--runner=DataflowRunner" in config.kubeflow.dataflow_beam_args()


@pytest.mark.parametrize(
    "extra, name",
    [
        ("thresholds: {min_iou: 1.5}\n", "thresholds.min_iou"),
        ("thresholds: {iou_class: road}\n", "thresholds.iou_class"),
        ("thresholds: {typo: 1}\n", "thresholds"),
        ("nonsense: 1\n", "nonsense"),
    ],
)
def test_bad_config_names_the_option(tmp_path, extra, name):
    path = tmp_path / "p.yaml"
    path.write_text(SOURCE + CLEAN + extra)
    with pytest.raises(InputError, match=name):
        load_pipeline_config(path)


def test_source_needs_exactly_one_area():
    config = PipelineConfig(pretrain={"imagery": "x.tif"}, finetune={"bbox": [0, 0, 1, 1], "imagery": "x.tif"})
    with pytest.raises(InputError, match="pretrain"):
        config.check()
    config = PipelineConfig(pretrain={"bbox": [1, 0, 0, 1], "imagery": "x.tif"}, finetune={"bbox": [0, 0, 1, 1], "imagery": "x.tif"})
    with pytest.raises(InputError, match=r"pretrain\.bbox"):
        config.check()


def test_blessing_rule():
    assert bless(0.6, 0.5).blessed
    verdict = bless(0.4, 0.5)
    assert not verdict.blessed and "below the threshold" in verdict.reason
    assert bless(0.6, 0.5, baseline_iou=0.61, max_regression=0.02).blessed
    verdict = bless(0.6, 0.5, baseline_iou=0.65, max_regression=0.02)
    assert not verdict.blessed and "regresses" in verdict.reason
