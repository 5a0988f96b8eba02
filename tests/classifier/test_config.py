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
