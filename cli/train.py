"""`geolabel train`: train a segmentation model into a run folder (one- or two-stage)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click
import yaml

from geolabel.cli import output
from geolabel.errors import InputError
from geolabel.precision import PRECISIONS

ARCHITECTURE = ("model", "model_config", "downsample", "classes")  # what a fine-tune takes from its --init run


def _model_options(pairs: tuple[str, ...]) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError("--model-option", f"{pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        options[key.strip()] = yaml.safe_load(value)
    return options


@click.command()
@click.option("--preset", default=None,
              help="Named recipe (geolabel/train/presets/NAME.yaml) the other options override; none = bare defaults. "
                   "Default: buildings, or finetune with --init.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML with TrainConfig fields (override the preset's).")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--model", help="Model name (see `geolabel models`).")
@click.option("--model-option", "model_option", multiple=True, metavar="KEY=VALUE", help="Builder option, repeatable (e.g. width=16).")
@click.option("--train", "train_sets", multiple=True, type=click.Path(exists=True), help="Training dataset folder, repeatable.")
@click.option("--val", "val_sets", multiple=True, type=click.Path(exists=True), help="Validation dataset folder, repeatable.")
@click.option("--pretrain", "pretrain_sets", multiple=True, type=click.Path(exists=True), help="Two-stage: noisy (OSM) datasets to pretrain on.")
@click.option("--finetune", "finetune_sets", multiple=True, type=click.Path(exists=True), help="Two-stage: clean datasets to fine-tune on.")
@click.option("--init", help="Start from this run folder's model, or from `pretrained` (the shipped building model).")
@click.option("--classes", help="Comma-separated class names, background first.")
@click.option("--epochs", type=int)
@click.option("--steps-per-epoch", type=int)
@click.option("--batch-size", type=int)
@click.option("--crop", type=int, help="Training crop side (multiple of the model stride).")
@click.option("--downsample", type=int, help="Train at a resolution this many times coarser.")
@click.option("--zoom", type=float, help="Largest random zoom of training crops (1 = off, 2 = 0.5x to 2x).")
@click.option("--hue", type=float, help="Largest random hue rotation, fraction of the colour circle (0.5 = any hue).")
@click.option("--grayscale", type=float, help="Probability of a grey training crop.")
@click.option("--scene-norm/--no-scene-norm", default=None,
              help="Map each dataset's colours to one reference (predict does the same to its input).")
@click.option("--scene-contrast/--no-scene-contrast", default=None,
              help="With --scene-norm, also match band standard deviations (default) or shift the means only.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]))
@click.option("--lr", type=float, help="(Peak) learning rate.")
@click.option("--schedule", type=click.Choice(["onecycle", "triangular", "constant"]))
@click.option("--loss", type=click.Choice(["ce", "jaccard", "ce_jaccard"]))
@click.option("--label-bootstrap", type=float,
              help="Weight of the labels in the cross-entropy target; < 1 trusts the model's own decision for the rest.")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Compute precision; auto (default) = bfloat16 on CPUs with bf16 units, float16 on GPUs, else float32.")
@click.option("--seed", type=int)
@click.option("--patience", type=int, help="Early stop after N epochs without a better val IoU.")
@click.option("--time-limit", "time_limit_s", type=float, help="Training budget in seconds.")
@click.option("--cache/--no-cache", default=None, help="Keep decoded chips in memory.")
@click.option("--freeze-encoder-steps", type=int, help="Fine-tuning: encoder frozen for the first N steps.")
@click.option("--encoder-lr-scale", type=float, help="Fine-tuning: encoder learning rate factor.")
@click.option("--finetune-epochs", type=int, help="Two-stage: epochs of the fine-tuning stage.")
@click.option("--finetune-lr", type=float, help="Two-stage: learning rate of the fine-tuning stage.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
def train(preset, config_file, run_dir, model_option, train_sets, val_sets, pretrain_sets, finetune_sets, classes,
          freeze_encoder_steps, encoder_lr_scale, finetune_epochs, finetune_lr, resume, **options) -> None:
    """Train a model on chip datasets; writes config, checkpoints, history, curves and model.keras.

    With no option but the data, trains the `buildings` preset: the best recipe measured on cities
    the model never saw (geolabel/train/presets/buildings.yaml). `--config` and flags override it.
    `--init pretrained --train LOCAL` fine-tunes the shipped building model (the `finetune` preset: 5 minutes).

    Two-stage workflow (pretrain on noisy OSM labels, fine-tune on clean ones):
    `geolabel train --model unet --pretrain OSM_DATASET --finetune CLEAN_DATASET --out RUN`.
    """
    import json

    from geolabel.train.trainer import DEFAULT_PRESET, preset_config, train as run_train, train_two_stage

    overrides = {k: v for k, v in options.items() if v is not None}
    if model_option:
        overrides["model_config"] = _model_options(model_option)
    if classes:
        overrides["classes"] = [c.strip() for c in classes.split(",")]
    if train_sets:
        overrides["train"] = list(train_sets)
    if val_sets:
        overrides["val"] = list(val_sets)
    two_stage = bool(pretrain_sets or finetune_sets)
    if not two_stage:
        if freeze_encoder_steps is not None:
            overrides["freeze_encoder_steps"] = freeze_encoder_steps
        if encoder_lr_scale is not None:
            overrides["encoder_lr_scale"] = encoder_lr_scale
    if preset is None:
        preset = "finetune" if options.get("init") else DEFAULT_PRESET
    if options.get("init"):  # a fine-tune keeps its starting model's architecture, whatever the preset's
        from geolabel.train.trainer import load_run_config

        try:
            start = load_run_config(options["init"])
        except InputError:  # a bare .keras file: the preset (or the flags) must match it
            start = None
        for key in ARCHITECTURE if start is not None else ():
            overrides.setdefault(key, getattr(start, key))
    config = preset_config(preset, config_file, **overrides)
    output(run_dir, command="train", marks=("config.yaml", "checkpoints"),
           inputs=(config_file, config.init, *config.train, *config.val, *pretrain_sets, *finetune_sets))
    if not two_stage:
        metrics = run_train(config, run_dir, resume=resume)
    else:
        if not (pretrain_sets and finetune_sets):
            raise InputError("--pretrain/--finetune", "the two-stage workflow needs both")
        pre = replace(config, train=list(pretrain_sets), init=config.init)
        fine = replace(
            config,
            train=list(finetune_sets),
            epochs=finetune_epochs or config.epochs,
            lr=finetune_lr or config.lr,
            freeze_encoder_steps=freeze_encoder_steps if freeze_encoder_steps is not None else config.freeze_encoder_steps,
            encoder_lr_scale=encoder_lr_scale if encoder_lr_scale is not None else config.encoder_lr_scale,
            init=None,
        )
        metrics = train_two_stage(pre, fine, run_dir, resume=resume)
    click.echo(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}, indent=1))
    click.echo(f"run folder: {Path(run_dir)}")
