"""TDT forward-backward (kdstore.lattice.tdt_posteriors): against every alignment enumerated by hand, its
flow identities, and the TDT loss of the same logits."""

from __future__ import annotations

import math

import pytest
import torch

from kdstore.lattice.tdt_loss import tdt_loss
from kdstore.lattice.tdt_posteriors import tdt_lattice_posteriors, tdt_lattice_posteriors_batch

DURATION_SETS = [(0, 1, 2), (0, 1, 2, 3, 4), (0, 1, 3)]


def random_tables(seed: int, batch: int, frames: int, labels: int, vocab: int, durations):
    """Raw joint logits [B, T, U+1, V+1+D] and the three tables the posteriors take (blank = V)."""
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(batch, frames, labels + 1, vocab + 1 + len(durations), generator=gen, dtype=torch.float64) * 2
    targets = torch.randint(0, vocab, (batch, max(labels, 1)), generator=gen)[:, :labels]
    tok = acts[..., : vocab + 1].log_softmax(-1)
    dur = acts[..., vocab + 1 :].log_softmax(-1)
    blank = tok[..., vocab]
    label = tok[:, :, :labels].gather(-1, targets[:, None, :, None].expand(-1, frames, -1, 1)).squeeze(-1)
    return acts, targets, blank, label, dur


def enumerate_alignments(blank, label, dur, durations, frames, labels):
    """Every TDT alignment of one utterance by depth-first search: (log-prob, visited nodes, arcs)."""
    out = []

    def walk(t, u, logp, nodes, arcs):
        nodes = nodes + [(t, u)]
        for i, d in enumerate(durations):
            if d >= 1 and t + d <= frames:  # blank
                w = logp + float(blank[t, u] + dur[t, u, i])
                arc = arcs + [("blank", t, u, i)]
                if t + d == frames:
                    if u == labels:
                        out.append((w, nodes, arc))
                else:
                    walk(t + d, u, w, nodes, arc)
            if u < labels and t + d < frames:  # label (never onto the terminal frame)
                walk(t + d, u + 1, logp + float(label[t, u] + dur[t, u, i]), nodes, arcs + [("label", t, u, i)])

    walk(0, 0, 0.0, [], [])
    return out


@pytest.mark.parametrize("durations", DURATION_SETS)
@pytest.mark.parametrize(("frames", "labels"), [(1, 0), (1, 2), (4, 2), (5, 3), (6, 0)])
def test_posteriors_equal_enumerated_alignments(durations, frames, labels):
    _, _, blank, label, dur = random_tables(frames * 10 + labels, 1, frames, labels, 5, durations)
    post = tdt_lattice_posteriors(blank[0], label[0], dur[0], durations, labels)
    paths = enumerate_alignments(blank[0], label[0], dur[0], durations, frames, labels)
    log_z = torch.logsumexp(torch.tensor([p[0] for p in paths], dtype=torch.float64), 0)
    assert float(post.log_z) == pytest.approx(float(log_z), abs=1e-10)
    node = torch.zeros(frames, labels + 1, dtype=torch.float64)
    arcs = {"blank": torch.zeros(frames, labels + 1, len(durations), dtype=torch.float64)}
    arcs["label"] = torch.zeros_like(arcs["blank"])
    for logp, nodes, path_arcs in paths:
        weight = math.exp(logp - float(log_z))
        for t, u in nodes:  # a TDT alignment never visits a node twice
            node[t, u] += weight
        for kind, t, u, i in path_arcs:
            arcs[kind][t, u, i] += weight
    torch.testing.assert_close(post.node, node, rtol=0, atol=1e-10)
    torch.testing.assert_close(post.blank, arcs["blank"], rtol=0, atol=1e-10)
    torch.testing.assert_close(post.label, arcs["label"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("durations", DURATION_SETS)
def test_flow_identities_and_log_z_equals_minus_tdt_loss(durations):
    frame_lengths, label_lengths = [9, 14, 3, 14], [4, 6, 5, 0]
    acts, targets, blank, label, dur = random_tables(7, 4, 14, 6, 11, durations)
    post = tdt_lattice_posteriors_batch(blank, label, dur, durations, frame_lengths, label_lengths)
    loss = tdt_loss(acts, targets, torch.tensor(frame_lengths), torch.tensor(label_lengths), blank=11,
                    durations=durations, reduction="sum")
    assert float(post.log_z.sum()) == pytest.approx(-float(loss), abs=1e-6)
    d = torch.tensor(durations, dtype=torch.float64)
    for b, (frames, labels) in enumerate(zip(frame_lengths, label_lengths, strict=True)):
        node, bl, la = post.node[b], post.blank[b], post.label[b]
        assert float(node[frames:].abs().sum() + node[:, labels + 1 :].abs().sum()) == 0.0  # padding stays 0
        node, bl, la = node[:frames, : labels + 1], bl[:frames, : labels + 1], la[:frames, : labels + 1]
        # 1. out-flow; 2. in-flow
        torch.testing.assert_close(node, bl.sum(-1) + la.sum(-1), rtol=0, atol=1e-12)
        inflow = torch.zeros_like(node)
        inflow[0, 0] = 1.0
        for i, di in enumerate(durations):
            if di >= frames:
                continue  # lands on or past the terminal frame
            if di >= 1:
                inflow[di:, :] += bl[: frames - di, :, i]
            inflow[di:, 1:] += la[: frames - di, :-1, i]
        torch.testing.assert_close(node, inflow, rtol=0, atol=1e-12)
        # 3. every label is emitted exactly once
        torch.testing.assert_close(la[:, :labels].sum((0, 2)), torch.ones(labels, dtype=torch.float64), rtol=0, atol=1e-12)
        assert float(la[:, labels].abs().sum()) == 0.0 and float(bl[..., durations.index(0)].abs().sum()) == 0.0
        # 4. arcs of positive duration tile the frames
        cover = torch.zeros(frames, dtype=torch.float64)
        per_frame = (bl + la).sum(1)  # [T, D]
        for i, di in enumerate(durations):
            for s in range(frames):
                cover[s : s + di] += per_frame[s, i]
        torch.testing.assert_close(cover, torch.ones(frames, dtype=torch.float64), rtol=0, atol=1e-12)
        assert float(((bl + la) * d).sum()) == pytest.approx(frames, abs=1e-10)
        # 5. expected visited nodes = expected arcs = U + expected blanks, in [max(U + 1, ceil(T / max d)), U + T]
        visits = float(node.sum())
        assert visits == pytest.approx(labels + float(bl.sum()), abs=1e-10)
        assert max(labels + 1, math.ceil(frames / max(durations))) - 1e-9 <= visits <= labels + frames + 1e-9
        assert float(node[0, 0]) == pytest.approx(1.0, abs=1e-12)


def test_batched_equals_one_by_one_and_takes_label_tables_of_width_u_plus_1():
    durations = (0, 1, 2, 3)
    frame_lengths, label_lengths = [5, 8, 2], [3, 1, 4]
    _, _, blank, label, dur = random_tables(3, 3, 8, 4, 6, durations)
    wide = torch.cat([label, torch.full_like(label[..., :1], -65504.0)], -1)  # the store's u = U slot
    batched = tdt_lattice_posteriors_batch(blank, wide, dur, durations, frame_lengths, label_lengths)
    for b, (frames, labels) in enumerate(zip(frame_lengths, label_lengths, strict=True)):
        one = tdt_lattice_posteriors(blank[b, :frames], label[b, :frames], dur[b, :frames], durations, labels)
        torch.testing.assert_close(batched.node[b, :frames, : labels + 1], one.node, rtol=0, atol=1e-12)
        torch.testing.assert_close(batched.label[b, :frames, : labels + 1], one.label, rtol=0, atol=1e-12)
        assert float(batched.log_z[b]) == pytest.approx(float(one.log_z), abs=1e-12)


def test_bad_shapes_and_durations_are_refused():
    from kdstore.errors import ConfigError

    _, _, blank, label, dur = random_tables(0, 1, 4, 2, 3, (0, 1, 2))
    with pytest.raises(ValueError, match="dur_lp must be"):
        tdt_lattice_posteriors_batch(blank, label, dur[..., :2], (0, 1, 2), [4], [2])
    with pytest.raises(ConfigError, match="contain 0 and 1"):
        tdt_lattice_posteriors_batch(blank, label, dur, (1, 2, 3), [4], [2])
    with pytest.raises(ValueError, match="frame_lengths"):
        tdt_lattice_posteriors_batch(blank, label, dur, (0, 1, 2), [5], [2])
