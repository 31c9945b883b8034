"""PLOT (Chen et al., ICLR 2023): N CoOp prompts per class, matched to an image's local features by optimal transport.

A class's score is ``sum_ij T_ij sim_ij`` (``1 -`` the Sinkhorn OT distance when the plan has converged)
between the image's L local features and the class's N prompt features, with cost ``1 - cosine``,
entropic regulariser 0.1, at most 100 iterations and uniform marginals; logits are CLIP's logit scale
times that score, as in the official code (which, for ImageNet only, also adds the global CoOp logits:
not done here).

Positions. The learnable slot ``ctx`` has the official shape ``(N, n_ctx, width)``. What the corruption
engine, the norm losses and the trajectories see is :meth:`PLOTMethod.position_tensor`, the view
``(N * n_ctx, width)``: flat position ``p`` is prompt ``p // n_ctx``, context position ``p % n_ctx``
(:meth:`PLOTMethod.position_pairs` gives the pairs for the tables' ``prompt_index``/``position`` columns).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nemesis_analysis.clip.encoding import LoadedModel
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.devices import chunk_to, memory_budget
from nemesis_analysis.errors import ModelError
from nemesis_analysis.methods.base import refuse_class_specific, register_method
from nemesis_analysis.methods.coop import CoOp
from nemesis_analysis.methods.declarations import PLOTConfig
from nemesis_analysis.methods.ot import ot_similarity
from nemesis_analysis.storage.artifacts import read_prompt, save_prompt

IMAGE_CHUNK_FLOATS = 2**24  # floats of one chunk's similarity tensor (variants * images * classes * N * L)


@register_method("plot")
class PLOTMethod(CoOp):
    """N generic contexts ``ctx`` (N, n_ctx, width), each spliced into CoOp's class prompts."""

    needs_local_features = True
    chunk_floats: int | None = None  # similarity floats per image chunk; None: :meth:`image_chunk_floats` decides

    def __init__(
        self,
        loaded: LoadedModel,
        classnames: list[str],
        config: PromptConfig,
        seed: int = 0,
        options: PLOTConfig | None = None,
    ):
        refuse_class_specific(self, config)
        self.num_prompts = int((options or PLOTConfig()).num_prompts)  # validated by PLOTConfig
        super().__init__(loaded, classnames, config, seed=seed)

    def _initial_context(self, embedding: nn.Embedding, seed: int) -> Tensor:
        """N copies of the ``ctx_init`` words, else N(0, init_std^2) draws (N, n_ctx, width) seeded by ``seed``."""
        if self.config.ctx_init:
            with torch.no_grad():
                tokens = self.loaded.tokenize([self.config.ctx_init])
                init = embedding(tokens)[0, 1 : 1 + self.n_ctx].float().cpu()  # (n_ctx, width)
            return init.repeat(self.num_prompts, 1, 1)  # (N, n_ctx, width)
        shape = (self.num_prompts, self.n_ctx, embedding.embedding_dim)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * self.config.init_std

    # ------------------------------------------------------------------------------------------ positions

    @property
    def n_positions(self) -> int:
        return self.num_prompts * self.n_ctx

    def position_tensor(self) -> Tensor:
        """``ctx`` viewed as (N * n_ctx, width): flat position p is (prompt p // n_ctx, position p % n_ctx)."""
        return self.ctx.view(self.n_positions, self.width)

    def position_pairs(self) -> list[tuple[int, int]]:
        return [divmod(p, self.n_ctx) for p in range(self.n_positions)]

    def positions_of(self, slot_value: Tensor) -> Tensor:
        """A saved ``ctx`` (N, n_ctx, width) as flat positions (N * n_ctx, width); flat input is returned."""
        if tuple(slot_value.shape) == (self.num_prompts, self.n_ctx, self.width):
            return slot_value.reshape(self.n_positions, self.width)
        if tuple(slot_value.shape) == (self.n_positions, self.width):
            return slot_value
        raise ModelError(
            f"a PLOT context must be ({self.num_prompts}, {self.n_ctx}, {self.width}) (prompts, n_ctx, width), "
            f"got {tuple(slot_value.shape)}; pass the run's --plot-prompts and --n-ctx"
        )

    def variant_floats(self) -> int:
        return self.num_prompts * super().variant_floats()

    # -------------------------------------------------------------------------------------------- scoring

    def text_features(self, slot_variants: Tensor | None = None) -> Tensor:
        """Normalised features of every prompt of every class: (variants, num_classes, N, embed).

        ``slot_variants``: (variants, N * n_ctx, width) flat positions or (variants, N, n_ctx, width).
        """
        if slot_variants is None:
            slot_variants = self.ctx[None]
        num_variants = slot_variants.shape[0]
        contexts = slot_variants.reshape(num_variants * self.num_prompts, self.n_ctx, self.width)
        features = super().text_features(contexts)  # (variants * N, classes, embed)
        features = features.reshape(num_variants, self.num_prompts, self.num_classes, -1)
        return features.transpose(1, 2)  # (variants, classes, N, embed)

    def score_variants(self, text: Tensor, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        """OT scores (variants, batch, classes) of images' ``local_features`` (batch, L, embed) against each
        variant's prompt features ``text`` (variants, classes, N, embed); chunked over images."""
        if local_features is None:
            raise ModelError("PLOT scores images by their local features; none were given (encode them first)")
        num_variants, num_classes, num_prompts, _ = text.shape
        per_image = num_variants * num_classes * num_prompts * local_features.shape[1]
        step = max(1, self.image_chunk_floats(text.device) // per_image)
        parts = []
        for start in range(0, local_features.shape[0], step):
            # Only this chunk moves to the device (the whole test set's local features stay on the host).
            local = chunk_to(local_features, start, start + step, text.device, text.dtype)  # (images, L, embed)
            # (variants, images, classes, L, N): locations are the plan's rows, prompts its columns.
            similarity = torch.einsum("bld,vcnd->vbcln", local, text)
            parts.append(ot_similarity(similarity))  # (variants, images, classes)
        if not parts:
            return text.new_zeros(num_variants, 0, num_classes)
        return torch.cat(parts, dim=1)

    def image_chunk_floats(self, device: torch.device) -> int:
        """Floats of one image chunk's similarity tensor: :data:`IMAGE_CHUNK_FLOATS` on CPU, from the free memory on
        CUDA; ``chunk_floats`` (an instance attribute) overrides both."""
        return self.chunk_floats or memory_budget(device, IMAGE_CHUNK_FLOATS)

    def logits(self, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        """CLIP's logit scale times the OT scores (batch, classes); the global feature is not used."""
        return self.loaded.logit_scale * self.scores(image_features, local_features)

    def prefix_cache(self, slot_value: Tensor):
        return None  # a variant re-encodes all N prompts; the prefix reuse is CoOp's single-context layout

    # ------------------------------------------------------------------------------------------- artifact

    def metadata(self) -> dict:
        return {**super().metadata(), "method": "plot", "num_prompts": self.num_prompts}

    def save(self, directory, extra: dict | None = None):
        """Write ``ctx`` in the official layout (N, n_ctx, width) with the metadata."""
        return save_prompt(directory, self.ctx, {**self.metadata(), "prompt_method": self.name, **(extra or {})})

    def load(self, directory) -> dict:
        prompt = read_prompt(directory)
        value, metadata = prompt.ctx, prompt.metadata
        with torch.no_grad():
            self.position_tensor().copy_(self.positions_of(value).to(self.ctx.device))
        return metadata


# ------------------------------------------------------------------------------------ official checkpoints


def plot_prompts_of(state: dict) -> int | None:
    """N when a prompt-learner state dict has PLOT's layout, else None.

    PLOT's generic ``ctx`` is (N, n_ctx, width) and its ``token_prefix`` holds one row per (prompt, class):
    N * num_classes rows. CoOp's class-specific ``ctx`` (num_classes, n_ctx, width) has as many prefix rows
    as ``ctx`` has classes. (A one-class PLOT checkpoint cannot be told apart and reads as CoOp.)
    """
    ctx, prefix = state.get("ctx"), state.get("token_prefix")
    if not isinstance(ctx, Tensor) or ctx.dim() != 3 or not isinstance(prefix, Tensor) or prefix.dim() < 1:
        return None
    prompts, rows = int(ctx.shape[0]), int(prefix.shape[0])
    if rows == prompts or rows % prompts != 0:
        return None
    return prompts


def read_official_state(state: dict, ctx: Tensor, path) -> dict | None:
    """The metadata of an official PLOT prompt-learner state dict (see :func:`plot_prompts_of`), else None."""
    num_prompts = plot_prompts_of(state)
    if num_prompts is None:
        return None
    num_classes = int(state["token_prefix"].shape[0]) // num_prompts
    return {"source": "plot-checkpoint", "method": "plot", "prompt_method": "plot", "csc": False,
            "num_prompts": num_prompts, "num_classes": num_classes}  # fmt: skip
