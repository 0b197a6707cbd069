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
    queue: float = Field(description="Time spent waiting for a batch slot")
    inference: float
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
