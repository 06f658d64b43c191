"""The memory calculator moved to ``peftlab.memory.widget``; this name keeps older notebooks' imports working."""
from .memory.widget import COLORS, RANKS, SEQ_LENGTHS, calculator, plot_breakdown  # noqa: F401
