"""circuitserve's HTTP inference server: FastAPI + uvicorn + onnxruntime (never torch)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("circuitserve")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
