"""The one configuration module: every setting comes from an environment variable.

Each entry of ``SETTINGS`` is one row of the README's settings table
(`ticktape config` prints it).  Code reads ``settings()`` and never ``os.environ``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import cast

from .core.errors import ConfigError  # the settings' error is the core's

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_SYMBOLS = (
    "AAPL MSFT GOOGL AMZN NVDA META TSLA BRK-B UNH JNJ JPM V PG XOM MA HD CVX LLY ABBV MRK "
    "AVGO PEP KO COST WMT MCD CSCO TMO ACN ABT ADBE DHR VZ CMCSA NKE CRM NFLX TXN INTC DIS "
    "AMD PFE PM ORCL WFC UPS RTX HON QCOM LIN"
).split()


def _setting(
    env: str,
    default,
    doc: str,
    *,
    secret: bool = False,
    low=None,
    above=None,
    high=None,
    below=None,
    choices: tuple[str, ...] = (),
    empty: bool = False,
):
    """A setting; a number may have bounds: ``low`` <= value, ``above`` < value, value <= ``high``,
    value < ``below``; a word may have ``choices`` (case-insensitive).  With ``empty``, an
    empty variable is a value (``TSDB_RETENTION_TICKS=`` = keep), else it means the default."""
    return field(
        default=default,
        metadata={
            "env": env,
            "doc": doc,
            "secret": secret,
            "empty": empty,
            "bounds": (low, above, high, below),
            "choices": choices,
        },
    )


def _out_of_bounds(value, bounds) -> str | None:
    """What a number breaks of its bounds, or None."""
    low, above, high, below = bounds
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if low is not None and value < low:
        return f"at least {low}"
    if above is not None and value <= above:
        return f"more than {above}"
    if high is not None and value > high:
        return f"at most {high}"
    if below is not None and value >= below:
        return f"less than {below}"
    return None


@dataclass(frozen=True)
class Settings:
    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap_servers: str = _setting(
        "KAFKA_BOOTSTRAP_SERVERS", "", "Kafka bootstrap servers; empty = the local stack's broker"
    )
    kafka_security_protocol: str = _setting(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    kafka_sasl_mechanism: str = _setting(
        "KAFKA_SASL_MECHANISM",
        "",
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        choices=("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    kafka_sasl_username: str = _setting("KAFKA_SASL_USERNAME", "", "SASL user name")
    kafka_sasl_password: str = _setting("KAFKA_SASL_PASSWORD", "", "SASL password", secret=True)
    kafka_ssl_ca_location: str = _setting("KAFKA_SSL_CA_LOCATION", "", "CA bundle file for SSL")
    kafka_session_timeout_ms: int = _setting(
        "KAFKA_SESSION_TIMEOUT_MS",
        6000,
        "consumer-group session timeout (the local broker's join waits about half of it)",
        low=1,
    )
    kafka_linger_ms: int = _setting(
        "KAFKA_LINGER_MS",
        5,
        "longest a producer (the worker's included) waits to fill a record batch: fewer, larger batches "
        "cost the broker less (the local broker's fetches slow down as small batches pile up)",
        low=0,
    )
    kafka_fetch_max_wait_ms: int = _setting(
        "KAFKA_FETCH_MAX_WAIT_MS",
        100,
        "longest a consumer's fetch waits when there is no data: the local broker answers a waiting fetch "
        "only then (up to this much latency per hop; 10 costs an idle worker and the broker ~0.5 core), "
        "Apache Kafka answers on arrival (500 is its default)",
        low=0,
    )
    topic_prefix: str = _setting(
        "TOPIC_PREFIX", "", "prefix for every topic and consumer group (a backtest uses bt.<run_id>.)"
    )
    schema_registry_url: str = _setting(
        "SCHEMA_REGISTRY_URL", "", "Confluent Schema Registry; empty = registry-free encoding"
    )
    # --- storage -----------------------------------------------------------------
    database_url: str = _setting(
        "DATABASE_URL", "", "PostgreSQL/TimescaleDB URL (may carry sslmode); empty = local stack", secret=True
    )
    redis_url: str = _setting(
        "REDIS_URL", "", "Redis URL (redis:// or rediss://, may carry a password); empty = local stack", secret=True
    )
    redis_ttl_s: int = _setting("REDIS_TTL_S", 86400, "TTL of the latest-state keys in Redis", low=1)
    # --- local stack ---------------------------------------------------------------
    home: str = _setting("TICKTAPE_HOME", str(REPO_ROOT / ".ticktape"), "where the local stack keeps its data and pids")
    # --- market data -------------------------------------------------------------
    symbols: str = _setting(
        "SYMBOLS", " ".join(DEFAULT_SYMBOLS), "symbols for the simulator and yahoo (space/comma separated)"
    )
    sim_seed: int = _setting("SIM_SEED", 42, "simulator seed (same seed, same ticks)")
    sim_tick_rate: float = _setting("SIM_TICK_RATE", 2000.0, "simulator ticks per second, all symbols", above=0)
    sim_quiet: str = _setting(
        "SIM_QUIET",
        "",
        "simulator: symbols that go quiet for a while, SYM[+SYM...]@START_S:DURATION_S (seconds of event time "
        "from the start), comma separated; empty = none",
    )
    sim_start: str = _setting("SIM_START", "", "simulator event-time start (ISO-8601); empty = now (live pace)")
    tick_batch_max: int = _setting(
        "TICK_BATCH_MAX",
        0,
        "producers: up to this many ticks of a symbol per md.ticks message (a TickBatch); 0 = one tick per message",
        low=0,
    )
    tick_batch_ms: int = _setting(
        "TICK_BATCH_MS",
        20,
        "producers: longest a tick waits for its batch (wall and event time); keep it well below BAR_GRACE_MS",
        low=0,
    )
    heartbeat_ms: int = _setting(
        "HEARTBEAT_MS",
        1000,
        "live sources: a Heartbeat (the source's clock) to each md.ticks partition that got nothing for this "
        "long, so quiet partitions' windows close; 0 = none",
        low=0,
    )
    alpaca_api_key_id: str = _setting(
        "ALPACA_API_KEY_ID",
        "",
        "Alpaca API key id (produce websocket --provider alpaca; EXECUTION_VENUE=alpaca-paper)",
        secret=True,
    )
    alpaca_api_secret_key: str = _setting("ALPACA_API_SECRET_KEY", "", "Alpaca API secret key", secret=True)
    alpaca_feed: str = _setting("ALPACA_FEED", "iex", "Alpaca data feed: iex (free), sip, delayed_sip, test")
    polygon_api_key: str = _setting(
        "POLYGON_API_KEY", "", "Polygon.io API key (produce websocket --provider polygon)", secret=True
    )
    polygon_feed: str = _setting(
        "POLYGON_FEED",
        "realtime",
        "Polygon.io stocks cluster: realtime (socket.polygon.io) or delayed (delayed.polygon.io, 15 minutes)",
    )
    websocket_url: str = _setting(
        "WEBSOCKET_URL", "", "override the provider's stream URL (sandbox, a local test server)"
    )
    websocket_queue_size: int = _setting(
        "WEBSOCKET_QUEUE_SIZE", 100000, "events buffered between the feed and Kafka (bounded)", low=1
    )
    websocket_on_full: str = _setting(
        "WEBSOCKET_ON_FULL",
        "block",
        "when that buffer is full: block (stop reading the socket) or drop (count and report drops)",
    )
    websocket_ping_interval_s: float = _setting(
        "WEBSOCKET_PING_INTERVAL_S", 10.0, "heartbeat: seconds between WebSocket pings", above=0
    )
    websocket_timeout_s: float = _setting(
        "WEBSOCKET_TIMEOUT_S", 10.0, "a ping or handshake step unanswered this long → reconnect", above=0
    )
    websocket_backoff_base_s: float = _setting(
        "WEBSOCKET_BACKOFF_BASE_S", 0.5, "first reconnect delay (doubles per failure, full jitter)", low=0
    )
    websocket_backoff_max_s: float = _setting("WEBSOCKET_BACKOFF_MAX_S", 30.0, "longest reconnect delay", low=0)
    market_calendar: str = _setting(
        "MARKET_CALENDAR",
        "XNYS",
        "exchange calendar (exchange_calendars name, e.g. XNYS, XLON) whose sessions live sources publish in, "
        "the risk engine accepts orders in (MARKET_CLOSED) and backtests/training keep; off = always open",
    )
    market_pre_minutes: int = _setting(
        "MARKET_PRE_MINUTES",
        0,
        "minutes before each open that count as the session (pre-market; 330 = 04:00 ET)",
        low=0,
        high=720,
    )
    market_post_minutes: int = _setting(
        "MARKET_POST_MINUTES",
        0,
        "minutes after each close that count as the session (post-market; 240 = 20:00 ET)",
        low=0,
        high=720,
    )
    sim_calendar: int = _setting(
        "SIM_CALENDAR",
        0,
        "1 = the simulator follows MARKET_CALENDAR: ticks only in sessions (closed time skipped), "
        "a close heartbeat at each close",
        low=0,
        high=1,
    )
    # --- stream processing ---------------------------------------------------------
    bar_intervals: str = _setting("BAR_INTERVALS", "1s,1m", "bar intervals (s, m, h suffixes)")
    bar_grace_ms: int = _setting(
        "BAR_GRACE_MS", 500, "how long after window end a bar waits for out-of-order ticks", low=0
    )
    max_event_ahead_ms: int = _setting(
        "MAX_EVENT_AHEAD_MS",
        300000,
        "a tick, heartbeat or bar whose event time is more than this ahead of the wall clock goes to the "
        "dead-letter topic and moves nothing",
        low=1,
    )
    processor_batch_size: int = _setting("PROCESSOR_BATCH_SIZE", 5000, "max events an agent takes per batch", low=1)
    processor_batch_ms: int = _setting("PROCESSOR_BATCH_MS", 50, "max wait for a batch to fill, milliseconds", low=1)
    processor_checkpoint_ms: int = _setting(
        "PROCESSOR_CHECKPOINT_MS",
        1000,
        "how often the bars, indicators and predict stages save their state and input offsets (outputs are "
        "sent at once; the trading desks save after every batch); a restart re-reads and re-sends, "
        "identically, what came after the last save; 0 = after every batch",
        low=0,
    )
    worker_event_loop: str = _setting(
        "WORKER_EVENT_LOOP",
        "uvloop",
        "the worker's asyncio event loop: uvloop (libuv, less CPU per message) or asyncio (the standard library's)",
        choices=("UVLOOP", "ASYNCIO"),
    )
    worker_stages: str = _setting("WORKER_STAGES", "", "stages a worker runs (comma separated, e.g. bars); empty = all")
    topic_partitions: int = _setting(
        "TOPIC_PARTITIONS",
        0,
        "partitions of every symbol-keyed topic created from now on (co-partitioned); 0 = the catalog's",
        low=0,
    )
    # --- trading (strategy, risk, paper execution, portfolio) ------------------------
    trading_account: str = _setting("TRADING_ACCOUNT", "paper", "account the strategy trades for")
    starting_cash: float = _setting("STARTING_CASH", 1_000_000.0, "the account's cash before any fill", above=0)
    strategy_interval: str = _setting("STRATEGY_INTERVAL", "1m", "bar interval whose predictions the strategy trades")
    strategy_enter_p: float = _setting(
        "STRATEGY_ENTER_P", 0.60, "go long when p_up >= this (short when p_up <= 1 - this)", above=0.5, below=1
    )
    strategy_exit_p: float = _setting(
        "STRATEGY_EXIT_P",
        0.55,
        "stay long while p_up >= this (short while p_up <= 1 - this); enter - exit = hysteresis",
        above=0,
        below=1,
    )
    strategy_sides: str = _setting(
        "STRATEGY_SIDES", "long_short", "long_short or long_only", choices=("LONG_SHORT", "LONG_ONLY")
    )
    strategy_min_hold_bars: int = _setting(
        "STRATEGY_MIN_HOLD_BARS", 5, "bars a new target stands before it may change again", low=0
    )
    strategy_sizing: str = _setting(
        "STRATEGY_SIZING",
        "fixed_notional",
        "fixed_notional or vol_target (position size rule)",
        choices=("FIXED_NOTIONAL", "VOL_TARGET"),
    )
    strategy_notional: float = _setting(
        "STRATEGY_NOTIONAL", 10_000.0, "notional per position (vol_target: at the target volatility)", above=0
    )
    strategy_vol_target: float = _setting(
        "STRATEGY_VOL_TARGET", 0.20, "vol_target: annualized volatility a position is sized to", above=0
    )
    strategy_max_vol_scale: float = _setting(
        "STRATEGY_MAX_VOL_SCALE", 3.0, "vol_target: cap of vol_target / volatility_20", above=0
    )
    strategy_lot_size: float = _setting(
        "STRATEGY_LOT_SIZE", 1.0, "order quantities are whole multiples of this", above=0
    )
    strategy: str = _setting(
        "STRATEGY",
        "ticktape.api:PUpHysteresis",
        "the strategy class, package.module:Class (a ticktape.api.Strategy; see Write your own strategy)",
    )
    strategy_params: str = _setting(
        "STRATEGY_PARAMS", "{}", "STRATEGY's parameters, a JSON object (the built-in one takes STRATEGY_* instead)"
    )
    indicators: str = _setting(
        "INDICATORS",
        "",
        "user indicators, package.module:Class, comma separated (ticktape.api.Indicator; see Write your own indicator)",
    )
    exec_slippage_bps: float = _setting(
        "EXEC_SLIPPAGE_BPS", 1.0, "paper fills: price worsened by this many basis points", low=0
    )
    exec_commission: str = _setting(
        "EXEC_COMMISSION", "per_share", "paper fills: commission model, per_share or bps", choices=("PER_SHARE", "BPS")
    )
    exec_commission_per_share: float = _setting(
        "EXEC_COMMISSION_PER_SHARE", 0.005, "per_share model: commission per share", low=0
    )
    exec_commission_bps: float = _setting(
        "EXEC_COMMISSION_BPS", 1.0, "bps model: commission in basis points of notional", low=0
    )
    exec_commission_min: float = _setting(
        "EXEC_COMMISSION_MIN", 1.0, "minimum commission per fill (both models)", low=0
    )
    exec_market_data: str = _setting(
        "EXEC_MARKET_DATA",
        "ticks",
        "paper fills: ticks (next ask/bid after the order) or bars (next bar's open, bar-only sources)",
    )
    execution_venue: str = _setting(
        "EXECUTION_VENUE",
        "paper",
        "where approved orders execute: paper (the internal desk) or alpaca-paper (Alpaca's paper account, "
        "ALPACA_API_KEY_ID / ALPACA_API_SECRET_KEY)",
        choices=("PAPER", "ALPACA-PAPER"),
    )
    alpaca_trading_url: str = _setting(
        "ALPACA_TRADING_URL",
        "https://paper-api.alpaca.markets",
        "EXECUTION_VENUE=alpaca-paper: the Trading API's base URL (its trade_updates stream is <url>/stream)",
    )
    venue_timeout_s: float = _setting(
        "VENUE_TIMEOUT_S",
        10.0,
        "EXECUTION_VENUE=alpaca-paper: an order the venue has not answered after this long (retries included) "
        "is rejected, VENUE_UNANSWERED",
        above=0,
    )
    risk_config: str = _setting("RISK_CONFIG", "", "risk limits YAML file; empty = config/risk.yaml of the repo")
    risk_idle_ms: int = _setting(
        "RISK_IDLE_MS",
        10000,
        "a symbol (or an order waiting for its fill) more than this much event time behind the most advanced "
        "symbol holds the account back no longer; its later input is late (stream_processors/README.md); "
        "0 = wait for every symbol",
        low=0,
    )
    risk_max_pending: int = _setting(
        "RISK_MAX_PENDING",
        20000,
        "events the risk stage buffers per account for the ordering rule; past it the oldest are processed "
        "without waiting (counted)",
        low=1,
    )
    # --- sinks -----------------------------------------------------------------------
    sink_batch_size: int = _setting("SINK_BATCH_SIZE", 5000, "rows per database transaction", low=1)
    sink_max_latency_ms: int = _setting(
        "SINK_MAX_LATENCY_MS", 500, "max time a row waits before its batch is written", low=1
    )
    tsdb_compress_after: str = _setting(
        "TSDB_COMPRESS_AFTER",
        "7 days",
        "TimescaleDB: compress ticks/bars/indicators/predictions chunks older than this; empty = never",
        empty=True,
    )
    tsdb_retention_ticks: str = _setting(
        "TSDB_RETENTION_TICKS", "30 days", "TimescaleDB: drop tick chunks older than this; empty = keep", empty=True
    )
    tsdb_retention_bars: str = _setting(
        "TSDB_RETENTION_BARS",
        "365 days",
        "TimescaleDB: drop raw bar chunks older than this (bars_1h/bars_1d keep theirs); empty = keep",
        empty=True,
    )
    # --- dead letters ----------------------------------------------------------------
    dlq_max_bytes: int = _setting(
        "DLQ_MAX_BYTES",
        262144,
        "largest dead-letter record (key + value + headers); a bigger poison message is cut to fit, "
        "the cut marked in its headers",
        low=4096,
        high=1000000,
    )
    # --- monitoring ------------------------------------------------------------------
    metrics_port: int = _setting(
        "METRICS_PORT", 0, "port of this process's /metrics; 0 = the role's default port", low=0, high=65535
    )
    metrics_host: str = _setting("METRICS_HOST", "127.0.0.1", "address /metrics binds to")
    log_level: str = _setting(
        "LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    alert_webhook_url: str = _setting(
        "ALERT_WEBHOOK_URL",
        "",
        "Slack-compatible incoming webhook the local stack's Alertmanager posts "
        "alerts to; empty = alerts only in Alertmanager's UI (delivery attempts fail, logged)",
        secret=True,
    )

    # ----------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)):
                broken = _out_of_bounds(value, f.metadata["bounds"])
                if broken:
                    raise ConfigError(f"{f.metadata['env']}={value!r}: must be {broken}")
            choices = f.metadata["choices"]
            if choices and str(value).upper() not in choices:
                raise ConfigError(
                    f"{f.metadata['env']}={value!r}: must be one of " + ", ".join(c or "(empty)" for c in choices)
                )
        if not self.symbol_list:
            raise ConfigError(f"SYMBOLS={self.symbols!r}: names no symbol")
        if not self.trading_account:
            raise ConfigError("TRADING_ACCOUNT is empty: name the account the strategy trades for")
        if self.strategy_exit_p > self.strategy_enter_p:
            raise ConfigError(
                f"STRATEGY_EXIT_P={self.strategy_exit_p!r}: must be at most STRATEGY_ENTER_P={self.strategy_enter_p!r}"
            )
        if self.execution_venue.lower() == "alpaca-paper":
            if not (self.alpaca_api_key_id and self.alpaca_api_secret_key):
                raise ConfigError("EXECUTION_VENUE=alpaca-paper needs ALPACA_API_KEY_ID and ALPACA_API_SECRET_KEY set")
            if not self.alpaca_trading_url.startswith(("http://", "https://")):
                raise ConfigError(f"ALPACA_TRADING_URL={self.alpaca_trading_url!r}: must be an http(s):// URL")

    @property
    def symbol_list(self) -> list[str]:
        return [s for s in self.symbols.replace(",", " ").split() if s]

    @property
    def interval_list(self) -> list[str]:
        return [s.strip() for s in self.bar_intervals.split(",") if s.strip()]

    def topic(self, name: str) -> str:
        """The run's name for a catalog topic (the prefix namespaces a whole run)."""
        return f"{self.topic_prefix}{name}"

    def group(self, name: str) -> str:
        return f"{self.topic_prefix}ticktape.{name}"

    def redacted(self) -> dict[str, str]:
        """Settings as strings with secrets masked, safe for logs."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"]:
                value = redact_url(str(value)) if "url" in f.name else ("***" if value else "")
            out[f.metadata["env"]] = str(value)
        return out


def redact_url(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _convert(raw: str, typ, env: str):
    try:
        if typ in (int, "int"):
            return int(raw)
        if typ in (float, "float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{env}={raw!r} is not a number") from None
    return raw


# Endpoint settings that the running local stack fills in when the environment is silent.
_STACK_ENDPOINTS = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers",
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
}


def settings(**overrides) -> Settings:
    """Settings from the environment; keyword overrides win (used by tests and the CLI).

    Kafka, database and Redis not given by env vars come from the local stack
    (``ticktape stack up``) when it runs.
    """
    values = {}
    for f in fields(Settings):
        env = f.metadata["env"]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif env in os.environ and (os.environ[env] != "" or f.metadata["empty"]):
            values[f.name] = _convert(os.environ[env], f.type, env)
    missing = [env for env, name in _STACK_ENDPOINTS.items() if not values.get(name)]
    if missing:
        from .stack import LocalStack

        home = values.get("home") or cast(str, Settings.__dataclass_fields__["home"].default)  # it has a default
        local = LocalStack(home).endpoints()
        for env in missing:
            if env in local:
                values[_STACK_ENDPOINTS[env]] = local[env]
    return Settings(**values)


def settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, meaning) rows: the README's settings table."""
    rows = []
    for f in fields(Settings):
        default = f.default
        if f.name == "home":
            default = "<repo>/.ticktape"
        if f.name == "symbols":
            default = "the 50 large US stocks"
        rows.append((f.metadata["env"], str(default), f.metadata["doc"]))
    return rows


RUN_DEFAULTS_FILE = REPO_ROOT / "config" / "run.env"


def run_defaults() -> dict[str, str]:
    """The main job's settings (config/run.env: NAME=value lines, # comments), which
    `ticktape run` and the docker stack apply where the environment sets nothing."""
    out = {}
    for n, line in enumerate(RUN_DEFAULTS_FILE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or name.strip() not in _ENVS:
            raise ConfigError(f"{RUN_DEFAULTS_FILE}:{n}: {line!r} is not SETTING=value")
        out[name.strip()] = value.strip()
    return out


_ENVS = {f.metadata["env"] for f in fields(Settings)}


def set_in_environment() -> set[str]:
    """The settings' env vars the environment sets (as ``settings`` reads them)."""
    return {
        f.metadata["env"]
        for f in fields(Settings)
        if f.metadata["env"] in os.environ and (os.environ[f.metadata["env"]] != "" or f.metadata["empty"])
    }
