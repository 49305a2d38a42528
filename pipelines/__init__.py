"""TFX pipelines and Beam scale-out (installed as `geolabel.pipelines`).

- `config`: the documented pipeline YAML (`PipelineConfig`, `load_pipeline_config`).
- `components`: `FetchExamples`, `SegmentationEvaluator`, `IdempotentPusher`.
- `trainer_module`: `run_fn` for the standard TFX Trainer (pretrain and warm-started fine-tune).
- `pipeline`: the component graph, `run_pipeline` (LocalDagRunner + SQLite MLMD + in-process Beam).
- `kubeflow`: `compile_kubeflow` (KubeflowV2 / Vertex AI spec with Dataflow Beam args).
- `beam_predict`: `predict_raster_beam`, `geolabel predict ... --beam`.

TFX and Beam are imported only by the modules that need them (never `from tfx import v1`).
"""
