"""Engine: the offline step loop. Requests in, token deltas out, one `step()` at a time.

Each step: the scheduler picks a batch, the runner computes logits, the sampler picks tokens,
and each request's detokenizer and stop checker turn tokens into text and decide when it ends.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from tokenfactory.engine.attention import KVCache
from tokenfactory.engine.block_manager import BlockManager
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.constraints.cache import GrammarCache
from tokenfactory.engine.constraints.masks import MaskBuilder, PendingMasks
from tokenfactory.engine.constraints.matcher import GrammarMatcher
from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.engine.constraints.vocab import grammar_tokenizer
from tokenfactory.engine.errors import ContextLengthExceededError, InvalidRequestError
from tokenfactory.engine.hardware import resolve_device
from tokenfactory.engine.model_setup import build_model, fp8_calibration_ids, kv_cache_blocks
from tokenfactory.engine.outputs import Completion, RequestOutput
from tokenfactory.engine.runner import ModelRunner
from tokenfactory.engine.sampling.logprobs import SamplerOutput, TokenLogprob
from tokenfactory.engine.sampling.pending import PendingSample
from tokenfactory.engine.sampling.sampler import Sampler
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from tokenfactory.engine.sequence import FinishReason, Sequence
from tokenfactory.engine.speculation.factory import make_proposer
from tokenfactory.engine.speculation.proposer import DraftRequest, Proposer
from tokenfactory.engine.speculation.verify import DraftRow, accepted_length, sample_rows
from tokenfactory.engine.stats import StatsLog
from tokenfactory.engine.step_inputs import TokenFill
from tokenfactory.engine.stop_checker import CONTINUE, StopChecker, StopDecision
from tokenfactory.models.config import ModelConfig
from tokenfactory.models.llama import LlamaForCausalLM
from tokenfactory.scheduling.policy import SchedulingPolicy, make_policy
from tokenfactory.scheduling.step_model import StepCoefficients
from tokenfactory.scheduling.step_stats import StepStats
from tokenfactory.tiers import ServiceTerms

if TYPE_CHECKING:
    from tokenfactory.models.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class _RequestState:
    seq: Sequence
    stop: StopChecker
    detokenizer: object | None  # IncrementalDetokenizer, absent for tokenizer-less models
    # Constrained decoding: where the output stands in its grammar (it has consumed exactly
    # seq.output_token_ids, so preemption and recompute need no replay).
    matcher: GrammarMatcher | None = None


@dataclass
class _NewTokens:
    """Tokens a step appended to one request, from output index `base` on."""

    seq: Sequence
    tokens: list[int]
    logprobs: list[TokenLogprob | None]
    base: int


@dataclass
class _LaunchedStep:
    """A step whose model work and sampling are queued; its tokens come to the host at
    `Engine._resolve`. `ahead`: its progress was advanced at launch and each sampling
    request holds a placeholder for its token (asynchronous scheduling)."""

    plan: SchedulerOutput
    sample: PendingSample | None  # None: no row sampled
    started: float
    planned: float
    ahead: bool


# Stands for a token a step in flight sampled, until it reaches the host: never a real id,
# and a decode that would read it reads the sampled id on the device (`TokenFill`).
PLACEHOLDER_TOKEN = -1

# A grammar that can take no more text ends its request as EOS would.
_GRAMMAR_COMPLETE = StopDecision(finished=True, reason=FinishReason.STOP, stop_reason=None)


class Engine:
    """A model, its KV cache, a scheduler and a sampler, driven one step at a time."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        tokenizer: Tokenizer | None,
        config: EngineConfig | None = None,
        model_name: str = "model",
        proposer: Proposer | None = None,
    ):
        """`proposer`: draft tokens for speculative decoding; None builds the one
        `config.speculation` names (none when it is None)."""
        self.config = config or EngineConfig()
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_config: ModelConfig = model.config
        self.device = model.device
        self.dtype = model.dtype
        num_blocks = kv_cache_blocks(model, self.config)
        cache = KVCache.allocate(
            self.model_config, num_blocks, self.config.block_size, self.dtype, self.device
        )
        self.num_kv_blocks = num_blocks
        self.max_model_len = min(
            self.config.max_model_len or model.rotary.max_positions, model.rotary.max_positions
        )
        self.block_manager = BlockManager(
            num_blocks, self.config.block_size, self.config.enable_prefix_caching
        )
        self.proposer = proposer or make_proposer(self.config, model, num_blocks)
        # Decode rows a step computes each exactly as alone (None: not known to hold at any
        # count); speculative drafts stay within it.
        self.max_exact_rows = model.row_exact_decode_rows()
        self.scheduler = self._make_scheduler(make_policy(self.config.policy))
        self.runner = ModelRunner(model, cache, self.config)
        self.sampler = Sampler(seed=self.config.seed)
        self.stats = StatsLog()
        self.eos_token_ids: list[int] = list(
            (tokenizer.eos_token_ids if tokenizer else None) or self.model_config.eos_token_ids
        )
        self._requests: dict[str, _RequestState] = {}
        self._ids = itertools.count()
        # Made by the first constrained request: compiled grammars, and the masks' builder.
        self._grammars: GrammarCache | None = None
        self._grammar_masks: MaskBuilder | None = None
        self.step_prior: StepCoefficients | None = None  # see set_step_prior
        self._in_flight: _LaunchedStep | None = None  # asynchronous scheduling: see step

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_model_path(
        cls, path: str | Path | None = None, config: EngineConfig | None = None
    ) -> Engine:
        """Load a GGUF file or Hugging Face directory; None loads the embedded default model."""
        from tokenfactory.models.loader import load_model_files

        config = config or EngineConfig()
        # Q4_1 weights as stored only where CPU decode steps could read them.
        q4 = (
            config.q4_decode
            and config.quantization is None  # FP8 weights replace what the Q4_1 kernels read
            and resolve_device(config.device).type == "cpu"
        )
        loaded = load_model_files(path, q4_weights=q4)
        model = build_model(
            loaded.config,
            config,
            state_dict=loaded.state_dict,
            calibration_ids=fp8_calibration_ids(config, loaded.tokenizer),
        )
        if q4:
            model.attach_q4_weights(loaded.q4_weights)
        # The file or directory name says what users chose (quantization included); the
        # metadata's general.name is often a training-run label.
        source = Path(str(loaded.source))
        name = source.stem if source.suffix == ".gguf" else source.name
        return cls(model, loaded.tokenizer, config, model_name=name)

    @classmethod
    def from_random_weights(
        cls,
        architecture: str,
        config: EngineConfig | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> Engine:
        """A named architecture with random weights, for speed measurements."""
        from tokenfactory.models.architectures import get_architecture

        config = config or EngineConfig()
        model_config = get_architecture(architecture)
        model = build_model(model_config, config, state_dict=None)
        return cls(model, tokenizer, config, model_name=f"{architecture}-random")

    def use_policy(self, name: str, **policy_args: Any) -> None:
        """Serve from now on under another scheduling policy, with a fresh scheduler and an
        empty prefix cache (so policies compared on one loaded model start alike). Only
        between loads: raises RuntimeError while any request is unfinished."""
        if self.has_unfinished():
            raise RuntimeError("the policy can change only while no request is unfinished")
        policy = make_policy(name, **policy_args)  # an unknown name raises before any change
        self.config = replace(self.config, policy=name)
        self.block_manager = BlockManager(
            self.num_kv_blocks, self.config.block_size, self.config.enable_prefix_caching
        )
        self.scheduler = self._make_scheduler(policy)
        self._in_flight = None  # nothing is unfinished: its requests were all aborted
        if self.step_prior is not None:
            policy.set_step_prior(self.step_prior)

    def _make_scheduler(self, policy: SchedulingPolicy) -> Scheduler:
        depth = self.config.num_speculative_tokens if self.proposer is not None else 0
        return Scheduler(self.config, self.block_manager, policy, depth, self.max_model_len)

    def set_step_prior(self, prior: StepCoefficients) -> None:
        """What a step costs on this hardware (the capacity probe's figures), for the policy's
        step-time model to start from; kept for policies set later with `use_policy`."""
        self.step_prior = prior
        self.scheduler.policy.set_step_prior(prior)

    # -- requests ------------------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        terms: ServiceTerms | None = None,
    ) -> str:
        """Queue a request; raises InvalidRequestError for anything that cannot be served."""
        params = params or SamplingParams()
        prompt_ids = self._tokenize(prompt)
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        n = len(prompt_ids)
        room = self.max_model_len - n
        if room < 1:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.max_model_len} tokens; the prompt "
                f"has {n} tokens, leaving no room for output."
            )
        capacity = self.num_kv_blocks * self.config.block_size
        if n + 1 > capacity:
            raise ContextLengthExceededError(
                f"The prompt has {n} tokens but the KV cache holds only {capacity} tokens."
            )
        if params.max_tokens is not None and params.max_tokens > room:
            # OpenAI rejects this; so do we, naming the numbers.
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.max_model_len} tokens; "
                f"{n} in the prompt plus max_tokens={params.max_tokens} exceeds it.",
                param="max_tokens",
            )
        seq = Sequence(request_id, prompt_ids, params, terms=terms)
        stop = StopChecker(params, self.eos_token_ids, self.max_model_len, n)
        if params.stop and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a model with a tokenizer", "stop")
        detok = self.tokenizer.detokenizer(prompt_ids) if self.tokenizer else None
        matcher = self._compile_grammar(params.grammar) if params.grammar else None
        self._requests[request_id] = _RequestState(seq, stop, detok, matcher)
        self.scheduler.add(seq)
        return request_id

    def _compile_grammar(self, spec: GrammarSpec) -> GrammarMatcher:
        if self.tokenizer is None:
            raise InvalidRequestError(
                "constrained decoding needs a model with a tokenizer", "grammar"
            )
        if self._grammars is None:
            vocab = self.model_config.vocab_size
            self._grammars = GrammarCache(grammar_tokenizer(self.tokenizer, vocab))
        return self._grammars.matcher(spec)

    @property
    def grammar_masks(self) -> MaskBuilder:
        """Fills constrained rows' masks; `grammar_masks.overlap` says whether during the
        forward pass (on a worker thread) or after it."""
        if self._grammar_masks is None:
            self._grammar_masks = MaskBuilder(self.model_config.vocab_size)
        return self._grammar_masks

    def _tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError("this model has no tokenizer: pass token ids", "prompt")
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, list | tuple):
            ids = list(prompt)
            vocab = self.model_config.vocab_size
            if any((not isinstance(t, int)) or t < 0 or t >= vocab for t in ids):
                raise InvalidRequestError(
                    f"prompt token ids must be integers in [0, {vocab})", "prompt"
                )
        else:
            raise InvalidRequestError(
                "the prompt must be a string or a list of token ids", "prompt"
            )
        if not ids:
            raise InvalidRequestError("the prompt is empty", "prompt")
        return ids

    def abort(self, request_id: str) -> bool:
        """Drop a request at any point; everything it held is freed. False if unknown."""
        state = self._requests.pop(request_id, None)
        if state is None:
            return False
        self.scheduler.abort(request_id)
        return True

    def unfinished_request_ids(self) -> list[str]:
        return list(self._requests)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_unfinished(self) -> int:
        return len(self._requests)

    # -- the step --------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one iteration: schedule, compute, sample, detokenize, stop. Returns deltas.

        With `config.async_scheduling` a step (without drafts) stays in flight: the next call
        plans its successor and queues the successor's model work first (its decodes read
        the tokens still in flight on the device), then brings those tokens over and
        returns their deltas, then samples the successor (grammar masks, penalties and seeds
        see every token so far). So deltas come one call later, and on a GPU the host's
        planning, input building and text work overlap the device's step."""
        outputs: list[RequestOutput | None] = []
        ahead, self._in_flight = self._in_flight, None
        started = time.monotonic()
        plan = self.scheduler.schedule(started)
        planned = time.monotonic()
        queued = None if plan.is_empty else self._execute(plan, ahead)
        if ahead is not None:
            outputs += self._resolve(ahead)
        # After `ahead`: a request it ended is reported once, with its last tokens.
        outputs += [self._finished_by_scheduler(seq, started) for seq in plan.finished]
        outputs += [self._finished_by_scheduler(s.seq, started, s.retry_after_s) for s in plan.shed]
        if queued is not None:
            launched = self._launch_sampling(plan, *queued, started, planned)
            if launched.ahead:
                self._in_flight = launched
            else:
                outputs += self._resolve(launched)
        return [o for o in outputs if o is not None]

    def _execute(
        self, plan: SchedulerOutput, ahead: _LaunchedStep | None
    ) -> tuple[torch.Tensor, PendingMasks | None]:
        """Queue the step's model work: logits of its sampling rows, and the grammar masks
        begun beside it. With a step `ahead` in flight, decodes of its requests read their
        input tokens from its sampled ids."""
        if self.proposer is not None and plan.speculating:
            plan.attach_drafts(self.proposer.propose(self._draft_requests(plan)))
        # Masks are filled during the forward, unless a step in flight still holds tokens
        # their grammars must see first (`_launch_sampling` makes them then).
        masks = self._start_grammar_masks(plan) if ahead is None else None
        try:
            logits = self.runner.execute(plan, self._token_fill(plan, ahead))
        except BaseException:
            if masks is not None:
                masks.result()  # the worker must be done with the matchers before they move on
            raise
        return logits, masks

    def _launch_sampling(
        self,
        plan: SchedulerOutput,
        logits: torch.Tensor,
        masks: PendingMasks | None,
        started: float,
        planned: float,
    ) -> _LaunchedStep:
        """Queue the step's sampling (making its grammar masks now if `_execute` did not);
        a step that may run ahead (see `_runs_ahead`) advances its progress now, its new
        tokens held by placeholders."""
        sampled = self._sampling_rows(plan)
        pending = None
        if sampled:
            if masks is None:
                masks = self._start_grammar_masks(plan)
            rows: list[Sequence | DraftRow] = []
            for c in sampled:
                rows += sample_rows(c.seq, c.draft) if c.draft else [c.seq]
            grammar = None if masks is None else masks.result()
            pending = self.sampler.launch(logits, rows, grammar)
        elif masks is not None:
            masks.result()
        runs_ahead = pending is not None and self._runs_ahead(plan)
        if runs_ahead:
            for c in sampled:
                if self._requests.get(c.seq.request_id) is not None:  # not ended meanwhile
                    c.seq.output_token_ids.append(PLACEHOLDER_TOKEN)
            self.scheduler.on_step_launched(plan)
        return _LaunchedStep(plan, pending, started, planned, runs_ahead)

    def _runs_ahead(self, plan: SchedulerOutput) -> bool:
        """Whether the next plan may be made before this step's tokens reach the host: with
        asynchronous scheduling, unless a draft makes the count of new tokens unknown."""
        return self.config.async_scheduling and not any(c.draft for c in plan.chunks)

    @staticmethod
    def _sampling_rows(plan: SchedulerOutput) -> list[ScheduledChunk]:
        return [c for c in plan.chunks if c.samples]

    def _token_fill(self, plan: SchedulerOutput, ahead: _LaunchedStep | None) -> TokenFill | None:
        """Decodes of `plan` whose input token `ahead` sampled and the host does not hold
        yet: they read it from `ahead`'s sampled ids on the device."""
        if ahead is None or ahead.sample is None:
            return None
        source = {c.seq: i for i, c in enumerate(self._sampling_rows(ahead.plan))}
        rows, source_rows = [], []
        for row, c in enumerate(plan.chunks):  # decodes lead a step, one row each
            if not c.is_decode or c.draft:
                break
            i = source.get(c.seq)
            if i is not None and c.seq.output_token_ids[-1] == PLACEHOLDER_TOKEN:
                rows.append(row)
                source_rows.append(i)
        if not rows:
            return None
        return TokenFill(
            np.array(rows, dtype=np.int64),
            np.array(source_rows, dtype=np.int64),
            ahead.sample.token_ids,
        )

    def _resolve(self, launched: _LaunchedStep) -> list[RequestOutput]:
        """Bring a launched step's tokens to the host: append them (for a step that ran
        ahead, in place of its placeholders), advance progress, stop checks, text, stats."""
        plan = launched.plan
        emitted = []
        if launched.sample is not None:
            emitted = self._accept(plan, launched.sample.result(), launched.ahead)
        if launched.ahead:
            self.scheduler.on_step_resolved(plan)
        else:
            self.scheduler.on_step_done(plan)
        now = time.monotonic()
        outputs = [self._postprocess(new, now) for new in emitted]
        if self.proposer is not None:
            self.proposer.retain(self._requests)
        kv_read = sum(c.start + c.num_tokens for c in plan.chunks)
        sampled = self._sampling_rows(plan)
        ended = time.monotonic()
        if launched.ahead and launched.sample is not None:
            # Not when its successor was planned and run: when its tokens were ready.
            ended = launched.sample.ready_at or ended
        step_stats = StepStats(
            started_at=launched.started,
            duration_s=ended - launched.started,
            num_seqs=len(plan.chunks),
            num_decode_tokens=plan.num_decode_tokens,
            num_prefill_tokens=plan.num_prefill_tokens,
            num_kv_tokens_read=kv_read,
            num_sampled=len(sampled),
            num_preempted=len(plan.preempted),
            num_waiting=self.scheduler.num_waiting,
            num_running=self.scheduler.num_running,
            kv_usage=self.block_manager.usage,
            schedule_s=launched.planned - launched.started,
            num_draft_tokens=plan.num_draft_tokens,
            num_accepted_tokens=sum(c.num_accepted for c in sampled),
            ran_ahead=launched.ahead,
        )
        self.stats.record(step_stats)
        self.scheduler.record_step(step_stats)
        return outputs

    def _finished_by_scheduler(
        self, seq: Sequence, now: float, retry_after_s: float | None = None
    ) -> RequestOutput | None:
        """A request the scheduler ended itself: it cannot fit in the whole KV cache, or the
        policy refused it (shed, with a Retry-After). None: its last token, arriving from a
        step in flight, ended it first."""
        state = self._requests.pop(seq.request_id, None)
        if state is None:
            return None
        seq.finished_time = now
        return RequestOutput(
            request_id=seq.request_id,
            token_ids=[],
            text=state.stop.flush(),
            logprobs=None,
            finished=True,
            finish_reason=seq.finish_reason or FinishReason.LENGTH,
            stop_reason=None,
            prompt_tokens=seq.num_prompt_tokens,
            cached_tokens=seq.num_cached_tokens,
            completion_tokens=seq.num_output_tokens,
            arrival_time=seq.arrival_time,
            first_token_time=seq.first_token_time,
            finished_time=now,
            first_scheduled_time=seq.first_scheduled_time,
            retry_after_s=retry_after_s,
        )

    def _draft_requests(self, plan: SchedulerOutput) -> list[DraftRequest]:
        """What to ask the proposer for: each speculating decode's reserved slots, in the
        plan's order, within the decode rows this device computes row for row exactly (so
        drafts never change a token a plain decode of this step would give). On CPU that is
        also where a row is cheap: past it the linears leave the Q4_1 kernel, and a draft
        row costs about what a decode does."""
        room = None
        if self.max_exact_rows is not None:
            if plan.num_prefill_tokens and not self.runner.decodes_apart:
                # Every row of this step would run through the prompt path, where a row's
                # result depends on how many rows there are: drafts would change how the
                # prompt's K/V round. (Where the runner runs a step's decodes apart, as a
                # decode-only step, its prompt chunks round the same with or without them.)
                return []
            room = self.max_exact_rows - sum(1 for c in plan.chunks if c.is_decode)
        requests = []
        for c in plan.speculating:
            k = c.draft_slots if room is None else min(c.draft_slots, room)
            if k <= 0:
                break
            requests.append(DraftRequest(c.seq, k))
            if room is not None:
                room -= k
        return requests

    def _start_grammar_masks(self, plan: SchedulerOutput) -> PendingMasks | None:
        """Begin the masks of the step's constrained rows (None: there are none), in
        `_sample`'s row order: a request verifying a draft has a row per draft position."""
        rows: list[tuple[int, GrammarMatcher, list[int]]] = []
        row = 0
        for c in plan.chunks:
            if not c.samples:
                continue
            state = self._requests.get(c.seq.request_id)
            if state is not None and state.matcher is not None:
                rows.append((row, state.matcher, c.draft))
            row += 1 + len(c.draft)
        return self.grammar_masks.start(rows) if rows else None

    def _accept(
        self, plan: SchedulerOutput, sampled: SamplerOutput, ahead: bool
    ) -> list[_NewTokens]:
        """Append each request's new tokens: one for a decode or a prompt's last chunk; for a
        verified draft, its accepted tokens and the next one (`ahead`: in place of the
        placeholder `_launch` appended). Constrained requests' matchers advance. Requests
        that ended (or were aborted) while the step was in flight are left out."""
        now = time.monotonic()
        emitted = []
        i = 0
        for c in self._sampling_rows(plan):
            seq, n = c.seq, 1 + len(c.draft)
            tokens = sampled.token_ids[i : i + n]
            logprobs = sampled.logprobs[i : i + n]
            i += n
            state = self._requests.get(seq.request_id)
            if state is None or state.seq is not seq:
                continue
            if c.draft:
                c.num_accepted = accepted_length(tokens, c.draft)
                tokens = tokens[: c.num_accepted + 1]
                seq.num_draft_tokens += len(c.draft)
                seq.num_accepted_draft_tokens += c.num_accepted
            base = c.seq_len - seq.num_prompt_tokens  # output index of its first new token
            if ahead:
                # A placeholder after this one belongs to the step still in flight.
                seq.output_token_ids[base] = tokens[0]
            else:
                seq.output_token_ids += tokens
            if state.matcher is not None:
                # A masked sample is always allowed; should one not be, the matcher stops in
                # error and `_postprocess` ends the request.
                if not state.matcher.accept_all(tokens):
                    error = state.matcher.error
                    log.warning("request %s left its grammar: %s", seq.request_id, error)
            if seq.first_token_time is None:
                seq.first_token_time = now
            emitted.append(_NewTokens(seq, tokens, logprobs[: len(tokens)], base))
        return emitted

    def _postprocess(self, new: _NewTokens, now: float) -> RequestOutput:
        """Stop checks and text for the tokens a step appended to a request (several when a
        draft was accepted); tokens after the one that ends the request are dropped, and so
        is a placeholder of a step still in flight."""
        seq, tokens, logprobs, base = new.seq, new.tokens, new.logprobs, new.base
        state = self._requests[seq.request_id]
        text = ""
        decision = CONTINUE
        kept = 0
        for token in tokens:
            kept += 1
            decision = state.stop.check_token(token, base + kept)
            # EOS and stop tokens end the request without showing their text; a length stop
            # still shows the last token, whose text may itself complete a stop string.
            stopped_by_token = decision.finished and decision.reason is FinishReason.STOP
            if not stopped_by_token and state.detokenizer is not None:
                delta = state.detokenizer.add(token)  # type: ignore[attr-defined]
                released, text_decision = state.stop.add_text(delta)
                text += released
                if text_decision.finished:
                    decision = text_decision
            if decision.finished:
                break
        if not decision.finished and state.matcher is not None and state.matcher.is_finished:
            decision = _GRAMMAR_COMPLETE
        if kept < len(tokens) or decision.finished:
            del seq.output_token_ids[base + kept :]  # generated past the end: not delivered
        if decision.finished:
            if not isinstance(decision.stop_reason, str):
                text += state.stop.flush()
            seq.finish_reason = decision.reason
            seq.stop_reason = decision.stop_reason
            seq.finished_time = now
            assert decision.reason is not None
            self.scheduler.finish(seq, decision.reason)
            del self._requests[seq.request_id]
        lps = [lp for lp in logprobs[:kept] if lp is not None]
        return RequestOutput(
            request_id=seq.request_id,
            token_ids=tokens[:kept],
            text=text,
            logprobs=lps or None,
            finished=decision.finished,
            finish_reason=decision.reason if decision.finished else None,
            stop_reason=decision.stop_reason if decision.finished else None,
            prompt_tokens=seq.num_prompt_tokens,
            cached_tokens=seq.num_cached_tokens,
            completion_tokens=base + kept,
            arrival_time=seq.arrival_time,
            first_token_time=seq.first_token_time,
            finished_time=seq.finished_time,
            first_scheduled_time=seq.first_scheduled_time,
        )

    # -- convenience -----------------------------------------------------------------------------

    def generate(
        self,
        prompts: str | list[int] | list[str] | list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Run prompts to completion together (continuous batching) and return them in order."""
        one = isinstance(prompts, str) or bool(prompts and isinstance(prompts[0], int))
        batch = cast(list[str | list[int]], [prompts] if one else list(prompts))
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(batch)
        if len(plist) != len(batch):
            raise InvalidRequestError("one SamplingParams per prompt, or one for all", "params")
        ids = [self.add_request(p, sp) for p, sp in zip(batch, plist, strict=True)]
        results = {rid: Completion(rid, "", [], None, None, 0, 0) for rid in ids}
        while self.has_unfinished():
            for out in self.step():
                r = results.get(out.request_id)
                if r is None:
                    continue
                r.text += out.text
                r.token_ids += out.token_ids
                if out.logprobs:
                    r.logprobs += out.logprobs
                r.prompt_tokens, r.cached_tokens = out.prompt_tokens, out.cached_tokens
                if out.finished:
                    r.finish_reason, r.stop_reason = out.finish_reason, out.stop_reason
        return [results[rid] for rid in ids]

    def chat_prompt(self, messages: list[dict]) -> str:
        if self.tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer or chat template", "messages")
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
