"""NITPConfig: every switch of the method (paper §3.4) and of its ablations (Tables 3, 7, 8)."""

import math
from dataclasses import asdict, dataclass

from ..errors import UserError

LOSS_TYPES = ("cosine", "mse", "smooth_l1", "kl", "generic_cosine")
PROJECTORS = ("swiglu", "none")


def default_target_layer(num_layers: int) -> int:
    """--nitp-target-layer when not given: about 20% of the depth (the paper's rule), >= 1."""
    return max(1, round(0.2 * num_layers))


def head_in_use(projector: str, loss_type: str) -> bool:
    """The SwiGLU head exists unless --nitp-no-projector or the generic cosine baseline."""
    return projector == "swiglu" and loss_type != "generic_cosine"


def saved_head_in_use(saved_nitp) -> bool:
    """Whether a checkpoint's run_config.json "nitp" entry had a head (so holds its weights)."""
    saved = saved_nitp or {}
    return bool(saved.get("enabled")) and head_in_use(saved.get("projector", "swiglu"),
                                                      saved.get("loss_type", "cosine"))


class NITPConfigError(UserError, ValueError):
    """A bad NITP setting; the message names the command-line option."""


@dataclass(frozen=True)
class NITPConfig:
    """Next Implicit Token Prediction.

    z_{t+1} = stop_grad(output of layer `target_layer`) shifted by `shift`;
    loss = loss_weight * mean_t loss_type(P(h_t), z_{t+1}) over valid tokens,
    with h_t the final-norm output and P the SwiGLU head (d -> mult*d -> d, no bias).
    """

    enabled: bool = False
    # Global 1-based transformer layer number; 0 = the embedding output (decoder input).
    target_layer: int = 1
    loss_weight: float = 1.0
    # 1: predict the next position's target (the method). 0: same position (paper's ablation).
    shift: int = 1
    # "generic_cosine" is the paper's "generic cosine regularisation" baseline: penalise the
    # cosine between final hidden states of different tokens of a sequence; no target, no head.
    loss_type: str = "cosine"
    stop_grad: bool = True
    # Iterations before this contribute nothing to the gradient (loss still logged).
    start_step: int = 0
    projector: str = "swiglu"
    head_ffn_multiplier: int = 4
    # Recompute the head's intermediate activations in backward instead of storing them.
    head_recompute: bool = False

    @property
    def uses_target(self) -> bool:
        return self.enabled and self.loss_type != "generic_cosine"

    @property
    def uses_head(self) -> bool:
        return self.enabled and head_in_use(self.projector, self.loss_type)

    def weight_at(self, iteration: int) -> float:
        """lambda in effect at `iteration` (0-based count of completed steps)."""
        return self.loss_weight if iteration >= self.start_step else 0.0

    def validate(self, num_layers: int, hidden_size: int, tensor_model_parallel_size: int = 1):
        """Raise NITPConfigError naming the option when a setting cannot work."""
        if not self.enabled:
            return
        if not 0 <= self.target_layer < num_layers:
            raise NITPConfigError(
                f"--nitp-target-layer {self.target_layer}: must be in [0, {num_layers}) for "
                f"--num-layers {num_layers} (0 = embedding output, k = output of layer k)")
        if not (isinstance(self.loss_weight, (int, float)) and math.isfinite(self.loss_weight)
                and self.loss_weight >= 0):
            raise NITPConfigError(
                f"--nitp-loss-weight {self.loss_weight}: must be a finite number >= 0")
        if self.shift not in (0, 1):
            raise NITPConfigError(f"--nitp-shift {self.shift}: must be 0 or 1")
        if self.loss_type not in LOSS_TYPES:
            raise NITPConfigError(
                f"--nitp-loss-type {self.loss_type!r}: must be one of {', '.join(LOSS_TYPES)}")
        if self.projector not in PROJECTORS:
            raise NITPConfigError(f"projector {self.projector!r}: must be one of {PROJECTORS}")
        if self.start_step < 0:
            raise NITPConfigError(f"--nitp-start-step {self.start_step}: must be >= 0")
        if self.head_ffn_multiplier < 1:
            raise NITPConfigError(
                f"--nitp-head-ffn-multiplier {self.head_ffn_multiplier}: must be >= 1")
        width = self.head_ffn_multiplier * hidden_size
        if self.uses_head and width % tensor_model_parallel_size != 0:
            raise NITPConfigError(
                f"--nitp-head-ffn-multiplier {self.head_ffn_multiplier}: head width "
                f"{width} (= multiplier x --hidden-size) is not divisible by "
                f"--tensor-model-parallel-size {tensor_model_parallel_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_args(cls, args) -> "NITPConfig":
        return cls(
            enabled=bool(args.nitp),
            target_layer=args.nitp_target_layer,
            loss_weight=args.nitp_loss_weight,
            shift=args.nitp_shift,
            loss_type=args.nitp_loss_type,
            stop_grad=not args.nitp_no_stop_grad,
            start_step=args.nitp_start_step,
            projector="none" if args.nitp_no_projector else "swiglu",
            head_ffn_multiplier=args.nitp_head_ffn_multiplier,
            head_recompute=args.nitp_head_recompute,
        )
