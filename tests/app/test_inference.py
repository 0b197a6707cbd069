"""Loading the model: every way it can be refused, the provider report, and the warnings it logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import app.config
from app.config import CPU_PROVIDER, CUDA_PROVIDER, TENSORRT_PROVIDER, Settings
from app.cpus import usable_cpus
from app.errors import ModelLoadError
from app.inference import (
    CPU_FALLBACK_WARNING,
    TENSORRT_LIBRARY,
    UNTRAINED_WARNING,
    OnnxModel,
    ProviderReport,
    _tensorrt_installed,
    load_model,
    session_options,
)
from model.labels import imagenet_labels
from model.metadata import BVLC_PREPROCESSING, ModelCard

# Kept low so any onnxruntime release that can serve the real model can load these tiny ones.
TINY_MODEL_IR_VERSION = 8
TINY_MODEL_OPSET = 13


def cpu_settings(model_path: Path, **overrides: Any) -> Settings:
    return Settings(model_path=model_path, providers=[CPU_PROVIDER], **overrides)


def write_identity_model(path: Path, input_shape: list[int | str], props: dict[str, str] | None = None) -> Path:
    """A one-node ONNX file (image -> probabilities, unchanged), with the given metadata_props."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["probabilities"])],
        "identity",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, input_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TINY_MODEL_OPSET)])
    model.ir_version = TINY_MODEL_IR_VERSION
    helper.set_model_props(model, props or {})
    onnx.save(model, str(path))
    return path


def untrained_card_props() -> dict[str, str]:
    card = ModelCard(
        architecture="bvlc_alexnet",
        weights="random",
        weights_sha256="0" * 64,
        trained=False,
        source_url="seeded:test",
        license="test",
        preprocessing=BVLC_PREPROCESSING,
        labels=imagenet_labels(),
    )
    return card.to_props()


@pytest.fixture(scope="module")
def cuda_is_active(tmp_path_factory: pytest.TempPathFactory) -> bool:
    """Whether onnxruntime really runs on CUDA here (a tiny model asks for it)."""
    path = write_identity_model(tmp_path_factory.mktemp("probe") / "probe.onnx", [1])
    session = ort.InferenceSession(str(path), providers=[CUDA_PROVIDER, CPU_PROVIDER])
    return CUDA_PROVIDER in session.get_providers()


@pytest.fixture
def without_cuda(cuda_is_active: bool) -> None:
    if cuda_is_active:
        pytest.skip("CUDA is active on this machine: there is no CPU fallback to observe")


def test_missing_model_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelLoadError) as info:
        load_model(cpu_settings(path))
    assert str(info.value) == (
        f"model file {path} does not exist; build it with `python -m model export` or set ALEXNET_MODEL_PATH"
    )


def test_corrupt_model_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"this is not a protobuf, let alone an ONNX model" * 10)
    with pytest.raises(ModelLoadError, match=rf"^onnxruntime cannot load {path}: .+"):
        load_model(cpu_settings(path))


def test_onnx_file_without_our_metadata(tmp_path: Path) -> None:
    path = write_identity_model(tmp_path / "foreign.onnx", ["N", 3, 227, 227])
    with pytest.raises(ModelLoadError) as info:
        load_model(cpu_settings(path))
    assert str(info.value) == (
        f"{path}: the ONNX file has no alexnet.* metadata; export it with `python -m model export`"
    )


def test_metadata_that_does_not_match_the_graph(tmp_path: Path) -> None:
    path = write_identity_model(tmp_path / "small.onnx", ["N", 3, 8, 8], untrained_card_props())
    with pytest.raises(ModelLoadError, match=rf"^{path}: expected input 'image' \[N,3,227,227\], found "):
        load_model(cpu_settings(path))


def test_require_trained_refuses_the_random_model(served_model_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(cpu_settings(served_model_path, require_trained=True))
    assert str(info.value) == (
        f"ALEXNET_REQUIRE_TRAINED is set but {served_model_path} has untrained (random) weights; "
        "export it with trained weights: python -m model export --weights bvlc"
    )


@pytest.mark.usefixtures("without_cuda")
def test_require_cuda_refuses_to_start_without_cuda(served_model_path: Path) -> None:
    settings = Settings(model_path=served_model_path, require_cuda=True)
    assert settings.providers == [CUDA_PROVIDER, CPU_PROVIDER]
    with pytest.raises(ModelLoadError, match=r"^ALEXNET_REQUIRE_CUDA is set but CUDA is not active: .+"):
        load_model(settings)


@pytest.mark.usefixtures("without_cuda")
def test_default_providers_fall_back_to_cpu_and_say_why(
    served_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.inference"):
        model = load_model(Settings(model_path=served_model_path))

    report = model.providers
    assert report.requested == [CUDA_PROVIDER, CPU_PROVIDER]
    assert report.active == [CPU_PROVIDER]
    assert report.cuda_fallback_reason
    assert model.warnings == [UNTRAINED_WARNING, CPU_FALLBACK_WARNING]
    fallbacks = [record for record in caplog.records if CPU_FALLBACK_WARNING in record.getMessage()]
    assert len(fallbacks) == 1
    assert fallbacks[0].levelno == logging.WARNING
    assert report.cuda_fallback_reason in fallbacks[0].getMessage()


def test_cpu_only_model_reports_no_fallback_and_warns_it_is_untrained(
    served_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.inference"):
        model = load_model(cpu_settings(served_model_path))

    assert (model.providers.requested, model.providers.active) == ([CPU_PROVIDER], [CPU_PROVIDER])
    assert model.providers.cuda_fallback_reason is None
    assert model.warnings == [UNTRAINED_WARNING]
    assert not model.card.trained
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert [record.getMessage() for record in warnings] == [
        f"UNTRAINED MODEL: {UNTRAINED_WARNING} ({served_model_path}, weights=random)"
    ]

    probabilities = model.run(np.zeros((2, 3, 227, 227), dtype=np.float32))
    assert probabilities.shape == (2, 1000)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("spinning", "entry"), [(False, "0"), (True, "1")])
def test_thread_settings_reach_the_session(spinning: bool, entry: str) -> None:
    settings = Settings(intra_op_threads=3, intra_op_spinning=spinning)
    options = session_options(settings)
    assert options.intra_op_num_threads == 3
    assert session_options(settings, intra_op_threads=5).intra_op_num_threads == 5
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
    # Per-shape memory patterns would grow RSS with every new batch size (the soak test measures it).
    assert options.enable_mem_pattern is False


def test_default_threads_give_each_concurrent_run_one_thread_and_decoding_every_cpu() -> None:
    settings = Settings()
    assert settings.inference_instances is None  # one run per usable CPU on the CPU (app/plan.py)
    assert settings.intra_op_threads == 1
    assert settings.decode_threads == usable_cpus()
    assert settings.intra_op_spinning is False


@pytest.mark.parametrize(("instances", "threads"), [(1, 8), (2, 4), (3, 2), (8, 1), (16, 1)])
def test_configured_instances_share_the_usable_cpus(
    monkeypatch: pytest.MonkeyPatch, instances: int, threads: int
) -> None:
    monkeypatch.setattr(app.config, "usable_cpus", lambda: 8)
    assert Settings(inference_instances=instances).intra_op_threads == threads
    assert Settings(inference_instances=instances, intra_op_threads=3).intra_op_threads == 3


def test_a_solo_session_with_every_cpu_serves_lone_batches_with_the_same_answers(served_model_path: Path) -> None:
    model = load_model(cpu_settings(served_model_path, intra_op_threads=1, solo_session=True))
    batch = np.random.default_rng(0).standard_normal((2, 3, 227, 227)).astype(np.float32)

    cpus = usable_cpus()
    assert model.solo_threads == (cpus if cpus > 1 else None)
    np.testing.assert_allclose(model.run_solo(batch), model.run(batch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("overrides", [{"solo_session": False}, {"intra_op_threads": 0}, {"intra_op_threads": 64}])
def test_no_solo_session_when_off_or_when_runs_already_use_every_cpu(
    served_model_path: Path, overrides: dict[str, Any]
) -> None:
    model = load_model(cpu_settings(served_model_path, **overrides))
    assert model.solo_threads is None
    batch = np.zeros((1, 3, 227, 227), dtype=np.float32)
    np.testing.assert_array_equal(model.run_solo(batch), model.run(batch))


@pytest.mark.parametrize(
    ("active", "on_gpu"),
    [
        ([CUDA_PROVIDER, CPU_PROVIDER], True),
        ([TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER], True),
        ([CPU_PROVIDER], False),
        ([], False),
    ],
)
def test_provider_report_says_whether_a_gpu_runs_the_model(active: list[str], on_gpu: bool) -> None:
    report = ProviderReport(requested=[CUDA_PROVIDER, CPU_PROVIDER], active=active, cuda_fallback_reason=None)
    assert report.on_gpu is on_gpu


ONNXRUNTIME_LOG_MARKERS = ("[E:onnxruntime", "[W:onnxruntime", "Failed to load")


@pytest.mark.usefixtures("without_cuda")
def test_provider_probe_keeps_onnxruntime_quiet_and_warns_once(
    served_model_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="app.inference"):
        model = load_model(Settings(model_path=served_model_path))
    printed = capfd.readouterr()

    assert [marker for marker in ONNXRUNTIME_LOG_MARKERS if marker in printed.out + printed.err] == []
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert [message.partition(" (")[0] for message in warnings] == [
        CPU_FALLBACK_WARNING,
        "UNTRAINED MODEL: " + UNTRAINED_WARNING,
    ]
    assert model.providers.cuda_fallback_reason is not None


@pytest.mark.usefixtures("without_cuda")
def test_provider_probe_lets_onnxruntime_speak_at_debug(
    served_model_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    load_model(Settings(model_path=served_model_path, log_level="debug"))
    assert "[W:onnxruntime" in capfd.readouterr().err
    # Quiet again afterwards: the severity is restored after every probe.
    load_model(Settings(model_path=served_model_path))
    assert "onnxruntime" not in capfd.readouterr().err


def fake_preload(monkeypatch: pytest.MonkeyPatch, printed: str) -> list[str]:
    """Replace ort.preload_dlls with one that prints what the real one prints; returns a log of its calls."""
    calls: list[str] = []

    def preload(**kwargs: Any) -> None:
        calls.append("preload")
        print(printed, end="")  # noqa: T201 - onnxruntime's preload reports failures on stdout, like this

    monkeypatch.setattr(ort, "preload_dlls", preload)
    return calls


@pytest.mark.usefixtures("without_cuda")
def test_missing_cuda_libraries_are_named_with_the_extra_that_installs_them(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_preload(monkeypatch, "Failed to load libcudnn.so.9: cannot open shared object file\nPlease follow …\n")
    reason = load_model(Settings(model_path=served_model_path)).providers.cuda_fallback_reason
    assert reason == (
        "the CUDA libraries libcudnn.so.9 did not load: install them with `pip install 'alexnet-serve[cuda]'`"
    )


@pytest.mark.usefixtures("without_cuda")
def test_with_the_cuda_libraries_loaded_the_cause_is_the_gpu_not_the_extra(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the GPU image run without `--gpus all`: every library preloads, yet CUDA cannot start."""
    fake_preload(monkeypatch, "")
    reason = load_model(Settings(model_path=served_model_path)).providers.cuda_fallback_reason
    assert reason == (
        "the CUDA libraries loaded, but no NVIDIA driver or GPU is visible: run the container with `--gpus all` "
        "and the NVIDIA Container Toolkit, or check `nvidia-smi`"
    )


@pytest.mark.usefixtures("without_cuda")
def test_a_failing_preload_is_part_of_the_reason(served_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def preload(**kwargs: Any) -> None:
        raise RuntimeError("Invalid parameter of directory")

    monkeypatch.setattr(ort, "preload_dlls", preload)
    reason = load_model(Settings(model_path=served_model_path)).providers.cuda_fallback_reason
    assert reason is not None and "(preload failed: Invalid parameter of directory)" in reason


@pytest.mark.usefixtures("without_cuda")
def test_tensorrt_alone_preloads_cuda_and_says_in_one_line_that_tensorrt_is_missing(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if _tensorrt_installed():
        pytest.skip(f"{TENSORRT_LIBRARY} is installed here")
    calls = fake_preload(monkeypatch, "")
    with caplog.at_level(logging.INFO, logger="app.inference"):
        model = load_model(Settings(model_path=served_model_path, providers=[TENSORRT_PROVIDER, CPU_PROVIDER]))

    assert calls == ["preload"]
    assert model.providers.active == [CPU_PROVIDER]
    tensorrt_lines = [record for record in caplog.records if "TensorRT" in record.getMessage()]
    assert [(record.levelno, record.getMessage()) for record in tensorrt_lines[:1]] == [
        (logging.WARNING, "TensorRT was requested but libnvinfer.so.10 is not installed: TensorRT is skipped")
    ]
    assert model.providers.cuda_fallback_reason == (
        "TensorRT's libnvinfer.so.10 is not installed and CUDAExecutionProvider was not requested"
    )


def test_cpu_only_settings_never_preload(served_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_preload(monkeypatch, "")
    load_model(cpu_settings(served_model_path))
    assert calls == []


def test_warm_up_runs_each_session_at_its_own_sizes(served_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(cpu_settings(served_model_path, intra_op_threads=1, solo_session=True))
    if model.solo_threads is None:
        pytest.skip("one usable CPU: there is no solo session")
    runs: list[tuple[str, int]] = []
    monkeypatch.setattr(
        OnnxModel,
        "_run_on",
        lambda self, session, batch: runs.append(("solo" if session is self._solo_session else "shared", len(batch))),
    )

    model.warm_up(2, (1, 16), (1,))
    model.warm_up(1, (4,), ())

    assert runs == [("shared", 1)] * 2 + [("shared", 16)] * 2 + [("solo", 1)] * 2 + [("shared", 4)]
