"""OpenAI-compatible LLM access for data generation: structured JSON answers, cached, retried and accounted.

Every answer is a JSON object checked against a JSON schema. Answers are cached on disk by
sha256(model, prompt version, messages, schema), so a re-run costs nothing and a crashed run resumes.
The API key is read from an environment variable when a client is built and handed to the `openai`
client only: it is never stored in the config, the cache, the batch files or any log line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import openai

from align.atomic import atomic_write_text

log = logging.getLogger(__name__)

# USD per 1M (input, output) tokens; a model matches the longest key it starts with. Override per run.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half the synchronous price
DUMMY_KEY = "not-needed"  # local OpenAI-compatible servers accept any key
_RETRY_STATUS = {408, 409, 429}
_BATCH_DONE = {"completed", "failed", "expired", "cancelled"}
_warned: set[str] = set()


class LLMUnavailable(RuntimeError):
    """No credentials and no base URL: the `llm` backends cannot run."""


@dataclass
class LLMConfig:
    """Where and how to ask. Holds the *name* of the key's environment variable, never the key."""

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 60.0
    cache_dir: Path | None = None
    temperature: float = 0.0
    max_tokens: int = 1024
    backoff_s: float = 1.0  # first retry waits about this long, doubling each retry
    backoff_max_s: float = 60.0
    structured: Literal["json_schema", "json_object"] = "json_schema"
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    batch: bool = False  # use the Batch API: half price, answers within 24 h
    batch_poll_s: float = 30.0
    batch_timeout_s: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"LLMConfig.concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"LLMConfig.max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise ValueError(f"LLMConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.structured not in ("json_schema", "json_object"):
            raise ValueError(f"LLMConfig.structured must be json_schema or json_object, got {self.structured!r}")
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)

    def unavailable_reason(self) -> str | None:
        """Why no request can be made, or None when a key or a base URL is configured."""
        if self.base_url or os.environ.get(self.api_key_env):
            return None
        return (f"LLM backends skipped: no API key in ${self.api_key_env} and no base URL "
                f"(set ${self.api_key_env}, or pass --llm-base-url for a local OpenAI-compatible server)")

    def price(self) -> tuple[float, float] | None:
        """(input, output) USD per 1M tokens for this model, user overrides first."""
        table = {**DEFAULT_PRICES, **self.prices}
        matches = [k for k in table if self.model.startswith(k)]
        return table[max(matches, key=len)] if matches else None


def llm_available(config: LLMConfig) -> bool:
    """True when requests can be made; otherwise logs one clear message (once per reason) and returns False."""
    reason = config.unavailable_reason()
    if reason is None:
        return True
    if reason not in _warned:
        _warned.add(reason)
        log.warning(reason)
    return False


@dataclass
class ChatRequest:
    """One chat completion whose answer must be a JSON object matching `schema`."""

    messages: list[dict[str, str]]
    schema: dict[str, Any]
    prompt_version: str
    name: str = "answer"

    def key(self, model: str) -> str:
        blob = json.dumps([model, self.prompt_version, self.messages, self.schema], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Usage:
    """Counters for one client; `summary()` adds the model and the cost."""

    requests: int = 0  # API calls, retries included (a batch counts its lines)
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0  # gave up: retries exhausted or a non-retryable error
    invalid: int = 0  # answered, but not JSON or not matching the schema
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class JsonCache:
    """One JSON file per key under `root/ab/abcdef...json`; writes are atomic. `root=None` disables it."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        path = self._path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as e:
            log.warning("LLM cache file %s is unreadable (%s); asking again", path, e)
            return None
        return record if isinstance(record, dict) and isinstance(record.get("answer"), dict) else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        if self.root is not None:
            atomic_write_text(self._path(key), json.dumps(record, ensure_ascii=False, sort_keys=True))


class LLMClient:
    """Asks many structured questions at once, with a concurrency bound, retries, a cache and a cost tally."""

    def __init__(self, config: LLMConfig) -> None:
        reason = config.unavailable_reason()
        if reason is not None:
            raise LLMUnavailable(reason)
        self.config = config
        self.usage = Usage()
        self.cache = JsonCache(config.cache_dir)
        self._structured = config.structured
        self._rng = random.Random()
        self._sync = openai.OpenAI(**self._client_kwargs())

    def __repr__(self) -> str:
        return f"LLMClient(model={self.config.model!r}, base_url={self.config.base_url!r})"

    def _client_kwargs(self) -> dict[str, Any]:
        # Read the key at the last moment; the client objects are the only holders.
        key = os.environ.get(self.config.api_key_env) or DUMMY_KEY
        return {"api_key": key, "base_url": self.config.base_url, "timeout": self.config.timeout_s, "max_retries": 0}

    # ------------------------------------------------------------------ public
    def chat_json(self, requests: Sequence[ChatRequest], *, batch: bool | None = None) -> list[dict[str, Any] | None]:
        """One parsed answer per request (None where it failed); batch mode (default config.batch) is the Batch API."""
        if self.config.batch if batch is None else batch:
            return self.run_batch(requests)
        return asyncio.run(self.achat_json(requests))

    async def achat_json(self, requests: Sequence[ChatRequest]) -> list[dict[str, Any] | None]:
        """Async form of `chat_json` for callers already inside an event loop."""
        results, todo = self._from_cache(requests)
        if todo:
            sem = asyncio.Semaphore(self.config.concurrency)
            async with openai.AsyncOpenAI(**self._client_kwargs()) as client:
                keys = list(todo)
                answers = await asyncio.gather(*(self._ask(client, sem, requests[todo[k][0]], k) for k in keys))
            for key, answer in zip(keys, answers):
                for i in todo[key]:
                    results[i] = answer
        return results

    def summary(self) -> dict[str, Any]:
        """Totals for reports: counters, tokens, cost (None when the model has no known price)."""
        price = self.config.price()
        return {"model": self.config.model, **asdict(self.usage),
                "cost_usd": round(self.usage.cost_usd, 6) if price else None,
                "price_per_1m_tokens": list(price) if price else None}

    # ------------------------------------------------------------------ internals
    def _from_cache(self, requests: Sequence[ChatRequest]) -> tuple[list[dict[str, Any] | None], dict[str, list[int]]]:
        """Answers found in the cache, and the remaining request indices grouped by key (duplicates asked once)."""
        results: list[dict[str, Any] | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            key = req.key(self.config.model)
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = hit["answer"]
                self.usage.cache_hits += 1
            else:
                todo.setdefault(key, []).append(i)
        return results, todo

    def _body(self, req: ChatRequest) -> dict[str, Any]:
        messages = [dict(m) for m in req.messages]
        if self._structured == "json_schema":
            fmt: dict[str, Any] = {"type": "json_schema",
                                   "json_schema": {"name": req.name, "schema": req.schema, "strict": True}}
        else:  # the server cannot enforce a schema: state it in the system message instead
            fmt = {"type": "json_object"}
            hint = "Reply with one JSON object that follows this JSON schema:\n" + json.dumps(req.schema)
            if messages and messages[0]["role"] == "system":
                messages[0]["content"] += "\n\n" + hint
            else:
                messages.insert(0, {"role": "system", "content": hint})
        return {"model": self.config.model, "messages": messages, "response_format": fmt,
                "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}

    async def _ask(self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, req: ChatRequest,
                   key: str) -> dict[str, Any] | None:
        async with sem:
            attempt = 0
            while True:
                body = self._body(req)
                try:
                    self.usage.requests += 1
                    resp = await client.chat.completions.create(**body)
                except openai.BadRequestError as e:
                    if body["response_format"]["type"] == "json_schema" and _about_response_format(e):
                        if self._structured == "json_schema":  # other requests in flight may have seen it first
                            self._structured = "json_object"
                            log.warning("server rejected response_format json_schema; using json_object from now on")
                        continue
                    return self._give_up(req, e)
                except (openai.APIConnectionError, openai.APIStatusError) as e:
                    if not _retryable(e) or attempt >= self.config.max_retries:
                        return self._give_up(req, e)
                    delay = self._backoff(attempt, e)
                    attempt += 1
                    self.usage.retries += 1
                    log.info("LLM request failed (%s); retry %d/%d in %.2fs",
                             _describe(e), attempt, self.config.max_retries, delay)
                    await asyncio.sleep(delay)
                    continue
                choice = resp.choices[0] if resp.choices else None
                usage = resp.usage
                return self._accept(req, key, choice.message.content if choice else None,
                                    choice.finish_reason if choice else None,
                                    usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)

    def _backoff(self, attempt: int, error: Exception) -> float:
        """Exponential backoff with equal jitter; a server's Retry-After (seconds) is honoured up to the cap."""
        delay = min(self.config.backoff_max_s, self.config.backoff_s * 2**attempt)
        delay *= 0.5 + 0.5 * self._rng.random()
        response = getattr(error, "response", None)
        after = response.headers.get("retry-after") if response is not None else None
        if after and after.replace(".", "", 1).isdigit():
            delay = max(delay, min(float(after), self.config.backoff_max_s))
        return delay

    def _give_up(self, req: ChatRequest, error: Exception) -> None:
        self.usage.failures += 1
        log.warning("LLM request (%s) failed: %s", req.prompt_version, _describe(error))
        return None

    def _accept(self, req: ChatRequest, key: str, content: str | None, finish: str | None, prompt_tokens: int,
                completion_tokens: int, discount: float = 1.0) -> dict[str, Any] | None:
        """Account tokens, parse and check the answer, cache it when valid."""
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        price = self.config.price()
        if price:
            self.usage.cost_usd += discount * (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
        problem = None
        answer: Any = None
        if finish == "length":
            problem = "answer cut off at max_tokens"
        else:
            try:
                answer = json.loads(content or "")
            except json.JSONDecodeError as e:
                problem = f"not JSON ({e.msg})"
            else:
                problem = schema_error(req.schema, answer)
        if problem is not None:
            self.usage.invalid += 1
            log.warning("LLM answer (%s) rejected: %s", req.prompt_version, problem)
            return None
        self.cache.put(key, {"model": self.config.model, "prompt_version": req.prompt_version, "answer": answer,
                             "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}})
        return answer

    # ------------------------------------------------------------------ Batch API
    def run_batch(self, requests: Sequence[ChatRequest]) -> list[dict[str, Any] | None]:
        """Ask through the Batch API: upload a JSONL, poll until done, merge the output into the cache.

        The batch id is saved beside the cache, so a re-run after a crash or a timeout polls the same batch
        instead of paying again.
        """
        results, todo = self._from_cache(requests)
        if not todo:
            return results
        job = hashlib.sha256("".join(sorted(todo)).encode()).hexdigest()[:16]
        with tempfile.TemporaryDirectory() as scratch:
            folder = self.config.cache_dir / "batches" if self.config.cache_dir else Path(scratch)
            state_path = folder / f"{job}.state.json"
            state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else None
            if state is None:
                input_path = folder / f"{job}.input.jsonl"
                lines = [{"custom_id": k, "method": "POST", "url": "/v1/chat/completions",
                          "body": self._body(requests[idx[0]])} for k, idx in todo.items()]
                atomic_write_text(input_path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
                with input_path.open("rb") as f:
                    uploaded = self._sync.files.create(file=f, purpose="batch")
                created = self._sync.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                    completion_window="24h")
                state = {"batch_id": created.id, "input_file_id": uploaded.id}
                atomic_write_text(state_path, json.dumps(state))
                log.info("LLM batch %s submitted with %d requests", created.id, len(lines))
            self.usage.requests += len(todo)
            batch = self._wait_batch(state["batch_id"])
            answers = self._read_batch_output(batch, {k: requests[idx[0]] for k, idx in todo.items()})
            state_path.unlink(missing_ok=True)
        for key, idx in todo.items():
            for i in idx:
                results[i] = answers.get(key)
        missing = sum(1 for k in todo if k not in answers)
        if missing:
            self.usage.failures += missing
            log.warning("LLM batch %s: %d of %d requests got no valid answer", batch.id, missing, len(todo))
        return results

    def _wait_batch(self, batch_id: str) -> Any:
        deadline = time.monotonic() + self.config.batch_timeout_s
        while True:
            batch = self._sync.batches.retrieve(batch_id)
            if batch.status in _BATCH_DONE:
                if batch.status != "completed":
                    log.warning("LLM batch %s ended with status %s; using whatever it answered", batch_id,
                                batch.status)
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"LLM batch {batch_id} still {batch.status} after {self.config.batch_timeout_s}s;"
                                   " re-run the same command to keep waiting for it (its id is saved)")
            time.sleep(self.config.batch_poll_s)

    def _read_batch_output(self, batch: Any, by_key: Mapping[str, ChatRequest]) -> dict[str, dict[str, Any]]:
        answers: dict[str, dict[str, Any]] = {}
        if not batch.output_file_id:
            return answers
        text = self._sync.files.content(batch.output_file_id).text
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, response = row["custom_id"], row.get("response") or {}
                body = response.get("body") or {}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                log.warning("LLM batch %s output line %d is malformed: %s", batch.id, n, e)
                continue
            if key not in by_key or response.get("status_code") != 200:
                continue
            choice = (body.get("choices") or [{}])[0]
            usage = body.get("usage") or {}
            answer = self._accept(by_key[key], key, (choice.get("message") or {}).get("content"),
                                  choice.get("finish_reason"), usage.get("prompt_tokens", 0),
                                  usage.get("completion_tokens", 0), discount=BATCH_DISCOUNT)
            if answer is not None:
                answers[key] = answer
        return answers


def schema_error(schema: Mapping[str, Any], value: Any, path: str = "$") -> str | None:
    """First way `value` breaks `schema` (the subset used for structured output), or None when it fits.

    Supports type, enum, const, properties, required, additionalProperties: false, items, anyOf,
    minItems and maxItems; annotations such as description are ignored.
    """
    types = schema.get("type")
    if types is not None:
        allowed = types if isinstance(types, list) else [types]
        if not any(_is_type(value, t) for t in allowed):
            return f"{path}: expected {'/'.join(allowed)}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']}"
    if "const" in schema and value != schema["const"]:
        return f"{path}: expected {schema['const']!r}, got {value!r}"
    if "anyOf" in schema:
        errors = [schema_error(s, value, path) for s in schema["anyOf"]]
        if all(errors):
            return max(errors, key=lambda e: len(str(e).split(": ", 1)[0]))  # the alternative that got furthest
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                return f"{path}.{name}: missing"
        for name, item in value.items():
            if name in props:
                problem = schema_error(props[name], item, f"{path}.{name}")
                if problem:
                    return problem
            elif schema.get("additionalProperties") is False:
                return f"{path}.{name}: not allowed"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return f"{path}: {len(value)} items is outside [{schema.get('minItems', 0)}, {schema.get('maxItems')}]"
        for i, item in enumerate(value):
            problem = schema_error(schema.get("items", {}), item, f"{path}[{i}]")
            if problem:
                return problem
    return None


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    python = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    return isinstance(value, python[name])


def _retryable(error: Exception) -> bool:
    if isinstance(error, openai.APIConnectionError):  # includes timeouts
        return True
    status = getattr(error, "status_code", 0)
    return status in _RETRY_STATUS or status >= 500


def _about_response_format(error: openai.BadRequestError) -> bool:
    text = str(error).lower()
    return "response_format" in text or "json_schema" in text


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}" + (f" (HTTP {status})" if status else "")


# ---------------------------------------------------------------------- command line
def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--llm-*` options shared by every subcommand that can call an LLM."""
    g = parser.add_argument_group("LLM (OpenAI-compatible API)")
    g.add_argument("--llm-model", default=LLMConfig.model, help="model name (default %(default)s)")
    g.add_argument("--llm-base-url", default=None, help="base URL of an OpenAI-compatible server, e.g. a local vLLM")
    g.add_argument("--llm-api-key-env", default=LLMConfig.api_key_env,
                   help="environment variable holding the API key (default %(default)s); the key is never stored")
    g.add_argument("--llm-concurrency", type=int, default=LLMConfig.concurrency, help="requests in flight at once")
    g.add_argument("--llm-max-retries", type=int, default=LLMConfig.max_retries, help="retries on 429/5xx/timeouts")
    g.add_argument("--llm-timeout", type=float, default=LLMConfig.timeout_s, help="seconds per request")
    g.add_argument("--llm-cache-dir", type=Path, default=None, help="answer cache; re-runs cost nothing")
    g.add_argument("--llm-batch", action="store_true", help="use the Batch API (half price, slower)")
    g.add_argument("--llm-price", action="append", default=[], metavar="MODEL=IN,OUT",
                   help="USD per 1M input,output tokens, overriding the built-in table; repeatable")


def config_from_args(args: argparse.Namespace) -> LLMConfig:
    """Build an LLMConfig from the options added by `add_llm_arguments`."""
    prices = {}
    for spec in args.llm_price:
        try:
            model, costs = spec.split("=", 1)
            cin, cout = (float(x) for x in costs.split(","))
        except ValueError:
            raise ValueError(f"--llm-price {spec!r}: expected MODEL=INPUT_USD,OUTPUT_USD per 1M tokens") from None
        prices[model] = (cin, cout)
    return LLMConfig(model=args.llm_model, base_url=args.llm_base_url, api_key_env=args.llm_api_key_env,
                     concurrency=args.llm_concurrency, max_retries=args.llm_max_retries, timeout_s=args.llm_timeout,
                     cache_dir=args.llm_cache_dir, batch=args.llm_batch, prices=prices)
