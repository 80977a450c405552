"""One variant built the engine's way (training/model_setup.py), stepped by the engine's
train_step, and the random batches every variant trains on."""

import torch


class Variant:
    """A built model (DDP-wrapped chunks) + optimizer that can take training steps."""

    def __init__(self, name, args, device, seed):
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
        from megatron_nitp.training.model_setup import build_model_and_optimizer

        # Same seed for every variant: identical backbones (the head is built after them).
        torch.manual_seed(seed)
        model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
        self.name, self.args, self.device = name, args, device
        self.nitp = args.nitp_config  # args: a RunConfig (shapes.variant_args)
        built = build_model_and_optimizer(args, self.nitp)  # on the GPU when there is one
        self.config, self.chunks, self.model = built.config, built.chunks, built.model
        self.optimizer, self.scheduler = built.optimizer, built.scheduler
        self.iteration = 0

    def step(self, batches, geometry=None):
        """One train_step over `batches` (one per microbatch); its StepResult."""
        from megatron_nitp.training.step import train_step

        result = train_step(self.args, self.model, self.optimizer, self.scheduler, self.config,
                            self.nitp, iter(batches), len(batches), self.iteration,
                            geometry=geometry)
        self.iteration += 1
        return result


def make_batches(args, num_microbatches, seed):
    """Random tokens, all positions counted: the same microbatches for every variant."""
    g = torch.Generator().manual_seed(seed)
    s, b = args.seq_length, args.micro_batch_size
    out = []
    for _ in range(num_microbatches):
        seq = torch.randint(0, args.vocab_size, (b, s + 1), generator=g)
        out.append(dict(tokens=seq[:, :-1], labels=seq[:, 1:], loss_mask=torch.ones(b, s),
                        position_ids=torch.arange(s).repeat(b, 1)))
    return out


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()
