"""Speculative decoding with a SpecBlock drafter: the draft tree grows by block expansions.

Each round: one drafter forward feeds the new real rows (the accepted tokens' target features)
and, in the same call, the K-1 query rows of block 1 anchored at the last real row; its K rows
predict depths 1..K. Later blocks (up to `blocks`) start from the best leaves of the previous
block (cross-block inheritance), `width` anchors per block, all in one forward. Per row the
policy decides what goes to the verifier:

- "rank": the rank head's class probabilities of the correct token (rank 1 / 2-4 / 5-10 /
  > 10), chained along the path (the head is trained on valid prefixes only, so it is
  conditional on the earlier rows being right). With `reach` = P(the path so far is right):
  terminate when reach x P(rank <= 10) < `min_gain` (expected tokens not worth a verify
  slot); branch — add the next `branch - 1` candidates as siblings, leaves a later block may
  extend — when reach x P(2 <= rank <= 10) >= `min_gain`; otherwise continue with the top-1.
  A later block runs only from leaves whose P(path right) >= `min_gain`, best first.
- "fixed": every row adds its top-`branch` (a fixed top-k tree, the rank head's ablation).
- "chain": top-1 only (branch 1), never stops early.

Verification, KV-cache bookkeeping and losslessness are decode.py's and verify.py's (any tree
of target ids); `SpecBlockDraft.decoder` builds this decoder.
Sampling uses chain drafting with each row's token drawn from its draft distribution; rows of a
block do not see the drawn tokens of earlier rows, only the hidden path, which keeps each draw
a valid proposal for rejection sampling.
"""

from __future__ import annotations

import math

import torch

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.decode import SpeculativeDecoder
from draftvocab.engine.verify import DraftNode

POLICIES = ("rank", "fixed", "chain")


class SpecBlockDecoder(SpeculativeDecoder):
    """>>> dec = SpecBlockDecoder(target, specblock_draft, blocks=2, policy="rank")
    >>> dec.generate(prompt_ids, 128).tokens

    `bandit` (bandit.BudgetBandit) picks (blocks, branch) per round from the verifier's
    feedback; `draft_forwards` counts drafter calls of the last generate().
    """

    proposes = "block"  # drives SpecBlockDraft.run (Drafter.proposes)

    def __init__(self, target, draft, *, blocks: int = 2, width: int = 2, branch: int = 4,
                 policy: str = "rank", total_tokens: int = 32, min_gain: float = 0.1,
                 bandit=None):
        super().__init__(target, draft, tree=True, total_tokens=total_tokens)
        if policy not in POLICIES:
            raise DraftVocabError(f"policy must be one of {', '.join(POLICIES)}, got {policy}")
        if policy == "rank" and getattr(draft, "rank_head", None) is None:
            raise DraftVocabError("this SpecBlock draft has no rank head: use policy fixed or "
                                  "chain")
        if min(blocks, width, branch) < 1:
            raise DraftVocabError("blocks, width and branch must be >= 1")
        self.blocks, self.width, self.branch, self.policy = blocks, width, branch, policy
        self.min_gain = min_gain
        self.bandit = bandit
        self._arm = None

    def _reset_draft(self) -> None:
        self._ctx = None  # per layer (k, v) of the real rows
        self.draft_forwards = 0

    def _observe(self, accepted: int, seconds: float) -> None:
        if self.bandit is not None and self._arm is not None:
            self.bandit.update(self._arm, accepted, seconds)

    # -- drafting ----------------------------------------------------------------------------

    def _propose(self, feats, tokens, pending_from: int, n: int) -> list[DraftNode]:
        d = self.draft
        dev = self.target.device
        blocks, branch = self.blocks, self.branch
        if self.bandit is not None:
            self._arm = self.bandit.select()
            blocks, branch = self.bandit.arms[self._arm]
        if self._sampling is not None or self.policy == "chain":
            branch = 1
        kk = d.config.block_size
        m = feats.shape[0]
        s = 0 if self._ctx is None else self._ctx[0][0].shape[2]
        dtype = d.fc.weight.dtype
        fused = d.fuse(feats[None].to(dtype))  # [1, m, d]
        root_hidden = fused[:, -1:]
        ids = torch.tensor([tokens[pending_from + 1: pending_from + 1 + m]], device=dev)
        q_rows = kk - 1
        hidden = torch.cat([fused, root_hidden.expand(1, q_rows, -1)], dim=1)
        embeds = torch.cat([d.embed(ids, dtype)] + [d.query(j, (1, 1)).to(dtype)
                                                    for j in range(1, kk)], dim=1)
        pos = torch.cat([torch.arange(pending_from, pending_from + m, device=dev),
                         torch.arange(n, n + q_rows, device=dev)])[None]
        src = torch.cat([torch.full((m,), -1, device=dev),
                         torch.arange(m - 1, m - 1 + q_rows, device=dev)])
        r = m + q_rows
        mask = torch.ones(r, s + r, dtype=torch.bool, device=dev)
        mask[:, s:] = torch.ones(r, r, dtype=torch.bool, device=dev).tril()
        out, kvs = d.run(hidden, embeds, pos, src, self._ctx, mask[None, None])
        self.draft_forwards += 1
        real = [(k[:, :, :m], v[:, :, :m]) for k, v in kvs]
        self._ctx = real if self._ctx is None else [
            (torch.cat([ck, k], 2), torch.cat([cv, v], 2))
            for (ck, cv), (k, v) in zip(self._ctx, real, strict=True)]
        # Tree rows (keys beyond the context) so far: block 1's query rows.
        tree_kv = [(kv[0][:, :, m:], kv[1][:, :, m:]) for kv in kvs]
        h_block = out[0, m - 1:]  # [K, d]: block 1's rows
        # Ancestors of block-1 row j among tree rows: query rows 1..j (row 0 is a real row).
        anc = torch.ones(kk, q_rows, dtype=torch.bool, device=dev).tril(-1)
        nodes: list[DraftNode] = []
        scores: list[float] = []
        node_rows: list[tuple[torch.Tensor, torch.Tensor]] = []  # (hidden, ancestors) per node
        leaves = self._expand(h_block[None], anc[None], [-1], [0.0], nodes, scores, node_rows,
                              branch)
        for _ in range(1, blocks):
            if not leaves or len(nodes) >= self.total_tokens:
                break
            if self.policy == "rank" and self._sampling is None:
                # another drafter forward only for paths likely enough to be right
                leaves = [i for i in leaves if math.exp(scores[i]) >= self.min_gain]
                if not leaves:
                    break
            leaves.sort(key=lambda i: -scores[i])
            anchors = leaves[: self.width]
            f = len(anchors)
            a_hidden = torch.stack([node_rows[i][0] for i in anchors])  # [f, d]
            if not d.config.inherit:
                a_hidden = root_hidden[0].expand(f, -1)
            a_anc = torch.stack([node_rows[i][1] for i in anchors])  # [f, t]
            a_ids = torch.tensor([[nodes[i].token for i in anchors]], device=dev)
            hidden = a_hidden[:, None].expand(f, kk, -1).reshape(1, f * kk, -1)
            first = d.embed(a_ids, dtype)[0]  # [f, d]
            embeds = torch.stack([first] + [d.query(j, (f,)).to(dtype) for j in range(1, kk)],
                                 dim=1).reshape(1, f * kk, -1)
            depth = torch.tensor([nodes[i].depth for i in anchors], device=dev)
            pos = (n - 1 + depth[:, None] + torch.arange(kk, device=dev)).reshape(1, -1)
            src = torch.arange(f * kk, device=dev) - 1
            src[::kk] = -1
            own = torch.block_diag(*[torch.ones(kk, kk, device=dev).tril()] * f).bool()
            rows_anc = a_anc.repeat_interleave(kk, dim=0)  # [f*kk, t]
            mask = torch.cat([torch.ones(f * kk, s + m, dtype=torch.bool, device=dev),
                              rows_anc, own], dim=1)
            past = [(torch.cat([c[0], tk[0]], 2), torch.cat([c[1], tk[1]], 2))
                    for c, tk in zip(self._ctx, tree_kv, strict=True)]
            out, kvs = d.run(hidden, embeds, pos, src, past, mask[None, None])
            self.draft_forwards += 1
            tree_kv = [(torch.cat([tk[0], kv[0]], 2), torch.cat([tk[1], kv[1]], 2))
                       for tk, kv in zip(tree_kv, kvs, strict=True)]
            # Ancestors of each new row: its anchor's, then its own block's rows 0..j.
            new_anc = torch.cat([rows_anc, own], dim=1)
            node_rows = [(h, torch.cat([a, a.new_zeros(f * kk)])) for h, a in node_rows]
            leaves = self._expand(out[0].view(f, kk, -1), new_anc.view(f, kk, -1), anchors,
                                  [scores[i] for i in anchors], nodes, scores, node_rows, branch)
        return nodes

    def _expand(self, h, anc, parents, base_scores, nodes, scores, node_rows, branch
                ) -> list[int]:
        """Turn F blocks' rows (h [F, K, d], ancestors [F, K, t]) into nodes under their
        anchors; returns the new leaves a later block may extend."""
        d = self.draft
        logits = d.logits(h)  # [F, K, k]
        logp = torch.log_softmax(logits.float(), -1)
        top = logp.topk(min(branch, logp.shape[-1]), dim=-1)
        probs = (torch.softmax(d.rank_logits(h, logits).float(), -1).tolist()
                 if self.policy == "rank" else None)
        ids = d.to_target_ids(top.indices).tolist()
        vals = top.values.tolist()
        leaves: list[int] = []
        f_n, kk = h.shape[0], h.shape[1]
        for f in range(f_n):
            # score: cumulative draft log-prob, or (rank policy) log P(the path is right)
            parent, score = parents[f], base_scores[f]
            for j in range(kk):
                if len(nodes) >= self.total_tokens:
                    return leaves
                width, sibling = 1, None
                if self.policy == "fixed":
                    width = len(ids[f][j])
                elif probs is not None:
                    reach = math.exp(score)
                    p1, p4, p10, _ = probs[f][j]
                    if reach * (p1 + p4 + p10) < self.min_gain:
                        break  # terminate: expected tokens from here are not worth a slot
                    if reach * (p4 + p10) >= self.min_gain:
                        width = len(ids[f][j])  # branch: the right token is likely 2nd-10th
                        sibling = math.log(max(reach * (p4 + p10) / max(width - 1, 1), 1e-30))
                    spine_score = math.log(max(reach * p1, 1e-30))
                depth = 1 if parent < 0 else nodes[parent].depth + 1
                row = (h[f, j], anc[f, j])
                if self._sampling is not None:
                    temperature, _, gen = self._sampling
                    q = torch.softmax(logits[f, j].float() / temperature, -1)
                    draft_id = torch.multinomial(q.cpu(), 1, generator=gen).to(q.device)
                    token = int(d.to_target_ids(draft_id))
                    nodes.append(DraftNode(token, parent, depth, q=q))
                    scores.append(score)
                    node_rows.append(row)
                    parent = len(nodes) - 1
                    continue
                spine = len(nodes)
                for c in range(min(width, self.total_tokens - len(nodes))):
                    nodes.append(DraftNode(ids[f][j][c], parent, depth))
                    if probs is None:
                        scores.append(score + vals[f][j][c])
                    else:
                        scores.append(spine_score if c == 0 else sibling)
                    node_rows.append(row)
                    if c > 0:
                        leaves.append(len(nodes) - 1)
                parent, score = spine, scores[spine]
            else:
                if parent != parents[f]:
                    leaves.append(parent)  # the path ran the whole block: extend its end
        return leaves
