"""Weights (downloaded, given, or random) → verified-shape ONNX file with its model card."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from model.architecture import SPECS, AlexNetWeights
from model.caffe import read_caffemodel
from model.download import check_digest, fetch_weights, file_hexdigest
from model.errors import WeightsUnavailableError
from model.graph import build_model
from model.labels import imagenet_labels
from model.metadata import Architecture, ModelCard, Precision, WeightsSource
from model.precision import to_float16
from model.random_weights import random_weights
from model.sources import DEFAULT_CACHE_DIR, RANDOM_SOURCE_URL, SOURCES, SourceSpec
from model.torchvision_ckpt import read_torchvision_checkpoint

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path("model/alexnet.onnx")


@dataclass(frozen=True)
class ExportSummary:
    """What was exported, for the CLI summary and the service's startup log."""

    source: WeightsSource
    architecture: Architecture
    output: Path
    weights_sha256: str
    trained: bool
    size_bytes: int
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"exported   {self.output}",
            f"source     {self.source} ({self.architecture})",
            f"sha256     {self.weights_sha256}",
            f"trained    {str(self.trained).lower()}",
            f"size       {self.size_bytes / 1e6:.1f} MB",
            f"time       {self.seconds:.1f} s",
        ]


@dataclass(frozen=True)
class LoadedWeights:
    weights: AlexNetWeights
    sha256: str
    trained: bool
    source_url: str


def default_cache_dir() -> Path:
    return DEFAULT_CACHE_DIR.expanduser()


def export_model(
    weights: WeightsSource,
    *,
    checkpoint: Path | None = None,
    output: Path = DEFAULT_OUTPUT,
    cache_dir: Path | None = None,
    seed: int = 0,
    check_hash: bool = True,
    progress: bool = True,
    precision: Precision = "fp32",
) -> ExportSummary:
    """Load or generate the weights, build the graph and write `output` atomically.

    `checkpoint` skips the download. With `check_hash=False` a checkpoint that is not the pinned
    release is accepted but marked `trained: false`, since nothing vouches for it. On any error no
    file is left at `output`.
    """
    started = time.perf_counter()
    source = SOURCES[weights]
    loaded = load_weights(
        source,
        checkpoint=checkpoint,
        cache_dir=cache_dir or default_cache_dir(),
        seed=seed,
        check_hash=check_hash,
        progress=progress,
    )
    card = source_card(
        source, weights_sha256=loaded.sha256, trained=loaded.trained, source_url=loaded.source_url, precision=precision
    )
    log.info("building the ONNX graph (%s)", precision)
    model = build_model(loaded.weights, card)
    if precision == "fp16":
        model = to_float16(model)
    log.info("writing %s", output)
    write_atomically(model, output)
    return ExportSummary(
        source=source.name,
        architecture=source.architecture,
        output=output,
        weights_sha256=loaded.sha256,
        trained=loaded.trained,
        size_bytes=output.stat().st_size,
        seconds=time.perf_counter() - started,
    )


def source_card(
    source: SourceSpec, *, weights_sha256: str, trained: bool, source_url: str, precision: Precision = "fp32"
) -> ModelCard:
    """The model card the exporter writes for weights of `source` (its preprocessing, labels and licence)."""
    return ModelCard(
        architecture=source.architecture,
        weights=source.name,
        weights_sha256=weights_sha256,
        trained=trained,
        source_url=source_url,
        license=source.license,
        preprocessing=source.preprocessing,
        labels=imagenet_labels(),
        precision=precision,
    )


def export_default_model(output: Path, *, cache_dir: Path | None = None, progress: bool = False) -> ExportSummary:
    """Export the trained BVLC model if its weights are cached or downloadable.

    For the service's first start: raises `WeightsUnavailableError` when offline, which the caller
    may answer by exporting `random` weights instead (and saying so loudly).
    """
    return export_model("bvlc", output=output, cache_dir=cache_dir, progress=progress)


def load_weights(
    source: SourceSpec, *, checkpoint: Path | None, cache_dir: Path, seed: int, check_hash: bool, progress: bool
) -> LoadedWeights:
    spec = SPECS[source.architecture]
    if source.file is None:
        if checkpoint is not None:
            raise WeightsUnavailableError("--checkpoint makes no sense with --weights random")
        log.info("generating random weights (seed %d)", seed)
        generated = random_weights(spec, seed)
        return LoadedWeights(generated, generated.sha256(), trained=False, source_url=RANDOM_SOURCE_URL)
    if checkpoint is None:
        path = fetch_weights(source.file, cache_dir, progress=progress)
        trained = True
    else:
        path = checkpoint
        if not path.is_file():
            raise WeightsUnavailableError(f"checkpoint {path} does not exist or is not a file")
        if check_hash:
            check_digest(path, source.file)
        trained = check_hash
    log.info("reading %s", path)
    read = _READERS[source.name]
    return LoadedWeights(read(path), file_hexdigest(path, "sha256"), trained=trained, source_url=source.file.url)


_READERS: Mapping[WeightsSource, Callable[[Path], AlexNetWeights]] = {
    "bvlc": read_caffemodel,
    "torchvision": read_torchvision_checkpoint,
}


def write_atomically(model: onnx.ModelProto, output: Path) -> None:
    """Serialise next to `output`, then rename, so readers never see a partial model file."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".part")
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(model.SerializeToString())
        # mkstemp makes the file owner-only; a model is readable like any file (a container user must read it).
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o666 & ~umask)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
