"""evaluate.py: metrics by hand, and evaluating an exported version on a folder."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifier.errors import DatasetError
from classifier.evaluate import evaluate_predictions, evaluate_version

NAMES = ["ant", "bee", "cow"]
# Six examples: true labels and probabilities chosen so every number below is by hand.
Y_TRUE = [0, 0, 0, 1, 1, 2]
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],  # ant -> ant
        [0.6, 0.3, 0.1],  # ant -> ant
        [0.3, 0.7, 0.0],  # ant -> bee (0.7)
        [0.1, 0.9, 0.0],  # bee -> bee
        [0.5, 0.4, 0.1],  # bee -> ant (0.5)
        [0.2, 0.7, 0.1],  # cow -> bee (0.7), cow never predicted
    ]
)
PATHS = [f"p{i}.jpg" for i in range(6)]


def test_it_counts_the_confusion_matrix_rows_true_columns_predicted() -> None:
    result = evaluate_predictions(Y_TRUE, PROBS, NAMES, paths=PATHS)

    assert result["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    assert result["accuracy"] == pytest.approx(3 / 6)
    assert result["class_names"] == NAMES
    assert result["num_examples"] == 6


def test_it_computes_per_class_precision_recall_f1_and_support() -> None:
    per_class = evaluate_predictions(Y_TRUE, PROBS, NAMES)["per_class"]

    assert per_class["ant"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert per_class["bee"] == pytest.approx(
        {"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4, "support": 2}
    )


def test_a_class_never_predicted_scores_zero_not_nan() -> None:
    result = evaluate_predictions(Y_TRUE, PROBS, NAMES)

    assert result["per_class"]["cow"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0) / 3)


def test_macro_f1_ignores_classes_absent_from_truth_and_predictions() -> None:
    result = evaluate_predictions([0, 1], np.array([[0.9, 0.1, 0], [0.2, 0.8, 0]]), NAMES)

    assert result["per_class"]["cow"]["support"] == 0
    assert result["macro_f1"] == 1.0


def test_it_computes_mean_cross_entropy_like_keras() -> None:
    result = evaluate_predictions(Y_TRUE, PROBS, NAMES)

    expected = -np.mean(np.log([0.8, 0.6, 0.3, 0.9, 0.4, 0.1]))
    assert result["loss"] == pytest.approx(expected)
    certain_miss = evaluate_predictions([0], np.array([[0.0, 1.0, 0.0]]), NAMES)
    assert math.isfinite(certain_miss["loss"])


def test_it_lists_the_most_confident_mistakes_first() -> None:
    wrong = evaluate_predictions(Y_TRUE, PROBS, NAMES, paths=PATHS)["most_confident_wrong"]

    assert wrong == [
        {"path": "p2.jpg", "true": "ant", "predicted": "bee", "confidence": pytest.approx(0.7)},
        {"path": "p5.jpg", "true": "cow", "predicted": "bee", "confidence": pytest.approx(0.7)},
        {"path": "p4.jpg", "true": "bee", "predicted": "ant", "confidence": pytest.approx(0.5)},
    ]
    top_one = evaluate_predictions(Y_TRUE, PROBS, NAMES, top_wrong=1)["most_confident_wrong"]
    assert top_one == [{**wrong[0], "path": None}]


def test_it_refuses_shapes_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="Expected probs"):
        evaluate_predictions([0, 1], PROBS, NAMES)
    with pytest.raises(ValueError, match="class indices"):
        evaluate_predictions([3], PROBS[:1], NAMES)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_predictions([], np.zeros((0, 3)), NAMES)


def test_evaluate_version_scores_a_folder_through_litert(
    tiny_version: Path, make_image_folder, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "photos", classes={"cat": 3, "eel": 2})
    (root / "eel" / "broken.jpg").write_bytes(b"not a jpeg")

    result = evaluate_version(tiny_version, root, batch_size=2)

    assert result["class_names"] == ["cat", "dog", "eel"]
    assert result["num_examples"] == 5
    assert result["per_class"]["cat"]["support"] == 3
    assert result["per_class"]["dog"]["support"] == 0
    assert result["per_class"]["eel"]["support"] == 2
    assert np.sum(result["confusion_matrix"]) == 5
    assert [r["path"] for r in result["rejected"]] == ["eel/broken.jpg"]
    assert "not an image" in result["rejected"][0]["reason"]


def test_evaluate_version_names_a_class_the_model_does_not_know(
    tiny_version: Path, make_image_folder, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "photos", classes={"cat": 2, "yak": 2})

    with pytest.raises(DatasetError, match="does not know the class yak"):
        evaluate_version(tiny_version, root)


def test_evaluate_version_refuses_a_folder_with_no_readable_photo(
    tiny_version: Path, make_image_folder, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "photos", classes={"cat": 1, "dog": 1})
    for photo in root.rglob("*.*"):
        shutil.copyfile(__file__, photo)

    with pytest.raises(DatasetError, match="No readable photos"):
        evaluate_version(tiny_version, root)


def test_evaluate_version_scores_a_single_class_folder_over_all_the_models_classes(
    tiny_version: Path, make_image_folder, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "photos", classes={"dog": 3})

    result = evaluate_version(tiny_version, root)

    assert result["class_names"] == ["cat", "dog", "eel"]
    assert result["num_examples"] == 3
    assert [result["per_class"][name]["support"] for name in ("cat", "dog", "eel")] == [0, 3, 0]
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (3, 3)
    assert confusion.sum(axis=1).tolist() == [0, 3, 0]
    assert result["accuracy"] == pytest.approx(confusion[1, 1] / 3)


def test_evaluate_version_maps_a_subset_of_folders_to_the_models_class_indices(
    tiny_version: Path, make_image_folder, tmp_path: Path
) -> None:
    # As a folder of its own, "dog" would be class 0 and "eel" class 1; the model says 1 and 2.
    root = make_image_folder(tmp_path / "photos", classes={"dog": 2, "eel": 3})

    result = evaluate_version(tiny_version, root)

    assert np.array(result["confusion_matrix"]).sum(axis=1).tolist() == [0, 2, 3]
    assert result["per_class"]["dog"]["support"] == 2
    assert result["per_class"]["eel"]["support"] == 3
    assert result["per_class"]["cat"]["support"] == 0


def test_evaluate_version_names_every_unknown_class_folder_even_an_empty_one(
    tiny_version: Path, make_image_folder, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "photos", classes={"cat": 2, "yak": 1, "zebu": 0})

    with pytest.raises(DatasetError, match=r"does not know the classes yak, zebu \(folders in"):
        evaluate_version(tiny_version, root)


def test_evaluate_version_refuses_an_empty_class_folder_or_a_folder_without_classes(
    tiny_version: Path, make_image_folder, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "photos", classes={"cat": 2, "dog": 0})
    (root / "dog" / "notes.txt").write_text("not a photo")

    with pytest.raises(DatasetError, match="class folder dog in .* holds no photos"):
        evaluate_version(tiny_version, root)
    (tmp_path / "bare").mkdir()
    with pytest.raises(DatasetError, match="at least 1 class folder;"):
        evaluate_version(tiny_version, tmp_path / "bare")


def test_evaluate_version_lists_files_it_could_not_even_open(
    tiny_version: Path, make_image_folder, tmp_path: Path
) -> None:
    root = make_image_folder(tmp_path / "photos", classes={"cat": 2, "dog": 2})
    (root / "dog" / "moved.jpg").symlink_to(tmp_path / "nowhere.jpg")
    shutil.copy(root / "cat" / "cat_000.jpg", root / "cat" / "caf\udce9.jpg")  # Latin-1 name

    result = evaluate_version(tiny_version, root)

    assert result["num_examples"] == 4
    assert [(r["path"], r["reason"][:33]) for r in result["rejected"]] == [
        ("cat/caf\ufffd.jpg", "The file name is not valid UTF-8;"),
        ("dog/moved.jpg", "The file could not be read: No su"),
    ]
