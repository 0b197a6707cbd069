"""What the served model says about itself."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app.deps import RuntimeDep
from app.schemas import ModelInfoResponse, PreprocessingInfo
from model.metadata import INPUT_NAME, OUTPUT_NAME

router = APIRouter(prefix="/v1", tags=["model"])


@router.get("/model", response_model=ModelInfoResponse)
async def get_model(runtime: RuntimeDep) -> ModelInfoResponse:
    """The model card from the ONNX metadata, plus the execution providers in use."""
    model = runtime.model
    card = model.card
    return ModelInfoResponse(
        name=card.name,
        architecture=card.architecture,
        weights=card.weights,
        weights_sha256=card.weights_sha256,
        trained=card.trained,
        precision=card.precision,
        source_url=card.source_url,
        license=card.license,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=model.input_shape,
        preprocessing=PreprocessingInfo.model_validate(asdict(card.preprocessing)),
        num_labels=len(card.labels),
        providers=model.providers.active,
        warnings=model.warnings,
    )
