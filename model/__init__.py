"""Weights → ONNX for the AlexNet the service serves. Never imports `app`."""
