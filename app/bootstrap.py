"""First start: build the model file when it is missing, never silently with untrained weights."""

from __future__ import annotations

import logging
import subprocess
import sys

from app.config import Settings

logger = logging.getLogger(__name__)


def _export(settings: Settings, weights: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "model",
        "export",
        "--weights",
        weights,
        "--output",
        str(settings.model_path),
        "--cache-dir",
        str(settings.weights_cache_dir),
    ]
    # stderr is inherited so the download progress bar and errors reach the operator as they happen.
    return subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)


def ensure_model(settings: Settings) -> None:
    """Build `settings.model_path` if missing: trained BVLC weights if they can be had, else seeded random."""
    if settings.model_path.exists() or not settings.auto_export:
        return
    logger.info("%s is missing; building it from the BVLC weights (cached or downloaded)", settings.model_path)
    if _export(settings, "bvlc").returncode == 0:
        return
    if settings.require_trained:
        raise SystemExit(
            "ALEXNET_REQUIRE_TRAINED is set and the BVLC weights cannot be had (see the error above); "
            "download them and run `python -m model export --weights bvlc --checkpoint PATH`"
        )
    logger.warning(
        "UNTRAINED MODEL: the trained weights cannot be had (see the error above), so %s is being built "
        "with seeded random weights. Predictions will be noise and are labelled as such. "
        "To serve the real model: python -m model export --weights bvlc --checkpoint PATH",
        settings.model_path,
    )
    if _export(settings, "random").returncode != 0:
        raise SystemExit(f"could not build {settings.model_path} even with random weights (see above)")
