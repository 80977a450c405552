# megatron-nitp training image: NVIDIA's PyTorch container + this project, for SLURM via pyxis/enroot
# (examples/slurm/) or plain `docker run --gpus all`.
#
# Base: nvcr.io/nvidia/pytorch:25.09-py3, the NGC release Megatron-LM pins for its long-term-support
# images in the megatron-core 0.15/0.16 line. It brings CUDA, NCCL, cuDNN, PyTorch, Transformer
# Engine (the TE layer specs, fused attention, context parallelism) and apex (fused kernels
# megatron-core falls back to); the check at the end fails the build if either is missing.
# PyTorch is preinstalled, so unlike on a bare machine (README: install torch, then the project)
# only the project is installed, with the README's own command.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.09-py3
FROM ${BASE_IMAGE}

# megatron-core's TP/SP communication overlap needs one CUDA work queue per device.
ENV CUDA_DEVICE_MAX_CONNECTIONS=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

WORKDIR /workspace/megatron-nitp
COPY setup.py ./
COPY megatron_nitp ./megatron_nitp
COPY pretrain_gpt_nitp.py pretrain_moe_nitp.py ./
COPY tools ./tools
COPY examples ./examples

# Editable, as in the README: a newer checkout mounted over /workspace/megatron-nitp
# (--container-mounts $PWD:/workspace/megatron-nitp) is then what runs, without a rebuild.
# The image's pip constraints (/etc/pip/constraint.txt) keep its torch, TE and apex in place.
RUN pip install -e .

RUN python -c "import torch, transformer_engine, apex, megatron.core, megatron_nitp; \
print('torch', torch.__version__, '| megatron-core', megatron.core.__version__)"
