"""Spec-card invariants of the subject-isolation masks (methods-modeling.md A8)."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.isolation_mask import (
    REFERENCE,
    SPEC,
    TARGET,
    VARIANTS,
    isolation_mask,
    isolation_mask_attention,
    layout,
    leakage,
)
from attnbench.registry import METHODS
from attnbench.spec import Workload


def qk(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 2, n, 8, generator=g), torch.randn(1, 2, n, 8, generator=g)


def test_no_subjects_is_full_attention() -> None:
    for variant in VARIANTS:
        assert isolation_mask(64, subjects=0, variant=variant).all()


def test_single_subject_sees_the_whole_target_and_its_reference() -> None:
    kinds, labels = layout(96, 1, 0.25, 0)
    m = isolation_mask(96, subjects=1)
    subj = (kinds == TARGET) & (labels == 1)
    assert m[subj].all()  # everything in the sequence belongs to "its" subject or background


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_fully_masked_rows_and_no_cross_subject_reference(variant: str) -> None:
    kinds, labels = layout(128, 3, 0.3, 8)
    m = isolation_mask(128, subjects=3, ref_frac=0.3, text_tokens=8, variant=variant)
    assert (m.sum(-1) >= 1).all() and m.diagonal().all()
    tq = (kinds == TARGET) & (labels != 0)
    other = (kinds[None, :] == REFERENCE) & (labels[None, :] != labels[tq][:, None])
    assert not (m[tq] & other).any()


@pytest.mark.parametrize("variant", VARIANTS)
def test_leakage_zero_under_hard_mask_positive_without(variant: str) -> None:
    q, k = qk(96)
    m = isolation_mask(96, variant=variant)
    assert leakage(q, k, mask=m).item() == 0.0
    assert leakage(q, k).item() > 0.0


def test_ir_diffusion_target_subject_rows() -> None:
    kinds, labels = layout(96, 2, 0.25, 0)
    m = isolation_mask(96)
    q = int(((kinds == TARGET) & (labels == 1)).nonzero()[0])
    want = ((kinds == TARGET) & ((labels == 0) | (labels == 1))) | ((kinds == REFERENCE) & (labels == 1))
    assert torch.equal(m[q], want)
    bg = int(((kinds == TARGET) & (labels == 0)).nonzero()[0])
    assert torch.equal(m[bg], (kinds == TARGET) & (labels == 0))


def test_flex_matches_reference_with_text() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 96, 8, generator=g) for _ in range(3))
    kw = {"subjects": 2, "ref_frac": 0.25, "text_tokens": 6, "variant": "multicrafter"}
    fused = METHODS.get("isolation_mask").impl("flex").prepare(q, k, v, causal=False, params=kw)(q, k, v)
    assert torch.allclose(fused, isolation_mask_attention(q, k, v, **kw), atol=1e-5)


def test_check_reasons() -> None:
    assert "no room" in SPEC.why_not(Workload(seq_q=8, seq_kv=8), SPEC.params({"subjects": 8}))
    assert "variant" in SPEC.why_not(Workload(seq_q=64, seq_kv=64), SPEC.params({"variant": "soft"}))
