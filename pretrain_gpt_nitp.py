"""Pretrain a dense GPT model with NITP on megatron-core.

torchrun --nproc_per_node N pretrain_gpt_nitp.py [Megatron-LM flags] --nitp [--nitp-* flags]
(plain `python` runs one process; `srun` works too). See --help.
"""

from megatron_nitp.training.engine import main

if __name__ == "__main__":  # the guard matters: dist-checkpointing workers re-import this file
    main("gpt")
