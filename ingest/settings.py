"""Configuration of the ingest processes (crawler, push endpoint, watched directory, replay)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from riskstream.settings import CommonSettings

DATA_DIR = Path(__file__).resolve().parent / "data"
CONTACT_URL = "https://github.com/riskstream/riskstream/blob/main/docs/ingest.md"


class IngestSettings(CommonSettings):
    """Knobs of the ingest edge. Every field is also a CLI flag and a ``RISKSTREAM_*`` variable."""

    # ---- crawler: politeness and robustness ------------------------------------------------------------------
    user_agent: str = Field(
        default=f"riskstream-crawler/0.1 (+{CONTACT_URL})",
        description="User-Agent sent with every request and matched against robots.txt groups; keep a contact URL "
        "in it so site owners can reach you instead of blocking you.",
    )
    robots_agent: str = Field(
        default="riskstream-crawler",
        description="Product token looked up in robots.txt groups (RFC 9309 matches the product token, not the "
        "whole User-Agent).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts the crawler may contact (SSRF guard; each redirect hop is checked). Empty: only the "
        "hosts of the --feed URLs. Wider lists reach more article pages but let a feed point the crawler anywhere.",
    )
    per_host_interval_s: float = Field(
        default=1.0,
        ge=0.0,
        description="Minimum seconds between two requests to one host (a robots.txt Crawl-delay larger than this "
        "wins). Lower crawls faster but loads the site more.",
    )
    max_crawl_delay_s: float = Field(
        default=60.0,
        ge=0.0,
        description="Cap on a robots.txt Crawl-delay; a host asking for more is crawled at this pace and logged.",
    )
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="TCP connect timeout; lower fails dead hosts faster, higher tolerates slow networks.",
    )
    read_timeout_s: float = Field(
        default=15.0, gt=0, description="Timeout between two reads of a response; slow servers beyond it are retried."
    )
    max_response_bytes: int = Field(
        default=5_000_000,
        gt=0,
        description="Largest response body read (streamed; the transfer is aborted beyond it). Higher accepts huge "
        "pages at the cost of memory.",
    )
    max_redirects: int = Field(
        default=5, ge=0, description="Redirect hops followed (each checked for scheme, host and robots.txt)."
    )
    fetch_retries: int = Field(
        default=3,
        ge=1,
        description="Attempts per URL on timeouts, connection errors, 429 and 5xx (exponential "
        "backoff); more attempts ride out blips but make a dead host slower to skip.",
    )
    backoff_initial_s: float = Field(default=0.5, ge=0, description="First retry wait; doubles per attempt.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Longest wait between two retries.")
    max_retry_after_s: float = Field(
        default=120.0,
        ge=0,
        description="Longest Retry-After (429/503) honoured by waiting inside a run; a longer one is recorded and the "
        "URL is skipped until that time (a later --once run honours it).",
    )
    robots_cache_s: float = Field(
        default=24 * 3600.0,
        ge=0,
        le=24 * 3600.0,
        description="How long a fetched robots.txt is reused (RFC 9309: at most 24 h). Shorter notices rule changes "
        "sooner at the price of more robots.txt requests.",
    )
    crawl_interval_s: float = Field(
        default=300.0, gt=0, description="Seconds between two passes over the feeds when not --once."
    )
    fetch_articles: bool = Field(
        default=True,
        description="Follow each feed entry to its article page and extract the main text (else the entry summary "
        "is the text). Off is faster and lighter on sites but gives only teasers.",
    )
    min_article_chars: int = Field(
        default=40, ge=1, description="Extracted text shorter than this is treated as a failed extraction."
    )

    # ---- normalisation ----------------------------------------------------------------------------------------
    company_list: Path = Field(
        default=DATA_DIR / "companies.txt",
        description="Company list for entity tagging: one company per line, `Canonical name|alias|alias`. "
        "A longer list tags more companies but risks ambiguous aliases.",
    )
    language_sample_chars: int = Field(
        default=200,
        ge=20,
        description="Characters of text given to the language identifier: more is slightly more accurate on mixed "
        "text and slower (cld2: ~0.03 us/char on top of ~15 us per call; py3langid: ~1 us/char).",
    )
    language_detector: Literal["cld2", "py3langid"] = Field(
        default="cld2",
        description="Language identifier. cld2 (Compact Language Detector 2, C++): ~20 us per document, says "
        "unknown (no language) for text it cannot call; py3langid (pure Python): ~8x slower, always names a "
        "language, also on tweets in English it sometimes calls Pidgin.",
    )

    prepare_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes that redact and enrich documents (language, entities) in parallel. Pays off only "
        "for expensive documents (long customer-service texts with many PII candidates) and free cores: each "
        "document is pickled both ways, which costs about as much as enriching a 1 KB news document. More uses "
        "more cores and ~100 MB each; 1 keeps everything in one process.",
    )

    # ---- deduplication ----------------------------------------------------------------------------------------
    exact_dedupe_channels: list[str] = Field(
        default_factory=lambda: ["news"],
        description="Channels whose exact duplicate texts are dropped. Customer-service text is off by default: "
        "two customers who write the same words are two complaints.",
    )
    near_dedupe_channels: list[str] = Field(
        default_factory=lambda: ["news"],
        description="Channels whose near-duplicates (syndicated copies) are linked to the first story.",
    )
    near_dup_threshold: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="Estimated Jaccard similarity of word shingles above which a document is a copy of an earlier "
        "story. Lower links more rewrites (and more false links).",
    )
    minhash_perm: int = Field(
        default=128, ge=16, le=512, description="MinHash permutations: more is more accurate and slower."
    )
    shingle_words: int = Field(default=3, ge=1, le=8, description="Words per shingle for near-duplicate detection.")
    dedupe_retention_days: float = Field(
        default=14.0,
        gt=0,
        description="Days of signatures loaded at start (stories older than this are not linked); longer uses "
        "more memory and start-up time.",
    )

    # ---- push endpoint ----------------------------------------------------------------------------------------
    push_host: str = Field(default="127.0.0.1", description="Address the push endpoint binds to.")
    push_port: int = Field(default=8088, ge=0, le=65535, description="Port of the push endpoint.")
    push_token: SecretStr | None = Field(
        default=None, description="Bearer token required by POST /v1/messages (the endpoint refuses to start without)."
    )
    max_body_bytes: int = Field(
        default=1_000_000,
        gt=0,
        description="Largest request body accepted (413 beyond); bigger batches mean fewer "
        "requests but more memory per request.",
    )
    max_batch_messages: int = Field(default=1000, gt=0, description="Largest number of messages in one request.")
    publish_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a request or file waits for the broker's acknowledgements before "
        "it is reported failed (HTTP 503). A batch the broker refuses for size is sent once more, by a new "
        "producer, with a wait of its own: such a call can take up to twice this.",
    )

    # ---- watched directory ------------------------------------------------------------------------------------
    files_poll_s: float = Field(default=5.0, gt=0, description="Seconds between two scans of the watched directory.")
    files_settle_s: float = Field(
        default=1.0,
        ge=0,
        description="A file modified less than this many seconds ago is left for the next scan (it may still be "
        "being written).",
    )
    files_source: str = Field(
        default="files",
        description="Source name of documents read from the directory "
        "(when a row has no `source`); it namespaces message ids.",
    )

    # ---- replay -----------------------------------------------------------------------------------------------
    replay_dedupe: bool = Field(
        default=False,
        description="Run deduplication on replayed datasets (off: replay ids are stable, so downstream overwrites, "
        "and dedupe would cost throughput).",
    )

    # ---- producer ---------------------------------------------------------------------------------------------
    compression: Literal["lz4", "gzip", "zstd", "snappy", "none"] = Field(
        default="lz4", description="Kafka compression: lz4 (fast), gzip (smaller, slower), zstd, snappy or none."
    )
    linger_ms: int = Field(default=10, ge=0, description="Producer linger: larger batches, higher latency.")
    batch_bytes: int = Field(default=262_144, gt=0, description="Producer batch size in bytes.")
    producer_retries: int = Field(
        default=10, ge=0, description="Producer retries per record inside the delivery timeout (idempotent)."
    )
    max_record_bytes: int = Field(
        default=1_048_576,
        ge=65_536,
        description="Largest record the producer sends (its max_request_size). A document larger than this, or than "
        "the raw topic's max.message.bytes where that is smaller, is not published: it becomes a `too_large` dead "
        "letter (push: listed in the response's `rejected`). Raise it together with the topics' max.message.bytes.",
    )

    @field_validator("allowed_hosts", mode="after")
    @classmethod
    def _lower_hosts(cls, value: list[str]) -> list[str]:
        return [h.strip().lower() for h in value if h.strip()]
