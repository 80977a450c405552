"""--moe-layer-freq: Megatron-LM's int, list, or pattern string such as '([0]*1+[1]*15)'.

One parser for the CLI, the parameter count and the Hugging Face mapping. The layer types it
gives mirror megatron-core's `get_gpt_decoder_block_spec`: an int N makes layer i (0-based) MoE
when i % N == 0; a list is the pattern itself (1 = MoE, 0 = dense).
"""

_PATTERN_CHARS = set("[]()+*0123456789, ")


def parse_moe_layer_freq(value):
    """An int or a list of ints; ValueError (naming the value) for anything else."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    if isinstance(value, int):
        return value
    s = str(value).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    if not set(s) <= _PATTERN_CHARS:
        raise ValueError(f"{value!r}: expected an int or a pattern like '([0]*1+[1]*15)'")
    try:
        pattern = eval(s, {"__builtins__": {}}, {})  # charset restricted above
    except Exception:
        raise ValueError(f"{value!r}: cannot parse the pattern")
    if isinstance(pattern, int):
        return pattern
    return [int(v) for v in pattern]


def moe_layer_pattern(moe_layer_freq, num_layers):
    """0/1 per layer (1 = MoE)."""
    freq = parse_moe_layer_freq(moe_layer_freq)
    if isinstance(freq, int):
        return [1 if i % freq == 0 else 0 for i in range(num_layers)]
    if len(freq) != num_layers:
        raise ValueError(f"moe_layer_freq has {len(freq)} entries for {num_layers} layers")
    return freq
