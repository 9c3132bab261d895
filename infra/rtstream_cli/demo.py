"""`rtstream demo`: publish a realistic stream of fake events for one entity, so
a new user sees the dashboard move.

Transactions come from a set of merchants with categories and typical amounts;
each one is followed by the ``balance.updated`` of its account with a consistent
``newBalance``/``change``; agents categorize and review transactions and coach
budgets; data syncs complete now and then. Bounded by ``--count`` and/or
``--duration``; the target is the running ``rtstream dev`` (its ``dev.json``),
``--redis-url`` or ``REDIS_URL``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ENTITY = "demo-entity"

# merchant, category, typical spend range (positive = money out)
MERCHANTS: tuple[tuple[str, str, float, float], ...] = (
    ("Blue Bottle Coffee", "Coffee", 3.5, 9.0),
    ("Whole Foods Market", "Groceries", 18.0, 140.0),
    ("Trader Joe's", "Groceries", 12.0, 90.0),
    ("Shell", "Fuel", 30.0, 85.0),
    ("Uber", "Transport", 8.0, 45.0),
    ("Delta Air Lines", "Travel", 180.0, 720.0),
    ("Amazon", "Shopping", 9.0, 230.0),
    ("Netflix", "Subscriptions", 15.49, 15.49),
    ("Spotify", "Subscriptions", 10.99, 10.99),
    ("AWS", "Software", 40.0, 410.0),
    ("Chipotle", "Restaurants", 9.0, 28.0),
    ("Sweetgreen", "Restaurants", 12.0, 19.0),
    ("PG&E", "Utilities", 60.0, 210.0),
    ("Equinox", "Health", 95.0, 260.0),
    ("Office Depot", "Office", 14.0, 160.0),
)
INCOME: tuple[tuple[str, str, float, float], ...] = (
    ("Acme Corp Payroll", "Income", 2800.0, 3400.0),
    ("Stripe Payout", "Income", 250.0, 1900.0),
    ("Amazon Refund", "Refund", 9.0, 120.0),
)
ACCOUNTS: dict[str, float] = {"acc-checking": 4250.00, "acc-credit-card": -830.45, "acc-savings": 12000.00}
SYNC_SOURCES = ("plaid", "bank-feed", "stripe", "quickbooks")


@dataclass
class DemoFeed:
    """Deterministic for a given ``rng``: a stream of ``(topic, data, source)``."""

    rng: random.Random = field(default_factory=random.Random)
    balances: dict[str, float] = field(default_factory=lambda: dict(ACCOUNTS))
    _tx: int = 0
    _recent: list[dict[str, Any]] = field(default_factory=list)
    _spent: dict[str, float] = field(default_factory=dict)

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any], str]]:
        while True:
            roll = self.rng.random()
            if roll < 0.68 or not self._recent:
                yield from self._transaction()
            elif roll < 0.9:
                yield self._agent_action()
            else:
                yield self._sync()

    def _transaction(self) -> Iterator[tuple[str, dict[str, Any], str]]:
        self._tx += 1
        income = self.rng.random() < 0.08
        merchant, category, low, high = self.rng.choice(INCOME if income else MERCHANTS)
        amount = round(self.rng.uniform(low, high), 2)
        amount = amount if income else -amount
        if income:
            account = "acc-checking"
        else:
            account = "acc-credit-card" if self.rng.random() < 0.45 else "acc-checking"
        tx = {
            "transactionId": f"tx-{self._tx:05d}-{self.rng.randrange(16**6):06x}",
            "amount": amount,
            "merchant": merchant,
            "category": category,
            "accountId": account,
            "currency": "USD",
        }
        self._recent = (self._recent + [tx])[-10:]
        if not income:
            self._spent[category] = round(self._spent.get(category, 0.0) + -amount, 2)
        yield "transactions.new", tx, "data_pool"
        new_balance = round(self.balances[account] + amount, 2)
        self.balances[account] = new_balance
        yield "balance.updated", {"accountId": account, "newBalance": new_balance, "change": amount, "currency": "USD"}, "data_pool"

    def _agent_action(self) -> tuple[str, dict[str, Any], str]:
        tx = self.rng.choice(self._recent)
        kind = self.rng.random()
        if kind < 0.45:
            result = {"transactionId": tx["transactionId"], "category": tx["category"], "confidence": round(self.rng.uniform(0.82, 0.99), 2)}
            return "agent.action.completed", {"agentId": "categorizer", "action": "categorize_transaction", "result": result}, "agents"
        if kind < 0.8:
            score = round(self.rng.uniform(0.01, 0.35), 2)
            result = {"transactionId": tx["transactionId"], "verdict": "ok" if score < 0.3 else "review", "riskScore": score}
            return "agent.action.completed", {"agentId": "fraud-monitor", "action": "review_transaction", "result": result}, "agents"
        category, spent = max(self._spent.items(), key=lambda kv: kv[1]) if self._spent else (tx["category"], 0.0)
        limit = max(100.0, round(spent * self.rng.uniform(1.05, 1.6), -1))
        result = {"category": category, "spent": spent, "limit": limit, "message": f"{category}: {spent:.2f} of {limit:.0f} budget used"}
        return "agent.action.completed", {"agentId": "budget-coach", "action": "budget_check", "result": result}, "agents"

    def _sync(self) -> tuple[str, dict[str, Any], str]:
        source = self.rng.choice(SYNC_SOURCES)
        return "sync.completed", {"source": source, "recordsUpdated": self.rng.randint(1, 240), "durationMs": self.rng.randint(120, 4200)}, "sync"


def run_demo(
    entity_id: str,
    publish_one: Callable[[str, str, dict[str, Any], str], str],
    *,
    rate: float = 2.0,
    count: int = 200,
    duration: float | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_published: Callable[[str, str, dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Publish up to ``count`` events (0 = no count limit) at ``rate`` per second,
    stopping after ``duration`` seconds if given, or when ``stop`` is set.
    Returns how many were published."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if count < 0:
        raise ValueError("count must be >= 0")
    if count == 0 and duration is None and stop is None:
        raise ValueError("give --count or --duration: the demo is always bounded")
    if stop is not None:
        sleep = stop.wait  # type: ignore[assignment]
    interval = 1.0 / rate
    start = clock()
    published = 0
    for topic, data, source in DemoFeed(rng or random.Random()):
        if count and published >= count:
            break
        if stop is not None and stop.is_set():
            break
        if duration is not None and clock() - start >= duration:
            break
        event_id = publish_one(entity_id, topic, data, source)
        published += 1
        if on_published is not None:
            on_published(event_id, topic, data)
        # pace against the start time so slow publishes do not drift the rate
        delay = start + published * interval - clock()
        if delay > 0:
            sleep(delay)
    return published


class BackgroundDemo:
    """The demo feed in a daemon thread, for `rtstream dev` to start with the
    system so a new user's dashboard moves at once:

        demo = BackgroundDemo(redis_url, settings, "demo-entity", rate=1.0).start()
        ...
        demo.stop()

    Redis errors (e.g. while the system stops) end the feed quietly with a log line."""

    def __init__(self, redis_url: str, settings: Any, entity_id: str = DEFAULT_ENTITY, *, rate: float = 1.0, count: int = 0):
        self.redis_url = redis_url
        self.settings = settings
        self.entity_id = entity_id
        self.rate = rate
        self.count = count
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtstream-demo", daemon=True)

    def start(self) -> "BackgroundDemo":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        import redis

        from rtstream.adapters.redis_client import sync_client
        from rtstream.errors import RealtimeError
        from rtstream.adapters.publishing import publish

        client = sync_client(self.redis_url, socket_connect_timeout=3, socket_timeout=5)

        def publish_one(entity_id: str, topic: str, data: dict[str, Any], source: str) -> str:
            return publish(entity_id, topic, data, source=source, client=client, settings=self.settings)

        def count(*_: Any) -> None:
            self.published += 1

        try:
            run_demo(self.entity_id, publish_one, rate=self.rate, count=self.count, stop=self._stop, on_published=count)
        except (redis.RedisError, RealtimeError) as exc:
            logging.getLogger("rtstream.demo").warning("demo feed stopped: %s", exc)
        finally:
            client.close()


def describe(topic: str, data: dict[str, Any]) -> str:
    if topic == "transactions.new":
        return f"{data['merchant']} {data['amount']:+.2f} ({data.get('category', '')})"
    if topic == "balance.updated":
        return f"{data['accountId']} -> {data['newBalance']:.2f} ({data['change']:+.2f})"
    if topic == "agent.action.completed":
        return f"{data['agentId']}: {data['action']}"
    if topic == "sync.completed":
        return f"{data['source']}: {data['recordsUpdated']} records"
    return ""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="publish a realistic stream of fake events for one entity")
    p.add_argument("--entity", default=None, help=f"entity id (default: the dev dashboard's demo entity, else {DEFAULT_ENTITY})")
    p.add_argument("--rate", type=float, default=2.0, help="events per second (default 2)")
    p.add_argument("--count", type=int, default=200, help="events to publish; 0 = until --duration (default 200)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--redis-url", default=None, help="Redis of the system (default: REDIS_URL, else the running `rtstream dev`)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable stream")
    p.add_argument("--quiet", action="store_true", help="do not print each event")
    from .state import add_instance_options

    add_instance_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    import redis

    from rtstream.adapters.redis_client import sync_client
    from rtstream.errors import RealtimeError
    from rtstream.adapters.publishing import publish
    from rtstream.settings import Settings

    from .state import NoSuchInstance, Target

    # the same resolution as `rtstream token` and `rtstream publish`
    target = Target(args, "demo")
    try:
        redis_url = target.value("redis_url", flag=args.redis_url, env="REDIS_URL")
        entity = target.value("demo_entity", flag=args.entity, env="RTSTREAM_DEV_ENTITY", default=DEFAULT_ENTITY)
    except NoSuchInstance as exc:
        print(f"rtstream demo: {exc}", file=sys.stderr)
        return 2
    if not redis_url:
        print("rtstream demo: no running `rtstream dev` found and no --redis-url / REDIS_URL given", file=sys.stderr)
        return 2
    settings = Settings.from_env().replace(redis_url=redis_url)
    client = sync_client(redis_url, socket_connect_timeout=3)

    def publish_one(entity_id: str, topic: str, data: dict[str, Any], source: str) -> str:
        return publish(entity_id, topic, data, source=source, client=client, settings=settings)

    def show(event_id: str, topic: str, data: dict[str, Any]) -> None:
        if not args.quiet:
            print(f"{event_id}  {topic:<24} {describe(topic, data)}", flush=True)

    try:
        print(f"rtstream demo: publishing to entity {entity} at {args.rate:g}/s", file=sys.stderr, flush=True)
        n = run_demo(
            entity,
            publish_one,
            rate=args.rate,
            count=args.count,
            duration=args.duration,
            rng=random.Random(args.seed) if args.seed is not None else None,
            on_published=show,
        )
    except KeyboardInterrupt:
        return 130
    except (ValueError, RealtimeError) as exc:
        print(f"rtstream demo: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"rtstream demo: cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"rtstream demo: published {n} events", file=sys.stderr)
    return 0
