"""kdstore: offline knowledge distillation for NeMo speech transducers.

Stage 1 (``dump-teacher``) runs a NeMo transducer teacher once and writes its top-k joint
log-probs over every utterance's T x (U+1) lattice to a Zarr store; stage 2 (``train-student``)
trains a smaller FastConformer-Transducer from audio plus that store, with no teacher in memory.

Importing this package is cheap: NeMo and torch are imported only by the modules that need them.
"""

__version__ = "0.6.0"
