"""Stage 2, audio + store -> student: ``kdstore train-student``.

:mod:`config` (the schema), :mod:`train` (the recipe), :mod:`student` (the NeMo model with the KD
term), :mod:`kd_term` and :mod:`losses` (KD over lattice nodes), :mod:`data` and :mod:`samplers` (store
rows beside the audio), :mod:`checks` (T and U line up with the store), :mod:`augment`, :mod:`callbacks`.
"""
