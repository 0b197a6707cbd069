"""Draft decoding judged by its answers: the decision rule, the stand-in's card, the upscaling and a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from PIL import Image

from bench import draft_accuracy
from bench.draft_accuracy import Answers, DecodeRow, judge, upscale
from bench.standin import STANDIN_SOURCE, StandInMissingError, standin_card, standin_model
from model.metadata import BVLC_PREPROCESSING, ModelCard

ROWS: list[DecodeRow] = []


def _answers(top1: list[int], truth: list[int]) -> Answers:
    # The true class is always second, so top-5 accuracy is 100% whatever top-1 says.
    return Answers(top5=[[guess, true, 900, 901, 902] for guess, true in zip(top1, truth, strict=True)], truth=truth)


def _files(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = tmp_path / f"{index}.jpg"
        path.write_bytes(b"x" * 1000)
        paths.append(path)
    return paths


def test_identical_answers_make_draft_the_default(tmp_path: Path) -> None:
    truth = list(range(200))
    verdict = judge(_answers(truth, truth), _answers(truth, truth), ROWS, _files(tmp_path, 2), [12.0, 12.0])
    assert (verdict.top1_agreement_percent, verdict.top1_move_points, verdict.top5_move_points) == (100.0, 0.0, 0.0)
    assert verdict.draft_by_default


def test_one_changed_answer_in_two_hundred_fails_the_agreement_rule(tmp_path: Path) -> None:
    truth = list(range(200))
    draft = [*truth[:-1], 999]  # one right answer becomes wrong: agreement 99.5%, top-1 -0.5 points
    verdict = judge(_answers(truth, truth), _answers(draft, truth), ROWS, _files(tmp_path, 2), [12.0, 12.0])
    assert verdict.top1_agreement_percent == 99.5
    assert verdict.top1_move_points == -0.5
    assert not verdict.draft_by_default, "accuracy moved by more than 0.3 points"


def test_changed_wrong_answers_count_against_agreement_only(tmp_path: Path) -> None:
    truth = list(range(1000))
    full = [999 - index for index in truth]  # every answer wrong (999 - i is never i)
    draft = [*full[:4], *[(answer + 1) % 1000 for answer in full[4:10]], *full[10:]]
    verdict = judge(_answers(full, truth), _answers(draft, truth), ROWS, _files(tmp_path, 2), [12.0, 12.0])
    assert verdict.top1_agreement_percent == 99.4
    assert verdict.top1_move_points == 0.0
    assert not verdict.draft_by_default


def test_the_stand_in_card_is_the_bvlc_card_with_its_own_digest() -> None:
    card = standin_card("ab" * 32)
    assert ModelCard.from_props(card.to_props()) == card
    assert (card.architecture, card.weights, card.trained) == ("bvlc_alexnet", "bvlc", True)
    assert card.preprocessing == BVLC_PREPROCESSING
    assert card.weights_sha256 == "ab" * 32


def test_a_missing_stand_in_is_named(tmp_path: Path) -> None:
    with pytest.raises(StandInMissingError, match="absent"):
        standin_model(tmp_path, source=tmp_path / "missing.onnx")


def test_upscale_reaches_twelve_megapixels_keeping_the_aspect(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (400, 300), (10, 200, 30)).save(photo)
    upscaled = upscale(photo)
    assert upscaled.size == (4000, 3000)
    assert upscaled.getpixel((2000, 1500)) == (10, 200, 30)


@pytest.mark.skipif(not STANDIN_SOURCE.is_file(), reason=f"{STANDIN_SOURCE} is absent (comes with ../shared/data)")
def test_the_stand_in_serves_with_its_card_and_a_small_run_writes_the_verdict(tmp_path: Path) -> None:
    path = standin_model(tmp_path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    card = ModelCard.from_props(dict(session.get_modelmeta().custom_metadata_map))
    assert card.weights_sha256 == "479d40ac74d260cb3fe5bcaa79f67367f8e81a93281b21c8819ef89d071e07bf"
    output = tmp_path / "verdict.json"
    args = ["--cache-dir", str(tmp_path), "--output", str(output), "--limit", "2"]
    assert draft_accuracy.main(args) == 0
    verdict = json.loads(output.read_text())
    assert verdict["photos"] == 2
    assert [(row["images"], row["decode"]) for row in verdict["rows"]] == [
        ("original photos", "full"),
        ("upscaled to 12 MP", "full"),
        ("upscaled to 12 MP", "draft"),
    ]
    assert 11.9 <= verdict["megapixels_median"] <= 12.1
