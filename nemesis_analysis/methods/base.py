"""The interface every prompt-learning method implements, and the registry that names them.

Design note. A method owns learnable tensors, exposed as named **slots**: each slot is a tensor whose
axis ``-2`` is the *position* axis (the axis the corruption engine corrupts, the norm losses measure and
the trajectories record), e.g. CoOp's one slot ``ctx`` of shape ``([num_classes,] n_ctx, width)``.
Everything outside a method (training loop, corruption engine, PAN, trajectories) talks to it only
through this interface:

- :meth:`PromptMethod.slots` the learnable tensors by name; :attr:`PromptMethod.position_slot` names the
  one whose positions are analysed.
- :meth:`PromptMethod.text_features` class text features for a *stack* of slot variants, so many
  corruptions go through the text tower in one pass.
- :meth:`PromptMethod.logits` scores of cached image features. It receives the image features (and, when
  the method needs them, local features), so it can express methods whose text depends on the image.
- :meth:`PromptMethod.extra_loss` a method-specific term added to the cross-entropy (zero by default).
- :meth:`PromptMethod.save` / :meth:`PromptMethod.load` its artifact.

How the next methods fit:

- CoCoOp: a meta-network maps each image feature to a bias added to every context vector. Its slot is
  still ``ctx`` (``(n_ctx, width)``) plus the meta-network's weights (not a position slot). ``logits``
  computes, per image, the text features of ``ctx + meta(image)`` and scores the image against its own
  text features, which is why ``logits`` takes the image features rather than text features.
- PLOT (``methods/plot.py``): N prompts per class matched to local image features by optimal transport.
  Its slot ``ctx`` is ``(N, n_ctx, width)``; :meth:`PromptMethod.position_tensor` is the flat view
  ``(N * n_ctx, width)`` (flat position ``p`` = prompt ``p // n_ctx``, position ``p % n_ctx``, listed by
  :meth:`PromptMethod.position_pairs`), so corruption, norm losses and trajectories iterate positions as
  for CoOp. ``text_features`` returns ``(variants, num_classes, N, embed)``; ``needs_local_features`` makes
  the engine and the training loop pass ``local_features`` (``(batch, locations, embed)``) to
  :meth:`PromptMethod.variant_scores`, whose hook :meth:`PromptMethod.score_variants` solves the transport.
- KgCoOp: CoOp plus ``extra_loss`` = distance of the learned text features to the hand-crafted ones.

Adding a method is one module plus one registration line: a
:func:`~nemesis_analysis.methods.registry.declare_method` call (``methods/declarations.py`` for the built-in
ones) that names the implementation and declares its options section, recipe and checkpoint reader. The class:

- subclasses :class:`PromptMethod` (or CoOp), decorated ``@register_method("name")`` (or named by the
  declaration, which registers it when the method is first built);
- takes ``(loaded, classnames, config: PromptConfig, seed=0, options=None)``: ``options`` is the run's
  option section of this method (``RunConfig.plot`` for PLOT, ``RunConfig.kgcoop`` for KgCoOp; None
  for methods without one), as :func:`build_method` passes it;
- declares its learnable tensors: :meth:`PromptMethod.slots` (positions on axis -2; PLOT's
  ``(N, n_ctx, width)`` puts the prompt axis in front, so a position is a (prompt, position) pair) and,
  for tensors without positions (CoCoOp's meta-network), :meth:`PromptMethod.trainable`. Everything in
  ``trainable()`` is optimised, saved in the resume state (with its momentum) and in the artifact;
- scores images: :meth:`PromptMethod.scores` / :meth:`PromptMethod.logits` for its own values and
  :meth:`PromptMethod.variant_scores` for a stack of slot variants (the corruption engine and PAN's
  pre-inference call only this). Methods that need local image features set ``needs_local_features``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from nemesis_analysis.errors import FieldError, ModelError
from nemesis_analysis.methods.registry import declaration, resolve
from nemesis_analysis.storage.artifacts import read_prompt, save_prompt

METHODS: dict[str, type[PromptMethod]] = {}


def register_method(name: str) -> Callable[[type[PromptMethod]], type[PromptMethod]]:
    """Class decorator: the implementation of the declared method ``name`` (``@register_method("coop")``)."""

    def decorate(cls: type[PromptMethod]) -> type[PromptMethod]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"prompt method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorate


def method_class(name: str) -> type[PromptMethod]:
    """The implementation of the declared method ``name`` (imported on first use); a ConfigError listing
    the choices otherwise."""
    if name not in METHODS:
        implementation = resolve(declaration(name).implementation)
        if METHODS.get(name) is not implementation:
            register_method(name)(implementation)
    return METHODS[name]


def refuse_class_specific(method: PromptMethod, config) -> None:
    """The refusal of class-specific context by methods that learn generic context only (as the run config's)."""
    if config.csc:
        raise FieldError("prompt.csc", f"prompt.csc: prompt method {method.name} learns generic context only (no "
                                       "class-specific context); set prompt.csc = false")  # fmt: skip


def build_method(name: str, loaded, classnames: list[str], config, seed: int = 0, options=None) -> PromptMethod:
    """An instance of the registered method ``name`` (``config`` its PromptConfig, ``options`` its section)."""
    return method_class(name)(loaded, classnames, config, seed=seed, options=options)


def build_method_for_run(run_config, loaded, classnames: list[str]) -> PromptMethod:
    """The prompt method of a :class:`~nemesis_analysis.config.RunConfig`, initialised with its seed."""
    return build_method(run_config.prompt_method, loaded, classnames, run_config.prompt, seed=run_config.seed,
                        options=run_config.method_options())  # fmt: skip


class PromptMethod(nn.Module):
    """A prompt-learning method on a frozen CLIP (see the module's design note).

    Implementations hold ``loaded`` (the frozen :class:`~nemesis_analysis.clip.encoding.LoadedModel`) and
    ``classnames``, and are registered with :func:`register_method`.
    """

    name: ClassVar[str] = ""
    position_slot: ClassVar[str] = "ctx"  # the slot whose axis -2 is corrupted, normed and recorded
    needs_local_features: ClassVar[bool] = False  # PLOT: scores need per-location image features
    encodes_images: ClassVar[bool] = False  # MaPLe: prompts the image tower, so it scores preprocessed images

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def slots(self) -> dict[str, Tensor]:
        """The learnable tensors with positions, by name; each has its positions on axis -2."""
        raise NotImplementedError

    def trainable(self) -> dict[str, Tensor]:
        """Every learnable tensor by name: the slots plus tensors without positions (CoCoOp's meta-network).

        The training loop optimises these, the resume state saves them (and their momentum) and the
        artifact stores them; names are safetensors keys (e.g. ``meta_net.linear1.weight``).
        """
        return self.slots()

    def position_tensor(self) -> Tensor:
        """The slot that corruption, norm losses and trajectories operate on."""
        return self.slots()[self.position_slot]

    @property
    def device(self) -> torch.device:
        """Where the method's tensors (and the frozen model) live."""
        raise NotImplementedError

    def variant_floats(self) -> int:
        """Floats of one slot variant's prompt activations (classes * tokens * width): sizes engine chunks."""
        raise NotImplementedError

    @property
    def n_positions(self) -> int:
        return self.position_tensor().shape[-2]

    def text_features(self, slot_variants: Tensor | None = None) -> Tensor:
        """Normalised class text features for a stack of variants of the position slot.

        ``slot_variants``: ``(variants, *slot.shape)``; None means the method's own values (one variant).
        Returns ``(variants, num_classes, embed)``.
        """
        raise NotImplementedError

    def variant_scores(self, slot_variants: Tensor, image_features: Tensor,
                       local_features: Tensor | None = None) -> Tensor:  # fmt: skip
        """Cosine scores ``(variants, batch, num_classes)`` of L2-normalised ``image_features`` ``(batch, embed)``
        under each variant ``(variants, *slot.shape)`` of the position slot (the method's other tensors as
        they are). What the corruption engine and PAN's pre-inference call; the default scores
        :meth:`text_features` through :meth:`score_variants` (``local_features`` ``(batch, locations, embed)``
        for methods that set ``needs_local_features``); image-conditioned methods (CoCoOp) override it."""
        return self.score_variants(self.text_features(slot_variants), image_features, local_features)

    def scores(self, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        """Cosine scores ``(batch, num_classes)`` of L2-normalised ``image_features`` ``(batch, embed)``: what
        accuracy is measured on.

        The default scores against :meth:`text_features` of the method's own values through
        :meth:`score_variants`; methods whose prompts depend on the image (CoCoOp: per-image text
        features) override it and :meth:`logits`.
        """
        return self.score_variants(self.text_features(), image_features, local_features)[0]

    def score_variants(self, text: Tensor, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        """The hook behind :meth:`variant_scores` (and the engine's prefix-cache path): scores
        ``(variants, batch, num_classes)`` of images under text features ``text`` that :meth:`text_features`
        returned for a stack of variants. Default: cosine against the global feature; PLOT matches its
        prompts to ``local_features`` ``(batch, locations, embed)`` by optimal transport."""
        return torch.matmul(image_features.to(text.device)[None], text.transpose(1, 2))

    def logits(self, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        """Training logits ``(batch, num_classes)``: CLIP's logit scale times the cosine scores."""
        text = self.text_features()[0]  # (classes, embed)
        return self.loaded.logit_scale * image_features @ text.T

    def position_pairs(self) -> list[tuple[int, int]]:
        """``(prompt_index, position)`` of each flat position of :meth:`position_tensor` (axis -2): the
        columns ``prompt_index``/``position`` of the corruption and trajectory tables. One prompt: ``(0, p)``."""
        return [(0, position) for position in range(self.n_positions)]

    def position_layers(self) -> list[int]:
        """The layer of each flat position of :meth:`position_tensor` (the ``layer`` column): 0 for methods
        that prompt only the input; MaPLe's deep prompts are at layers 0..J-1."""
        return [0] * self.n_positions

    @classmethod
    def flat_position_keys(cls, config) -> list[tuple[int, int, int]]:
        """(prompt_index, position, layer) of each flat position of the run ``config``'s position slot, before
        any model loads (to expand a grid and know its table keys): PLOT's N prompts of n_ctx positions."""
        from nemesis_analysis.clip.prompts import backbone_tokenizer, resolve_n_ctx

        n_ctx = resolve_n_ctx(config.prompt, backbone_tokenizer(config.backbone))
        return [(*divmod(p, n_ctx), 0) for p in range(config.num_prompts * n_ctx)]

    @classmethod
    def flat_positions(cls, config) -> int:
        """Flat positions of the run ``config``'s position slot, before any model loads."""
        return len(cls.flat_position_keys(config))

    def encode_batch(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """What :meth:`logits` takes for a preprocessed training batch (batch, 3, H, W): the frozen tower's
        (features, local features or None); a method that prompts the image tower (``encodes_images``) takes
        the images themselves."""
        from nemesis_analysis.clip.features import encode_images_with_local

        if self.needs_local_features:
            return encode_images_with_local(self.loaded, pixels)
        return self.loaded.encode_images(pixels), None

    def image_inputs(self, dataset, samples, cache_dir, progress: bool = True) -> tuple[Tensor, Tensor]:
        """(what the method scores for ``samples``, labels): cached frozen features (n, embed), or for a method
        that prompts the image tower (``encodes_images``) the preprocessed images (n, 3, H, W)."""
        from nemesis_analysis.clip.features import image_features

        return image_features(self.loaded, dataset, samples, cache_dir, progress)

    def positions_of(self, slot_value: Tensor) -> Tensor:
        """A saved position slot (as :meth:`save` writes it) in :meth:`position_tensor`'s layout."""
        return slot_value

    def extra_loss(self, image_features: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        """A method-specific term added to the training loss (zero unless the method defines one)."""
        return torch.zeros((), device=logits.device)

    def prefix_cache(self, slot_value: Tensor):
        """An object whose ``text_features(variants, position)`` reuses the unchanged prefix, or None."""
        return None

    def metadata(self) -> dict:
        """What the artifact records beside the tensors (layout, class names, backbone)."""
        raise NotImplementedError

    def save(self, directory: Path, extra: dict | None = None) -> Path:
        """Write the method's artifact (every :meth:`trainable` tensor + metadata) into ``directory``."""
        tensors = {name: t for name, t in self.trainable().items() if name != self.position_slot}
        metadata = {**self.metadata(), "prompt_method": self.name, **(extra or {})}
        return save_prompt(directory, self.position_tensor(), metadata, extra=tensors)

    def load(self, directory: Path) -> dict:
        """Load the tensors saved by :meth:`save`; returns the artifact's metadata."""
        prompt = read_prompt(directory)
        self.load_tensors({self.position_slot: prompt.ctx, **prompt.tensors}, source=str(directory))
        return prompt.metadata

    def load_tensors(self, tensors: dict[str, Tensor], source: str = "artifact") -> None:
        """Copy saved values into every :meth:`trainable` tensor; a one-line ModelError names a missing or
        misshapen one."""
        own = self.trainable()
        for name, target in own.items():
            value = tensors.get(name)
            if value is None:
                raise ModelError(
                    f"{source} lacks the tensor {name!r} of method {self.name}; pass an artifact of this method"
                )
            if tuple(value.shape) != tuple(target.shape):
                raise ModelError(
                    f"{source}: tensor {name!r} has shape {tuple(value.shape)} but method {self.name} expects "
                    f"{tuple(target.shape)}; use the backbone and options it was trained with"
                )
        with torch.no_grad():
            for name, target in own.items():
                target.copy_(tensors[name].to(device=target.device, dtype=target.dtype))
