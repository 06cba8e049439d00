"""adntn: compress PyTorch vision models with nonlinear tensor-network weight generators."""

__version__ = "0.1.0"
