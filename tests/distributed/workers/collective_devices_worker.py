"""Worker for tests/distributed/test_collective_devices.py: every tensor handed to a
torch.distributed collective during a real engine run lives on the device the engine says it
uses, and none of the project's was created without a device.

On CPU the engine's device *is* the default device, so a device comparison alone cannot catch a
tensor made without `device=` (NCCL rejects exactly those). Two checks therefore run together:
1. every tensor passed to a collective is on `engine._device()`;
2. a TorchFunctionMode marks every tensor that megatron_nitp code creates with a factory
   (torch.tensor, zeros, ...) without `device=`; `.to(device)` / `.cuda()` clears the mark. A
   marked tensor reaching a collective is reported with the line that created it.
A probe (an unplaced all-reduce compiled as project code) proves the checks fire.
"""

import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
             torch.rand, torch.randn, torch.randint, torch.eye, torch.linspace}
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
               "reduce_scatter", "broadcast", "reduce", "all_to_all", "all_to_all_single",
               "send", "recv", "isend", "irecv", "batch_isend_irecv", "_all_gather_base",
               "_reduce_scatter_base")
calls, problems = {"n": 0}, []


def _project_frame():
    """The innermost caller outside torch and this file, if it is megatron_nitp code."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name.startswith("torch") or frame.f_code.co_filename == __file__):
            return frame if name.startswith("megatron_nitp") else None
        frame = frame.f_back
    return None


class MarkUnplacedTensors(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES and "device" not in kwargs and isinstance(out, torch.Tensor):
            frame = _project_frame()
            if frame is not None:
                out._created_without_device = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        elif func in (torch.Tensor.to, torch.Tensor.cuda) and isinstance(out, torch.Tensor):
            placed = "device" in kwargs or func is torch.Tensor.cuda or any(
                isinstance(a, (torch.device, str, int)) for a in args[1:])
            if placed and hasattr(out, "_created_without_device"):
                del out._created_without_device
        elif isinstance(out, torch.Tensor) and not hasattr(out, "_created_without_device"):
            # What is computed from an unplaced tensor is unplaced too (x.clone(), cat, ...).
            origin = next((t._created_without_device for t in _tensors(list(args))
                           if getattr(t, "_created_without_device", None)), None)
            if origin:
                out._created_without_device = origin
        return out


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dist.P2POp):
        yield obj.tensor


def _wrap(name, real):
    def collective(*args, **kwargs):
        from megatron_nitp.training.engine import _device

        calls["n"] += 1
        want = _device()
        for t in _tensors(list(args) + list(kwargs.values())):
            where = "".join(traceback.format_stack(limit=6)[:-1])
            if t.device != want:
                problems.append(f"{name}: tensor on {t.device}, engine device {want}\n{where}")
            if getattr(t, "_created_without_device", None):
                problems.append(f"{name}: tensor created without device= at "
                                f"{t._created_without_device}\n{where}")
        return real(*args, **kwargs)

    return collective


def install():
    # Before megatron imports: modules that bind `dist.all_gather_into_tensor` at import time
    # then bind the wrapper.
    for name in COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, _wrap(name, getattr(dist, name)))


def probe():
    """An unplaced all-reduce from 'project' code must be reported (the checks can fail)."""
    before = len(problems)
    code = compile("dist.all_reduce(torch.tensor([1.0]))", "megatron_nitp/probe.py", "exec")
    with MarkUnplacedTensors():
        exec(code, {"__name__": "megatron_nitp.probe", "dist": dist, "torch": torch})
    caught = problems[before:]
    del problems[before:]
    return any("created without device= at megatron_nitp/probe.py" in p for p in caught)


def main(out_dir):
    install()
    from megatron.core import parallel_state as ps

    from megatron_nitp.nitp.metrics import (MicrobatchGeometry, effective_rank, reduce_geometry,
                                            sample_pairs)
    from megatron_nitp.training.engine import pretrain

    argv = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
            "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
            "--mock-data", "--vocab-size", "255", "--make-vocab-size-divisible-by", "64",
            "--nitp", "--nitp-target-layer", "1", "--train-iters", "3",
            "--use-distributed-optimizer", "--nitp-metrics-interval", "1",
            "--eval-interval", "2", "--eval-iters", "1", "--exit-signal-handler",
            "--save", os.path.join(out_dir, "ckpt"), "--save-interval", "2"]
    from tests.helpers import suite_flags

    with MarkUnplacedTensors():
        code = pretrain("gpt", suite_flags(argv) + argv)
        # The metrics' reductions called directly too, over the DP group (the engine's metrics
        # steps above reduce over its groups the same way).
        h = torch.randn(8, 2, 16)
        group = ps.get_data_parallel_group()
        plan = sample_pairs(2, 8, 16, 0)
        report = MicrobatchGeometry(plan, 0, 2).sums(h, torch.ones(8, 2, dtype=torch.bool),
                                                    torch.arange(8))
        reduce_geometry([report], plan, group)
        effective_rank(h, None, group)
    report = dict(exit_code=code, collectives=calls["n"], problems=problems,
                  probe_caught=probe())
    with open(os.path.join(out_dir, f"report_{dist.get_rank()}.json"), "w") as f:
        json.dump(report, f, indent=1)
    print("COLLECTIVES", json.dumps({k: v for k, v in report.items() if k != "problems"}))


if __name__ == "__main__":
    main(sys.argv[1])
