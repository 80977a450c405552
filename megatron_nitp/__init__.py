"""megatron-nitp: Next Implicit Token Prediction (NITP) on top of megatron-core."""

__version__ = "0.1.0"
