"""Realistic class-name lists for the benchmarks: Caltech101's (as CoOp names them) and a synthetic ImageNet-size list."""

from __future__ import annotations

# Caltech101's class names as CoOp uses them: realistic token lengths for the prompts.
CALTECH_CLASSNAMES = (
    "face leopard motorbike accordion airplane anchor ant barrel bass beaver binocular bonsai brain brontosaurus "
    "buddha butterfly camera cannon car_side ceiling_fan cellphone chair chandelier cougar_body cougar_face crab "
    "crayfish crocodile crocodile_head cup dalmatian dollar_bill dolphin dragonfly electric_guitar elephant emu "
    "euphonium ewer ferry flamingo flamingo_head garfield gerenuk gramophone grand_piano hawksbill headphone "
    "hedgehog helicopter ibis inline_skate joshua_tree kangaroo ketch lamp laptop llama lobster lotus mandolin "
    "mayfly menorah metronome minaret nautilus octopus okapi pagoda panda pigeon pizza platypus pyramid revolver "
    "rhino rooster saxophone schooner scissors scorpion sea_horse snoopy soccer_ball stapler starfish stegosaurus "
    "stop_sign strawberry sunflower tick trilobite umbrella watch water_lilly wheelchair wild_cat windsor_chair "
    "wrench yin_yang"
).split()
assert len(CALTECH_CLASSNAMES) == 100


def imagenet_size_classnames(count: int = 1000) -> list[str]:
    """``count`` distinct names of one to about four BPE tokens, like ImageNet's (e.g. "great white shark").

    The first 100 are Caltech101's; the rest pair each with a second Caltech name (no download needed).
    """
    names = list(CALTECH_CLASSNAMES)
    for index in range(len(names), count):
        first, second = CALTECH_CLASSNAMES[index % 100], CALTECH_CLASSNAMES[(index // 100 * 37 + index) % 100]
        names.append(f"{second} {first}")
    if len(set(names)) != count:
        raise ValueError("internal error: synthetic class names collide")
    return names[:count]
