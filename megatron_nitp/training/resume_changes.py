"""What a resume changes besides the architecture (checked in resolve._check_resume_target).

- NITP settings: legal to change (an ablation that continues a run), never silent: one notice
  naming each field, the checkpoint's value and the new one (NITP on -> off drops the head).
- Model settings that keep every weight's shape but change what the model computes (RoPE base
  and scaling, norm epsilon, routing): legal (a long-context continuation raises the RoPE base),
  never silent: one notice naming each.
- Optimizer layout: megatron-core 0.16.1 cannot load one optimizer's state into the other
  (the distributed optimizer's fully-reshardable state holds fp32 master copies,
  `optimizer.state.param.*`, that the plain optimizer never saves; the plain optimizer's
  param-group state lacks the distributed optimizer's `pre_wd_mult`), so a switch is refused in
  one line naming the flag.
"""

from .log import info
from .validation import ConfigError


def nitp_changes(saved_nitp: dict, current: dict):
    """[(field, checkpoint value, new value)]; a disabled NITP's other fields do not matter."""
    if not saved_nitp:
        return []
    if saved_nitp.get("enabled") != current.get("enabled"):
        return [("enabled", saved_nitp.get("enabled"), current.get("enabled"))]
    if not current.get("enabled"):
        return []
    return [(k, saved_nitp[k], current[k]) for k in sorted(current)
            if k in saved_nitp and saved_nitp[k] != current[k]]


def report_nitp_changes(saved_nitp: dict, current: dict, log=info):
    changes = nitp_changes(saved_nitp, current)
    if not changes:
        return
    listed = "; ".join(f"{k} {old} -> {new}" for k, old, new in changes)
    extra = ""
    if ("enabled", True, False) in changes:
        extra = " (the checkpoint's NITP head is not loaded: this run trains NTP only)"
    log(f"notice: resume changes NITP: {listed}{extra}")


# Flags (dests) a checkpoint's weights do not fix but its training assumed.
MODEL_SETTINGS = ("rotary_base", "rotary_percent", "rotary_scaling_factor", "mscale",
                  "mscale_all_dim", "norm_epsilon", "moe_router_score_function",
                  "moe_router_pre_softmax", "moe_router_topk_scaling_factor")


def report_model_setting_changes(saved_args: dict, args, log=info):
    changes = [f"--{k.replace('_', '-')} {saved_args[k]} -> {getattr(args, k)}"
               for k in MODEL_SETTINGS if k in saved_args and saved_args[k] != getattr(args, k)]
    if changes:
        log(f"notice: resume changes model settings the checkpoint was trained with: "
            f"{'; '.join(changes)}")


def check_optimizer_layout(saved_args: dict, args, load_dir: str):
    if "use_distributed_optimizer" not in saved_args:
        return
    saved = bool(saved_args["use_distributed_optimizer"])
    if saved != bool(args.use_distributed_optimizer):
        how = "with" if saved else "without"
        raise ConfigError(f"--use-distributed-optimizer: the checkpoint in {load_dir} was saved "
                          f"{how} it and its optimizer state cannot be loaded into the other "
                          f"optimizer; {'add' if saved else 'drop'} --use-distributed-optimizer "
                          "to resume")
