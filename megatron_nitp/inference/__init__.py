"""Inference helpers: token generation shared by the megatron and Hugging Face backends."""
