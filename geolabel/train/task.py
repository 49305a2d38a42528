"""The training view of a segmentation network: what one step of `Model.fit` does.

Lightning-style split: `SegmentationTask` defines the train and test steps (loss, pixel
scores, the two-stage freeze schedule); the loop, distribution and callbacks are Keras'
`fit` (`geolabel.train.trainer`). The network itself is what gets saved, not the task.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from geolabel.metrics import SegmentationScores


class SegmentationTask(keras.Model):
    """Trains `network` (probabilities out) on (images, class-id labels) batches.

    Args:
        network: the segmentation model.
        loss_fn: loss of (labels, probabilities), e.g. `geolabel.losses.get_loss(...)`.
        num_classes: number of classes.
        iou_class: the class whose IoU is logged as `iou` / `val_iou`.
        encoder_variables: weights stepped by `encoder_optimizer` instead of the compiled
            optimizer (the two-stage schedule: their own learning rate, held still while
            `encoder_frozen`); empty: one optimizer for everything.
        encoder_optimizer: the optimizer of `encoder_variables`.
    """

    def __init__(self, network: keras.Model, loss_fn: Callable, num_classes: int, iou_class: int = 1,
                 encoder_variables: Sequence[keras.Variable] = (), encoder_optimizer=None):
        super().__init__(name=f"{network.name}_task")
        self.network = network
        self.loss_fn = loss_fn
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.scores = SegmentationScores(num_classes, iou_class)
        encoder_ids = {id(v) for v in encoder_variables}
        self.encoder_variables = list(encoder_variables)
        self.other_variables = [v for v in network.trainable_weights if id(v) not in encoder_ids]
        self.encoder_optimizer = encoder_optimizer
        self.encoder_frozen = False
        self.built = True

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker, self.scores]

    def call(self, images, training: bool = False):
        return self.network(images, training=training)

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Hold the encoder still (or let it move): the step is traced again without (or with)
        its gradients, so a frozen encoder costs no backward pass into its weights."""
        if frozen != self.encoder_frozen:
            self.encoder_frozen = frozen
            if self.train_function is not None:
                self.make_train_function(force=True)

    def train_step(self, data) -> dict[str, Any]:
        images, labels = data
        steps_encoder = bool(self.encoder_variables) and not self.encoder_frozen
        variables = self.other_variables + (self.encoder_variables if steps_encoder else [])
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            probs = self.network(images, training=True)
            loss = self.loss_fn(labels, probs)
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, variables)
        split = len(self.other_variables)
        self.optimizer.apply(grads[:split], self.other_variables)
        if steps_encoder:
            encoder_grads = grads[split:]
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                # one loss scale for the whole model: the encoder's gradients are unscaled here
                encoder_grads = [g / self.optimizer.dynamic_scale for g in encoder_grads]
            self.encoder_optimizer.apply(encoder_grads, self.encoder_variables)
        return self._update_metrics(loss, labels, probs)

    def test_step(self, data) -> dict[str, Any]:
        images, labels = data
        probs = self.network(images, training=False)
        return self._update_metrics(self.loss_fn(labels, probs), labels, probs)

    def _update_metrics(self, loss, labels, probs) -> dict[str, Any]:
        self.loss_tracker.update_state(loss)
        self.scores.update_state(labels, probs)
        return self.get_metrics_result()
