"""Checkpoint schedules along a training run (a toolkit for trajectory methods and the pipeline)."""
from __future__ import annotations


def checkpoint_steps(total_steps: int, count: int, spacing: str = "even") -> tuple[int, ...]:
    """``count`` steps ending at ``total_steps``: evenly spaced (100, 2 → (50, 100)) or, with
    ``spacing="log"``, geometrically spaced (denser early, where training moves fastest)."""
    if count < 1 or total_steps < 1:
        return ()
    if spacing == "even":
        fractions = [(i + 1) / count for i in range(count)]
    elif spacing == "log":
        fractions = [total_steps ** ((i + 1) / count - 1) for i in range(count)]
    else:
        raise ValueError(f"checkpoint spacing {spacing!r}: use 'even' or 'log'")
    steps = sorted({max(1, round(total_steps * f)) for f in fractions})
    if len(steps) < count:
        raise ValueError(f"{count} distinct checkpoints do not fit in {total_steps} training steps")
    return tuple(steps)
