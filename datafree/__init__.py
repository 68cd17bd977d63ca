"""Data-free synthesis: synthesizers by name, and the Python API (:func:`distill`)."""
from typing import Dict, Type

from datafree.base import SynthesisConfig, Synthesizer
from datafree.fast import FastSynthesizer
from datafree.cmi import CMISynthesizer
from datafree.deepinv import DeepInversionSynthesizer
from datafree.fast_meta import FastMetaSynthesizer
from datafree.generative import DAFL, DFAD, DFQ, ZSKT

SYNTHESIZERS: Dict[str, Type[Synthesizer]] = {
    "fast": FastSynthesizer,
    "fast_meta": FastMetaSynthesizer,
    "deepinv": DeepInversionSynthesizer,
    "cmi": CMISynthesizer,
    "dafl": DAFL,
    "zskt": ZSKT,
    "dfad": DFAD,
    "dfq": DFQ,
}


def get_synthesizer_class(method: str) -> Type[Synthesizer]:
    try:
        return SYNTHESIZERS[method]
    except KeyError:
        raise KeyError(f"unknown data-free method {method!r}. Valid methods: {', '.join(sorted(SYNTHESIZERS))}") from None


__all__ = ["SYNTHESIZERS", "SynthesisConfig", "Synthesizer", "get_synthesizer_class"]
