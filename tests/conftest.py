"""Shared fixtures: plugins loaded once; small workloads; results folders in tmp."""

from __future__ import annotations

import os

import pytest
import torch

from attnbench.registry import load_plugins

torch.set_num_threads(int(os.environ.get("ATTNBENCH_TEST_THREADS", "2")))
load_plugins()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
