"""Comparing outputs: the error measures ``pack``'s parity check and ``verify`` report."""

from __future__ import annotations

import torch

__all__ = ["all_close", "max_errors"]


def _float64(tensor: torch.Tensor) -> torch.Tensor:
    """As float64 on the CPU; complex values as (real, imaginary) pairs, so neither part is dropped."""
    values = tensor.detach().cpu()
    if values.is_complex():
        values = torch.view_as_real(values.resolve_conj())
    return values.to(torch.float64)


def max_errors(expected: torch.Tensor, actual: torch.Tensor) -> tuple[float, float]:
    """``(max absolute error, max relative error)``; exact for integer and bool outputs."""
    if expected.numel() == 0:
        return 0.0, 0.0
    want, have = _float64(expected), _float64(actual)
    diff = (want - have).abs()
    both_nan = want.isnan() & have.isnan()
    diff = torch.where(both_nan, torch.zeros_like(diff), diff)
    diff = torch.where(diff.isnan(), torch.full_like(diff, float("inf")), diff)
    rel = diff / want.abs().clamp_min(torch.finfo(torch.float64).tiny)
    rel = torch.where(diff == 0, torch.zeros_like(rel), rel)
    return float(diff.max()), float(rel.max())


def all_close(expected: torch.Tensor, actual: torch.Tensor, *, rtol: float, atol: float) -> bool:
    """Elementwise ``|actual - expected| <= atol + rtol * |expected|`` (NaN equals NaN), shapes equal."""
    if expected.shape != actual.shape:
        return False
    want, have = _float64(expected), _float64(actual)
    return bool(torch.isclose(have, want, rtol=rtol, atol=atol, equal_nan=True).all())
