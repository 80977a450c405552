"""Install megatron-nitp. CPU machines: install torch==2.13.0 first (see README)."""

from setuptools import find_packages, setup

setup(
    name="megatron-nitp",
    version="0.1.0",
    description="Next Implicit Token Prediction (NITP) pretraining on megatron-core",
    packages=find_packages(include=["megatron_nitp", "megatron_nitp.*"]),
    python_requires=">=3.10",
    install_requires=[
        # A bare `torch` would pull a multi-GB CUDA build on CPU machines; any 2.x the
        # machine already has satisfies this.
        "torch>=2.4",
        "megatron-core==0.16.1",
        "numpy",
        "sentencepiece",
        "tokenizers",
        "tiktoken",  # --tokenizer-type TikTokenizer (megatron-core imports it only if present)
        "pyyaml",
        "psutil",  # megatron-core's dist checkpointing imports it without declaring it
        "safetensors",
        "tqdm",
        "wandb",
        "tensorboard",
        "matplotlib",
        "transformers>=4.45",  # tools/convert_checkpoint.py, tools/generate.py --hf
    ],
    extras_require={
        # Transformer Engine; apex comes with the NVIDIA PyTorch container (see Dockerfile).
        "gpu": ["transformer-engine[pytorch]"],
        # tools/eval_downstream.py: lm-eval's `hf` model needs its [hf] extra (transformers,
        # accelerate, peft).
        "eval": ["lm-eval[hf]>=0.4.13,<0.5"],
        # tools/eval_representations.py --mteb: the version App. E used. On top of lm-eval it
        # adds ~260 MB (mteb 70, polars 180, sentence-transformers, pytrec-eval) and changes no pinned
        # version (pip install --dry-run; 8 s to install here).
        "mteb": ["mteb==2.12.0"],
        # lm-eval (~400 MB, ~1.7 min to install) and mteb: their scores of our models are part
        # of what the suite checks.
        "test": ["pytest", "pytest-timeout", "lm-eval[hf]>=0.4.13,<0.5", "mteb==2.12.0"],
    },
)
