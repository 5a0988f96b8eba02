"""The plain training configuration that the worker, the web app and the CLI pass around.

It is JSON-serialisable (``to_dict``/``from_dict``) so a ``TrainingJob`` row can store it
and a version's ``metadata.json`` can repeat it. Defaults are the classic Keras recipe:
MobileNetV2 1.0 @224 with ImageNet weights, frozen; head Dense 1024 -> Dense 512 ->
Dropout 0.2 -> softmax; batch 32; 20 % validation split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

BUILD_STYLES = ("functional", "sequential")
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
# JSON from the API or a stored job can hold any type; these must be exactly these.
WHOLE_NUMBERS = (
    "image_size",
    "batch_size",
    "epochs",
    "fine_tune_layers",
    "fine_tune_epochs",
    "seed",
    "early_stopping_patience",
    "min_images_per_class",
)
NUMBERS = ("alpha", "learning_rate", "dropout", "fine_tune_learning_rate", "validation_split")
SWITCHES = ("augment", "use_feature_cache")
# As the job form allows: Dense(50_000_000) after 1280 features would need 256 GB.
MAX_HEAD_UNITS = 8192
MAX_SEED = 2**32  # keras.utils.set_random_seed seeds NumPy, which takes 0 to 2**32 - 1


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run's result.

    ``weights`` is ``"imagenet"`` (Keras's normal loading: its cache under ``KERAS_HOME``,
    a download otherwise), ``"none"`` (random init, for tests), or a path to a ``.h5``
    weights file for the no-top trunk.
    """

    image_size: int = 224
    alpha: float = 1.0
    weights: str = "imagenet"
    batch_size: int = 32
    epochs: int = 5
    # Adam's rate for the frozen stage. The recipe uses Keras's default, 1e-3; on pooled
    # ImageNet features a smaller step learns a better head in the same 5 epochs: on the
    # 600-photo flower sample, mean validation accuracy over 10 seeds (each its own split)
    # was 0.795 at 1e-3, 0.800 at 5e-4, 0.819 at 3e-4, 0.845 at 2e-4, 0.850 at 1.5e-4 and
    # 0.847 at 1e-4, with the worst seed at 0.735 against 0.817 (bench/train_bench.py).
    learning_rate: float = 2e-4
    head_units: tuple[int, ...] = (1024, 512)
    dropout: float = 0.2
    build: str = "functional"
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5
    validation_split: float = 0.2
    seed: int = 1337
    augment: bool = False
    early_stopping_patience: int = 0
    use_feature_cache: bool = True
    min_images_per_class: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "head_units", tuple(int(u) for u in self.head_units))
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Return human-readable reasons this config is invalid (empty when valid)."""
        out = self._type_problems()
        if out:
            return out  # the ranges below cannot be compared
        if not 32 <= self.image_size <= 512:
            out.append("image_size must be between 32 and 512")
        if self.alpha not in ALPHAS:
            out.append(f"alpha must be one of {', '.join(str(a) for a in ALPHAS)}")
        if self.batch_size < 1 or self.batch_size > 1024:
            out.append("batch_size must be between 1 and 1024")
        if self.epochs < 1 or self.epochs > 1000:
            out.append("epochs must be between 1 and 1000")
        if not 0 < self.learning_rate < 1:
            out.append("learning_rate must be between 0 and 1")
        if not 0 < self.fine_tune_learning_rate < 1:
            out.append("fine_tune_learning_rate must be between 0 and 1")
        if any(not 1 <= u <= MAX_HEAD_UNITS for u in self.head_units):
            out.append(f"head_units must be between 1 and {MAX_HEAD_UNITS}")
        if not 0 <= self.dropout < 1:
            out.append("dropout must be in [0, 1)")
        if self.build not in BUILD_STYLES:
            out.append(f"build must be one of {', '.join(BUILD_STYLES)}")
        if self.fine_tune_layers < 0 or self.fine_tune_epochs < 0:
            out.append("fine_tune_layers and fine_tune_epochs must not be negative")
        elif self.fine_tune_epochs > 1000:
            out.append("fine_tune_epochs must be at most 1000")
        if not 0 < self.validation_split < 0.9:
            out.append("validation_split must be between 0 and 0.9")
        if self.early_stopping_patience < 0:
            out.append("early_stopping_patience must not be negative")
        if self.min_images_per_class < 1:
            out.append("min_images_per_class must be at least 1")
        if self.seed < 0:
            out.append("seed must not be negative")
        elif self.seed >= MAX_SEED:
            out.append(f"seed must be less than {MAX_SEED}")
        return out

    def _type_problems(self) -> list[str]:
        out = []
        for name in WHOLE_NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                out.append(f"{name} must be a whole number")
        for name in NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                out.append(f"{name} must be a number")
        for name in SWITCHES:
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name} must be true or false")
        return out

    @property
    def fine_tunes(self) -> bool:
        return self.fine_tune_layers > 0 and self.fine_tune_epochs > 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["head_units"] = list(self.head_units)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring unknown keys (configs stored by older versions)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
