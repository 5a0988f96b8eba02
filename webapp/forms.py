"""Forms: input validation only; the work happens in services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from classifier.config import ALPHAS, BUILD_STYLES, TrainConfig
from webapp.models import Dataset, Project

_DEFAULTS = TrainConfig()


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


# --- Datasets ---------------------------------------------------------------------------


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """Several files from one ``<input type=file multiple>``; cleaned to a list."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault(
            "widget", MultipleFileInput(attrs={"accept": "image/*", "multiple": True})
        )
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list:
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(d, initial) for d in data]
        return [single(data, initial)] if data else single(data, initial)


class DatasetNameForm(forms.Form):
    """The empty dataset; the subclasses are the other ways in. All four share one page,
    so each gives its fields ids of its own (a label reaches only the first of equal ids)."""

    id_prefix = "empty"
    name = forms.CharField(max_length=100, help_text="Unique within the project.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", f"{self.id_prefix}_%s")
        super().__init__(*args, **kwargs)


class DatasetZipForm(DatasetNameForm):
    id_prefix = "zip"
    archive = forms.FileField(
        label="Zip of class folders",
        widget=forms.ClearableFileInput(attrs={"accept": ".zip,application/zip"}),
    )


class DatasetFolderForm(DatasetNameForm):
    id_prefix = "folder"
    path = forms.CharField(max_length=500, label="Folder on the server")


class DatasetUrlForm(DatasetNameForm):
    id_prefix = "url"
    name = forms.CharField(max_length=100, initial="flower_photos")


class AddImagesForm(forms.Form):
    class_name = forms.CharField(max_length=100, label="Class")
    files = MultipleImageField(label="Photos")


# --- Training ---------------------------------------------------------------------------


def _choices(values: tuple) -> list[tuple[str, str]]:
    return [(str(v), str(v)) for v in values]


class TrainForm(forms.Form):
    """A training request: the dataset, the common knobs, and the recipe's advanced ones.

    Bounds repeat ``TrainConfig.problems`` so mistakes show next to their field; the
    service validates the whole config again.
    """

    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), empty_label=None)
    epochs = forms.IntegerField(min_value=1, max_value=1000, initial=_DEFAULTS.epochs)
    activate_on_success = forms.BooleanField(
        required=False, label="Activate the new version when training succeeds"
    )
    # Advanced
    weights = forms.ChoiceField(
        choices=[("imagenet", "ImageNet (pretrained)"), ("none", "None (random, for tests)")],
        initial=_DEFAULTS.weights,
    )
    alpha = forms.TypedChoiceField(
        choices=_choices(ALPHAS), coerce=float, initial=str(_DEFAULTS.alpha), label="Width (α)"
    )
    image_size = forms.IntegerField(min_value=32, max_value=512, initial=_DEFAULTS.image_size)
    batch_size = forms.IntegerField(min_value=1, max_value=1024, initial=_DEFAULTS.batch_size)
    learning_rate = forms.FloatField(
        min_value=1e-8, max_value=0.999, initial=_DEFAULTS.learning_rate
    )
    head_units = forms.CharField(
        initial=",".join(str(u) for u in _DEFAULTS.head_units),
        help_text="Dense layer sizes, comma-separated.",
    )
    dropout = forms.FloatField(min_value=0, max_value=0.99, initial=_DEFAULTS.dropout)
    build = forms.ChoiceField(
        choices=_choices(BUILD_STYLES),
        initial=_DEFAULTS.build,
        help_text="Functional lets fine-tuning unfreeze single layers; Sequential wraps the "
        "whole trunk as one block.",
    )
    fine_tune_layers = forms.IntegerField(
        min_value=0, max_value=200, initial=_DEFAULTS.fine_tune_layers
    )
    fine_tune_epochs = forms.IntegerField(
        min_value=0, max_value=1000, initial=_DEFAULTS.fine_tune_epochs
    )
    fine_tune_learning_rate = forms.FloatField(
        min_value=1e-10, max_value=0.999, initial=_DEFAULTS.fine_tune_learning_rate
    )
    validation_split = forms.FloatField(
        min_value=0.01, max_value=0.89, initial=_DEFAULTS.validation_split
    )
    seed = forms.IntegerField(min_value=0, initial=_DEFAULTS.seed)
    augment = forms.BooleanField(required=False, initial=_DEFAULTS.augment)
    early_stopping_patience = forms.IntegerField(
        min_value=0,
        max_value=1000,
        initial=_DEFAULTS.early_stopping_patience,
        help_text="Epochs without improvement before stopping; 0 never stops early.",
    )
    use_feature_cache = forms.BooleanField(
        required=False,
        initial=_DEFAULTS.use_feature_cache,
        help_text="Run the frozen trunk once per image and train the head on cached features.",
    )

    ADVANCED = (
        "weights",
        "alpha",
        "image_size",
        "batch_size",
        "learning_rate",
        "head_units",
        "dropout",
        "build",
        "fine_tune_layers",
        "fine_tune_epochs",
        "fine_tune_learning_rate",
        "validation_split",
        "seed",
        "augment",
        "early_stopping_patience",
        "use_feature_cache",
    )

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["dataset"]
        field.queryset = Dataset.objects.filter(
            project=project, status=Dataset.Status.READY
        ).order_by("name")
        field.label_from_instance = lambda d: f"{d.name} ({d.image_count} images)"

    def clean_head_units(self) -> list[int]:
        raw = self.cleaned_data["head_units"]
        try:
            units = [int(part) for part in raw.replace(" ", "").split(",") if part]
        except ValueError:
            raise ValidationError(
                "Write whole numbers separated by commas, e.g. 1024,512."
            ) from None
        if not units or any(u < 1 or u > 8192 for u in units):
            raise ValidationError("Give one or more layer sizes between 1 and 8192.")
        return units

    def advanced_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.ADVANCED]

    def has_advanced_errors(self) -> bool:
        return any(self.errors.get(name) for name in self.ADVANCED)

    def config(self) -> dict[str, Any]:
        """The cleaned values as a ``TrainConfig`` dict (the service validates it again)."""
        data = self.cleaned_data
        return {name: data[name] for name in ("epochs", *self.ADVANCED)}


# --- Versions and predictions ----------------------------------------------------------


class CorrectionForm(forms.Form):
    label = forms.CharField(max_length=200, label="Right label")


class AddToDatasetForm(forms.Form):
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), empty_label=None)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = Dataset.objects.filter(
            project=project, status=Dataset.Status.READY
        ).order_by("name")


# The project fields below offer only projects with an active version.
NO_ACTIVE_VERSION = (
    "That project has no active model version to classify with; train or activate one first."
)


class ClassifyForm(forms.Form):
    project = forms.ModelChoiceField(
        queryset=Project.objects.none(),
        empty_label=None,
        to_field_name="slug",
        error_messages={"invalid_choice": NO_ACTIVE_VERSION},
    )
    photos = MultipleImageField(label="Photos")

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects

    def clean_photos(self) -> list:
        photos = self.cleaned_data["photos"]
        if not photos:
            raise ValidationError("Choose one or more photos to classify.")
        return photos


class BatchForm(forms.Form):
    """Many photos to classify in the background: one zip, or several photos."""

    project = forms.ModelChoiceField(
        queryset=Project.objects.none(),
        empty_label=None,
        to_field_name="slug",
        error_messages={"invalid_choice": NO_ACTIVE_VERSION},
    )
    files = MultipleImageField(
        label="A zip of photos, or several photos",
        widget=MultipleFileInput(
            attrs={"accept": ".zip,application/zip,image/*", "multiple": True}
        ),
    )

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects

    def clean_files(self) -> list:
        files = self.cleaned_data["files"]
        if not files:
            raise ValidationError("Choose a zip of photos, or one or more photos, to classify.")
        return files


def add_service_errors(form: forms.Form, exc: ValidationError) -> None:
    """Show a service's ValidationError on the form: next to its field when it names one."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc.messages)
        return
    for key, errors in exc.message_dict.items():
        form.add_error(key if key in form.fields else None, errors)
