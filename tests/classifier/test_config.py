from __future__ import annotations

import pytest

from classifier.config import TrainConfig


@pytest.mark.parametrize(
    ("seed", "problem"),
    [(-1, "seed must not be negative"), (2**32, "seed must be less than 4294967296")],
)
def test_it_refuses_a_seed_numpy_cannot_take(seed, problem):
    with pytest.raises(ValueError, match=problem):
        TrainConfig(seed=seed)


def test_it_takes_the_largest_seed_numpy_can():
    import keras

    config = TrainConfig(seed=2**32 - 1)
    keras.utils.set_random_seed(config.seed)  # what train() does first


@pytest.mark.parametrize("units", [(0,), (512, 8193), (50_000_000,)])
def test_it_refuses_head_units_the_job_form_would_refuse(units):
    with pytest.raises(ValueError, match="head_units must be between 1 and 8192"):
        TrainConfig(head_units=units)


def test_it_takes_head_units_up_to_8192():
    assert TrainConfig(head_units=(8192, 1)).head_units == (8192, 1)


def test_it_refuses_fine_tuning_epochs_the_job_form_would_refuse():
    with pytest.raises(ValueError, match="fine_tune_epochs must be at most 1000"):
        TrainConfig(fine_tune_layers=10, fine_tune_epochs=1001)
    assert TrainConfig(fine_tune_layers=10, fine_tune_epochs=1000).fine_tune_epochs == 1000
