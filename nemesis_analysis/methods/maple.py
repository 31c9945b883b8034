"""MaPLe (Khattak et al., CVPR 2023): deep prompts in both towers, the vision prompts coupled to the text prompts.

Learned vectors, all of the text tower's width: the context ``p^0`` at layer 0 (spliced into the token
embeddings of ``[SOS] p^0_1 .. p^0_M <rest of ctx_init> name_c . [EOS]``) and compound prompts ``p^i``
at layers ``1 .. J-1`` (``maple.depth`` = J, capped at the shallower tower's depth), which replace the hidden
states of tokens ``1 .. M`` at the input of text block i. One coupling layer per depth,
``v^i = Linear_i(p^i)`` (text width -> vision width, with bias), gives the vision prompts: ``v^0`` is appended
to the patch tokens after the positional embedding (and goes through ``ln_pre``), ``v^i`` replaces the last M
hidden states at the input of vision block i. As the official code: the context starts from the first M
tokens of ``ctx_init`` when ``n_ctx <= 4`` (with M = 2 and "a photo of a", "a photo" is learned and "of a"
stays fixed text), else from N(0, init_std^2) with placeholder tokens; compound prompts start from
N(0, init_std^2); the coupling layers start as copies of one PyTorch-initialised linear layer.

The slot ``ctx`` holds every learned prompt vector, ``(J, M, width)`` (saved so); corruption, norms and
trajectories see it flat, ``(J * M, width)``: flat position ``q`` is layer ``q // M``, position ``q % M``
(:meth:`MaPLe.position_layers`). Nemesis norms exactly these (layer, position)
vectors; the coupling layers are maps, not positions, so they are trained but never normed or corrupted
(a corruption of ``p^i`` reaches the vision tower through ``Linear_i``).

The towers are open_clip's own modules: this module runs their residual blocks in order and substitutes the
prompt tokens' hidden states before each prompted block (no forked transformer). Image features depend on
the prompts, so the method scores preprocessed images (``encodes_images``), not cached features.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nemesis_analysis.clip.encoding import LoadedModel, eos_positions, pool_and_project
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.errors import ConfigError, ModelError
from nemesis_analysis.methods.base import PromptMethod, register_method
from nemesis_analysis.methods.coop import context_dtype
from nemesis_analysis.methods.declarations import MapleConfig

MAX_WORD_INIT = 4  # the official code starts the context from ctx_init's words only when n_ctx <= 4
PLACEHOLDER = "X"
CPU_VARIANT_BUDGET = 2**23  # floats of one pass's vision activations (variants * images * tokens * width)
CUDA_VARIANT_BUDGET = 2**27


def tower_depths(backbone: str) -> tuple[int, int]:
    """(text layers, vision layers) of an open_clip architecture, from its config (no weights loaded)."""
    import open_clip

    from nemesis_analysis.clip.architectures import register_model_configs

    register_model_configs()
    config = open_clip.get_model_config(backbone)
    if config is None:
        raise ConfigError(f"unknown backbone {backbone!r} for MaPLe; use a ViT-* architecture of open_clip")
    return int(config["text_cfg"].get("layers", 12)), int(config["vision_cfg"].get("layers", 12))


def effective_depth(depth: int, backbone: str) -> int:
    """``maple.depth`` capped at the shallower tower's number of layers."""
    text_layers, vision_layers = tower_depths(backbone)
    vision_layers = vision_layers if isinstance(vision_layers, int) else text_layers
    return max(1, min(depth, text_layers, vision_layers))


def check_vit(visual: nn.Module) -> None:
    """MaPLe's vision prompts are tokens: refuse towers that are not open_clip ViTs pooled by the class token."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ModelError(f"MaPLe prompts a ViT image tower, not {type(visual).__name__}; use a ViT-* backbone")
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise ModelError(f"MaPLe needs a ViT pooled by its class token; this one pools by {visual.pool_type!r}")


# ------------------------------------------------------------------------------- the towers, block by block


def run_blocks(blocks, x: Tensor, substitute: Callable[[Tensor, int], Tensor], start: int, stop: int,
               depth: int, attn_mask: Tensor | None = None) -> Tensor:  # fmt: skip
    """Blocks ``start .. stop-1`` on hidden states ``x`` (batch, tokens, width), the prompt tokens substituted
    (``substitute(x, layer)``) at the input of every block below ``depth``."""
    for layer in range(start, stop):
        if layer < depth:
            x = substitute(x, layer)
        x = blocks[layer](x, attn_mask=attn_mask)
    return x


def vision_embeddings(visual: nn.Module, pixels: Tensor, n_ctx: int) -> Tensor:
    """``ln_pre`` of the class and patch tokens plus M placeholder rows for the vision prompts:
    (batch, 1 + patches + M, width), the vision tower's state at the input of block 0 before substitution."""
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(pixels.to(visual.conv1.weight.device, dtype))  # (batch, width, grid, grid)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (batch, patches, width)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)  # per token: ln_pre of the appended prompts is applied when they are substituted
    return torch.cat([x, x.new_zeros(x.shape[0], n_ctx, x.shape[2])], dim=1)


class MapleTowers:
    """Both towers of a frozen CLIP with MaPLe's substitutions (the model's own modules, run block by block)."""

    def __init__(self, model: nn.Module, n_ctx: int, depth: int, coupling: nn.ModuleList):
        self.model, self.visual, self.n_ctx, self.depth, self.coupling = model, model.visual, n_ctx, depth, coupling
        self.text_blocks = model.transformer.resblocks
        self.vision_blocks = model.visual.transformer.resblocks

    def vision_prompts(self, prompts: Tensor) -> Tensor:
        """The coupled vision prompts of text prompts (variants, J, M, width): (variants, J, M, vision width)."""
        return torch.stack([self.coupling[i](prompts[:, i].float()) for i in range(self.depth)], dim=1)

    def text_substitute(self, prompts: Tensor, classes: int) -> Callable[[Tensor, int], Tensor]:
        """``substitute(x, layer)`` for text states (variants * classes, length, width)."""
        n, position = self.n_ctx, self.model.positional_embedding

        def substitute(x: Tensor, layer: int) -> Tensor:
            value = prompts[:, layer].to(x.dtype)  # (variants, M, width)
            if layer == 0:  # token embeddings: the positional embedding is added here
                value = value + position[1 : 1 + n].to(x.dtype)
            value = value.repeat_interleave(classes, dim=0)
            return torch.cat([x[:, :1], value, x[:, 1 + n :]], dim=1)

        return substitute

    def vision_substitute(self, vprompts: Tensor, images: int) -> Callable[[Tensor, int], Tensor]:
        """``substitute(x, layer)`` for vision states (variants * images, tokens, vision width)."""
        n = self.n_ctx

        def substitute(x: Tensor, layer: int) -> Tensor:
            value = vprompts[:, layer].to(x.dtype)  # (variants, M, vision width)
            if layer == 0:  # appended before ln_pre in the official tower
                value = self.visual.ln_pre(value)
            return torch.cat([x[:, :-n], value.repeat_interleave(images, dim=0)], dim=1)

        return substitute

    def text_mask(self, length: int) -> Tensor | None:
        mask = self.model.attn_mask
        return None if mask is None else mask[:length, :length]

    def text_from(self, state: Tensor, prompts: Tensor, start: int, eos: Tensor) -> Tensor:
        """Unnormalised text features (variants, classes, embed) from the states (classes, length, width) at the
        input of block ``start`` of the unchanged prompt, under each variant's prompts (variants, J, M, width)."""
        variants, classes = prompts.shape[0], state.shape[0]
        x = state[None].expand(variants, -1, -1, -1).flatten(0, 1)
        x = run_blocks(self.text_blocks, x, self.text_substitute(prompts, classes), start, len(self.text_blocks),
                       self.depth, self.text_mask(state.shape[1]))  # fmt: skip
        return pool_and_project(self.model, x, eos.repeat(variants)).unflatten(0, (variants, classes))

    def vision_from(self, state: Tensor, vprompts: Tensor, start: int) -> Tensor:
        """Unnormalised image features (variants, images, embed) from the states (images, tokens, width) at the
        input of vision block ``start`` under each variant's vision prompts (variants, J, M, vision width)."""
        variants, images = vprompts.shape[0], state.shape[0]
        x = state[None].expand(variants, -1, -1, -1).flatten(0, 1)
        x = run_blocks(self.vision_blocks, x, self.vision_substitute(vprompts, images), start,
                       len(self.vision_blocks), self.depth)  # fmt: skip
        pooled = self.visual.ln_post(x[:, 0])
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled.unflatten(0, (variants, images))

    def text_state(self, state: Tensor, prompts: Tensor, start: int, stop: int) -> Tensor:
        """The states at the input of text block ``stop`` from those at ``start`` under one prompt (1, J, M, width)."""
        return run_blocks(self.text_blocks, state, self.text_substitute(prompts, state.shape[0]), start, stop,
                          self.depth, self.text_mask(state.shape[1]))  # fmt: skip

    def vision_state(self, state: Tensor, vprompts: Tensor, start: int, stop: int) -> Tensor:
        return run_blocks(self.vision_blocks, state, self.vision_substitute(vprompts, state.shape[0]), start, stop,
                          self.depth)  # fmt: skip


# ----------------------------------------------------------------------------------------------- the method


@register_method("maple")
class MaPLe(PromptMethod):
    """The slot ``ctx`` (J, M, width), fp32 (positions: its flat view), plus the ``coupling`` layers (J linear maps)."""

    encodes_images = True

    def __init__(self, loaded: LoadedModel, classnames: list[str], config: PromptConfig, seed: int = 0,
                 options: MapleConfig | None = None):  # fmt: skip
        super().__init__()
        check_vit(loaded.model.visual)
        if config.csc or config.class_token_position.value != "end":
            raise ConfigError("MaPLe learns one generic context with the class name at the end; drop --csc and "
                              "--class-token-position")  # fmt: skip
        self.config, self.classnames, self.loaded = config, list(classnames), loaded
        options = options or MapleConfig()
        text_layers = len(loaded.model.transformer.resblocks)
        self.depth = max(1, min(options.depth, text_layers, len(loaded.model.visual.transformer.resblocks)))
        self.n_ctx = config.n_ctx
        self.from_words = bool(config.ctx_init) and self.n_ctx <= MAX_WORD_INIT
        embedding = loaded.model.token_embedding
        device = embedding.weight.device
        prefix = config.ctx_init.replace("_", " ") if self.from_words else " ".join([PLACEHOLDER] * self.n_ctx)
        tokens = loaded.tokenize([f"{prefix} {name.replace('_', ' ')}." for name in self.classnames]).cpu()
        eos = eos_positions(tokens)
        if self.from_words and int(eos_positions(loaded.tokenize([prefix]))[0]) - 1 < self.n_ctx:
            raise ConfigError(f"--ctx-init {config.ctx_init!r} has fewer than n_ctx={self.n_ctx} tokens; "
                              "give more words or a smaller --n-ctx")  # fmt: skip
        if int(eos.max()) >= tokens.shape[1] - 1:
            raise ConfigError("a MaPLe class prompt does not fit the text context; use a smaller --n-ctx")
        length = int(eos.max()) + 1
        with torch.no_grad():
            base = embedding(tokens[:, :length].to(device)).float()  # (classes, length, width)
        self.register_buffer("base", base, persistent=False)
        self.register_buffer("eos", eos.to(device), persistent=False)
        dtype = context_dtype(loaded)
        self.ctx = nn.Parameter(self._initial_prompts(base, seed).to(device, dtype))
        self.coupling = self._initial_coupling(seed).to(device)
        self.towers = MapleTowers(loaded.model, self.n_ctx, self.depth, self.coupling)

    def _initial_prompts(self, base: Tensor, seed: int) -> Tensor:
        """(J, M, width): layer 0 from ctx_init's words (or N(0, std^2)), deeper layers from N(0, std^2)."""
        generator = torch.Generator().manual_seed(seed)
        width = base.shape[-1]
        prompts = torch.randn(self.depth, self.n_ctx, width, generator=generator) * self.config.init_std
        if self.from_words:
            prompts[0] = base[0, 1 : 1 + self.n_ctx].cpu()
        return prompts

    def _initial_coupling(self, seed: int) -> nn.ModuleList:
        """J copies of one ``Linear(text width, vision width)`` with PyTorch's default init drawn from ``seed``."""
        vision_width = self.loaded.model.visual.conv1.out_channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            layer = nn.Linear(self.base.shape[-1], vision_width)
        return nn.ModuleList([copy.deepcopy(layer) for _ in range(self.depth)])

    # --------------------------------------------------------------------------------------- the interface

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def width(self) -> int:
        return self.base.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.base.device

    def slots(self) -> dict[str, Tensor]:
        return {"ctx": self.ctx}

    def trainable(self) -> dict[str, Tensor]:
        return {"ctx": self.ctx, **{f"coupling.{name}": p for name, p in self.coupling.named_parameters()}}

    def position_tensor(self) -> Tensor:
        """``ctx`` viewed as (J * M, width): flat position q is (layer q // M, position q % M)."""
        return self.ctx.view(self.depth * self.n_ctx, self.width)

    def positions_of(self, slot_value: Tensor) -> Tensor:
        """A saved ``ctx`` (J, M, width) as flat positions (J * M, width); flat input is returned as it is."""
        if tuple(slot_value.shape) == (self.depth, self.n_ctx, self.width):
            return slot_value.reshape(self.depth * self.n_ctx, self.width)
        return slot_value

    def save(self, directory, extra: dict | None = None):
        """Write ``ctx`` as (J, M, width) and the coupling layers, with the metadata."""
        from nemesis_analysis.storage.artifacts import save_prompt

        tensors = {name: t for name, t in self.trainable().items() if name != "ctx"}
        return save_prompt(directory, self.ctx, {**self.metadata(), "prompt_method": self.name, **(extra or {})},
                           extra=tensors)  # fmt: skip

    def variant_floats(self) -> int:
        return self.num_classes * self.base.shape[1] * self.width

    def position_pairs(self) -> list[tuple[int, int]]:
        return [(0, q % self.n_ctx) for q in range(self.depth * self.n_ctx)]

    def position_layers(self) -> list[int]:
        return [q // self.n_ctx for q in range(self.depth * self.n_ctx)]

    @classmethod
    def flat_position_keys(cls, config) -> list[tuple[int, int, int]]:
        n_ctx = config.prompt.n_ctx
        return [(0, q % n_ctx, q // n_ctx) for q in range(effective_depth(config.maple.depth, config.backbone) * n_ctx)]

    def layered(self, slot_variants: Tensor) -> Tensor:
        """Flat variants (variants, J * M, width) (or already (variants, J, M, width), as the slot is saved) as
        (variants, J, M, width) on the method's device, fp32."""
        slot_variants = slot_variants.to(self.device, torch.float32)
        return slot_variants if slot_variants.dim() == 4 else slot_variants.unflatten(1, (self.depth, self.n_ctx))

    def text_start(self) -> Tensor:
        """The text states at the input of block 0 before substitution: embeddings + positions (classes, length, width)."""
        cast = self.loaded.model.transformer.get_cast_dtype()
        return self.base.to(cast) + self.loaded.model.positional_embedding[: self.base.shape[1]].to(cast)

    def image_chunk(self, variants: int, tokens: int) -> int:
        budget = CUDA_VARIANT_BUDGET if self.device.type == "cuda" else CPU_VARIANT_BUDGET
        return max(1, budget // (variants * tokens * self.loaded.model.visual.conv1.out_channels))

    def text_features(self, slot_variants: Tensor | None = None) -> Tensor:
        prompts = self.layered(self.position_tensor()[None] if slot_variants is None else slot_variants)
        with self.loaded.text_autocast():
            features = self.towers.text_from(self.text_start(), prompts, 0, self.eos)
        return F.normalize(features.float(), dim=-1)

    def image_features_of(self, prompts: Tensor, pixels: Tensor) -> Tensor:
        """Normalised image features (variants, images, embed) of pixels under prompts (variants, J, M, width)."""
        vprompts = self.towers.vision_prompts(prompts)
        with self.loaded.autocast():
            state = vision_embeddings(self.loaded.model.visual, pixels, self.n_ctx)
            features = self.towers.vision_from(state, vprompts, 0)
        return F.normalize(features.float(), dim=-1)

    def variant_scores(self, slot_variants: Tensor, image_features: Tensor,
                       local_features: Tensor | None = None) -> Tensor:  # fmt: skip
        """Cosine scores (variants, batch, classes); ``image_features`` are preprocessed images (batch, 3, H, W)."""
        prompts = self.layered(slot_variants)
        text = self.text_features(slot_variants)  # (variants, classes, embed)
        tokens = self.loaded.model.visual.positional_embedding.shape[0] + self.n_ctx
        chunk = self.image_chunk(prompts.shape[0], tokens)
        parts = [torch.einsum("vbe,vce->vbc", self.image_features_of(prompts, image_features[s : s + chunk]), text)
                 for s in range(0, image_features.shape[0], chunk)]  # fmt: skip
        return torch.cat(parts, dim=1)

    def scores(self, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        return self.variant_scores(self.position_tensor()[None], image_features)[0]

    def logits(self, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        return self.loaded.logit_scale * self.scores(image_features)

    def encode_batch(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        return pixels.to(self.device), None

    def image_inputs(self, dataset, samples, cache_dir, progress: bool = True) -> tuple[Tensor, Tensor]:
        from nemesis_analysis.clip.features import image_pixels

        return image_pixels(self.loaded, dataset, samples, progress)

    def prefix_cache(self, slot_value: Tensor) -> LayerStateCache:
        return LayerStateCache(self, slot_value.detach().float())

    def metadata(self) -> dict:
        prompt = dataclasses.asdict(self.config)
        prompt["n_ctx"] = self.n_ctx
        return {
            "prompt": prompt,
            "classnames": self.classnames,
            "width": self.width,
            "backbone": self.loaded.backbone,
            "pretrained": self.loaded.pretrained,
            "maple": {"depth": self.depth, "vision_width": self.loaded.model.visual.conv1.out_channels,
                      "nemesis_norms": "every (layer, position) prompt vector of ctx; not the coupling layers"},
        }  # fmt: skip

    def load_official(self, source: Path | str | dict) -> None:
        """Load an official MaPLe checkpoint (Dassl ``model.pth.tar-N`` or its state dict), shapes checked."""
        self.load_tensors(official_tensors(source, self.depth, self.n_ctx), source=str(source)[:200])


class LayerStateCache:
    """Scores of variants that each change the prompts of one layer L (the engine's single-position groups).

    Both towers' states at the input of block L under the unchanged prompts are computed once per image set
    and reused: a variant only runs blocks L and later. Groups arrive in increasing layer order, so the
    states advance block by block (only one layer's states are held)."""

    def __init__(self, method: MaPLe, ctx: Tensor):
        self.method = method
        self.prompts = method.layered(ctx[None])  # (1, J, M, width)
        self.key: tuple | None = None
        self.layer = 0
        self.text: Tensor | None = None
        self.vision: Tensor | None = None

    @torch.no_grad()
    def advance(self, pixels: Tensor, layer: int) -> None:
        """Hold the unchanged prompts' states at the input of block ``layer`` for ``pixels``."""
        method, towers = self.method, self.method.towers
        key = (pixels.data_ptr(), tuple(pixels.shape))
        if key != self.key or layer < self.layer or self.text is None:
            self.key, self.layer = key, 0
            self.text = method.text_start()
            with method.loaded.autocast():
                self.vision = vision_embeddings(method.loaded.model.visual, pixels, method.n_ctx)
        vprompts = towers.vision_prompts(self.prompts)
        with method.loaded.text_autocast():
            self.text = towers.text_state(self.text, self.prompts, self.layer, layer)
        with method.loaded.autocast():
            self.vision = towers.vision_state(self.vision, vprompts, self.layer, layer)
        self.layer = layer

    @torch.no_grad()
    def scores(self, variants: Tensor, position: int, pixels: Tensor, local_features: Tensor | None = None) -> Tensor:
        """Cosine scores (variants, images, classes) of variants that change only flat position ``position``."""
        method = self.method
        layer = position // method.n_ctx
        self.advance(pixels, layer)
        prompts = method.layered(variants)
        vprompts = method.towers.vision_prompts(prompts)
        with method.loaded.text_autocast():
            text = F.normalize(method.towers.text_from(self.text, prompts, layer, method.eos).float(), dim=-1)
        chunk = method.image_chunk(prompts.shape[0], self.vision.shape[1])
        parts = []
        for start in range(0, self.vision.shape[0], chunk):
            with method.loaded.autocast():
                image = method.towers.vision_from(self.vision[start : start + chunk], vprompts, layer)
            parts.append(torch.einsum("vbe,vce->vbc", F.normalize(image.float(), dim=-1), text))
        return torch.cat(parts, dim=1)


# ------------------------------------------------------------------------------------- official checkpoints

OFFICIAL_PREFIX = "prompt_learner."


def official_tensors(source: Path | str | dict, depth: int, n_ctx: int) -> dict[str, Tensor]:
    """Our tensor names from an official MaPLe state dict (keys ``prompt_learner.ctx``,
    ``prompt_learner.compound_prompts_text.{i}``, ``prompt_learner.proj.{weight,bias}``,
    ``prompt_learner.compound_prompt_projections.{i}.{weight,bias}``), checked against depth J and n_ctx."""
    state = source
    if not isinstance(source, dict):
        from nemesis_analysis.storage.safeload import torch_load

        state = torch_load(source, "MaPLe checkpoint")
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    state = {k[len(OFFICIAL_PREFIX) :] if k.startswith(OFFICIAL_PREFIX) else k: v for k, v in state.items()}
    if "ctx" not in state or "proj.weight" not in state:
        raise ModelError("not a MaPLe checkpoint: no prompt_learner.ctx / prompt_learner.proj.weight; pass the "
                         "model.pth.tar file of the official MultiModalPromptLearner")  # fmt: skip
    deep = sum(1 for k in state if k.startswith("compound_prompts_text."))
    if deep + 1 != depth:
        raise ModelError(f"the MaPLe checkpoint has prompts in {deep + 1} layers, this run {depth}; "
                         f"pass --set maple.depth={deep + 1}")  # fmt: skip
    layers = [state["ctx"]] + [state[f"compound_prompts_text.{i}"] for i in range(deep)]
    if any(t.dim() != 2 or t.shape[0] != n_ctx for t in layers):
        shapes = sorted({tuple(t.shape) for t in layers})
        raise ModelError(f"the MaPLe checkpoint's prompts have shapes {shapes}; this run needs ({n_ctx}, width): "
                         "pass its --n-ctx")  # fmt: skip
    tensors = {"ctx": torch.stack([t.float() for t in layers])}
    for i in range(depth):
        source_name = "proj" if i == 0 else f"compound_prompt_projections.{i - 1}"
        for part in ("weight", "bias"):
            tensors[f"coupling.{i}.{part}"] = state[f"{source_name}.{part}"].float()
    return tensors


__all__ = ["MaPLe", "MapleTowers", "LayerStateCache", "official_tensors", "effective_depth", "run_blocks"]
