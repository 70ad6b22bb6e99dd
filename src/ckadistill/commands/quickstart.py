"""Placeholder for the offline default job; replaced by the full BBC News distillation."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ckadistill quickstart")
    parser.add_argument("--output_dir", default="outputs/quickstart")
    parser.parse_args(argv)
    import torch

    from ckadistill.losses import linear_cka

    torch.manual_seed(0)
    x = torch.randn(512, 64)
    for noise in (0.0, 0.5, 2.0):
        y = x @ torch.linalg.qr(torch.randn(64, 64))[0] + noise * torch.randn(512, 64)
        print(f"noise {noise:.1f}: CKA(x, rotated x + noise) = {linear_cka(x, y).item():.3f}")
    return 0
