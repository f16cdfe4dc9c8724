"""Speech corpora for kdstore: a synthetic demo corpus and LibriSpeech manifests.

``prepare_demo`` synthesises a multi-voice corpus offline with the Debian TTS engines (for the demo
and the tests); ``prepare_librispeech`` writes NeMo manifests for a downloaded LibriSpeech tree.
Nothing here imports NeMo or torch: the corpus steps run before any model exists.
"""

from kdstore.corpus.librispeech import prepare_librispeech
from kdstore.corpus.synthetic import DemoCorpus, prepare_demo

__all__ = ["DemoCorpus", "prepare_demo", "prepare_librispeech"]
