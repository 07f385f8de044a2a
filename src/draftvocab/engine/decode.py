"""Speculative decoding with an EAGLE-3 draft: chain or dynamic-tree drafting, one target forward
to verify, the target's KV cache kept consistent after partial acceptance.

Greedy decoding is lossless: the output is the target's own greedy output, token for token.
Sampling uses standard speculative (rejection) sampling with the draft distribution mapped to
target ids through d2t, so outputs follow the target's distribution: a chain, or a tree whose
siblings are i.i.d. draws verified by multi-round rejection (SpecInfer). Without a draft the same loop is plain
target decoding, the baseline benchmarks compare against. One sequence at a time; token ids in,
token ids out — tokenisation and chat templates are the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.draft import check_fits, is_specblock


@dataclass
class GenerationResult:
    tokens: list[int]  # generated ids (prompt excluded), eos included if hit
    accept_lengths: list[int] = field(default_factory=list)  # tokens gained per target forward
    target_forwards: int = 0
    draft_seconds: float = 0.0
    target_seconds: float = 0.0  # prefill included
    prefill_seconds: float = 0.0
    seconds: float = 0.0
    drafted_tokens: int = 0  # draft tokens sent to the verifier (tree nodes or chain links)
    stopped: bool = False  # ended by the `on_tokens` callback (a stop string, a gone client)
    draft_forwards: int = 0  # drafter calls (catch-up included)

    @property
    def mean_accept_length(self) -> float:
        """Spec-Bench's τ: generated tokens per target forward (decode phase)."""
        return sum(self.accept_lengths) / max(len(self.accept_lengths), 1)


@dataclass
class _Node:
    """A drafted token to verify; nodes are listed parents first."""

    token: int  # target id
    parent: int  # index into the node list, -1 = root (the pending token x_n)
    depth: int  # 1 = child of the root
    q: torch.Tensor | None = None  # draft distribution over draft ids (sampling)


def _sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # smallest set reaching top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def _keep_cache(cache, prefix: int, kept: list[int]) -> None:
    """Keep positions < `prefix` and `prefix + kept` (ascending) in every layer of a
    DynamicCache. Moves the few kept rows in place and crops to a view: re-indexing the whole
    cache every step cost ~5 % of decode time on CPU."""
    end = prefix + len(kept)
    moved = kept != list(range(len(kept)))
    idx = torch.tensor(kept, dtype=torch.long) + prefix
    for layer in cache.layers:
        if moved:
            idx = idx.to(layer.keys.device)
            layer.keys[..., prefix:end, :] = layer.keys.index_select(-2, idx)
            layer.values[..., prefix:end, :] = layer.values.index_select(-2, idx)
        layer.keys = layer.keys[..., :end, :]
        layer.values = layer.values[..., :end, :]


class SpeculativeDecoder:
    """Generate with a target and (optionally) an EAGLE-3 draft.

    >>> dec = SpeculativeDecoder(target, draft, tree=True)
    >>> res = dec.generate(prompt_ids, max_new_tokens=128)
    >>> res.tokens, res.mean_accept_length
    """

    drafts_blocks = False  # which drafter kind _propose() drives (SpecBlockDecoder: True)

    def __init__(self, target, draft=None, *, tree: bool = True, depth: int = 6,
                 topk: int = 8, total_tokens: int = 32, gamma: int = 5,
                 adaptive: bool = False):
        if draft is not None:
            if is_specblock(draft.config) != self.drafts_blocks:
                raise DraftVocabError(
                    "a SpecBlock draft needs blockdecode.SpecBlockDecoder and an EAGLE-3 draft "
                    "SpeculativeDecoder (blockdecode.decoder_for picks the right one)")
            check_fits(draft.config, target)
            k = draft.config.draft_vocab_size
            self._draft_ids = draft.to_target_ids(torch.arange(k, device=draft.d2t.device))
        if min(depth, topk, total_tokens, gamma) < 1:
            raise DraftVocabError("depth, topk, total_tokens and gamma must be >= 1")
        # Rejected rows are cut out of the cache by position (_keep_cache): full attention only.
        kinds = {type(layer).__name__ for layer in target.new_cache().layers}
        if kinds - {"DynamicLayer"}:
            raise DraftVocabError(f"speculative decoding here needs full-attention KV caches; "
                                  f"this target uses {sorted(kinds)}")
        self.target, self.draft = target, draft
        self.tree, self.depth, self.topk = tree, depth, topk
        self.total_tokens, self.gamma = total_tokens, gamma
        self.eos = set(target.stop_ids)
        # adaptive: the chain length of each round (up to gamma; 0 = a plain step) is chosen
        # from measured costs and recent acceptance, learnt across requests (draftlength.py)
        self.length = None
        if adaptive:
            if tree or draft is None:
                raise DraftVocabError("an adaptive draft length needs a draft and chain "
                                      "drafting (--chain)")
            from draftvocab.engine.draftlength import AdaptiveLength

            self.length = AdaptiveLength(max_gamma=gamma)
        self._chain = gamma

    # -- public -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int = 128, *, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True,
                 on_tokens: Callable[[list[int]], bool | None] | None = None
                 ) -> GenerationResult:
        """Generate up to `max_new_tokens` after `prompt_ids` (stopping at the target's stop
        ids). `on_tokens`, if given, receives each round's new tokens as they are accepted
        (streaming); returning True ends generation there."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise DraftVocabError("empty prompt")
        if len(prompt) + max_new_tokens > self.target.max_length:
            raise DraftVocabError(
                f"prompt of {len(prompt)} tokens + {max_new_tokens} new tokens exceeds the "
                f"target's context of {self.target.max_length}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise DraftVocabError("temperature must be >= 0 and top_p in (0, 1]")
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else seed)
        self._sampling = (temperature, top_p, gen) if temperature > 0 else None
        res = GenerationResult(tokens=[])
        start = time.perf_counter()

        dev = self.target.device
        t0 = time.perf_counter()
        out = self.target.forward(torch.tensor([prompt], device=dev))
        first = self._pick(out.logits[0, -1])  # int(): waits for the device, so timed right
        res.prefill_seconds = time.perf_counter() - t0
        res.target_seconds += res.prefill_seconds
        cache = out.past_key_values
        tokens = [*prompt, first]
        res.tokens.append(first)
        if on_tokens is not None and on_tokens([first]):
            res.stopped = True
        # Draft state: real-feature pairs not yet in its cache start at `pending_from`.
        feats = out.hidden[0]  # features of positions pending_from .. len(tokens)-2
        pending_from = 0
        self._reset_draft()

        while (len(res.tokens) < max_new_tokens and not res.stopped
               and not (stop_at_eos and res.tokens[-1] in self.eos)):
            n = len(tokens) - 1  # position of the pending token x_n (not in the target cache)
            self._chain = self.length.choose() if self.length is not None else self.gamma
            if self.draft is not None and self._chain == 0:
                # a plain step; the draft sees its features at its next catch-up
                t0 = time.perf_counter()
                new, _, out = self._verify([], tokens[-1], n, cache)
                seconds = time.perf_counter() - t0
                res.target_seconds += seconds
                self.length.observe(0, 0, seconds)
                cache = out.past_key_values
                feats = torch.cat([feats, out.hidden[0, :1]])
            elif self.draft is None:
                t0 = time.perf_counter()
                out = self.target.forward(torch.tensor([[tokens[-1]]], device=dev), past=cache)
                new = [self._pick(out.logits[0, -1])]
                res.target_seconds += time.perf_counter() - t0
                cache = out.past_key_values
            else:
                t0 = time.perf_counter()
                nodes = self._propose(feats, tokens, pending_from, n)
                draft_s = time.perf_counter() - t0
                res.drafted_tokens += len(nodes)
                t0 = time.perf_counter()
                new, kept_nodes, out = self._verify(nodes, tokens[-1], n, cache)
                verify_s = time.perf_counter() - t0
                res.draft_seconds += draft_s
                res.target_seconds += verify_s
                self._observe(len(new), draft_s + verify_s)
                cache = out.past_key_values
                # Keep x_n and the accepted nodes in the target cache; rejected ones go.
                _keep_cache(cache, n + 1, kept_nodes)
                rows = torch.tensor([0, *(1 + i for i in kept_nodes)], device=dev)
                feats = out.hidden[0].index_select(0, rows)
                pending_from = n
            res.target_forwards += 1
            room = max_new_tokens - len(res.tokens)
            if stop_at_eos:
                for i, t in enumerate(new):
                    if t in self.eos:
                        new = new[: i + 1]
                        break
            new = new[:room]
            res.accept_lengths.append(len(new))
            tokens += new
            res.tokens += new
            if on_tokens is not None and new and on_tokens(new):
                res.stopped = True
        res.seconds = time.perf_counter() - start
        res.draft_forwards = self.draft_forwards
        return res

    # -- pieces -----------------------------------------------------------------------------

    def _reset_draft(self) -> None:
        self._dk = self._dv = None  # draft cache [1, KV, S, D]
        self.draft_forwards = 0

    def _propose(self, feats, tokens, pending_from: int, n: int) -> list[_Node]:
        """The nodes to verify after x_n; `feats` are the target features of positions
        pending_from .. n-1, which the draft has not seen yet."""
        self._dk, self._dv, h_last, logits_last = self._catch_up(
            feats, tokens, pending_from, self._dk, self._dv)
        dk, dv = self._dk, self._dv
        if self.tree and self._sampling is None:
            return self._draft_tree(dk, dv, h_last, logits_last, n)
        if self.tree:
            return self._draft_tree_sampled(dk, dv, h_last, logits_last, n)
        return self._draft_chain(dk, dv, h_last, logits_last, n)

    def _observe(self, accepted: int, seconds: float) -> None:
        """Verifier feedback of one round (tokens gained, draft + verify seconds); a hook for
        adaptive drafters."""
        if self.length is not None:
            self.length.observe(self._chain, accepted - 1, seconds)

    def _pick(self, logits: torch.Tensor) -> int:
        if self._sampling is None:
            return int(logits.argmax())
        temperature, top_p, gen = self._sampling
        probs = _sampling_probs(logits, temperature, top_p)
        return int(torch.multinomial(probs.cpu(), 1, generator=gen))

    def _catch_up(self, feats, tokens, pending_from, dk, dv):
        """Feed the draft the real-feature pairs (f_t, x_{t+1}) it has not seen yet."""
        d = self.draft
        dev = self.target.device
        m = feats.shape[0]
        n_prev = 0 if dk is None else dk.shape[2]  # == pending_from: drafting never extends dk
        ids = torch.tensor([tokens[pending_from + 1: pending_from + 1 + m]], device=dev)
        pos = torch.arange(pending_from, pending_from + m, device=dev)[None]
        mask = torch.ones(m, n_prev + m, dtype=torch.bool, device=dev)
        mask[:, n_prev:] = torch.ones(m, m, dtype=torch.bool, device=dev).tril()
        hidden = d.fuse(feats[None].to(d.fc.weight.dtype))
        logits, h, k, v = d.step(hidden, ids, pos, dk, dv, mask[None, None])
        self.draft_forwards += 1
        dk = k if dk is None else torch.cat([dk, k], dim=2)
        dv = v if dv is None else torch.cat([dv, v], dim=2)
        return dk, dv, h[:, -1:], logits[0, -1]

    def _draft_chain(self, dk, dv, h_last, logits, n) -> list[_Node]:
        """gamma tokens (this round's `_chain`), each the draft's pick given the previous ones
        (root = x_n)."""
        d = self.draft
        dev = self.target.device
        nodes: list[_Node] = []
        ck = cv = None
        h = h_last
        for j in range(1, self._chain + 1):
            if self._sampling is None:
                draft_id = int(logits.argmax())
                q = None
            else:
                temperature, _, gen = self._sampling
                q = torch.softmax(logits.float() / temperature, dim=-1)
                draft_id = int(torch.multinomial(q.cpu(), 1, generator=gen))
            token = int(d.to_target_ids(torch.tensor(draft_id, device=dev)))
            nodes.append(_Node(token, len(nodes) - 1, j, q=q))
            if j == self._chain:
                break
            pk = dk if ck is None else torch.cat([dk, ck], dim=2)
            pv = dv if cv is None else torch.cat([dv, cv], dim=2)
            logits, h, k, v = d.step(h, torch.tensor([[token]], device=dev),
                                     torch.tensor([[n - 1 + j]], device=dev), pk, pv, None)
            self.draft_forwards += 1
            logits = logits[0, -1]
            ck = k if ck is None else torch.cat([ck, k], dim=2)
            cv = v if cv is None else torch.cat([cv, v], dim=2)
        return nodes

    def _draft_tree(self, dk, dv, h_last, logits, n) -> list[_Node]:
        """EAGLE-2 dynamic tree: per depth, expand the `topk` best frontier nodes (by cumulative
        draft log-prob) in one draft forward, each into its `topk` best children; finally keep
        the `total_tokens` best nodes overall. Bookkeeping is vectorised per depth."""
        d = self.draft
        dev = self.target.device
        kk = self.topk
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
        for depth in range(1, self.depth):
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
            self.draft_forwards += 1
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
            if depth == self.depth - 1:
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
        chosen = sorted(order[: self.total_tokens], key=lambda i: (dep[i], i))
        index = {old: new for new, old in enumerate(chosen)}
        out = []
        for i in chosen:
            p = par[i]
            assert p < 0 or p in index, "a chosen node's parent was not chosen"
            out.append(_Node(tok[i], index[p] if p >= 0 else -1, dep[i]))
        return out

    def _draft_tree_sampled(self, dk, dv, h_last, logits, n) -> list[_Node]:
        """Sampling tree: every expanded node gets `topk` children drawn i.i.d. from its draft
        distribution. Multi-round rejection is lossless only for i.i.d. siblings, so nothing is
        pruned after drawing: which nodes are expanded (the best cumulative draft log-probs) and
        how many fit in `total_tokens` is decided before their children are drawn."""
        d = self.draft
        dev = self.target.device
        temperature, _, gen = self._sampling
        kk = self.topk

        def draw(lg):  # [f, k_draft] -> q [f, k_draft], draft ids [f, kk]
            q = torch.softmax(lg.float() / temperature, dim=-1)
            ids = torch.multinomial(q.cpu(), kk, replacement=True, generator=gen).to(dev)
            return q, ids

        q, ids = draw(logits[None])
        q_root = q[0]
        nodes = [_Node(t, -1, 1, q=q_root) for t in d.to_target_ids(ids[0]).tolist()]
        level = list(range(kk))  # node indices of the newest depth
        scores = q.gather(1, ids).log().flatten()  # cumulative draft log-prob per level node
        level_ids, level_hidden = ids.flatten(), h_last.expand(1, kk, -1)
        anc = torch.zeros(kk, 0, dtype=torch.bool, device=dev)  # ancestors among expanded
        keys, values, prefix = [dk], [dv], dk.shape[2]
        for depth in range(1, self.depth):
            width = min(kk, len(level), (self.total_tokens - len(nodes)) // kk)
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
            self.draft_forwards += 1
            keys.append(k)
            values.append(v)
            q, ids = draw(out_logits[0])
            targets = d.to_target_ids(ids).tolist()
            new_level = []
            for r, parent in enumerate(pick.tolist()):
                q_r = q[r]  # one object per sibling group: _verify maps it to target ids once
                for t in targets[r]:
                    nodes.append(_Node(t, level[parent], depth + 1, q=q_r))
                    new_level.append(len(nodes) - 1)
            level = new_level
            scores = (scores[pick][:, None] + q.gather(1, ids).log()).flatten()
            level_ids = ids.flatten()
            rows = torch.arange(width, device=dev).repeat_interleave(kk)
            level_hidden = h[:, rows]
            anc = torch.cat([anc[pick], torch.eye(width, dtype=torch.bool, device=dev)],
                            dim=1)[rows]
        return nodes

    def _verify(self, nodes: list[_Node], pending: int, n: int, cache):
        """One target forward over [x_n, nodes...] with a tree mask; returns the accepted new
        tokens (accepted nodes + one token from the target), their node indices, the output."""
        dev = self.target.device
        m = len(nodes) + 1
        allowed = torch.zeros(m, m, dtype=torch.bool, device=dev)
        allowed[:, 0] = True
        for r, node in enumerate(nodes, start=1):
            allowed[r, r] = True
            p = node.parent
            while p >= 0:
                allowed[r, 1 + p] = True
                p = nodes[p].parent
        dtype = self.target.dtype
        mask = torch.zeros(1, 1, m, n + m, dtype=dtype, device=dev)
        mask[..., n:].masked_fill_(~allowed, torch.finfo(dtype).min)
        ids = torch.tensor([[pending, *(x.token for x in nodes)]], device=dev)
        pos = torch.tensor([[n, *(n + x.depth for x in nodes)]], device=dev)
        out = self.target.forward(ids, past=cache, position_ids=pos, attention_mask=mask)
        logits = out.logits[0]
        children: dict[int, list[int]] = {}
        for i, node in enumerate(nodes):
            children.setdefault(node.parent, []).append(i)

        new, kept, at = [], [], -1  # at = current node (-1: root x_n); its logits row = at + 1
        if self._sampling is None:
            while True:
                want = int(logits[at + 1].argmax())
                nxt = next((c for c in children.get(at, []) if nodes[c].token == want), None)
                new.append(want)
                if nxt is None:
                    return new, kept, out
                kept.append(nxt)
                at = nxt
        # Multi-round speculative sampling (SpecInfer): try the children in order; accept x with
        # min(1, p(x)/q(x)); after a rejection p becomes norm(max(p - q, 0)); if every child is
        # rejected, draw from what is left of p.
        temperature, top_p, gen = self._sampling
        in_target: dict[int, torch.Tensor] = {}  # draft distribution -> over target ids
        p = _sampling_probs(logits[0], temperature, top_p)
        while True:
            for c in children.get(at, []):
                q_draft = nodes[c].q
                q = in_target.get(id(q_draft))
                if q is None:
                    q = torch.zeros_like(p)
                    q[self._draft_ids] = q_draft
                    in_target[id(q_draft)] = q
                tok = nodes[c].token
                if float(torch.rand(1, generator=gen)) < min(1.0, float(p[tok] / q[tok])):
                    new.append(tok)
                    kept.append(c)
                    at = c
                    p = _sampling_probs(logits[at + 1], temperature, top_p)
                    break
                residual = (p - q).clamp_min(0)
                total = residual.sum()
                p = residual / total if total > 0 else p
            else:
                new.append(int(torch.multinomial(p.cpu(), 1, generator=gen)))
                return new, kept, out
