"""attnbench: benchmark harness and leaderboard for attention mechanisms."""

__version__ = "0.1.0"
