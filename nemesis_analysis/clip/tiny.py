"""``nemesis-tiny``: a small open_clip CLIP that the toolkit pretrains itself on the embedded dataset.

Pretraining is contrastive, on the *train* split of ``digits`` only, with varied caption templates
(none of them the zero-shot template). Positives are class-level: every caption of an image's class
counts as a match, which is what CLIP's loss means when captions repeat. A token-level term aligns every
patch token (after ``ln_post`` and ``proj``, the local features PLOT and MaPLe read) with its image's
caption too, so local features carry class signal and not only the class token.

Pretraining runs on one CPU thread whatever the caller's thread count, so its weights are the same
on every machine with the same torch and CPU instruction set. The result is cached in the per-user
cache (``~/.cache/nemesis/nemesis-tiny/<hash>.safetensors``, see ``usercache.default_cache_root``), keyed
by everything it depends on: the architecture, the recipe, the data, the torch version, the CPU
instruction set and the thread count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from nemesis_analysis.clip.architectures import MODEL_CONFIG_DIR, TINY_BACKBONE, random_init, register_model_configs
from nemesis_analysis.progress import progress_bar
from nemesis_analysis.storage.fsio import WriteError, atomic_path
from nemesis_analysis.storage.schema import TINY_WEIGHTS_VERSION
from nemesis_analysis.storage.usercache import default_cache_root

logger = logging.getLogger(__name__)

CAPTION_TEMPLATES = (
    "the digit {}.",
    "a handwritten {}.",
    "the number {} written by hand.",
    "a scan of the digit {}.",
    "{}.",
    "a small blurry {}.",
)


@dataclass(frozen=True)
class TinyRecipe:
    """Pretraining settings: part of the cache key, so changing one retrains."""

    steps: int = 150
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    templates: tuple[str, ...] = CAPTION_TEMPLATES
    # Captions name a digit as a numeral ("7") or, for the digits in ``word_classes`` only, as a word
    # ("six") with probability ``word_fraction``. The other digits' words never occur in pretraining, as
    # rare class names are missing from web captions: zero-shot prompts, which use the words, transfer
    # for half of the classes, and prompt learning has something real to recover.
    word_fraction: float = 0.5
    word_classes: tuple[int, ...] = (0, 2, 4, 6, 8)
    # Weight of the token-level term: every patch token classified against its image's captions.
    token_weight: float = 0.5
    version: int = TINY_WEIGHTS_VERSION  # the weights' version, part of embedded runs' ids
    num_threads: int = 1  # pretraining's CPU thread count: thread counts change float sums, so it is fixed


def compute_environment() -> dict:
    """What else pretraining's floats depend on: the torch version and the CPU instruction set."""
    return {"torch": torch.__version__.split("+")[0], "cpu": torch.backends.cpu.get_cpu_capability()}


@contextmanager
def fixed_threads(num_threads: int):
    """Run the block on ``num_threads`` intra-op threads, then restore the caller's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _config_text() -> str:
    return (MODEL_CONFIG_DIR / f"{TINY_BACKBONE}.json").read_text()


def tiny_cache_path(checkpoints_dir: Path, recipe: TinyRecipe = TinyRecipe()) -> Path:
    from nemesis_analysis.data.base import fingerprint_samples
    from nemesis_analysis.data.registry import load_dataset

    data = load_dataset("digits")
    key = json.dumps(
        {"config": json.loads(_config_text()), "recipe": asdict(recipe), "train": fingerprint_samples(data.train),
         "environment": compute_environment()},
        sort_keys=True,
    )  # fmt: skip
    return Path(checkpoints_dir) / "nemesis-tiny" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def load_tiny_state(path: Path) -> dict[str, torch.Tensor]:
    from nemesis_analysis.storage.safeload import load_safetensors

    return load_safetensors(path, "delete it (it is pretrained again on the next run)", "tiny CLIP cache file")


def find_tiny_clip(checkpoints_dir: Path | None = None, recipe: TinyRecipe = TinyRecipe()) -> Path | None:
    """The pretrained tiny CLIP in the per-user cache, else an older copy in ``checkpoints_dir``; or None."""
    candidates = [tiny_cache_path(default_cache_root(), recipe)]
    if checkpoints_dir is not None:
        candidates.append(tiny_cache_path(checkpoints_dir, recipe))
    return next((path for path in candidates if path.is_file()), None)


def ensure_tiny_clip(checkpoints_dir: Path, recipe: TinyRecipe = TinyRecipe(), progress: bool = True) -> Path:
    """Path to the cached tiny CLIP, pretraining it first if needed (seconds on a CPU).

    It lives in the per-user cache (:func:`~nemesis_analysis.storage.usercache.default_cache_root`, shared by every
    checkpoints folder); a copy an older version left in ``checkpoints_dir`` is still used. When the cache
    cannot be written, the new copy goes to ``checkpoints_dir`` instead.
    """
    found = find_tiny_clip(checkpoints_dir, recipe)
    if found is not None:
        return found
    path = tiny_cache_path(default_cache_root(), recipe)
    logger.info("pretraining %s (cached at %s)", "nemesis-tiny", path)
    state = pretrain_tiny_clip(recipe, progress=progress)
    metadata = {"recipe": json.dumps(asdict(recipe)), "environment": json.dumps(compute_environment())}
    try:
        with atomic_path(path, "the tiny CLIP cache") as tmp:
            save_file(state, str(tmp), metadata=metadata)
    except WriteError as error:
        path = tiny_cache_path(checkpoints_dir, recipe)
        logger.warning("%s; keeping the tiny CLIP in %s instead", error, path)
        with atomic_path(path, "the tiny CLIP") as tmp:
            save_file(state, str(tmp), metadata=metadata)
    return path


def pretrain_tiny_clip(recipe: TinyRecipe = TinyRecipe(), progress: bool = True) -> dict[str, torch.Tensor]:
    """Contrastive pretraining on the digits train split, on ``recipe.num_threads`` CPU threads whatever the
    caller's count (the weights do not depend on it); returns the state dict."""
    with fixed_threads(recipe.num_threads):
        return _pretrain(recipe, progress)


def _pretrain(recipe: TinyRecipe, progress: bool) -> dict[str, torch.Tensor]:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from nemesis_analysis.clip.encoding import encode_text_from_embeddings, eos_positions
    from nemesis_analysis.clip.features import vit_sequence
    from nemesis_analysis.data.registry import load_dataset

    register_model_configs()
    started = time.perf_counter()
    data = load_dataset("digits")
    model = random_init(TINY_BACKBONE).train()
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    images = torch.stack([preprocess(data.load_image(s.source)) for s in data.train])  # (n, 3, H, W)
    labels = torch.tensor([s.label for s in data.train])
    tokenizer = open_clip.get_tokenizer(TINY_BACKBONE)
    num_classes, num_templates = data.num_classes, len(recipe.templates)
    numerals = [str(i) for i in range(num_classes)]
    captions = [t.format(name) for names in (numerals, data.classnames) for t in recipe.templates for name in names]
    tokens = tokenizer(captions)  # (forms * templates * classes, context)
    eos = eos_positions(tokens)
    num_templates = 2 * num_templates  # (numeral templates, then word templates)

    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.steps)
    with progress_bar("pretraining nemesis-tiny", total=recipe.steps, enabled=progress) as advance:
        for _ in range(recipe.steps):
            batch = torch.randint(len(images), (recipe.batch_size,), generator=generator)
            sequence = F.normalize(vit_sequence(model.visual, images[batch]), dim=-1)  # (batch, 1 + patches, embed)
            image_features, patches = sequence[:, 0], sequence[:, 1:]  # token 0 is encode_image's output
            text = encode_text_from_embeddings(model, model.token_embedding(tokens), eos)
            text = F.normalize(text, dim=-1).view(num_templates, num_classes, -1)  # (templates, classes, embed)
            template = torch.randint(len(recipe.templates), (recipe.batch_size,), generator=generator)
            use_word = torch.rand(recipe.batch_size, generator=generator) < recipe.word_fraction
            use_word &= torch.isin(labels[batch], torch.tensor(recipe.word_classes))
            template = template + use_word.long() * len(recipe.templates)
            scale = model.logit_scale.exp()
            # image -> text: each image against the classes under its own caption template
            logits = scale * torch.einsum("be,bce->bc", image_features, text[template])
            loss_image = F.cross_entropy(logits, labels[batch])
            # token level: every patch token against the classes under its image's caption template
            logits_patch = scale * torch.einsum("bpe,bce->bpc", patches, text[template])  # (batch, patches, classes)
            targets_patch = labels[batch][:, None].expand(-1, patches.shape[1])  # (batch, patches)
            loss_token = F.cross_entropy(logits_patch.flatten(0, 1), targets_patch.flatten())
            # text -> image: each caption against the batch; every image of its class is a positive
            # text -> image: each caption against the batch images captioned in its form; every image
            # of its class is a positive
            logits_text = scale * torch.einsum("tce,be->tcb", text, image_features)  # (templates, classes, batch)
            loss_text = 0.0
            for form, weight in ((False, 1 - recipe.word_fraction), (True, recipe.word_fraction)):
                members = use_word == form
                if not members.any():
                    continue
                form_templates = slice(len(recipe.templates), None) if form else slice(0, len(recipe.templates))
                positives = (labels[batch][members][None, :] == torch.arange(num_classes)[:, None]).float()
                present = positives.sum(1) > 0
                targets = positives[present] / positives[present].sum(1, keepdim=True)  # (present, members)
                log_probs = logits_text[form_templates][:, present][..., members].log_softmax(-1)
                loss_text = loss_text + weight * -(targets * log_probs).sum(-1).mean()
            loss = 0.5 * (loss_image + loss_text) + recipe.token_weight * loss_token
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)
            advance(loss=float(loss.detach()))
    logger.info("pretrained nemesis-tiny in %.1f s", time.perf_counter() - started)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}
