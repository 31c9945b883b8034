"""The naive, reference-style corruption path (one variant at a time, full 77-token prompts, images
re-encoded per variant) that tests and ``benchmarks/bench_corrupt.py`` check the batched engine against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nemesis_analysis.clip.encoding import encode_text_from_embeddings, eos_positions
from nemesis_analysis.clip.features import encode_samples
from nemesis_analysis.clip.prompts import layout_tokens
from nemesis_analysis.corruption.ops import Corruption, corrupt_context
from nemesis_analysis.data.base import DatasetSplits
from nemesis_analysis.methods.coop import CoOp
from nemesis_analysis.metrics import predict_classes
from nemesis_analysis.progress import progress_bar


class FullLengthPrompts:
    """Full-length (77-token) class prompts of a CoOp layout: nothing is cut at EOS."""

    def __init__(self, method: CoOp):
        loaded = method.loaded
        self.method = method
        tokens, index = layout_tokens(loaded, method.classnames, method.n_ctx, method.config.class_token_position)
        with torch.no_grad():
            self.base = loaded.model.token_embedding(tokens).float()  # (classes, 77, width)
        self.ctx_index = index.to(loaded.device)  # (classes, n_ctx)
        self.eos = eos_positions(tokens)  # (classes,)

    @torch.no_grad()
    def text_features(self, ctx: Tensor) -> Tensor:
        """Normalised class features for one context: (classes, embed), the model's encode_text on 77 tokens."""
        loaded = self.method.loaded
        num_classes = self.base.shape[0]
        ctx = ctx.to(device=self.base.device, dtype=self.base.dtype)
        if ctx.dim() == 2:
            ctx = ctx[None].expand(num_classes, -1, -1)  # (classes, n_ctx, width)
        prompts = self.base.clone()  # (classes, 77, width)
        prompts[torch.arange(num_classes, device=prompts.device)[:, None], self.ctx_index] = ctx
        with loaded.text_autocast():
            features = encode_text_from_embeddings(loaded.model, prompts, self.eos, truncate=False)
        return F.normalize(features.float(), dim=-1)


@torch.no_grad()
def evaluate_naive(
    method: CoOp,
    dataset: DatasetSplits,
    ctx: Tensor,
    grid: Sequence[Corruption],
    run_id: str,
    samples=None,
    progress: bool = False,
) -> Tensor:
    """Reference-style predictions (len(grid), n_test): per variant, re-encode the test images, build the
    corrupted prompts at full length (77 tokens, no EOS cut) and classify. Slow by design."""
    loaded = method.loaded
    samples = dataset.test if samples is None else samples
    full = FullLengthPrompts(method)
    out = []
    with progress_bar("naive corruption path", total=len(grid), enabled=progress) as advance:
        for corruption in grid:
            variant = corrupt_context(ctx.detach().float().cpu(), corruption, run_id)
            features = encode_samples(loaded, dataset, samples, progress=False).to(loaded.device)  # (n_test, embed)
            text = full.text_features(variant)  # (classes, embed)
            out.append(predict_classes(features @ text.T).cpu())
            advance(1)
    if not out:
        return torch.empty(0, len(samples), dtype=torch.long)
    return torch.stack(out)
