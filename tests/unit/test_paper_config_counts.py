"""The paper's configs keep their models: --dry-run parameter counts pinned.

The numbers were computed on main before the defaults became Megatron-LM's (commit 73a747f):
each config sets every value its model uses, so a change of any default must leave them as they
are. Keys: a config, or an ablation file on top of its base (`examples/ablations/base/
demo_dense.yaml`, or "moe3b+" for the 3B MoE base the paper's ablations use). Values: (total,
active, NITP head) as `training.dry_run.dry_run_counts` computes them for --dry-run.
"""

import os

import pytest

from megatron_nitp.training.arguments import parse_args
from megatron_nitp.training.dry_run import dry_run_counts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = "examples/ablations/base/demo_dense.yaml"
MOE_3B = "examples/configs/moe_3b_a0.5b.yaml"
PINNED = {
    'examples/configs/dense_0.5b.yaml': (494119808, 494119808, 9633792),
    'examples/configs/dense_2b.yaml': (2096598784, 2096598784, 38535168),
    'examples/configs/dense_3b.yaml': (3031841280, 3031841280, 78643200),
    'examples/configs/qwen3_like_nitp.yaml': (8191783936, 8191783936, 201326592),
    'examples/configs/deepseek_v2_lite_nitp.yaml': (15706484224, 2661150208, 50331648),
    'examples/configs/moe_1.9b_a0.3b.yaml': (1843266048, 289079808, 3145728),
    'examples/configs/moe_3b_a0.5b.yaml': (3198494976, 471148800, 7077888),
    'examples/configs/moe_45b_a5.5b.yaml': (44937219072, 5541694464, 113246208),
    'examples/configs/moe_9b_a1b.yaml': (8749671680, 1062298880, 19660800),
    'examples/demo/demo_nitp.yaml': (20497536, 20497536, 196608),
    'examples/ablations/base/demo_dense.yaml': (10774592, 10774592, 49152),
    'examples/ablations/generic_cosine_reg.yaml': (10774592, 10774592, 0),
    'moe3b+examples/ablations/generic_cosine_reg.yaml': (3198494976, 471148800, 0),
    'examples/ablations/loss_cosine.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/loss_cosine.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/loss_kl.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/loss_kl.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/loss_mse.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/loss_mse.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/loss_smooth_l1.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/loss_smooth_l1.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/loss_weight_0.6.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/loss_weight_0.6.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/loss_weight_0.8.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/loss_weight_0.8.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/loss_weight_1.0.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/loss_weight_1.0.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/loss_weight_1.2.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/loss_weight_1.2.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/loss_weight_1.4.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/loss_weight_1.4.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/no_projector.yaml': (10774592, 10774592, 0),
    'moe3b+examples/ablations/no_projector.yaml': (3198494976, 471148800, 0),
    'examples/ablations/no_stop_grad.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/no_stop_grad.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/ntp_baseline.yaml': (10774592, 10774592, 0),
    'moe3b+examples/ablations/ntp_baseline.yaml': (3198494976, 471148800, 0),
    'examples/ablations/shift_0.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/shift_0.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/start_step_1000.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/start_step_1000.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/start_step_2000.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/start_step_2000.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/start_step_3000.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/start_step_3000.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/target_layer_0.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/target_layer_0.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/target_layer_14.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/target_layer_14.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/target_layer_2.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/target_layer_2.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/target_layer_4.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/target_layer_4.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/target_layer_5.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/target_layer_5.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/target_layer_6.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/target_layer_6.yaml': (3198494976, 471148800, 7077888),
    'examples/ablations/target_layer_8.yaml': (10774592, 10774592, 49152),
    'moe3b+examples/ablations/target_layer_8.yaml': (3198494976, 471148800, 7077888),
}


def _configs(key):
    if key.startswith("moe3b+"):
        return [MOE_3B, key[len("moe3b+"):]]
    if key.startswith("examples/ablations/") and key != BASE:
        return [BASE, key]
    return [key]


@pytest.mark.parametrize("key", sorted(PINNED))
def test_dry_run_counts_are_pinned(key):
    configs = _configs(key)
    argv = [x for c in configs for x in ("--config", os.path.join(REPO, c))]
    counts, _ = dry_run_counts(parse_args(argv, "moe" if "moe" in configs[0] else "gpt"))
    assert (counts["total"], counts["active"], counts["nitp_head"]) == PINNED[key]


def test_every_config_is_pinned():
    import glob

    found = {os.path.relpath(p, REPO) for pattern in ("examples/configs/*.yaml",
                                                     "examples/demo/*.yaml",
                                                     "examples/ablations/*.yaml",
                                                     "examples/ablations/base/*.yaml")
             for p in glob.glob(os.path.join(REPO, pattern))}
    assert found <= set(PINNED), sorted(found - set(PINNED))
