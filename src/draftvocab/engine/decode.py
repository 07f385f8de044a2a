"""Speculative decoding: the generation loop (draft, verify, keep the target's KV cache
consistent after partial acceptance) and EAGLE-3's chain or dynamic-tree drafting.

Greedy decoding is lossless: the output is the target's own greedy output, token for token.
Sampling uses standard speculative (rejection) sampling (`verify.py`): a chain, or a tree
whose siblings are i.i.d. draws verified by multi-round rejection (SpecInfer). Without a draft
the same loop is plain target decoding, the baseline benchmarks compare against. One sequence
at a time; token ids in, token ids out — tokenisation and chat templates are the caller's.
`decoder_for` asks the drafter for its decoder (`Drafter.decoder`): a SpecBlock drafter's
drafting is `blockdecode.py`'s, with this loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.lookup import lookup
from draftvocab.engine.treedraft import draft_tree, draft_tree_sampled
from draftvocab.engine.verify import DraftNode, greedy, sampling_probs, verify


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
    lookup_rounds: int = 0  # rounds that verified tokens copied from the context (lookup.py)

    @property
    def mean_accept_length(self) -> float:
        """Spec-Bench's τ: generated tokens per target forward (decode phase)."""
        return sum(self.accept_lengths) / max(len(self.accept_lengths), 1)


@dataclass
class DecodeOptions:
    """Every decoder knob; a drafter's decoder reads the ones that apply to it (EAGLE-3: tree,
    depth, topk, total_tokens, gamma, adaptive; SpecBlock: tree, total_tokens, blocks, width,
    branch, policy, bandit)."""

    tree: bool = True
    depth: int = 6
    topk: int = 8
    total_tokens: int = 32
    gamma: int = 5
    blocks: int = 2
    width: int = 2
    branch: int = 4
    policy: str | None = None
    bandit: Any = None  # bandit.BudgetBandit
    adaptive: bool = False
    lookup: int = 0  # EAGLE-3 / plain: up to this many context-copied tokens a round (0 = off)


def _keep_cache(cache, prefix: int, kept: list[int]) -> None:
    """Keep positions < `prefix` and `prefix + kept` (ascending) in every layer of a
    DynamicCache. Moves the few kept rows in place and crops to a view: re-indexing the whole
    cache every step cost ~5 % of decode time on CPU."""
    end = prefix + len(kept)
    moved = kept != list(range(len(kept)))
    if not moved and all(layer.keys.shape[-2] == end for layer in cache.layers):
        return  # every node kept: nothing to cut
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

    proposes = "step"  # the drafting API _propose() drives (Drafter.proposes)

    def __init__(self, target, draft=None, *, tree: bool = True, depth: int = 6,
                 topk: int = 8, total_tokens: int = 32, gamma: int = 5,
                 adaptive: bool = False, lookup: int = 0):
        if draft is not None:
            if draft.proposes != self.proposes:
                raise DraftVocabError(
                    "a SpecBlock draft needs blockdecode.SpecBlockDecoder and an EAGLE-3 draft "
                    "SpeculativeDecoder (decode.decoder_for picks the right one)")
            draft.check_fits(target)
            k = draft.config.draft_vocab_size
            self._draft_ids = draft.to_target_ids(torch.arange(k, device=draft.d2t.device))
        if min(depth, topk, total_tokens, gamma) < 1 or lookup < 0:
            raise DraftVocabError("depth, topk, total_tokens and gamma must be >= 1, "
                                  "lookup >= 0")
        # Rejected rows are cut out of the cache by position (_keep_cache): full attention only.
        kinds = {type(layer).__name__ for layer in target.new_cache().layers}
        if kinds - {"DynamicLayer", "SlabLayer"}:
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
        # lookup: greedy rounds whose context offers a continuation verify that instead of
        # drafting (lookup.py); plain decoding with it is exact prompt-lookup decoding
        self.lookup = lookup

    @classmethod
    def from_options(cls, target, draft, options: DecodeOptions) -> SpeculativeDecoder:
        o = options
        return cls(target, draft, tree=o.tree, depth=o.depth, topk=o.topk,
                   total_tokens=o.total_tokens, gamma=o.gamma, adaptive=o.adaptive,
                   lookup=o.lookup)

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
        out = self.target.forward(torch.tensor([prompt], device=dev), last_logits=True)
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
            copied = (lookup(tokens, num=self.lookup)
                      if self.lookup and self._sampling is None else [])
            if not copied:
                self._chain = self.length.choose() if self.length is not None else self.gamma
            if copied:
                # a lookup round; the draft sees its features at its next catch-up
                nodes = [DraftNode(t, i - 1, i + 1) for i, t in enumerate(copied)]
                t0 = time.perf_counter()
                new, kept_nodes, out = self._verify(nodes, tokens[-1], n, cache)
                res.target_seconds += time.perf_counter() - t0
                res.drafted_tokens += len(nodes)
                res.lookup_rounds += 1
                cache = out.past_key_values
                _keep_cache(cache, n + 1, kept_nodes)
                if self.draft is not None:
                    rows = torch.tensor([0, *(1 + i for i in kept_nodes)], device=dev)
                    feats = torch.cat([feats, out.hidden[0].index_select(0, rows)])
            elif self.draft is not None and self._chain == 0:
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

    def _propose(self, feats, tokens, pending_from: int, n: int) -> list[DraftNode]:
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
            return greedy(logits)
        temperature, top_p, gen = self._sampling
        probs = sampling_probs(logits, temperature, top_p)
        return int(torch.multinomial(probs.cpu(), 1, generator=gen))

    def _catch_up(self, feats, tokens, pending_from, dk, dv):
        """Feed the draft the real-feature pairs (f_t, x_{t+1}) it has not seen yet."""
        d = self.draft
        dev = self.target.device
        m = feats.shape[0]
        n_prev = 0 if dk is None else dk.shape[2]  # == pending_from: drafting never extends dk
        ids = torch.tensor([tokens[pending_from + 1: pending_from + 1 + m]], device=dev)
        pos = torch.arange(pending_from, pending_from + m, device=dev)[None]
        mask = None  # one pair sees every key
        if m > 1:
            mask = torch.ones(m, n_prev + m, dtype=torch.bool, device=dev)
            mask[:, n_prev:] = torch.ones(m, m, dtype=torch.bool, device=dev).tril()
            mask = mask[None, None]
        hidden = d.fuse(feats[None].to(d.fc.weight.dtype))
        # only the last pair's logits are drafted from: the LM head over the whole prompt (the
        # first catch-up) was most of a request's drafting time
        last = torch.zeros(1, m, dtype=torch.bool, device=dev)
        last[0, -1] = True
        logits, h, k, v = d.step(hidden, ids, pos, dk, dv, mask, rows=last)
        self.draft_forwards += 1
        dk = k if dk is None else torch.cat([dk, k], dim=2)
        dv = v if dv is None else torch.cat([dv, v], dim=2)
        return dk, dv, h[:, -1:], logits[-1]

    def _draft_chain(self, dk, dv, h_last, logits, n) -> list[DraftNode]:
        """gamma tokens (this round's `_chain`), each the draft's pick given the previous ones
        (root = x_n)."""
        d = self.draft
        dev = self.target.device
        nodes: list[DraftNode] = []
        ck = cv = None
        h = h_last
        for j in range(1, self._chain + 1):
            if self._sampling is None:
                draft_id = greedy(logits)
                q = None
            else:
                temperature, _, gen = self._sampling
                q = torch.softmax(logits.float() / temperature, dim=-1)
                draft_id = int(torch.multinomial(q.cpu(), 1, generator=gen))
            token = int(d.to_target_ids(torch.tensor(draft_id, device=dev)))
            nodes.append(DraftNode(token, len(nodes) - 1, j, q=q))
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

    def _draft_tree(self, dk, dv, h_last, logits, n) -> list[DraftNode]:
        nodes, forwards = draft_tree(self.draft, dk, dv, h_last, logits, n, max_depth=self.depth,
                                     topk=self.topk, total_tokens=self.total_tokens,
                                     device=self.target.device)
        self.draft_forwards += forwards
        return nodes

    def _draft_tree_sampled(self, dk, dv, h_last, logits, n) -> list[DraftNode]:
        temperature, _, gen = self._sampling
        nodes, forwards = draft_tree_sampled(
            self.draft, dk, dv, h_last, logits, n, max_depth=self.depth, topk=self.topk,
            total_tokens=self.total_tokens, temperature=temperature, generator=gen,
            device=self.target.device)
        self.draft_forwards += forwards
        return nodes

    def _verify(self, nodes: list[DraftNode], pending: int, n: int, cache):
        return verify(self.target, nodes, pending, n, cache, self._sampling,
                      getattr(self, "_draft_ids", None))


def decoder_for(target, draft=None, *, tree: bool = True, depth: int = 6, topk: int = 8,
                total_tokens: int = 32, gamma: int = 5, blocks: int = 2, width: int = 2,
                branch: int = 4, policy: str | None = None, bandit=None,
                adaptive: bool = False, lookup: int = 0) -> SpeculativeDecoder:
    """The decoder a draft needs (`draft.decoder`), or plain decoding without one.

    >>> decoder_for(target, load_draft("runs/draft", target), gamma=4).generate(ids, 128)
    """
    options = DecodeOptions(tree=tree, depth=depth, topk=topk, total_tokens=total_tokens,
                            gamma=gamma, blocks=blocks, width=width, branch=branch,
                            policy=policy, bandit=bandit, adaptive=adaptive, lookup=lookup)
    if draft is None:
        return SpeculativeDecoder.from_options(target, None, options)
    dec = draft.decoder(target, options)
    if lookup and getattr(dec, "lookup", 0) != lookup:
        raise DraftVocabError("lookup rounds need an EAGLE-3 draft (or none): this draft's "
                              "decoder drafts blocks")
    return dec
