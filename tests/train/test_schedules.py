"""Cyclical learning-rate schedules."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from geolabel.train.schedules import OneCycleLR, ScaledSchedule, TriangularCyclicalLR, make_schedule


def values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_triangular_shape():
    s = TriangularCyclicalLR(0.1, 1.0, step_size=10)
    v = values(s, [0, 5, 10, 15, 20, 30])
    np.testing.assert_allclose(v, [0.1, 0.55, 1.0, 0.55, 0.1, 1.0], rtol=1e-5)


def test_triangular2_halves_each_cycle():
    s = TriangularCyclicalLR(0.0, 1.0, step_size=10, decay=0.5)
    np.testing.assert_allclose(values(s, [10, 30, 50]), [1.0, 0.5, 0.25], rtol=1e-5)


def test_one_cycle_warms_up_peaks_and_anneals():
    s = OneCycleLR(1.0, total_steps=100, pct_start=0.3, div_factor=10, final_div_factor=100)
    v = values(s, range(0, 101))
    assert v[0] == pytest.approx(0.1, rel=1e-4)
    assert v.argmax() == 30 and v.max() == pytest.approx(1.0)
    assert v[100] == pytest.approx(0.01, rel=1e-3)
    assert np.all(np.diff(v[:31]) >= -1e-7) and np.all(np.diff(v[30:]) <= 1e-7)
    assert float(s(500)) == pytest.approx(0.01, rel=1e-3)


def test_scaled_follows_base_with_offset_and_serialises():
    base = OneCycleLR(1.0, 100)
    s = ScaledSchedule(base, 0.1, offset=20)
    assert float(s(0)) == pytest.approx(0.1 * float(base(20)), rel=1e-5)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert float(clone(7)) == pytest.approx(float(s(7)), rel=1e-6)


def test_make_schedule_by_name():
    assert make_schedule("constant", 0.01, 100) == 0.01
    assert isinstance(make_schedule("onecycle", 0.01, 100), OneCycleLR)
    tri = make_schedule("triangular", 0.01, 80)
    assert tri.step_size == 10 and tri.min_lr == pytest.approx(0.001)


def test_clock_schedule_follows_an_external_position():
    from geolabel.train.schedules import ClockSchedule

    base = OneCycleLR(1.0, 100)
    clock = keras.Variable(0.0, trainable=False)
    s = ClockSchedule(base, clock)
    clock.assign(30.0)
    assert float(s(0)) == pytest.approx(float(base(30)), rel=1e-6)  # the optimizer's own step is ignored
    clock.assign(100.0)
    assert float(s(5)) == pytest.approx(float(base(100)), rel=1e-6)
