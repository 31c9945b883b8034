"""KgCoOp (Yao et al., CVPR 2023): CoOp's context and inference, trained with a pull towards the hand-crafted prompt.

The extra training term is ``lambda * mean_c ||t_c - h_c||^2`` with ``t_c`` the learned prompt's and
``h_c`` the frozen model's text feature of "a photo of a {class}." for class c, both L2-normalised (as in
the official code), as the paper writes it. On unit vectors ``||t - h||^2 = 2 (1 - cos(t, h))``, so the
official code's ``lambda * (1 - mean_c cos)`` equals ``lambda / 2 * mean_c ||t_c - h_c||^2``: its default
(8 on ``1 - cos``) is ``--kg-weight 4`` here. The template is the generic one for every dataset (the
official code also has per-dataset templates).
"""

from __future__ import annotations

from torch import Tensor

from nemesis_analysis.clip.encoding import LoadedModel
from nemesis_analysis.config import PromptConfig
from nemesis_analysis.methods.base import register_method
from nemesis_analysis.methods.coop import CoOp
from nemesis_analysis.methods.declarations import KgCoOpConfig

HANDCRAFTED_TEMPLATE = "a photo of a {}."


def knowledge_distance(learned: Tensor, handcrafted: Tensor) -> Tensor:
    """Mean over classes of the squared L2 distance between text features (classes, embed): a scalar."""
    return (learned - handcrafted).pow(2).sum(dim=-1).mean()


@register_method("kgcoop")
class KgCoOp(CoOp):
    """CoOp plus :meth:`extra_loss` = ``weight * knowledge_distance(learned, hand-crafted)``.

    ``handcrafted`` (num_classes, embed) is a buffer: the frozen model's normalised features of
    :data:`HANDCRAFTED_TEMPLATE`. :meth:`logits` keeps the text features it computed for the step, so the
    extra term costs no second text pass.
    """

    def __init__(self, loaded: LoadedModel, classnames: list[str], config: PromptConfig, seed: int = 0,
                 options: KgCoOpConfig | None = None):  # fmt: skip
        super().__init__(loaded, classnames, config, seed=seed)
        self.weight = (options or KgCoOpConfig()).weight
        texts = [HANDCRAFTED_TEMPLATE.format(name.replace("_", " ")) for name in self.classnames]
        self.register_buffer("handcrafted", loaded.encode_texts(texts).float(), persistent=False)
        self._step_text: Tensor | None = None

    def logits(self, image_features: Tensor, local_features: Tensor | None = None) -> Tensor:
        text = self.text_features()[0]  # (classes, embed)
        self._step_text = text
        return self.loaded.logit_scale * image_features @ text.T

    def extra_loss(self, image_features: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        """``weight * mean_c ||t_c - h_c||^2`` on the text features of the last :meth:`logits` call."""
        text, self._step_text = self._step_text, None
        if text is None:
            text = self.text_features()[0]
        return self.weight * knowledge_distance(text, self.handcrafted.to(text.dtype))

    def metadata(self) -> dict:
        return {**super().metadata(), "kgcoop": {"weight": self.weight, "template": HANDCRAFTED_TEMPLATE}}


__all__ = ["KgCoOp", "knowledge_distance", "HANDCRAFTED_TEMPLATE"]
