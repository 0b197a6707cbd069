"""End to end on real photos: the real server, serving the trained stand-in, must give the right answers.

All 500 shared photos go through `python -m app` by every way in: the raw body for most, multipart, the batch
endpoint and the v2 BYTES input for a share each. The answers must reach the issue's accuracy bar, equal an
independent reference per photo, and name classes in the ground truth's sorted-wnid order.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.errors import ModelLoadError
from app.inference import UNTRAINED_WARNING, load_model
from app.main import create_app
from model.labels import imagenet_labels
from model.metadata import NUM_CLASSES
from tests.app.conftest import ACCURACY_SUMMARY
from tests.app.live_server import LiveServer
from tests.app.reference_preprocessing import bvlc_reference_tensor
from tests.app.sample_images import encode
from tests.app.service_support import service_settings, wait_until_ready
from tests.app.standin import (
    GREYSCALE_PHOTO_COUNT,
    PROBABILITY_TOLERANCE,
    SQUEEZENET_SHA256,
    TENCH,
    TOP1_BAR,
    TOP5,
    TOP5_BAR,
    Photo,
    accuracy,
    first_name,
    photo_of,
    sorted_wnids,
    top5_wnids,
    write_standin,
)

RAW, MULTIPART, BATCH, V2 = "raw body", "multipart", "/v1/predict/batch", "v2 BYTES"
# Of every ten photos (in sorted order): seven as a raw body, one each by the other ways in.
ROUTE_CYCLE = (RAW,) * 7 + (MULTIPART, BATCH, V2)
IMAGES_PER_REQUEST = 10  # for the batch endpoint and v2
CONCURRENT_REQUESTS = 4
REQUEST_TIMEOUT_S = 60.0
# The same pixels, batched differently, may differ in the last bits of a float32 sum.
SAME_PIXELS_TOLERANCE = 1e-6
ORIENTATION_TAG = 0x0112

Probabilities = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ServedAnswer:
    route: str
    probabilities: Probabilities  # [1000], by class index
    ranked_wnids: list[str]  # the classes as the service ranked them; five or more
    body: dict[str, Any] | None  # /v1's answer (with all 1000 classes); None for v2


def v1_answer(route: str, body: dict[str, Any]) -> ServedAnswer:
    probabilities = np.zeros(NUM_CLASSES)
    for entry in body["predictions"]:
        probabilities[entry["index"]] = entry["probability"]
    return ServedAnswer(route, probabilities, [entry["wnid"] for entry in body["predictions"]], body)


def v2_answers(document: dict[str, Any]) -> list[ServedAnswer]:
    (output,) = document["outputs"]
    rows = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
    ranked = top5_wnids(rows.astype(np.float32))
    return [ServedAnswer(V2, row, wnids, None) for row, wnids in zip(rows, ranked, strict=True)]


async def post_all(url: str, photos: list[Photo]) -> list[ServedAnswer]:
    """Every photo through the route ROUTE_CYCLE gives it; answers in `photos` order."""
    every_class = {"top_k": NUM_CLASSES}
    answers: dict[int, ServedAnswer] = {}
    gate = asyncio.Semaphore(CONCURRENT_REQUESTS)

    async def post(client: httpx.AsyncClient, path: str, **request: Any) -> Any:
        async with gate:
            response = await client.post(path, **request)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:500]}"
        return response.json()

    async def single(client: httpx.AsyncClient, position: int, route: str) -> None:
        photo = photos[position]
        if route == RAW:
            request: dict[str, Any] = {"content": photo.read(), "headers": {"Content-Type": "image/jpeg"}}
        else:
            request = {"files": {"file": (photo.path.name, photo.read(), "image/jpeg")}}
        answers[position] = v1_answer(route, await post(client, "/v1/predict", params=every_class, **request))

    async def batch(client: httpx.AsyncClient, positions: list[int]) -> None:
        files = [("files", (photos[i].path.name, photos[i].read(), "image/jpeg")) for i in positions]
        body = await post(client, "/v1/predict/batch", params=every_class, files=files)
        for position, item in zip(positions, body["results"], strict=True):
            assert item["filename"] == photos[position].path.name
            answers[position] = v1_answer(BATCH, item["result"])

    async def v2(client: httpx.AsyncClient, positions: list[int]) -> None:
        data = [base64.b64encode(photos[i].read()).decode("ascii") for i in positions]
        tensor = {"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}
        document = await post(client, "/v2/models/alexnet/infer", json={"inputs": [tensor]})
        answers.update(zip(positions, v2_answers(document), strict=True))

    routes = [ROUTE_CYCLE[position % len(ROUTE_CYCLE)] for position in range(len(photos))]
    grouped = {route: [i for i, each in enumerate(routes) if each == route] for route in (BATCH, V2)}
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        jobs = [single(client, i, route) for i, route in enumerate(routes) if route in (RAW, MULTIPART)]
        for route, post_group in ((BATCH, batch), (V2, v2)):
            positions = grouped[route]
            jobs += [
                post_group(client, positions[start : start + IMAGES_PER_REQUEST])
                for start in range(0, len(positions), IMAGES_PER_REQUEST)
            ]
        await asyncio.gather(*jobs)
    return [answers[position] for position in range(len(photos))]


@pytest.fixture(scope="module")
def served(standin_server: LiveServer, photos: list[Photo]) -> list[ServedAnswer]:
    return asyncio.run(post_all(standin_server.url, photos))


def max_deviation(served: list[ServedAnswer], reference: npt.NDArray[np.float32]) -> Probabilities:
    """Per photo, the largest |served - reference| over the 1000 probabilities."""
    deviation: Probabilities = np.abs(np.stack([answer.probabilities for answer in served]) - reference).max(axis=1)
    return deviation


@pytest.mark.slow
def test_served_accuracy_meets_the_bar(
    served: list[ServedAnswer], photos: list[Photo], reference: npt.NDArray[np.float32], request: pytest.FixtureRequest
) -> None:
    found = accuracy([answer.ranked_wnids for answer in served], photos)
    routes = Counter(answer.route for answer in served)
    request.config.stash[ACCURACY_SUMMARY] = (
        f"stand-in (SqueezeNet 1.0 as bvlc_alexnet) through python -m app: {found.describe()} "
        f"(bar {TOP1_BAR:.1%} / {TOP5_BAR:.1%}), max |Δp| vs reference {max_deviation(served, reference).max():.1e} "
        f"({', '.join(f'{count} by {route}' for route, count in routes.items())})"
    )
    assert routes == {RAW: 350, MULTIPART: 50, BATCH: 50, V2: 50}
    assert found.meets(TOP1_BAR, TOP5_BAR), f"{found.describe()}: under the bar {TOP1_BAR:.1%} / {TOP5_BAR:.1%}"


@pytest.mark.slow
def test_served_probabilities_equal_the_reference(
    served: list[ServedAnswer], photos: list[Photo], reference: npt.NDArray[np.float32]
) -> None:
    deviation = max_deviation(served, reference)
    pairs = zip(photos, deviation, strict=True)
    off = {photo.path.name: float(value) for photo, value in pairs if value >= PROBABILITY_TOLERANCE}
    assert off == {}, f"{len(off)} photos differ from the reference by {PROBABILITY_TOLERANCE} or more"
    assert float(deviation.max()) < PROBABILITY_TOLERANCE


@pytest.mark.slow
def test_served_classes_follow_the_sorted_wnids(served: list[ServedAnswer], photos: list[Photo]) -> None:
    wnids = sorted_wnids()
    assert tuple(label.wnid for label in imagenet_labels()) == wnids
    for photo, answer in zip(photos, served, strict=True):
        if answer.body is None:
            continue
        predictions = answer.body["predictions"]
        assert [entry["wnid"] for entry in predictions] == [wnids[entry["index"]] for entry in predictions]
        assert sorted(entry["index"] for entry in predictions) == list(range(NUM_CLASSES))
        index = photo.index
        (own,) = [entry for entry in predictions if entry["index"] == index]
        assert (own["wnid"], first_name(own["label"])) == (photo.wnid, photo.name)
        assert answer.body["top5"] == predictions[:TOP5]
        assert answer.body["top1"] == predictions[0]
        assert answer.body["model"] == {
            "name": "bvlc_alexnet",
            "weights": "bvlc",
            "sha256": SQUEEZENET_SHA256,
            "trained": True,
        }
        assert answer.body["warnings"] == []


def post_image(server: LiveServer, data: bytes) -> ServedAnswer:
    response = httpx.post(
        f"{server.url}/v1/predict",
        params={"top_k": NUM_CLASSES},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return v1_answer(RAW, response.json())


def assert_same_answer(found: ServedAnswer, expected: ServedAnswer) -> None:
    assert found.ranked_wnids[:TOP5] == expected.ranked_wnids[:TOP5]
    assert float(np.abs(found.probabilities - expected.probabilities).max()) < SAME_PIXELS_TOLERANCE


@pytest.mark.slow
def test_greyscale_photos_answer_as_grey_rgb(
    standin_server: LiveServer, served: list[ServedAnswer], photos: list[Photo]
) -> None:
    # docs/preprocessing.md: every mode becomes 8-bit RGB; greyscale by Pillow's conversion (grey in all channels).
    greyscale = []
    for position, photo in enumerate(photos):
        with Image.open(photo.path) as image:
            if image.mode == "L":
                greyscale.append((position, np.asarray(image)))
    assert len(greyscale) == GREYSCALE_PHOTO_COUNT
    for position, grey in greyscale:
        as_rgb = encode(Image.fromarray(np.stack([grey] * 3, axis=-1)), "PNG")
        assert_same_answer(post_image(standin_server, as_rgb), served[position])


def tagged(pixels: npt.NDArray[np.uint8], orientation: int) -> bytes:
    """A lossless PNG whose EXIF `orientation`, once applied, shows exactly `pixels` upright."""
    stored = {
        1: pixels,
        2: pixels[:, ::-1],
        3: pixels[::-1, ::-1],
        4: pixels[::-1],
        5: pixels.transpose(1, 0, 2),
        6: np.rot90(pixels, 1),  # shown turned clockwise, so stored turned counter-clockwise
        7: np.rot90(pixels, 2).transpose(1, 0, 2),
        8: np.rot90(pixels, -1),
    }[orientation]
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(Image.fromarray(np.ascontiguousarray(stored)), "PNG", exif=exif)


@pytest.mark.slow
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_answer(
    standin_server: LiveServer, served: list[ServedAnswer], photos: list[Photo], orientation: int
) -> None:
    # docs/preprocessing.md: EXIF orientation is applied. PNG, so the corrected pixels are the photo's, bit for bit.
    (position,) = [i for i, photo in enumerate(photos) if photo.wnid == TENCH]
    original = photos[position].read()
    with Image.open(io.BytesIO(original)) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] != pixels.shape[1], "a square photo would hide a turn that is 90 degrees off"
    data = tagged(pixels, orientation)

    np.testing.assert_array_equal(bvlc_reference_tensor(data), bvlc_reference_tensor(original))
    answer = post_image(standin_server, data)
    assert_same_answer(answer, served[position])
    assert answer.ranked_wnids[0] == TENCH


def test_standin_labelled_untrained_is_served_as_untrained(photos: list[Photo], tmp_path: Path) -> None:
    """Only the model card says `trained`: the same network with `trained: false` is untrained to the service."""
    path = tmp_path / "standin-untrained.onnx"
    write_standin(path, trained=False)
    with pytest.raises(ModelLoadError, match="ALEXNET_REQUIRE_TRAINED is set but .* has untrained \\(bvlc\\) weights"):
        load_model(service_settings(path, require_trained=True))
    trained = tmp_path / "standin-trained.onnx"
    write_standin(trained)
    assert load_model(service_settings(trained, require_trained=True)).warnings == []
    tench = photo_of(photos, TENCH)
    with TestClient(create_app(service_settings(path))) as client:
        wait_until_ready(client)
        body = client.post("/v1/predict", content=tench.read(), headers={"Content-Type": "image/jpeg"}).json()
        model = client.get("/v1/model").json()
    assert body["top1"]["wnid"] == TENCH
    assert body["model"] == {"name": "bvlc_alexnet", "weights": "bvlc", "sha256": SQUEEZENET_SHA256, "trained": False}
    assert body["warnings"] == [UNTRAINED_WARNING]
    assert (model["trained"], model["warnings"]) == (False, [UNTRAINED_WARNING])


def test_reference_shares_no_code_with_the_service() -> None:
    source = (Path(__file__).parent / "reference_preprocessing.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module.split(".")[0])
    assert imported == {"__future__", "io", "collections", "numpy", "PIL"}
