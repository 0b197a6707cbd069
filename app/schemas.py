"""Request and response bodies, named by suffix; examples feed the OpenAPI page at /docs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

_TABBY: JsonDict = {"index": 281, "wnid": "n02123045", "label": "tabby, tabby cat", "probability": 0.8125}


class ClassScore(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": _TABBY})

    index: int = Field(description="ImageNet-1k class index, 0..999")
    wnid: str = Field(description="WordNet id of the class")
    label: str = Field(description="Human-readable class names")
    probability: float


class ModelSummary(BaseModel):
    name: str = Field(description="Architecture, e.g. bvlc_alexnet")
    weights: str = Field(description="Weights source: bvlc, torchvision or random")
    sha256: str = Field(description="SHA-256 of the weights the model was built from")
    trained: bool = Field(description="False means random weights: predictions are noise")


class TimingMs(BaseModel):
    decode: float
    preprocess: float
    queue: float = Field(description="From joining the queue to the start of its batch's run on an inference thread")
    inference: float = Field(description="Its batch's run, on the inference thread")
    total: float
    batch_size: int = Field(description="How many images shared the session.run that served this one")


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "top1": _TABBY,
                "top5": [
                    _TABBY,
                    {"index": 282, "wnid": "n02123159", "label": "tiger cat", "probability": 0.1},
                    {"index": 285, "wnid": "n02124075", "label": "Egyptian cat", "probability": 0.05},
                    {"index": 287, "wnid": "n02127052", "label": "lynx, catamount", "probability": 0.01},
                    {"index": 283, "wnid": "n02123394", "label": "Persian cat", "probability": 0.005},
                ],
                "predictions": [_TABBY],
                "model": {"name": "bvlc_alexnet", "weights": "bvlc", "sha256": "…", "trained": True},
                "timing_ms": {
                    "decode": 3.1,
                    "preprocess": 1.2,
                    "queue": 0.4,
                    "inference": 18.0,
                    "total": 23.5,
                    "batch_size": 1,
                },
                "warnings": [],
            }
        }
    )

    top1: ClassScore
    top5: list[ClassScore]
    predictions: list[ClassScore] = Field(description="The top_k classes, most probable first")
    model: ModelSummary
    timing_ms: TimingMs
    warnings: list[str] = Field(description="Anything that makes this answer less trustworthy (untrained model)")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_image")
    message: str = Field(description="What went wrong and what to do about it")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"error": {"code": "invalid_image", "message": "cannot identify image file"}}}
    )

    error: ErrorDetail


class V2ErrorResponse(BaseModel):
    """The Open Inference Protocol's error body."""

    model_config = ConfigDict(json_schema_extra={"example": {"error": "unknown model 'resnet'"}})

    error: str


class BatchItemResponse(BaseModel):
    filename: str | None
    result: PredictResponse | None = None
    error: ErrorDetail | None = None


class BatchPredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "results": [
                    {"filename": "cat.jpg", "result": {"top1": _TABBY, "...": "as in PredictResponse"}, "error": None},
                    {
                        "filename": "notes.txt",
                        "result": None,
                        "error": {"code": "unsupported_media_type", "message": "unsupported image format; ..."},
                    },
                ]
            }
        }
    )

    results: list[BatchItemResponse] = Field(description="One entry per uploaded file, in upload order")


class LiveResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"status": "alive"}})

    status: Literal["alive"] = "alive"


class ReadyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"status": "ready"}})

    status: Literal["ready"] = "ready"


_SUMMARY: JsonDict = {"name": "bvlc_alexnet", "weights": "bvlc", "sha256": "…", "trained": True}
_PLAN: JsonDict = {
    "device": "CPU",
    "usable_cpus": 4,
    "instances": 4,
    "intra_op_threads": 1,
    "solo_threads": 4,
    "decode_threads": 4,
    "decode_on_inference_threads": True,
    "max_batch_size": 16,
}


class InferencePlanInfo(BaseModel):
    """How inference uses the machine (ALEXNET_INFERENCE_INSTANCES, ALEXNET_INTRA_OP_THREADS, ...)."""

    model_config = ConfigDict(json_schema_extra={"example": _PLAN})

    device: Literal["CPU", "GPU"] = Field(description="What runs the model")
    usable_cpus: int = Field(description="CPUs this process may use: affinity mask and cgroup quota")
    instances: int = Field(description="Batches that may run on the model at once (model instances)")
    intra_op_threads: int = Field(description="onnxruntime threads inside each run; 0: onnxruntime's choice")
    solo_threads: int | None = Field(description="Threads of a run alone on the model; null: no solo session")
    decode_threads: int = Field(description="Threads decoding and preprocessing uploads")
    decode_on_inference_threads: bool = Field(
        description="The inference threads decode uploads between their batches (ALEXNET_DECODE_ON_INFERENCE_THREADS)"
    )
    max_batch_size: int = Field(description="Most images in one run")


class HealthResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "status": "ready",
                "version": "0.1.0",
                "uptime_s": 812.5,
                "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                "requested_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                "model": _SUMMARY,
                "inference": _PLAN,
                "warnings": [],
            }
        }
    )

    status: Literal["ready", "starting"]
    version: str
    uptime_s: float
    providers: list[str] = Field(description="Execution providers onnxruntime actually uses, in priority order")
    requested_providers: list[str]
    model: ModelSummary | None
    inference: InferencePlanInfo
    warnings: list[str]


class PreprocessingInfo(BaseModel):
    input_size: int
    resize_policy: str
    resize_size: int
    resample: str
    channel_order: str
    pixel_scale: float
    mean: list[float]
    std: list[float]


class ModelInfoResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "bvlc_alexnet",
                "architecture": "bvlc_alexnet",
                "weights": "bvlc",
                "weights_sha256": "…",
                "trained": True,
                "precision": "fp32",
                "source_url": "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
                "license": "BVLC AlexNet weights: … non-commercial research and educational use only …",
                "input_name": "image",
                "output_name": "probabilities",
                "input_shape": ["N", 3, 227, 227],
                "preprocessing": {
                    "input_size": 227,
                    "resize_policy": "stretch",
                    "resize_size": 256,
                    "resample": "bilinear",
                    "channel_order": "BGR",
                    "pixel_scale": 255.0,
                    "mean": [104.0069879317889, 116.66876761696767, 122.6789143406786],
                    "std": [1.0, 1.0, 1.0],
                },
                "num_labels": 1000,
                "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                "warnings": [],
            }
        }
    )

    name: str
    architecture: str
    weights: str
    weights_sha256: str
    trained: bool
    precision: str = Field(description="fp32, or fp16 (half-precision weights and activations)")
    source_url: str
    license: str
    input_name: str
    output_name: str
    input_shape: list[int | str]
    preprocessing: PreprocessingInfo
    num_labels: int
    providers: list[str]
    warnings: list[str]


# What replaces an occluded cell (app/explain.py says how each is computed).
Baseline = Literal["mean", "black"]


class ExplanationMethod(BaseModel):
    name: Literal["occlusion"] = Field(description="Occlusion sensitivity: hide one cell at a time, re-run the model")
    grid: int = Field(description="Cells per side; grid² occluded copies of the image were run")
    baseline: Baseline = Field(description="What replaced a hidden cell")
    input_size: int = Field(description="Side of the square crop the model saw, in pixels")
    normalisation: str = Field(description="How `scores` were scaled from the probability drops")


class ExplainTimingMs(BaseModel):
    decode: float
    preprocess: float
    occlusion: float = Field(description="Building the occluded copies from the preprocessed image")
    inference: float = Field(description="From queueing the first row to the last row's result (every batch)")
    render: float = Field(description="Drawing the overlay PNG; 0 for a JSON answer")
    total: float
    rows: int = Field(description="Images run through the model: the original plus grid² occluded copies")


class ExplainResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "prediction": {"top1": _TABBY, "...": "as in PredictResponse"},
                "target": _TABBY,
                "method": {
                    "name": "occlusion",
                    "grid": 2,
                    "baseline": "mean",
                    "input_size": 227,
                    "normalisation": "drop / max(|drop|): 1 = the cell whose occlusion lowers the target's "
                    "probability most",
                },
                "scores": [[0.12, 1.0], [-0.05, 0.31]],
                "max_abs_drop": 0.42,
                "region": "top-right",
                "text": "The top-right of the image matters most for 'tabby, tabby cat': hiding it (row 1, "
                "column 2 of 2) lowers its probability by 42.0 points.",
                "timing_ms": {
                    "decode": 3.1,
                    "preprocess": 1.2,
                    "occlusion": 0.4,
                    "inference": 80.0,
                    "render": 0.0,
                    "total": 85.0,
                    "rows": 5,
                },
                "warnings": [],
            }
        }
    )

    prediction: PredictResponse = Field(description="The unoccluded image's prediction, as /v1/predict gives it")
    target: ClassScore = Field(description="The class explained, with its probability on the unoccluded image")
    method: ExplanationMethod
    scores: list[list[float]] = Field(
        description="grid×grid scores, top row first: the target's probability drop when that cell is hidden, "
        "divided by the largest absolute drop (so in [-1, 1]; negative: hiding the cell raised it)"
    )
    max_abs_drop: float = Field(description="The largest absolute drop; raw drops are scores × this")
    region: str | None = Field(
        description="Where the highest-scoring cell lies (e.g. centre-left); null when no cell lowers the probability"
    )
    text: str = Field(description="A sentence naming the most important region: the heatmap's text alternative")
    timing_ms: ExplainTimingMs
    warnings: list[str] = Field(description="As for predictions (untrained model); they apply to the explanation too")
