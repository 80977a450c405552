"""What the benchmarks share, one concern a module: shapes and their arguments (shapes), a built
variant and its batches (variant), peak memory (memory), timed steps and the op profile
(timing), FLOPs and the NITP/NTP ratios (ratios), the PP=2 byte count (pipeline), and the
report (report). Model, optimizer and step are the engine's (training/model_setup.py,
training/step.py)."""
