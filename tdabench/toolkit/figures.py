"""Matplotlib figures for reports and studies alike: seaborn's theme on the Agg backend, and saving that
closes the figure (pyplot keeps every open figure alive otherwise)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend with seaborn's whitegrid theme; a clear error without them."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns
    except ImportError:
        raise ImportError("plots need seaborn and matplotlib: pip install 'tdabench[plots]'") from None
    sns.set_theme(style="whitegrid", context="notebook")
    return plt


def save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
