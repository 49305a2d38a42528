"""The geolabel TFX pipeline: fetch OSM -> pretrain -> fetch clean -> fine-tune -> evaluate -> push.

    fetch_osm ──> pretrain ──(base_model)──> finetune ──> evaluate ──> push
    fetch_clean ─────────────────────────────┘  └────────────┘ ▲
    latest_blessed_model (Resolver) ───────────────────────────┘ (baseline)

`run_pipeline` runs it with LocalDagRunner, a SQLite ML Metadata store, Beam in-process
and caching, then reads back from MLMD what happened (pushed or not, and why).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tfx.components import Trainer
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.orchestration import metadata, pipeline
from tfx.proto import pusher_pb2, trainer_pb2
from tfx.types import Channel, standard_artifacts

from geolabel.pipelines.components import FetchExamples, IdempotentPusher, SegmentationEvaluator
from geolabel.pipelines.config import BudgetConfig, PipelineConfig

RUN_FN = "geolabel.pipelines.trainer_module.run_fn"
NODE_IDS = ("fetch_osm", "pretrain", "fetch_clean", "finetune", "latest_blessed_model", "evaluate", "push")


def _trainer_kwargs(config: PipelineConfig, budget: BudgetConfig, stage: str) -> dict:
    steps = budget.steps_per_epoch * budget.epochs if budget.steps_per_epoch else None
    return dict(
        run_fn=RUN_FN,
        train_args=trainer_pb2.TrainArgs(num_steps=steps) if steps else trainer_pb2.TrainArgs(),
        eval_args=trainer_pb2.EvalArgs(num_steps=budget.eval_steps) if budget.eval_steps else trainer_pb2.EvalArgs(),
        custom_config={
            "stage": stage,
            "classes": list(config.classes),
            "model": dataclasses.asdict(config.model),
            "budget": dataclasses.asdict(budget),
        },
    )


def create_pipeline(
    config: PipelineConfig,
    *,
    pipeline_root: str | None = None,
    serving_base: str | None = None,
    metadata_path: str | None = None,
    beam_args: list[str] | None = None,
) -> pipeline.Pipeline:
    """The TFX pipeline for `config` (paths and Beam args default to the config's local ones)."""
    paths = config.paths.resolved()
    serving_base = serving_base or f"{paths.serving.rstrip('/')}/{config.name}"
    classes = json.dumps(list(config.classes))

    fetch_osm = FetchExamples(source=json.dumps(dataclasses.asdict(config.pretrain)), classes=classes).with_id("fetch_osm")
    pretrain = Trainer(
        examples=fetch_osm.outputs["examples"], **_trainer_kwargs(config, config.pretrain_budget, "pretrain")
    ).with_id("pretrain")
    fetch_clean = FetchExamples(source=json.dumps(dataclasses.asdict(config.finetune)), classes=classes).with_id(
        "fetch_clean"
    )
    finetune = Trainer(
        examples=fetch_clean.outputs["examples"],
        base_model=pretrain.outputs["model"],
        **_trainer_kwargs(config, config.finetune_budget, "finetune"),
    ).with_id("finetune")
    latest_blessed = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model")
    evaluate = SegmentationEvaluator(
        model=finetune.outputs["model"],
        examples=fetch_clean.outputs["examples"],
        baseline_model=latest_blessed.outputs["model"],
        min_iou=float(config.thresholds.min_iou),
        max_regression=float(config.thresholds.max_regression),
        class_id=config.classes.index(config.thresholds.iou_class),
        batch_size=int(config.finetune_budget.batch_size),
    ).with_id("evaluate")
    push = IdempotentPusher(
        model=finetune.outputs["model"],
        model_blessing=evaluate.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_base)
        ),
    ).with_id("push")
    return pipeline.Pipeline(
        pipeline_name=config.name,
        pipeline_root=pipeline_root or paths.pipeline_root,
        components=[fetch_osm, pretrain, fetch_clean, finetune, latest_blessed, evaluate, push],
        enable_cache=config.cache,
        metadata_connection_config=(
            metadata.sqlite_metadata_connection_config(metadata_path or paths.metadata)
            if metadata_path is not False
            else None
        ),
        beam_pipeline_args=list(beam_args if beam_args is not None else config.beam_args),
    )


@dataclass
class RunReport:
    """What one pipeline run did, read back from ML Metadata.

    Args:
        pushed: whether a model was pushed (or was already being served).
        destination: the pushed version folder (SERVING/NAME/<version>), or None.
        version: the TF Serving version, or None.
        iou: the fine-tuned model's cumulative IoU on the clean eval split.
        baseline_iou: the last blessed model's IoU on the same split, if there was one.
        reason: the evaluator's reason for blessing or not.
        executed / cached: node ids that ran / were taken from the cache in this run.
        seconds: wall time of the run.
    """

    pushed: bool
    destination: str | None
    version: str | None
    iou: float | None
    baseline_iou: float | None
    reason: str
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"executed: {', '.join(self.executed) or '-'}",
            f"cached:   {', '.join(self.cached) or '-'}",
            f"evaluate: {self.reason}",
            f"pushed:   {self.destination}" if self.pushed else f"NOT pushed: {self.reason}",
            f"time:     {self.seconds:.1f} s",
        ]
        return "\n".join(lines)


def _latest_run_report(metadata_path: str, pipeline_name: str, seconds: float) -> RunReport:
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", pipeline_name)
    mine = {e.id for e in store.get_executions_by_context(pipeline_ctx.id)} if pipeline_ctx else set()
    runs = store.get_contexts_by_type("pipeline_run")
    executions = []
    for run in sorted(runs, key=lambda c: c.id, reverse=True):
        executions = [e for e in store.get_executions_by_context(run.id) if e.id in mine]
        if executions:
            break
    node_of = {}
    for node_ctx in store.get_contexts_by_type("node"):
        for execution in store.get_executions_by_context(node_ctx.id):
            node_of[execution.id] = node_ctx.name.split(".", 1)[-1]
    executed, cached = [], []
    state = metadata_store_pb2.Execution
    by_node = {}
    for execution in executions:
        node = node_of.get(execution.id, "?")
        by_node[node] = execution
        if execution.last_known_state == state.CACHED:
            cached.append(node)
        elif execution.last_known_state in (state.COMPLETE, state.RUNNING):
            executed.append(node)
    order = {n: i for i, n in enumerate(NODE_IDS)}
    executed.sort(key=lambda n: order.get(n, 99))
    cached.sort(key=lambda n: order.get(n, 99))

    def outputs(node: str, type_name: str):
        execution = by_node.get(node)
        if execution is None:
            return []
        events = store.get_events_by_execution_ids([execution.id])
        ids = [e.artifact_id for e in events if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
        return [a for a in store.get_artifacts_by_id(ids) if store.get_artifact_types_by_id([a.type_id])[0].name == type_name]

    blessing = next(iter(outputs("evaluate", "ModelBlessing")), None)
    pushed_model = next(iter(outputs("push", "PushedModel")), None)
    props = blessing.custom_properties if blessing is not None else {}
    pushed = bool(pushed_model is not None and pushed_model.custom_properties["pushed"].int_value == 1)
    return RunReport(
        pushed=pushed,
        destination=pushed_model.custom_properties["pushed_destination"].string_value if pushed else None,
        version=pushed_model.custom_properties["pushed_version"].string_value if pushed else None,
        iou=props["iou"].double_value if "iou" in props else None,
        baseline_iou=props["baseline_iou"].double_value if "baseline_iou" in props else None,
        reason=props["reason"].string_value if "reason" in props else "the evaluator did not run",
        executed=executed,
        cached=cached,
        seconds=seconds,
    )


def run_pipeline(config: PipelineConfig) -> RunReport:
    """Run the pipeline locally (LocalDagRunner, SQLite MLMD, Beam in-process) and report."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    paths = config.paths.resolved()
    Path(paths.metadata).parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    LocalDagRunner().run(create_pipeline(config))
    return _latest_run_report(paths.metadata, config.name, time.time() - start)
