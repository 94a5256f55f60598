"""ondevice: compress deep recommender models into small, verified ONNX artefacts."""

__version__ = "0.1.0"
