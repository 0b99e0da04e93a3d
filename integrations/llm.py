"""LLM client for the self-analysis: any OpenAI-compatible chat API through the openai SDK.

* The answer is requested as a JSON object (``response_format={"type": "json_object"}``) and
  validated by :class:`core.schemas.self_improvement.LLMRecommendation`; Markdown fences
  around the JSON are tolerated, anything else is an invalid answer.
* Timeouts, connection errors, HTTP 429/5xx and invalid answers are retried up to
  ``max_attempts`` (3) with exponential backoff (``backoff_s * 2**k``; ``sleep`` injectable);
  then :class:`core.exceptions.ServiceUnavailableError`. HTTP 4xx (other than 429) ->
  :class:`core.exceptions.PeerRejectedError` at once.
* Every answer received (valid or not) appends one document to ``llm_costs`` with the
  prompt/completion tokens of its ``usage`` and the USD from the block's price table.
* The kill switch (``Store.llm_enabled()``) is checked before every attempt:
  :class:`core.exceptions.LLMDisabledError`, callers take their fallback.
* The raw invalid answer is logged truncated to 300 characters; the API key never is.

Also here: the prompt (which states the thresholds) and the rule-based fallback.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import openai
from pydantic import ValidationError

from core.exceptions import LLMDisabledError, PeerRejectedError, ServiceUnavailableError
from core.schemas.self_improvement import LLMCall, LLMRecommendation

if TYPE_CHECKING:
    from integrations.store import Store

log = logging.getLogger(__name__)

RAW_LOG_CHARS = 300
_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)

SYSTEM_PROMPT = (
    "You are the self-analysis module of a crypto trading bot. You judge whether the bot's "
    "price-direction models (lstm, gru, transformer) need retraining. Answer ONLY with one JSON "
    'object: {"recommendation": one of NO_RETRAINING, RETRAIN_LSTM, RETRAIN_GRU, '
    'RETRAIN_TRANSFORMER, RETRAIN_ALL, OPTIMIZE_PARAMETERS, "confidence": number 0-1, '
    '"urgency": "low"|"medium"|"high", "reasoning": string, "suggested_actions": [string]}.'
)


class InvalidAnswerError(ValueError):
    """The LLM's answer is not the required JSON object (message says what is wrong)."""


def cost_usd(
    prompt_tokens: int, completion_tokens: int, input_usd_per_1m: float, output_usd_per_1m: float
) -> float:
    """USD of one call: tokens / 1e6 * price per 1M tokens, input and output summed."""
    return (
        prompt_tokens * input_usd_per_1m / 1_000_000
        + completion_tokens * output_usd_per_1m / 1_000_000
    )


def parse_recommendation(text: str | None) -> LLMRecommendation:
    """Parse the answer text (a JSON object, optionally inside a Markdown fence).

    Returns the validated recommendation.

    Raises:
        InvalidAnswerError: empty, not JSON, not an object, or fails the schema.
    """
    if not text or not text.strip():
        raise InvalidAnswerError("empty answer")
    m = _FENCE.match(text)
    body = m.group(1) if m else text
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise InvalidAnswerError(f"answer is not JSON ({e.msg} at char {e.pos})") from e
    if not isinstance(data, dict):
        raise InvalidAnswerError(f"answer is JSON {type(data).__name__}, not an object")
    try:
        return LLMRecommendation.model_validate(data)
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise InvalidAnswerError(f"answer fails the schema: {fields}") from None


@dataclass
class LLMClient:
    """One OpenAI-compatible endpoint with its price table and the cost ledger.

    Args:
        client: an ``openai.OpenAI`` (from ``LLMBlock.get_client()``); its own retries are
            switched off, this class retries.
        model: model name sent with each request.
        input_usd_per_1m / output_usd_per_1m: prices per 1M prompt / completion tokens.
        store: ledger (``llm_costs``) and kill switch.
        max_attempts: attempts per request (3).
        backoff_s: first wait between attempts; doubles each time.
        sleep: the wait function (tests pass a no-op).
    """

    client: openai.OpenAI
    model: str
    input_usd_per_1m: float
    output_usd_per_1m: float
    store: Store
    max_attempts: int = 3
    backoff_s: float = 1.0
    sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={str(self.client.base_url)!r})"

    def recommend(
        self, prompt: str, *, run_id: str | None, purpose: str = "self-analysis"
    ) -> tuple[LLMRecommendation, LLMCall]:
        """Ask for a recommendation.

        Returns:
            (the validated answer, the call's tokens/cost/attempts summed over attempts).

        Raises:
            LLMDisabledError: the kill switch is off (nothing is sent).
            ServiceUnavailableError: every attempt timed out, failed with 429/5xx or
                answered invalid JSON (the message says what the last attempt got).
            PeerRejectedError: HTTP 4xx other than 429 (e.g. a wrong key or model).
        """
        client = self.client.with_options(max_retries=0)
        call = LLMCall(model=self.model, attempts=0)
        last = ""
        for attempt in range(self.max_attempts):
            if not self.store.llm_enabled():
                reason = self.store.llm_settings().get("reason") or "no reason recorded"
                raise LLMDisabledError(f"LLM calls are switched off (kill switch): {reason}")
            if attempt:
                self.sleep(self.backoff_s * 2 ** (attempt - 1))
            call.attempts = attempt + 1
            try:
                resp = client.chat.completions.create(
                    model=self.model,
                    messages=[
                        {"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": prompt},
                    ],
                    response_format={"type": "json_object"},
                    temperature=0,
                )
            except openai.APITimeoutError:
                last = f"timed out after {self.client.timeout}s"
                log.warning("LLM attempt %d/%d %s", attempt + 1, self.max_attempts, last)
                continue
            except openai.APIConnectionError as e:
                last = f"unreachable ({type(e.__cause__ or e).__name__})"
                log.warning("LLM attempt %d/%d %s", attempt + 1, self.max_attempts, last)
                continue
            except openai.APIStatusError as e:
                if e.status_code == 429 or e.status_code >= 500:
                    last = f"answered HTTP {e.status_code}"
                    log.warning("LLM attempt %d/%d %s", attempt + 1, self.max_attempts, last)
                    continue
                raise PeerRejectedError(
                    f"LLM endpoint refused the request with HTTP {e.status_code} "
                    f"(check the llm block's model and API key)"
                ) from None
            self._record(resp, call, run_id, purpose)
            text = resp.choices[0].message.content if resp.choices else None
            try:
                return parse_recommendation(text), call
            except InvalidAnswerError as e:
                last = f"invalid answer: {e}"
                log.warning(
                    "LLM attempt %d/%d %s; raw answer (truncated): %r",
                    attempt + 1,
                    self.max_attempts,
                    last,
                    (text or "")[:RAW_LOG_CHARS],
                )
        raise ServiceUnavailableError(
            f"LLM ({self.model}) failed after {self.max_attempts} attempts: {last}"
        )

    def _record(self, resp: Any, call: LLMCall, run_id: str | None, purpose: str) -> None:
        usage = getattr(resp, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        usd = cost_usd(
            prompt_tokens, completion_tokens, self.input_usd_per_1m, self.output_usd_per_1m
        )
        call.prompt_tokens += prompt_tokens
        call.completion_tokens += completion_tokens
        call.cost_usd += usd
        self.store.record_llm_cost(
            run_id=run_id,
            model=self.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=usd,
            purpose=purpose,
        )


# ------------------------------------------------------------ prompt and fallback
def build_prompt(
    performance: Mapping[str, Any],
    model_accuracy: Mapping[str, float],
    market: Mapping[str, Any],
    thresholds: Mapping[str, float],
    accuracy_history: Mapping[str, list[Any]] | None = None,
    live_figures: list[Mapping[str, Any]] | None = None,
) -> str:
    """The user prompt: thresholds first, then performance, model accuracy (and its history:
    recent trainings, newest first), the deployed models' live record (their served
    predictions scored against what happened, when any) and market context.

    Returns the prompt text (JSON blocks; numbers as measured).
    """
    return (
        "Thresholds: target win rate >= {w}% (critical below {cw}%), Sharpe >= {s} "
        "(critical below {cs}), model accuracy >= {a:.0%} on held-out data. Recommend retraining "
        "only the models below the accuracy threshold, and only with a confidence >= {c} when "
        "action is needed.\n\n"
        "Trading performance, last {d} days:\n{perf}\n\n"
        "Deployed model accuracy (held-out):\n{acc}\n"
        "Recent trainings per model type, newest first (held-out accuracy):\n{hist}\n\n"
        "{live}"
        "Market context (recent candles):\n{mkt}\n"
    ).format(
        w=thresholds["warning_win_rate_pct"],
        cw=thresholds["critical_win_rate_pct"],
        s=thresholds["warning_sharpe"],
        cs=thresholds["critical_sharpe"],
        a=thresholds["min_accuracy"],
        c=thresholds["min_confidence"],
        d=int(thresholds.get("window_days", 7)),
        perf=json.dumps(dict(performance), default=str),
        acc=json.dumps(dict(model_accuracy)),
        hist=json.dumps(dict(accuracy_history or {}), default=str),
        live=(
            "Deployed models' live record (served predictions scored after their outcome; "
            "hit_rate against majority_rate, the naive baseline; decayed: the decay rule "
            f"fired):\n{json.dumps(list(live_figures), default=str)}\n\n"
            if live_figures
            else ""
        ),
        mkt=json.dumps(dict(market), default=str),
    )


def fallback_recommendation(
    performance_status: str, model_accuracy: Mapping[str, float], min_accuracy: float
) -> LLMRecommendation:
    """Rule-based decision used when the LLM failed or is switched off.

    Retrain the model types whose accuracy is below ``min_accuracy``, and only when the
    performance status is CRITICAL; otherwise NO_RETRAINING.

    Returns the recommendation (confidence 1.0 for a rule).
    """
    low = sorted(t for t, a in model_accuracy.items() if a < min_accuracy)
    if performance_status != "CRITICAL" or not low:
        why = (
            f"performance is {performance_status}, not critical"
            if performance_status != "CRITICAL"
            else f"every model accuracy is at or above {min_accuracy:.2f}"
        )
        return LLMRecommendation(
            recommendation="NO_RETRAINING",
            confidence=1.0,
            urgency="low",
            reasoning=f"Rule-based fallback: {why}; no retraining.",
        )
    names = {"lstm": "RETRAIN_LSTM", "gru": "RETRAIN_GRU", "transformer": "RETRAIN_TRANSFORMER"}
    rec = names[low[0]] if len(low) == 1 else "RETRAIN_ALL"
    detail = ", ".join(f"{t} {model_accuracy[t]:.2f}" for t in low)
    return LLMRecommendation(
        recommendation=rec,  # type: ignore[arg-type]
        confidence=1.0,
        urgency="high",
        reasoning=(
            f"Rule-based fallback: performance is CRITICAL and accuracy below "
            f"{min_accuracy:.2f}: {detail}."
        ),
        suggested_actions=[f"retrain {t}" for t in low],
    )
