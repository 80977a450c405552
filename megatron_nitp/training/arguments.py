"""Command line: Megatron-LM's flag names for what we share, plus --nitp-*, plus --config YAML.

A YAML config is a flat mapping whose keys are the long flag names without the leading dashes
(`num-layers: 24`, `nitp-target-layer: 5`); several `--config` files merge left to right and flags
given on the command line override them. Unknown keys are an error (a typo must not be ignored).
"""

import argparse
import os
import signal
import sys

import yaml

from .log import info
from .config_flags import TRANSFORMER_CONFIG, add_config_flags


# TransformerConfig-backed flags (megatron-core 0.16.1 field names = Megatron-LM dest names).
_MODEL_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                 "num_query_groups", "kv_channels", "layernorm_epsilon", "qk_layernorm",
                 "add_qkv_bias", "add_bias_linear", "layernorm_zero_centered_gamma",
                 "init_method_std", "attention_dropout", "hidden_dropout")
_MODEL_NOTES = {
    "num_layers": dict(note="Required."),
    "hidden_size": dict(note="Required."),
    "num_attention_heads": dict(note="Required."),
    "ffn_hidden_size": dict(note="With --swiglu: int(8 * hidden-size / 3 / 64) * 64, as "
                                 "Megatron-LM."),
    "num_query_groups": dict(note="Read only with --group-query-attention."),
    "layernorm_epsilon": dict(dest="norm_epsilon"),  # the dest saved run configs hold
    "qk_layernorm": dict(note="(Qwen3, OLMo-2; megatron-core spec.)"),
    "layernorm_zero_centered_gamma": dict(note="Needs Transformer Engine norms "
                                               "(--transformer-impl transformer_engine)."),
}
_MOE_FIELDS = ("moe_router_topk", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size",
               "moe_router_pre_softmax", "moe_router_score_function",
               "moe_router_topk_scaling_factor", "moe_router_enable_expert_bias",
               "moe_router_bias_update_rate", "moe_router_num_groups", "moe_router_group_topk",
               "moe_z_loss_coeff", "moe_expert_capacity_factor", "moe_token_drop_policy",
               "moe_pad_expert_input_to_capacity", "moe_token_dispatcher_type",
               "moe_flex_dispatcher_backend", "moe_grouped_gemm", "moe_permute_fusion",
               "moe_router_dtype", "moe_router_force_load_balancing")
_MOE_NOTES = {
    # --no-moe-router-pre-softmax too (a later --config can switch it off again)
    "moe_router_pre_softmax": dict(action=argparse.BooleanOptionalAction),
    "moe_shared_expert_intermediate_size": dict(note="One shared expert, no gate."),
    "moe_router_enable_expert_bias": dict(note="Needs --moe-router-score-function sigmoid."),
    "moe_token_dispatcher_type": dict(choices=["allgather", "alltoall", "flex"],
                                      note="(flex: CUDA with DeepEP or HybridEP installed.)"),
    "moe_flex_dispatcher_backend": dict(choices=["deepep", "hybridep"]),
    "moe_grouped_gemm": dict(note="(GPU.)"),
    "moe_permute_fusion": dict(note="(GPU, Transformer Engine >= 2.1.)"),
    "moe_router_force_load_balancing": dict(note="(Megatron-LM's benchmarking mode: the "
                                                 "model trains on random routes.)"),
}


def _add_model_args(p):
    g = p.add_argument_group("model")
    # TransformerConfig's own fields: flag, type, default and help from megatron-core, as
    # Megatron-LM derives them (training/config_flags.py); what is ours is a note.
    add_config_flags(g, TRANSFORMER_CONFIG, _MODEL_FIELDS, _MODEL_NOTES)
    g.add_argument("--group-query-attention", action="store_true", help="Use GQA.")
    g.add_argument("--seq-length", type=int, default=None,
                   help="Training sequence length (required).")
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="Maximum positions (default seq-length).")
    g.add_argument("--normalization", choices=["RMSNorm", "LayerNorm"], default="LayerNorm",
                   help="Norm type.")
    g.add_argument("--swiglu", action=argparse.BooleanOptionalAction, default=False,
                   help="SwiGLU MLPs (the paper's models use it; default GeLU MLP).")
    g.add_argument("--position-embedding-type", choices=["rope", "learned_absolute"],
                   default="learned_absolute", help="Position embedding.")
    g.add_argument("--rotary-base", type=int, default=10000, help="RoPE base.")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true",
                   help="Separate output layer weights.")
    # Attention / norm options of the Megatron-LM families (models/options.py maps them).
    g.add_argument("--rotary-percent", type=float, default=1.0,
                   help="Fraction of each head's dimensions RoPE rotates (Megatron-LM's flag).")
    g.add_argument("--add-bias-linear", dest="add_bias_linear", action="store_true",
                   default=True, help="Biases on every linear layer (the default; restates it).")
    g.add_argument("--multi-latent-attention", action="store_true",
                   help="DeepSeek-V2/V3 multi-latent attention (megatron-core's MLA spec, YaRN "
                        "RoPE inside the attention); dims below, Megatron-LM's defaults.")
    g.add_argument("--q-lora-rank", type=int, default=None,
                   help="MLA: rank of the query's low-rank projection (None: full-rank query).")
    g.add_argument("--kv-lora-rank", type=int, default=32, help="MLA: rank of the joint KV latent.")
    g.add_argument("--qk-head-dim", type=int, default=128,
                   help="MLA: per-head q/k dimension without RoPE.")
    g.add_argument("--qk-pos-emb-head-dim", type=int, default=64,
                   help="MLA: per-head q/k dimension that carries RoPE.")
    g.add_argument("--v-head-dim", type=int, default=128, help="MLA: per-head value dimension.")
    g.add_argument("--rotary-scaling-factor", type=float, default=1.0,
                   help="MLA: YaRN RoPE scaling factor.")
    g.add_argument("--mscale", type=float, default=1.0, help="MLA: YaRN mscale.")
    g.add_argument("--mscale-all-dim", type=float, default=0.0, help="MLA: YaRN mscale_all_dim.")
    g.add_argument("--transformer-impl", choices=["local", "transformer_engine"], default=None,
                   help="Layer implementation (default: transformer_engine on GPU if importable, "
                        "else local).")
    g.add_argument("--vocab-size", type=int, default=None,
                   help="Vocabulary size (NullTokenizer, mock data; else from the tokenizer).")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="Pad the vocabulary to a multiple of this times TP.")
    # Multi-token prediction (megatron-core's MultiTokenPredictionBlock; models/mtp.py).
    g.add_argument("--mtp-num-layers", type=int, default=None,
                   help="Number of Multi-Token Prediction (MTP) layers (DeepSeek-V3); None: off.")
    g.add_argument("--mtp-loss-scaling-factor", type=float, default=0.1,
                   help="Scaling factor of the MTP loss, divided over the MTP layers.")
    g = p.add_argument_group("mixture of experts")
    add_config_flags(g, TRANSFORMER_CONFIG, _MOE_FIELDS, _MOE_NOTES)
    g.add_argument("--num-experts", type=int, default=None, help="Routed experts per MoE layer.")
    g.add_argument("--moe-layer-freq", default=1,
                   help="1 = every layer MoE; N = every Nth; or a pattern like "
                        "'([0]*1+[1]*15)' / list: 0 dense, 1 MoE.")
    g.add_argument("--moe-router-load-balancing-type", default="aux_loss",
                   choices=["aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"],
                   help="Load balancing (one type; Megatron-LM also takes a list).")
    g.add_argument("--moe-aux-loss-coeff", type=float, default=0.0, help="Aux loss weight.")


def _add_nitp_args(p):
    g = p.add_argument_group("NITP (next implicit token prediction)")
    g.add_argument("--nitp", action=argparse.BooleanOptionalAction, default=False,
                   help="Enable the NITP objective (--no-nitp: the NTP baseline).")
    g.add_argument("--nitp-target-layer", type=int, default=None,
                   help="Global 1-based layer whose output is the implicit target; 0 = embedding "
                        "output. Default: round(0.2 * num-layers).")
    g.add_argument("--nitp-loss-weight", type=float, default=1.0, help="lambda.")
    g.add_argument("--nitp-shift", type=int, default=1, choices=[0, 1],
                   help="1: predict z_{t+1} (the method); 0: same position (ablation).")
    g.add_argument("--nitp-loss-type", default="cosine",
                   help="cosine | mse | smooth_l1 | kl | generic_cosine (the paper's generic "
                        "cosine regularisation baseline: no target).")
    g.add_argument("--nitp-no-stop-grad", action="store_true",
                   help="Let gradients flow into the target path (ablation).")
    g.add_argument("--nitp-start-step", type=int, default=0,
                   help="Iteration at which the NITP loss starts to count.")
    g.add_argument("--nitp-no-projector", action="store_true",
                   help="Align h_t with the target directly (no SwiGLU head).")
    g.add_argument("--nitp-head-ffn-multiplier", type=int, default=4,
                   help="Head width = multiplier * hidden-size.")
    g.add_argument("--nitp-head-recompute", action="store_true",
                   help="Recompute the head's activations in backward (saves memory).")
    g.add_argument("--nitp-metrics-interval", type=int, default=0,
                   help="Measure effective rank / pair cosine (App. D) of the step's mini-batch "
                        "every N iterations (0: never).")
    g.add_argument("--nitp-metrics-num-pairs", type=int, default=1024,
                   help="Token pairs (across sequences) the pair cosine averages.")


def _add_training_args(p):
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=None,
                   help="Sequences per microbatch (required).")
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="Sequences per step (default micro-batch-size * DP).")
    g.add_argument("--train-iters", type=int, default=None,
                   help="Training iterations (this or --train-samples is required).")
    g.add_argument("--train-samples", type=int, default=None,
                   help="Train for this many samples instead of --train-iters (schedules then "
                        "count samples: --lr-warmup-samples, --lr-decay-samples).")
    g.add_argument("--rampup-batch-size", nargs=3, type=int, default=None,
                   metavar=("START", "INCREMENT", "SAMPLES"),
                   help="Batch-size ramp-up (with --train-samples): start at START, grow by "
                        "INCREMENT evenly over SAMPLES consumed samples to --global-batch-size.")
    g.add_argument("--seed", type=int, default=1234, help="Random seed.")
    g.add_argument("--bf16", action="store_true", help="bf16 mixed precision.")
    g.add_argument("--calculate-per-token-loss", action="store_true",
                   help="Normalise by the global token count instead of per microbatch.")
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None,
                   help="Activation recompute.")
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None,
                   help="Full recompute method.")
    g.add_argument("--recompute-num-layers", type=int, default=None,
                   help="Layers per recompute unit (uniform) or recomputed layers (block).")
    g.add_argument("--enable-cuda-graph", action="store_true",
                   help="CUDA graphs (not supported with NITP: replay skips layer k's capture).")
    g.add_argument("--moe-shared-expert-overlap", action="store_true",
                   help="Overlap shared expert with dispatch.")
    g.add_argument("--overlap-moe-expert-parallel-comm", action="store_true",
                   help="MoE all-to-all overlap (not supported with NITP).")
    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--optimizer", choices=["adam"], default="adam", help="AdamW.")
    g.add_argument("--lr", type=float, default=None, help="Peak learning rate (required).")
    g.add_argument("--min-lr", type=float, default=0.0, help="Final learning rate.")
    g.add_argument("--lr-decay-style", default="linear",
                   choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"],
                   help="Decay schedule.")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="Default train-iters.")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="Linear warmup.")
    # Megatron-LM's sample-based schedule (training/sample_schedule.py).
    g.add_argument("--lr-decay-samples", type=int, default=None,
                   help="With --train-samples: decay length in samples (default train-samples).")
    g.add_argument("--lr-warmup-samples", type=int, default=0,
                   help="With --train-samples: linear warmup in samples.")
    g.add_argument("--lr-warmup-fraction", type=float, default=None,
                   help="Warmup as a fraction of the decay length (instead of "
                        "--lr-warmup-iters/--lr-warmup-samples).")
    g.add_argument("--lr-warmup-init", type=float, default=0.0,
                   help="Learning rate at the start of the warmup.")
    g.add_argument("--decoupled-lr", type=float, default=None,
                   help="Separate learning rate for the input embedding and output layer.")
    g.add_argument("--decoupled-min-lr", type=float, default=None,
                   help="Minimum learning rate for the input embedding and output layer "
                        "(with --decoupled-lr).")
    g.add_argument("--lr-wsd-decay-iters", type=int, default=None,
                   help="WSD: length of the final decay phase.")
    g.add_argument("--lr-wsd-decay-style", default="exponential",
                   choices=["exponential", "linear", "cosine", "minus_sqrt"],
                   help="WSD decay shape.")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay.")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="AdamW beta1.")
    g.add_argument("--adam-beta2", type=float, default=0.999, help="AdamW beta2.")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="AdamW epsilon.")
    g.add_argument("--clip-grad", type=float, default=1.0, help="Global grad-norm clip.")
    # Megatron-LM's names (its underscore spelling too); see training/schedule_resume.py.
    g.add_argument("--override-opt-param-scheduler", "--override-opt_param-scheduler",
                   dest="override_opt_param_scheduler", action="store_true",
                   help="On resume, take the schedule (lr, min lr, warmup, decay iterations and "
                        "style, weight decay) from the flags, not the checkpoint.")
    g.add_argument("--use-checkpoint-opt-param-scheduler", "--use-checkpoint-opt_param-scheduler",
                   dest="use_checkpoint_opt_param_scheduler", action="store_true",
                   help="On resume, take the schedule from the checkpoint, not the flags. "
                        "With neither flag a resume whose schedule differs is refused.")
    g.add_argument("--max-bad-steps", type=int, default=3,
                   help="Stop after N consecutive non-finite steps (each is skipped).")


def _add_speed_args(p):
    g = p.add_argument_group("speed (Megatron-LM's names and defaults; parallel/speed.py)")
    b = argparse.BooleanOptionalAction
    g.add_argument("--overlap-grad-reduce", action="store_true",
                   help="Overlap the DP gradient reduction with backward.")
    g.add_argument("--overlap-param-gather", action="store_true",
                   help="Overlap the distributed optimizer's parameter all-gather with forward "
                        "(needs --use-distributed-optimizer and --overlap-grad-reduce).")
    g.add_argument("--gradient-accumulation-fusion", action=b, default=True,
                   help="Fuse weight-gradient accumulation into the GEMM (apex or TE).")
    g.add_argument("--bias-swiglu-fusion", action=b, default=True, help="Fused SwiGLU.")
    g.add_argument("--bias-gelu-fusion", action=b, default=True, help="Fused GELU.")
    g.add_argument("--bias-dropout-fusion", action=b, default=True, help="Fused dropout-add.")
    g.add_argument("--masked-softmax-fusion", action=b, default=True,
                   help="Fused scale-mask-softmax kernel.")
    g.add_argument("--rope-fusion", dest="apply_rope_fusion", action=b, default=True,
                   help="Fused RoPE (TE or apex).")
    g.add_argument("--no-persist-layer-norm", action="store_true",
                   help="No persistent fused layer-norm kernel (apex/TE norms).")
    g.add_argument("--cross-entropy-loss-fusion", action="store_true",
                   help="Fused LM cross-entropy.")
    g.add_argument("--cross-entropy-fusion-impl", default="native", choices=["native", "te"],
                   help="Kernel of --cross-entropy-loss-fusion: megatron-core's native fused one, "
                        "or Transformer Engine's.")


def _add_precision_args(p):
    """Megatron-LM 0.16.1's mixed-precision, recompute and fp8 flags (parallel/precision.py)."""
    g = p.add_argument_group("mixed precision (Megatron-LM's names and defaults)")
    g.add_argument("--fp16", action="store_true",
                   help="fp16 mixed precision: Float16Module, fp32 main weights, loss scaling.")
    g.add_argument("--loss-scale", type=float, default=None,
                   help="Static loss scale (a power of 2); None: dynamic loss scaling (fp16).")
    g.add_argument("--initial-loss-scale", type=float, default=2**32,
                   help="Initial loss scale of dynamic loss scaling.")
    g.add_argument("--min-loss-scale", type=float, default=1.0,
                   help="Minimum loss scale of dynamic loss scaling.")
    g.add_argument("--loss-scale-window", type=float, default=1000,
                   help="Overflow-free iterations before the dynamic loss scale doubles.")
    g.add_argument("--hysteresis", type=int, default=2,
                   help="Overflows tolerated before the dynamic loss scale halves.")
    g.add_argument("--grad-reduce-in-bf16", action="store_true",
                   help="With --bf16: accumulate and all-reduce gradients in bf16 (not fp32).")
    g.add_argument("--accumulate-allreduce-grads-in-fp32", action="store_true",
                   help="Gradient accumulation and all-reduce in fp32 (implied by --bf16 unless "
                        "--grad-reduce-in-bf16).")
    g.add_argument("--attention-softmax-in-fp32", action="store_true",
                   help="Attention masking and softmax in fp32 (16-bit runs; Megatron-LM's "
                        "default is the model dtype).")
    g.add_argument("--apply-query-key-layer-scaling", action="store_true",
                   help="Scale Q.K^T by 1/layer-number (fp16 stability); implies "
                        "--attention-softmax-in-fp32.")
    g = p.add_argument_group("activation recompute (Megatron-LM's names and defaults)")
    g.add_argument("--recompute-activations", action="store_true",
                   help="Selective recompute: --recompute-granularity selective.")
    g.add_argument("--recompute-modules", nargs="+", type=str, default=None,
                   help="Selective recompute submodules (default core_attn): core_attn, moe_act, "
                        "layernorm, mla_up_proj, mlp, moe, shared_experts.")
    g.add_argument("--distribute-saved-activations", action="store_true",
                   help="Full recompute: split the saved layer inputs over the TP group.")
    g = p.add_argument_group("fp8 and TP overlap (Transformer Engine on a GPU)")
    g.add_argument("--fp8-format", dest="fp8", choices=["e4m3", "hybrid"], default=None,
                   help="fp8 GEMMs through Transformer Engine: e4m3, or hybrid (e5m2 gradients).")
    g.add_argument("--fp8-recipe", default="delayed",
                   choices=["tensorwise", "delayed", "mxfp8", "blockwise", "custom"],
                   help="fp8 scaling recipe.")
    g.add_argument("--fp8-quantizer-factory", default=None,
                   help="Import path of the quantizer factory of --fp8-recipe custom.")
    g.add_argument("--fp8-margin", type=int, default=0, help="fp8 scaling-factor margin.")
    g.add_argument("--fp8-interval", type=int, default=1,
                   help="Deprecated (ignored by Transformer Engine >= 1.8).")
    g.add_argument("--fp8-amax-history-len", type=int, default=1,
                   help="Length of the amax history window.")
    g.add_argument("--fp8-amax-compute-algo", default="most_recent", choices=["most_recent", "max"],
                   help="amax of the history window used for the scaling factor.")
    g.add_argument("--no-fp8-wgrad", "--disable-fp8-wgrad", dest="fp8_wgrad",
                   action="store_false", default=True,
                   help="Weight gradients in higher precision, not fp8.")
    g.add_argument("--fp8-param-gather", action="store_true",
                   help="Keep parameters in fp8 and all-gather them in fp8 (distributed "
                        "optimizer).")
    g.add_argument("--first-last-layers-bf16", action="store_true",
                   help="Keep the first/last layers in bf16 under fp8.")
    g.add_argument("--num-layers-at-start-in-bf16", type=int, default=1,
                   help="With --first-last-layers-bf16: leading bf16 layers.")
    g.add_argument("--num-layers-at-end-in-bf16", type=int, default=1,
                   help="With --first-last-layers-bf16: trailing bf16 layers.")
    g.add_argument("--tp-comm-overlap", action="store_true",
                   help="Overlap TP communication with GEMMs (Transformer Engine userbuffers; "
                        "needs --sequence-parallel).")
    g.add_argument("--tp-comm-overlap-cfg", default=None,
                   help="YAML userbuffers config for --tp-comm-overlap.")
    g.add_argument("--tp-comm-bootstrap-backend", default="nccl", choices=["nccl", "mpi", "gloo"],
                   help="Bootstrap backend of the --tp-comm-overlap userbuffers.")


def _add_parallel_args(p):
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="TP.")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="PP.")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                   help="Interleaved (virtual) pipeline chunk size.")
    # Uneven pipelines (models/pipeline_layout.py), Megatron-LM's names and meaning.
    g.add_argument("--num-virtual-stages-per-pipeline-rank", type=int, default=None,
                   help="Number of virtual pipeline stages per pipeline parallelism rank.")
    g.add_argument("--decoder-first-pipeline-num-layers", type=int, default=None,
                   help="Transformer layers on the first pipeline stage (default: even split).")
    g.add_argument("--decoder-last-pipeline-num-layers", type=int, default=None,
                   help="Transformer layers on the last pipeline stage (default: even split).")
    g.add_argument("--pipeline-model-parallel-layout", type=str, default=None,
                   help='Explicit layout, e.g. "E|(t|)*3,m|m||L": E embedding, L loss, t '
                        'decoder layer, m MTP layer; stages split by "|" (megatron-core\'s '
                        "PipelineParallelLayerLayout).")
    g.add_argument("--expert-model-parallel-size", type=int, default=1, help="EP.")
    g.add_argument("--expert-tensor-parallel-size", type=int, default=None,
                   help="Tensor parallelism inside the experts (megatron-core's expert TP); "
                        "default: --tensor-model-parallel-size.")
    g.add_argument("--context-parallel-size", type=int, default=1, help="CP (needs TE).")
    g.add_argument("--sequence-parallel", action="store_true", help="SP (needs TP > 1).")
    g.add_argument("--use-distributed-optimizer", action="store_true",
                   help="Shard optimizer state over DP.")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10, help="PG timeout.")


def _add_data_args(p):
    g = p.add_argument_group("data and tokenizer")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="Indexed data prefixes, optionally weighted: 0.7 a 0.3 b.")
    for split in ("train", "valid", "test"):  # megatron-core's blend_per_split
        g.add_argument(f"--{split}-data-path", nargs="*", default=None,
                       help=f"The {split} split's own prefixes (weighted as --data-path); "
                            "instead of --data-path and --split.")
    # Megatron-LM 0.16.1's file forms of those lists (data/data_args.py).
    g.add_argument("--data-args-path", type=str, default=None,
                   help="A file holding the --data-path list (whitespace-separated), instead of "
                        "--data-path.")
    g.add_argument("--per-split-data-args-path", type=str, default=None,
                   help="A JSON file with `train`, `valid`, `test` lists, instead of "
                        "--train/valid/test-data-path.")
    g.add_argument("--split", default=None,
                   help="train,valid,test proportions (with --data-path and no --split: "
                        "'969, 30, 1' with a notice, as Megatron-LM).")
    g.add_argument("--mock-data", action="store_true", help="Synthetic data (no files).")
    g.add_argument("--demo-data", action="store_true",
                   help="The embedded demo corpus (built and cached on first use).")
    g.add_argument("--data-cache-path", default=None, help="Dataset index cache directory.")
    # megatron-core's GPTDatasetConfig switches; NITP follows the same document boundaries.
    g.add_argument("--reset-position-ids", action="store_true",
                   help="Restart position ids after each end-of-document token (used by learned "
                        "absolute positions; RoPE uses the sequence position, as in "
                        "megatron-core).")
    g.add_argument("--reset-attention-mask", action="store_true",
                   help="No attention across end-of-document tokens; with --nitp no target "
                        "crosses a document end either (local attention spec).")
    g.add_argument("--eod-mask-loss", action="store_true",
                   help="No loss at positions holding the end-of-document token (megatron-"
                        "core's meaning: the prediction from EOD of the next document; LM and "
                        "NITP).")
    g.add_argument("--num-workers", type=int, default=2,
                   help="DataLoader worker processes per data iterator (0: loading in the "
                        "training process).")
    g.add_argument("--tokenizer-type", default="NullTokenizer",
                   choices=["NullTokenizer", "SentencePieceTokenizer", "GPTSentencePieceTokenizer",
                            "HuggingFaceTokenizer", "GPT2BPETokenizer", "Llama2Tokenizer",
                            "TikTokenizer"],
                   help="Tokenizer (data/tokenizers.py).")
    g.add_argument("--tokenizer-model", default=None,
                   help="SentencePiece .model, HF tokenizer.json or local directory, tiktoken "
                        ".json vocabulary.")
    # Megatron-LM 0.16.1's _add_tokenizer_args, same names and defaults.
    g.add_argument("--vocab-file", type=str, default=None,
                   help="Path to the vocab file (GPT2BPETokenizer: vocab.json).")
    g.add_argument("--merge-file", type=str, default=None,
                   help="Path to the BPE merge file (GPT2BPETokenizer: merges.txt).")
    g.add_argument("--tiktoken-pattern", type=str, default=None,
                   help="Which tiktoken pattern to use. Options: [v1, v2] (TikTokenizer; "
                        "megatron-core's default v2).")
    g.add_argument("--tiktoken-num-special-tokens", type=int, default=1000,
                   help="Number of special tokens in tiktoken tokenizer.")
    g.add_argument("--tokenizer-special-tokens", type=str, nargs="+", default=None,
                   help="List of special tokens. For TikTokenizer needs to have "
                        '["<unk>", "<s>", "</s>", "<mask>", "<pad>", "<cls>", "<sep>"].')
    g.add_argument("--legacy-tokenizer", action="store_true", default=False,
                   help="Megatron-LM's legacy tokenizer classes: Llama2Tokenizer then prepends "
                        "BOS; same ids for GPT2BPE/GPTSentencePiece/Null; refused for others.")


def _add_io_args(p):
    g = p.add_argument_group("checkpointing")
    g.add_argument("--save", default=None, help="Checkpoint directory (none: nothing written).")
    g.add_argument("--load", default=None, help="Resume from this checkpoint directory.")
    g.add_argument("--finetune", action="store_true",
                   help="With --load: model weights only (iteration 0, fresh optimizer and "
                        "scheduler, RNG not loaded), as Megatron-LM's --finetune; at any layout.")
    # Megatron-LM 0.16.1's checkpoint flags (its CheckpointConfig); training/checkpoint_flags.py.
    g.add_argument("--no-save-optim", action="store_true",
                   help="Save no optimizer or scheduler state; a resume from such a checkpoint "
                        "starts a fresh optimizer and scheduler at the saved iteration.")
    g.add_argument("--no-load-optim", action="store_true",
                   help="Resume the model, iteration and consumed samples, not the optimizer or "
                        "scheduler (fresh ones).")
    g.add_argument("--no-save-rng", action="store_true",
                   help="Do not save the per-rank RNG state (python, numpy, torch, CUDA, "
                        "megatron-core's RNG tracker) in checkpoints.")
    g.add_argument("--no-load-rng", action="store_true",
                   help="Do not restore the RNG state from the checkpoint on resume (dropout "
                        "then continues from --seed).")
    g.add_argument("--pretrained-checkpoint", default=None,
                   help="When --load holds no checkpoint: start from this one's weights as "
                        "--finetune (iteration 0, fresh optimizer and scheduler).")
    g.add_argument("--ckpt-format", default="torch_dist",
                   choices=["torch", "torch_dist", "torch_dcp", "fsdp_dtensor"],
                   help="Checkpoint format; megatron-nitp reads and writes torch_dist only.")
    g.add_argument("--auto-detect-ckpt-format", action="store_true",
                   help="Detect the format of --load's checkpoint (always done: a checkpoint "
                        "not in torch_dist is refused by name).")
    g.add_argument("--dist-ckpt-strictness", default="assume_ok_unexpected",
                   choices=["assume_ok_unexpected", "log_unexpected", "log_all",
                            "raise_unexpected", "raise_all", "return_unexpected", "return_all",
                            "ignore_all"],
                   help="Key mismatches between the checkpoint and the model on load "
                        "(megatron-core's StrictHandling).")
    g.add_argument("--use-checkpoint-args", action="store_true",
                   help="Take the model's arguments from the --load (or --pretrained-checkpoint) "
                        "checkpoint's saved run config, as Megatron-LM does.")
    g.add_argument("--async-save", action="store_true",
                   help="Asynchronous checkpoint save: not supported (rejected).")
    g.add_argument("--save-interval", type=int, default=None, help="Save every N iterations.")
    g.add_argument("--keep-last-n-checkpoints", type=int, default=None,
                   help="Delete older checkpoints.")
    g.add_argument("--exit-interval", type=int, default=None, help="Exit after N iterations.")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="Save and exit after this many minutes.")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="Save and exit 0 on --exit-signal (preemption) or Ctrl-C (SIGINT).")
    g.add_argument("--exit-signal", type=_signal_by_name, default=signal.SIGTERM,
                   choices=list(signal.Signals), metavar="SIGNAL",
                   help="The signal --exit-signal-handler saves and exits on, by name "
                        "(SIGTERM, SIGUSR1, ...); SIGINT always is.")
    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-interval", type=int, default=None, help="Evaluate every N iterations.")
    g.add_argument("--eval-iters", type=int, default=100, help="Batches per evaluation.")
    g.add_argument("--log-interval", type=int, default=100,
                   help="Console/log every N iterations.")
    g.add_argument("--log-jsonl", default=None, help="Append one JSON record per logged step (a resumed or restarted run first "
                        "drops the records after the iteration it continues from).")
    g.add_argument("--plot", default=None,
                   help="At the end of the run, plot the --log-jsonl records (LM/NITP loss, "
                        "effective rank, pair cosine) into this PNG (tools/plot_run.py does the "
                        "same for several runs).")
    g.add_argument("--tensorboard-dir", default=None, help="TensorBoard event directory.")
    g.add_argument("--wandb-project", default=None, help="wandb project (offline works).")
    g.add_argument("--wandb-exp-name", default=None, help="wandb run name.")
    g.add_argument("--wandb-save-dir", default=None, help="wandb directory.")
    # Megatron-LM 0.16.1's logging and profiling flags (its LoggerConfig / ProfilingConfig):
    # names, types and defaults as there; honoured by training/run_logging.py.
    g.add_argument("--wandb-entity", default=None, help="wandb entity (team or user).")
    g.add_argument("--tensorboard-log-interval", type=int, default=1,
                   help="Write training scalars to TensorBoard/wandb every N iterations.")
    g.add_argument("--log-params-norm", action="store_true",
                   help="Compute and log the L2 norm of all parameters (params-norm).")
    g.add_argument("--log-num-zeros-in-grad", action="store_true",
                   help="Count and log the zero entries of the gradient (num-zeros).")
    g.add_argument("--log-throughput", action="store_true",
                   help="Log model TFLOP/s per device (nitp/flops.py's FLOPs per token).")
    g.add_argument("--log-timers-to-tensorboard", action="store_true",
                   help="Write iteration-time (and with --log-throughput, throughput) to "
                        "TensorBoard/wandb.")
    g.add_argument("--log-memory-to-tensorboard", action="store_true",
                   help="Write the device allocator's memory counters to TensorBoard (CUDA; on "
                        "CPU the process's peak RSS as mem-max-rss-bytes).")
    g.add_argument("--log-validation-ppl-to-tensorboard", action="store_true",
                   help="Also write validation perplexity exp(min(20, loss)) to TensorBoard.")
    g.add_argument("--logging-level", type=int, default=None,
                   help="Python logging level of the run (10 DEBUG, 20 INFO, 30 WARNING, ...); "
                        "MEGATRON_LOGGING_LEVEL when unset.")
    g.add_argument("--profile", action="store_true", dest="profile",
                   help="Profile iterations [--profile-step-start, --profile-step-end): with "
                        "--use-pytorch-profiler a torch profiler trace in --tensorboard-dir, "
                        "else an nsys capture range (cudaProfilerStart/Stop, CUDA only).")
    g.add_argument("--profile-step-start", type=int, default=10,
                   help="Global step to start profiling.")
    g.add_argument("--profile-step-end", type=int, default=12,
                   help="Global step to stop profiling.")
    g.add_argument("--use-pytorch-profiler", action="store_true",
                   help="--profile with the torch profiler (works on CPU).")
    g.add_argument("--profile-ranks", nargs="+", type=int, default=[0],
                   help="Global ranks to profile.")
    g.add_argument("--dry-run", action="store_true",
                   help="Validate, print parameter counts and the parallel plan, exit.")
    g.add_argument("--debug", action="store_true", help="Show tracebacks for config errors.")


def _signal_by_name(name):
    """Megatron-LM parses --exit-signal as a signal.Signals member name."""
    try:
        sig = signal.Signals[name]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{name!r}: not a signal name (e.g. SIGTERM, SIGUSR1)")
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        raise argparse.ArgumentTypeError(f"{name}: cannot be caught (e.g. SIGTERM, SIGUSR1)")
    return sig


def build_parser(model_family="gpt"):
    from .megatron_compat import OneLineErrorParser, add_megatron_compat_args

    p = OneLineErrorParser(
        description=f"NITP pretraining ({model_family}) on megatron-core.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        # Megatron-LM's parser refuses prefixes too: `--exit-signal 10` must not quietly become
        # `--exit-signal-handler`.
        allow_abbrev=False,
    )
    p.add_argument("--config", action="append", default=[],
                   help="YAML file of the same options (flag names without dashes); repeatable, "
                        "later files and command-line flags win.")
    _add_model_args(p)
    _add_nitp_args(p)
    _add_training_args(p)
    _add_speed_args(p)
    _add_precision_args(p)
    _add_parallel_args(p)
    _add_data_args(p)
    _add_io_args(p)
    add_megatron_compat_args(p)  # Megatron-LM's other flags: documented no-ops and refusals
    return p


def _read_yaml(path):
    if not os.path.isfile(path):
        raise SystemExit(f"error: --config {path}: no such file")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise SystemExit(f"error: --config {path}: not valid YAML ({e})")
    if not isinstance(data, dict):
        raise SystemExit(f"error: --config {path}: expected a mapping of option: value")
    return {str(k).replace("_", "-"): v for k, v in data.items()}


def _yaml_to_argv(paths, parser):
    """Merge the YAML files (later wins, so `key: false` undoes an earlier `true`), then turn
    the result into flags so argparse applies the same types and choices."""
    known = {a.option_strings[0][2:]: a for a in parser._actions if a.option_strings
             and a.option_strings[0].startswith("--")}
    merged = {}
    for path in paths:
        for name, value in _read_yaml(path).items():
            if name not in known or name == "config":
                raise SystemExit(f"error: --config {path}: unknown option '{name}'")
            merged[name] = value
    argv = []
    for name, value in merged.items():
        action = known[name]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(f"--{name}" if value else f"--no-{name}")
        elif action.nargs == 0:  # store_true / store_false (a pair may share the dest)
            flag = _switch_for(parser, action, bool(value))
            if flag is None:
                raise SystemExit(f"error: --config: '{name}: {value}': no flag sets that; give "
                                 "the opposite flag's key instead")
            if flag:
                argv.append(flag)
        elif isinstance(value, list) and action.nargs in ("*", "+"):
            argv += [f"--{name}"] + [str(v) for v in value]
        elif value is not None:
            argv += [f"--{name}", str(value)]
    return argv


class ParsedArgs(argparse.Namespace):
    """parse_args' Namespace; `explicit_dests` (the dests argv or a --config set) lives in a
    slot, outside vars(args): not a flag, not saved with the run config, not compared."""
    __slots__ = ("explicit_dests",)


def _switch_for(parser, action, given):
    """`key: true` gives the flag; `key: false` gives the opposite flag of the same dest, or
    nothing when that is the default (None when no flag does: the config cannot say it)."""
    if given:
        return action.option_strings[0]
    for a in parser._actions:
        if a.dest == action.dest and a.nargs == 0 and a.const == (not action.const):
            return a.option_strings[0]
    return "" if action.default == (not action.const) else None


def parse_args(argv=None, model_family="gpt", defaults=None):
    """Parse flags (and --config files) into a Namespace with Megatron-LM dest names.

    `defaults` (dest -> typed value) replace the parser's defaults, e.g. an imported model's
    architecture (convert/hf_import.py): the derived defaults follow them and a flag still wins.
    """
    parser = build_parser(model_family)
    if defaults:
        unknown = set(defaults) - {a.dest for a in parser._actions}
        if unknown:
            raise ValueError(f"parse_args defaults: no flag has the dest(s) {sorted(unknown)}")
        parser.set_defaults(**defaults)
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = parser.parse_known_args(argv)
    argv = _yaml_to_argv(pre.config, parser) + argv
    args = parser.parse_args(argv, namespace=ParsedArgs())
    args.model_family = model_family
    if args.use_checkpoint_args:  # before the derived defaults, as Megatron-LM's initialize
        from .checkpoint_flags import apply_checkpoint_args, explicit_dests

        apply_checkpoint_args(args, explicit_dests(build_parser(model_family), argv))
    from .checkpoint_flags import explicit_dests

    args.explicit_dests = frozenset(explicit_dests(build_parser(model_family), argv))
    _fill_defaults(args, argv)
    return args


def _parse_layer_freq(value):
    from ..models.layer_pattern import parse_moe_layer_freq

    try:
        return parse_moe_layer_freq(value)
    except ValueError as e:
        raise SystemExit(f"error: --moe-layer-freq {e}")


def _fill_defaults(args, argv=()):
    from .megatron_defaults import LEGACY_SPLIT, default_ffn_hidden_size

    # What Megatron-LM requires may be missing here: validation names it (required_errors).
    if args.ffn_hidden_size is None and args.hidden_size is not None:
        args.ffn_hidden_size = default_ffn_hidden_size(args.hidden_size, args.swiglu)
    if not args.group_query_attention:  # Megatron-LM: num_query_groups = heads then
        explicit = getattr(args, "explicit_dests", ())
        if "num_query_groups" in explicit and args.num_query_groups != args.num_attention_heads:
            info(f"notice: --num-query-groups {args.num_query_groups}: not used without "
                 "--group-query-attention (one KV head per attention head, as Megatron-LM)")
        args.num_query_groups = args.num_attention_heads
    # Not divisible: left unset, so that validation names the flags (megatron would floor it).
    if (args.kv_channels is None and args.num_attention_heads and args.hidden_size is not None
            and args.hidden_size % args.num_attention_heads == 0):
        args.kv_channels = args.hidden_size // args.num_attention_heads
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.nitp_target_layer is None and args.num_layers is not None:
        from ..nitp.config import default_target_layer

        args.nitp_target_layer = default_target_layer(args.num_layers)
    if args.split is None and (args.data_path or args.demo_data):
        info(f"notice: --split not given: using '{LEGACY_SPLIT}' (Megatron-LM's legacy default "
             "with --data-path)")
        args.split = LEGACY_SPLIT
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    args.moe_layer_freq = _parse_layer_freq(args.moe_layer_freq)
    if args.moe_ffn_hidden_size is None and args.num_experts:
        args.moe_ffn_hidden_size = args.ffn_hidden_size
