"""EAGLE-2 dynamic draft trees from a step drafter (EAGLE-3's `step`): the greedy tree (best
cumulative draft log-probs, pruned to a node budget) and the sampling tree (i.i.d. siblings,
nothing pruned after drawing, as multi-round rejection needs). Plain functions of the draft and
its cache; the loop that calls them and verifies the tree is `decode.py`'s.
"""

from __future__ import annotations

import torch

from draftvocab.engine.verify import DraftNode


def draft_tree(d, dk, dv, h_last, logits, n: int, *, max_depth: int, topk: int, total_tokens: int,
               device) -> tuple[list[DraftNode], int]:
    """EAGLE-2 dynamic tree: per depth, expand the `topk` best frontier nodes (by cumulative
    draft log-prob) in one draft forward, each into its `topk` best children; finally keep
    the `total_tokens` best nodes overall. Bookkeeping is vectorised per depth."""
    dev, kk, forwards = device, topk, 0
    logp = torch.log_softmax(logits.float(), -1)
    top = logp.topk(min(kk, logp.shape[-1]))
    # All candidate nodes, per depth: target token, cumulative score, global parent index.
    tokens = [d.to_target_ids(top.indices)]
    scores = [top.values]
    parents = [torch.full_like(top.indices, -1)]
    frontier = torch.arange(top.indices.shape[0], device=dev)  # global indices
    f_hidden = h_last.expand(1, frontier.shape[0], -1)
    anc = torch.zeros(frontier.shape[0], 0, dtype=torch.bool, device=dev)  # over expanded
    keys, values = [dk], [dv]
    prefix = dk.shape[2]
    offset = 0  # global index of the first node of the current depth
    for depth in range(1, max_depth):
        f = frontier.shape[0]
        all_tokens = torch.cat(tokens)
        ids = all_tokens[frontier][None]
        pos = torch.full((1, f), n - 1 + depth, device=dev)
        expanded = anc.shape[1]
        mask = torch.zeros(f, prefix + expanded + f, dtype=torch.bool, device=dev)
        mask[:, :prefix] = True
        mask[:, prefix:prefix + expanded] = anc
        mask[:, prefix + expanded:] = torch.eye(f, dtype=torch.bool, device=dev)
        out_logits, h, k, v = d.step(f_hidden, ids, pos, torch.cat(keys, 2),
                                     torch.cat(values, 2), mask[None, None])
        forwards += 1
        keys.append(k)
        values.append(v)
        anc = torch.cat([anc, torch.eye(f, dtype=torch.bool, device=dev)], dim=1)
        logp = torch.log_softmax(out_logits[0].float(), -1)
        top = logp.topk(min(kk, logp.shape[-1]), dim=-1)  # [f, kk]
        all_scores = torch.cat(scores)
        cand_scores = (all_scores[frontier][:, None] + top.values).flatten()
        offset += tokens[-1].shape[0]
        tokens.append(d.to_target_ids(top.indices).flatten())
        scores.append(cand_scores)
        parents.append(frontier.repeat_interleave(top.indices.shape[1]))
        if depth == max_depth - 1:
            break
        best = cand_scores.topk(min(kk, cand_scores.shape[0])).indices
        rows = best // top.indices.shape[1]  # which frontier node each came from
        frontier = offset + best
        f_hidden = h[:, rows]
        anc = anc[rows]
    all_tokens, all_scores = torch.cat(tokens), torch.cat(scores)
    all_parents = torch.cat(parents)
    depths = torch.cat([torch.full_like(t, i + 1) for i, t in enumerate(tokens)])
    # Best total_tokens by score (a child never outscores its parent; ties go to the
    # shallower node), then ordered by depth for the verify input.
    par, tok, dep = all_parents.tolist(), all_tokens.tolist(), depths.tolist()
    sc = all_scores.tolist()
    order = sorted(range(len(tok)), key=lambda i: (-sc[i], dep[i], i))
    chosen = sorted(order[: total_tokens], key=lambda i: (dep[i], i))
    index = {old: new for new, old in enumerate(chosen)}
    out = []
    for i in chosen:
        p = par[i]
        assert p < 0 or p in index, "a chosen node's parent was not chosen"
        out.append(DraftNode(tok[i], index[p] if p >= 0 else -1, dep[i]))
    return out, forwards


def draft_tree_sampled(d, dk, dv, h_last, logits, n: int, *, max_depth: int, topk: int,
                       total_tokens: int, temperature: float, generator,
                       device) -> tuple[list[DraftNode], int]:
    """Sampling tree: every expanded node gets `topk` children drawn i.i.d. from its draft
    distribution. Multi-round rejection is lossless only for i.i.d. siblings, so nothing is
    pruned after drawing: which nodes are expanded (the best cumulative draft log-probs) and
    how many fit in `total_tokens` is decided before their children are drawn."""
    dev, kk, gen, forwards = device, topk, generator, 0

    def draw(lg):  # [f, k_draft] -> q [f, k_draft], draft ids [f, kk]
        q = torch.softmax(lg.float() / temperature, dim=-1)
        ids = torch.multinomial(q.cpu(), kk, replacement=True, generator=gen).to(dev)
        return q, ids

    q, ids = draw(logits[None])
    q_root = q[0]
    nodes = [DraftNode(t, -1, 1, q=q_root) for t in d.to_target_ids(ids[0]).tolist()]
    level = list(range(kk))  # node indices of the newest depth
    scores = q.gather(1, ids).log().flatten()  # cumulative draft log-prob per level node
    level_ids, level_hidden = ids.flatten(), h_last.expand(1, kk, -1)
    anc = torch.zeros(kk, 0, dtype=torch.bool, device=dev)  # ancestors among expanded
    keys, values, prefix = [dk], [dv], dk.shape[2]
    for depth in range(1, max_depth):
        width = min(kk, len(level), (total_tokens - len(nodes)) // kk)
        if width < 1:
            break
        pick = scores.topk(width).indices
        expanded = anc.shape[1]
        mask = torch.zeros(width, prefix + expanded + width, dtype=torch.bool, device=dev)
        mask[:, :prefix] = True
        mask[:, prefix:prefix + expanded] = anc[pick]
        mask[:, prefix + expanded:] = torch.eye(width, dtype=torch.bool, device=dev)
        pos = torch.full((1, width), n - 1 + depth, device=dev)
        tokens = d.to_target_ids(level_ids[pick])[None]
        out_logits, h, k, v = d.step(level_hidden[:, pick], tokens, pos, torch.cat(keys, 2),
                                     torch.cat(values, 2), mask[None, None])
        forwards += 1
        keys.append(k)
        values.append(v)
        q, ids = draw(out_logits[0])
        targets = d.to_target_ids(ids).tolist()
        new_level = []
        for r, parent in enumerate(pick.tolist()):
            q_r = q[r]  # one object per sibling group: verify() maps it to target ids once
            for t in targets[r]:
                nodes.append(DraftNode(t, level[parent], depth + 1, q=q_r))
                new_level.append(len(nodes) - 1)
        level = new_level
        scores = (scores[pick][:, None] + q.gather(1, ids).log()).flatten()
        level_ids = ids.flatten()
        rows = torch.arange(width, device=dev).repeat_interleave(kk)
        level_hidden = h[:, rows]
        anc = torch.cat([anc[pick], torch.eye(width, dtype=torch.bool, device=dev)],
                        dim=1)[rows]
    return nodes, forwards
