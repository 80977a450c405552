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


def _add_model_args(p):
    g = p.add_argument_group("model")
    g.add_argument("--num-layers", type=int, default=4, help="Number of transformer layers.")
    g.add_argument("--hidden-size", type=int, default=64, help="Model width d.")
    g.add_argument("--ffn-hidden-size", type=int, default=None,
                   help="Dense MLP width (default 4*hidden-size).")
    g.add_argument("--num-attention-heads", type=int, default=4, help="Query heads.")
    g.add_argument("--group-query-attention", action="store_true", help="Use GQA.")
    g.add_argument("--num-query-groups", type=int, default=None,
                   help="KV heads under GQA (default: num-attention-heads).")
    g.add_argument("--kv-channels", type=int, default=None,
                   help="Head dimension (default hidden-size / num-attention-heads).")
    g.add_argument("--seq-length", type=int, default=128, help="Training sequence length.")
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="Maximum positions (default seq-length).")
    g.add_argument("--normalization", choices=["RMSNorm", "LayerNorm"], default="RMSNorm",
                   help="Norm type.")
    g.add_argument("--norm-epsilon", type=float, default=1e-6, help="Norm epsilon.")
    g.add_argument("--swiglu", action=argparse.BooleanOptionalAction, default=True,
                   help="SwiGLU MLPs (the paper's models use it).")
    g.add_argument("--position-embedding-type", choices=["rope", "learned_absolute"],
                   default="rope", help="Position embedding.")
    g.add_argument("--rotary-base", type=int, default=10000, help="RoPE base.")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true",
                   help="Separate output layer weights.")
    # Attention / norm options of the Megatron-LM families (models/options.py maps them).
    g.add_argument("--rotary-percent", type=float, default=1.0,
                   help="Fraction of each head's dimensions RoPE rotates (Megatron-LM's flag).")
    g.add_argument("--qk-layernorm", action="store_true",
                   help="Normalise queries and keys per head (Qwen3, OLMo-2; megatron-core spec).")
    g.add_argument("--add-qkv-bias", action="store_true",
                   help="Biases on the QKV projection only (Qwen2).")
    g.add_argument("--disable-bias-linear", dest="add_bias_linear", action="store_false",
                   default=False,
                   help="No linear-layer biases. Megatron-LM's default is biases on; ours is off "
                        "already, so this flag only restates it.")
    g.add_argument("--add-bias-linear", dest="add_bias_linear", action="store_true",
                   default=False, help="Biases on every linear layer (Megatron-LM's default; "
                                       "implies --add-qkv-bias as there).")
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
    g.add_argument("--apply-layernorm-1p", dest="layernorm_zero_centered_gamma",
                   action="store_true",
                   help="Zero-centred norm weights, (1 + gamma) * x (needs Transformer Engine "
                        "norms: --transformer-impl transformer_engine).")
    g.add_argument("--init-method-std", type=float, default=0.02, help="Weight init std.")
    g.add_argument("--attention-dropout", type=float, default=0.0, help="Attention dropout.")
    g.add_argument("--hidden-dropout", type=float, default=0.0, help="Hidden dropout.")
    g.add_argument("--transformer-impl", choices=["local", "transformer_engine"], default=None,
                   help="Layer implementation (default: transformer_engine on GPU if importable, "
                        "else local).")
    g.add_argument("--vocab-size", type=int, default=None,
                   help="Vocabulary size (NullTokenizer, mock data; else from the tokenizer).")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="Pad the vocabulary to a multiple of this times TP.")
    g = p.add_argument_group("mixture of experts")
    g.add_argument("--num-experts", type=int, default=None, help="Routed experts per MoE layer.")
    g.add_argument("--moe-router-topk", type=int, default=2, help="Experts per token.")
    g.add_argument("--moe-ffn-hidden-size", type=int, default=None, help="Routed expert width.")
    g.add_argument("--moe-shared-expert-intermediate-size", type=int, default=None,
                   help="Shared expert width (one shared expert, no gate).")
    g.add_argument("--moe-layer-freq", default=1,
                   help="1 = every layer MoE; N = every Nth; or a pattern like "
                        "'([0]*1+[1]*15)' / list: 0 dense, 1 MoE.")
    g.add_argument("--moe-router-load-balancing-type", default="aux_loss",
                   choices=["aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"],
                   help="Load balancing (one type; Megatron-LM also takes a list).")
    g.add_argument("--moe-router-pre-softmax", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="Softmax over all experts, then top-k (DeepSeek-V2); --no-moe-router-"
                        "pre-softmax: top-k, then softmax over the k. NOTE: Megatron-LM's default "
                        "is off; ours stays on (the paper's configs). Ignored by sigmoid scores.")
    g.add_argument("--moe-router-score-function", choices=["softmax", "sigmoid"],
                   default="softmax", help="Router score function (DeepSeek-V3: sigmoid).")
    g.add_argument("--moe-router-topk-scaling-factor", type=float, default=None,
                   help="Multiply the top-k routing weights by this (DeepSeek-V3: 2.5).")
    g.add_argument("--moe-router-enable-expert-bias", action="store_true",
                   help="Aux-loss-free balancing: a per-expert bias on the routing scores, "
                        "updated each step from the token counts (needs sigmoid scores).")
    g.add_argument("--moe-router-bias-update-rate", type=float, default=1e-3,
                   help="Step size of the expert-bias update.")
    g.add_argument("--moe-router-num-groups", type=int, default=None,
                   help="Group-limited routing: experts split into this many groups.")
    g.add_argument("--moe-router-group-topk", type=int, default=None,
                   help="Group-limited routing: groups each token may use.")
    g.add_argument("--moe-z-loss-coeff", type=float, default=None,
                   help="Router z-loss weight (ST-MoE).")
    g.add_argument("--moe-expert-capacity-factor", type=float, default=None,
                   help="Expert capacity factor (None: dropless).")
    g.add_argument("--moe-token-drop-policy", choices=["probs", "position"], default="probs",
                   help="Which tokens an over-capacity expert drops.")
    g.add_argument("--moe-pad-expert-input-to-capacity", action="store_true",
                   help="Pad every expert's input to its capacity (needs a capacity factor).")
    g.add_argument("--moe-aux-loss-coeff", type=float, default=0.0, help="Aux loss weight.")
    g.add_argument("--moe-token-dispatcher-type", choices=["allgather", "alltoall", "flex"],
                   default="alltoall",
                   help="Token dispatcher (flex: GPU with DeepEP or HybridEP installed).")
    g.add_argument("--moe-flex-dispatcher-backend", choices=["deepep", "hybridep"],
                   default="deepep", help="Backend of the flex dispatcher.")
    g.add_argument("--moe-grouped-gemm", action="store_true", help="Grouped GEMM experts (GPU).")
    g.add_argument("--moe-permute-fusion", action="store_true",
                   help="Fused token permutation (GPU, Transformer Engine >= 2.1).")
    g.add_argument("--moe-router-dtype", default=None, choices=[None, "fp32", "fp64"],
                   help="Router compute dtype.")


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
    g.add_argument("--micro-batch-size", type=int, default=2, help="Sequences per microbatch.")
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="Sequences per step (default micro-batch-size * DP).")
    g.add_argument("--train-iters", type=int, default=10, help="Training iterations.")
    g.add_argument("--train-samples", type=int, default=None,
                   help="Train for this many samples instead of --train-iters (schedules then "
                        "count samples: --lr-warmup-samples, --lr-decay-samples).")
    g.add_argument("--rampup-batch-size", nargs="*", default=None,
                   help="Batch-size ramp-up: not supported (rejected).")
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
                   help="CUDA graphs (not supported with NITP: layer hooks never fire).")
    g.add_argument("--moe-shared-expert-overlap", action="store_true",
                   help="Overlap shared expert with dispatch.")
    g.add_argument("--overlap-moe-expert-parallel-comm", action="store_true",
                   help="MoE all-to-all overlap (not supported with NITP).")
    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--optimizer", choices=["adam"], default="adam", help="AdamW.")
    g.add_argument("--lr", type=float, default=3e-4, help="Peak learning rate.")
    g.add_argument("--min-lr", type=float, default=0.0, help="Final learning rate.")
    g.add_argument("--lr-decay-style", default="cosine",
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
                   help="Separate lr for the input and output layers: not supported (rejected).")
    g.add_argument("--decoupled-min-lr", type=float, default=None,
                   help="Separate min lr for the input and output layers: not supported "
                        "(rejected).")
    g.add_argument("--lr-wsd-decay-iters", type=int, default=None,
                   help="WSD: length of the final decay phase.")
    g.add_argument("--lr-wsd-decay-style", default="exponential",
                   choices=["exponential", "linear", "cosine", "minus_sqrt"],
                   help="WSD decay shape.")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay.")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="AdamW beta1.")
    g.add_argument("--adam-beta2", type=float, default=0.95, help="AdamW beta2.")
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


def _add_parallel_args(p):
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="TP.")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="PP.")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                   help="Interleaved (virtual) pipeline chunk size.")
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
    g.add_argument("--split", default="98,2,0", help="train,valid,test proportions.")
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
    g.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes per data iterator (Megatron-LM's default "
                        "is 2; 0 here: loading in the training process).")
    g.add_argument("--tokenizer-type", default="NullTokenizer",
                   choices=["NullTokenizer", "SentencePieceTokenizer", "HuggingFaceTokenizer"],
                   help="Tokenizer.")
    g.add_argument("--tokenizer-model", default=None,
                   help="SentencePiece .model, HF tokenizer.json or directory.")


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
                   help="No-op: megatron-nitp saves no RNG state (a run reseeds from --seed).")
    g.add_argument("--no-load-rng", action="store_true",
                   help="No-op: megatron-nitp saves no RNG state (a run reseeds from --seed).")
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
    g.add_argument("--eval-iters", type=int, default=2, help="Batches per evaluation.")
    g.add_argument("--log-interval", type=int, default=1, help="Console/log every N iterations.")
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
    p = argparse.ArgumentParser(
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
    _add_parallel_args(p)
    _add_data_args(p)
    _add_io_args(p)
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
        elif action.nargs == 0:  # store_true
            if value:
                argv.append(f"--{name}")
        elif isinstance(value, list) and action.nargs in ("*", "+"):
            argv += [f"--{name}"] + [str(v) for v in value]
        elif value is not None:
            argv += [f"--{name}", str(value)]
    return argv


def parse_args(argv=None, model_family="gpt"):
    """Parse flags (and --config files) into a Namespace with Megatron-LM dest names."""
    parser = build_parser(model_family)
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = parser.parse_known_args(argv)
    argv = _yaml_to_argv(pre.config, parser) + argv
    args = parser.parse_args(argv)
    args.model_family = model_family
    if args.use_checkpoint_args:  # before the derived defaults, as Megatron-LM's initialize
        from .checkpoint_flags import apply_checkpoint_args, explicit_dests

        apply_checkpoint_args(args, explicit_dests(build_parser(model_family), argv))
    _fill_defaults(args, argv)
    return args


def _parse_layer_freq(value, num_layers):
    """Megatron-LM accepts an int or a Python-list pattern string like '([0]*1+[1]*15)'."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    s = str(value).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    allowed = set("[]()+*0123456789, ")
    if not set(s) <= allowed:
        raise SystemExit(f"error: --moe-layer-freq {value!r}: expected an int or a pattern like "
                         "'([0]*1+[1]*15)'")
    try:
        pattern = eval(s, {"__builtins__": {}}, {})  # charset restricted above
    except Exception:
        raise SystemExit(f"error: --moe-layer-freq {value!r}: cannot parse the pattern")
    return [int(v) for v in pattern]


def _fill_defaults(args, argv=()):
    if args.ffn_hidden_size is None:
        args.ffn_hidden_size = 4 * args.hidden_size
    if args.num_query_groups is None:
        args.num_query_groups = args.num_attention_heads
    # Not divisible: left unset, so that validation names the flags (megatron would floor it).
    if (args.kv_channels is None and args.num_attention_heads > 0
            and args.hidden_size % args.num_attention_heads == 0):
        args.kv_channels = args.hidden_size // args.num_attention_heads
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.nitp_target_layer is None:
        args.nitp_target_layer = max(1, round(0.2 * args.num_layers))
    if args.train_samples is not None:
        from .sample_schedule import drop_default_train_iters

        drop_default_train_iters(args, build_parser(args.model_family), argv)
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    args.moe_layer_freq = _parse_layer_freq(args.moe_layer_freq, args.num_layers)
    if args.moe_ffn_hidden_size is None and args.num_experts:
        args.moe_ffn_hidden_size = args.ffn_hidden_size
