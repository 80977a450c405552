"""--profile over iterations [--profile-step-start, --profile-step-end) on --profile-ranks, as
Megatron-LM 0.16.1 does it: with --use-pytorch-profiler a torch profiler trace (Chrome trace
JSON, `*.pt.trace.json`, readable by TensorBoard's profiler plugin or Perfetto) written to
--tensorboard-dir; without it an nsys capture range (cudaProfilerStart/Stop plus NVTX ranges,
for `nsys profile --capture-range=cudaProfilerApi`), which needs CUDA.
"""

import torch

from .validation import ConfigError


def check_profile_args(args):
    """Before any work: the combinations that could not profile."""
    if not args.profile:
        return
    if args.profile_step_end <= args.profile_step_start:
        raise ConfigError(f"--profile-step-end {args.profile_step_end}: must be greater than "
                          f"--profile-step-start {args.profile_step_start}")
    if args.use_pytorch_profiler and not args.tensorboard_dir:
        raise ConfigError("--use-pytorch-profiler: the trace is written to --tensorboard-dir; "
                          "set it")
    if not args.use_pytorch_profiler and not torch.cuda.is_available():
        raise ConfigError("--profile: without --use-pytorch-profiler it opens an nsys capture "
                          "range (cudaProfilerStart), which needs CUDA; add "
                          "--use-pytorch-profiler for a torch profiler trace")


class StepProfiler:
    """step(iteration) at the top of every iteration, after_step(iteration) after it."""

    def __init__(self, args, rank: int):
        self.args = args
        self.on = bool(args.profile) and rank in args.profile_ranks
        self.prof, self.nvtx = None, None
        if self.on and args.use_pytorch_profiler:
            start, end = args.profile_step_start, args.profile_step_end
            self.prof = torch.profiler.profile(
                schedule=torch.profiler.schedule(wait=max(start - 1, 0),
                                                 warmup=1 if start > 0 else 0,
                                                 active=end - start, repeat=1),
                on_trace_ready=torch.profiler.tensorboard_trace_handler(args.tensorboard_dir),
                record_shapes=True, with_stack=True)
            self.prof.start()

    def step(self, iteration):
        if not self.on:
            return
        if self.prof is not None:
            self.prof.step()
        elif iteration == self.args.profile_step_start:
            torch.cuda.check_error(torch.cuda.cudart().cudaProfilerStart())
            self.nvtx = torch.autograd.profiler.emit_nvtx(record_shapes=True)
            self.nvtx.__enter__()

    def after_step(self, iteration):
        if self.on and iteration == self.args.profile_step_end:
            self.stop()

    def stop(self):
        if self.prof is not None:
            self.prof.stop()
            self.prof = None
        elif self.nvtx is not None:
            torch.cuda.check_error(torch.cuda.cudart().cudaProfilerStop())
            self.nvtx.__exit__(None, None, None)
            self.nvtx = None
        self.on = False
