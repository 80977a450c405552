"""Megatron-LM's --decoupled-lr / --decoupled-min-lr: the input embedding and output layer's own lr.

As Megatron-LM 0.16.1 does it: the two flags are OptimizerConfig fields, and megatron-core's
standard param-group overrides (`get_standard_config_overrides`) give every parameter marked
`is_embedding_or_output_parameter` (LanguageModule: the word embeddings on the first stage, the
output layer on the last; with tied embeddings and PP > 1 the last stage's copy is the output
layer's weight, so both copies get it) a group whose peak / final lr they are. megatron-core's
OptimizerParamScheduler then anneals that group on the main warmup and decay. Every other
parameter, the NITP head included, keeps --lr / --min-lr. --decoupled-min-lr alone changes
nothing (megatron-core reads it only with --decoupled-lr): said here in one notice.

One fix on top: megatron-core 0.16.1 matches a checkpoint's param groups to the current ones by
(wd_mult, lr_mult, is_expert_parallel, is_decoupled_lr), and its new-style decoupled group leaves
is_decoupled_lr False, so it collides with the default group and a resume fails ("loaded state
dict contains a parameter group that doesn't match"). The override here sets is_decoupled_lr,
the legacy field's own meaning, so the groups stay distinct (later megatron-core keys groups by
their max_lr/min_lr too).
"""


def decoupled_lr_errors(args):
    if args.decoupled_lr is not None and args.decoupled_min_lr is not None \
            and args.decoupled_min_lr > args.decoupled_lr:
        yield (f"--decoupled-min-lr {args.decoupled_min_lr:g}: must not exceed --decoupled-lr "
               f"{args.decoupled_lr:g} (the embedding and output layers' lr decays to it)")


def decoupled_lr_notices(args):
    if args.decoupled_min_lr is not None and args.decoupled_lr is None:
        yield ("notice: --decoupled-min-lr without --decoupled-lr has no effect (as in "
               "Megatron-LM): the embedding and output layers follow --lr/--min-lr")


def optimizer_config_overrides(opt_config):
    """megatron-core's standard overrides (weight-decay skips, decoupled lr), the decoupled
    group marked is_decoupled_lr (see above)."""
    from megatron.core.optimizer import get_standard_config_overrides

    overrides = get_standard_config_overrides(opt_config)
    for key, override in overrides.items():
        if "max_lr" in override:  # only the decoupled-lr entry sets it
            overrides[key] = {**override, "is_decoupled_lr": True}
    return overrides


def check_decoupled_lr_on_resume(saved_args: dict, args, load_dir: str):
    """The checkpoint's optimizer has a decoupled-lr group or not: the run must match it."""
    from .validation import ConfigError  # validation imports this module

    if "decoupled_lr" not in saved_args:
        return
    saved = saved_args["decoupled_lr"] is not None
    if saved != (args.decoupled_lr is not None):
        how = "with" if saved else "without"
        raise ConfigError(f"--decoupled-lr: the checkpoint in {load_dir} was saved {how} it "
                          "(its optimizer has a different param-group layout); "
                          f"{'give' if saved else 'drop'} --decoupled-lr to resume, or "
                          "--no-load-optim for a fresh optimizer")
