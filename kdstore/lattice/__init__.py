"""Transducer lattice math in pure torch, no NeMo: the vectorised RNN-T loss and the forward-backward
node posteriors (occupancy) that banding and occupancy-weighted KD use."""
