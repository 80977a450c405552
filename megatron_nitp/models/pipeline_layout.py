"""Uneven pipelines: Megatron-LM's flags onto megatron-core's TransformerConfig fields.

--decoder-first/last-pipeline-num-layers become num_layers_in_first/last_pipeline_stage;
--pipeline-model-parallel-layout is megatron-core's PipelineParallelLayerLayout (E embedding,
t decoder layer, m MTP layer, L loss; "|" between stages, stages in vp-major order);
--num-virtual-stages-per-pipeline-rank sets the virtual pipeline size directly. megatron-core
then places the layers (get_num_layers_to_build / get_transformer_layer_offset); the NITP target
carrier (parallel/pipeline.py) reads the same placement, so layer k may sit on any stage.
"""


# megatron-core is imported inside the functions: validation runs before it is needed.


def virtual_pipeline_size(args):
    """Megatron-LM's virtual_pipeline_model_parallel_size (None: no interleaving)."""
    pp = args.pipeline_model_parallel_size
    if getattr(args, "pipeline_model_parallel_layout", None):
        from megatron.core.transformer.pipeline_parallel_layer_layout import (
            PipelineParallelLayerLayout,
        )

        n = PipelineParallelLayerLayout.get_num_stages_from_str(
            args.pipeline_model_parallel_layout) // pp
    elif getattr(args, "num_virtual_stages_per_pipeline_rank", None):
        n = args.num_virtual_stages_per_pipeline_rank
    elif args.num_layers_per_virtual_pipeline_stage:
        n = args.num_layers // pp // args.num_layers_per_virtual_pipeline_stage
    else:
        return None
    return n if n > 1 else None


def pipeline_config(args) -> dict:
    """TransformerConfig fields for the pipeline split."""
    return dict(
        num_layers_in_first_pipeline_stage=getattr(args, "decoder_first_pipeline_num_layers", None),
        num_layers_in_last_pipeline_stage=getattr(args, "decoder_last_pipeline_num_layers", None),
        pipeline_model_parallel_layout=getattr(args, "pipeline_model_parallel_layout", None),
    )


# No virtual or uneven split (a one-stage rebuild of a checkpoint: export, import): RunConfig
# changes.
NO_PIPELINE_SPLIT = dict.fromkeys((
    "num_layers_per_virtual_pipeline_stage", "num_virtual_stages_per_pipeline_rank",
    "decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers",
    "pipeline_model_parallel_layout"))


def uneven(args) -> bool:
    return any(v is not None for v in pipeline_config(args).values())


def _layout_errors(args):
    from megatron.core.transformer.pipeline_parallel_layer_layout import (
        PipelineParallelLayerLayout,
    )

    pp, text = args.pipeline_model_parallel_size, args.pipeline_model_parallel_layout
    flag = f"--pipeline-model-parallel-layout {text!r}"
    try:
        stages = PipelineParallelLayerLayout.get_num_stages_from_str(text)
        if stages % pp:
            return [f"{flag}: {stages} stages, not a multiple of --pipeline-model-parallel-size "
                    f"{pp}"]
        layout = PipelineParallelLayerLayout(text, pp)
        standalone = layout.validate_layer_layout(args.num_layers, args.mtp_num_layers)
    except (AssertionError, ValueError, KeyError) as e:
        return [f"{flag}: {e} (valid: E first, L last, exactly --num-layers {args.num_layers} "
                f"t and --mtp-num-layers m after them)"]
    if standalone:
        return [f"{flag}: MTP layers must be on the last pipeline stage (with L)"]
    return []


def pipeline_errors(args):
    """One line per bad pipeline flag, before any work (Megatron-LM's rules)."""
    pp = args.pipeline_model_parallel_size
    set_ = [f for f, v in (("--num-layers-per-virtual-pipeline-stage",
                            args.num_layers_per_virtual_pipeline_stage),
                           ("--num-virtual-stages-per-pipeline-rank",
                            args.num_virtual_stages_per_pipeline_rank),
                           ("--pipeline-model-parallel-layout",
                            args.pipeline_model_parallel_layout)) if v is not None]
    if len(set_) > 1:
        return [f"{' and '.join(set_)}: at most one of them may be set"]
    first, last = args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers
    if args.pipeline_model_parallel_layout is not None:
        if first is not None or last is not None:
            return ["--pipeline-model-parallel-layout: cannot be combined with "
                    "--decoder-first/last-pipeline-num-layers"]
        return _layout_errors(args)
    if args.num_layers_per_virtual_pipeline_stage and (first is not None or last is not None):
        return ["--num-layers-per-virtual-pipeline-stage: use --num-virtual-stages-per-pipeline-"
                "rank with --decoder-first/last-pipeline-num-layers"]
    if (first is not None or last is not None) and pp == 1:
        return ["--decoder-first/last-pipeline-num-layers: need --pipeline-model-parallel-size > 1"]
    if first is None and last is None and not args.num_virtual_stages_per_pipeline_rank:
        return []  # the even split: validation's own divisibility check
    vp = args.num_virtual_stages_per_pipeline_rank or 1
    rest, stages = args.num_layers, pp
    for flag, n in (("--decoder-first-pipeline-num-layers", first),
                    ("--decoder-last-pipeline-num-layers", last)):
        if n is None:
            continue
        if n <= 0 or n % vp:
            return [f"{flag} {n}: must be > 0 and a multiple of the {vp} virtual stages per rank"]
        rest, stages = rest - n, stages - 1
    if rest < 0 or bool(rest) != bool(stages) or (stages and rest % (stages * vp)):
        return [f"--num-layers {args.num_layers}: the {rest} layers left after the first/last "
                f"stages must split evenly over the {stages} other stage(s) x {vp} virtual "
                f"stages"]
    return []


def chunk_layer_counts(args):
    """Decoder layers of every model chunk in pipeline order (vp-major), from the flags alone
    (FLOPs and --dry-run; megatron-core's placement rules, checked against it by the suite)."""
    pp, L = args.pipeline_model_parallel_size, args.num_layers
    layout = args.pipeline_model_parallel_layout
    if layout:
        from megatron.core.transformer.pipeline_parallel_layer_layout import (
            PipelineParallelLayerLayout,
        )

        from megatron.core.transformer.enums import LayerType

        return [stage.count(LayerType.decoder)
                for stage in PipelineParallelLayerLayout.parse_str_to_list(layout)]
    vp = virtual_pipeline_size(args) or 1
    first, last = args.decoder_first_pipeline_num_layers, args.decoder_last_pipeline_num_layers
    if pp == 1:
        return [L]
    middle = L - (first or 0) - (last or 0)
    n_middle = pp - (first is not None) - (last is not None)
    per_rank = [middle // n_middle if n_middle else 0] * pp
    if first is not None:
        per_rank[0] = first
    if last is not None:
        per_rank[-1] = last
    return [per_rank[r] // vp for _ in range(vp) for r in range(pp)]


def chunk_layer_range(config, pp_rank, vp_stage):
    """[lo, hi): global 0-based decoder layers of chunk (pp_rank, vp_stage), any split."""
    from megatron.core.transformer.enums import LayerType
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    layout = config.pipeline_model_parallel_layout
    if layout is not None:  # megatron-core's helpers read the rank from parallel_state here
        v = vp_stage or 0
        n = layout.layout[pp_rank][v].count(LayerType.decoder)
        offset = sum(layout.layout[r][vv].count(LayerType.decoder)
                     for vv in range(v + 1)
                     for r in range(layout.pipeline_model_parallel_size if vv < v else pp_rank))
        return offset, offset + n
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return offset, offset + get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
