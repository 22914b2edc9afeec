"""What the broker's transaction verification (KIP-890 part 1) costs an answer's transaction.

Since Kafka 3.6 the leader of a partition checks with the transaction coordinator that a
transactional produce belongs to an ongoing transaction before appending it
(``transaction.partition.verification.enable``, on by default), unless the client speaks
transaction version 2, which aiokafka does not.  weir's answer writer opens its
transaction ahead and registers its two partitions before the answer comes, so the
check is the one round trip left in front of the answer's produce.

Default mode: two single-node brokers, the check turned off on one (as ``--set off``).
Each transaction is opened ahead the way the writer opens it (``begin_transaction`` and
both partitions registered, then 10 ms idle); then one record goes to each partition, the
acks are awaited (``produce``), and the transaction commits (``commit``).  ``plain`` is an
idempotent ``acks=all`` send without a transaction, for scale.  Blocks of 50 transactions
alternate between the brokers, after 100 on each to warm up.

``--set on|off --bootstrap host:port`` instead sets the flag on every broker of a running
cluster (a dynamic config: no restart), to run ``weir bench --bootstrap`` against it.  It
replaces the brokers' per-broker dynamic configs: use it on a throw-away broker.

    python benchmarks/txn_verification.py [--rounds 6] [--json]
    python benchmarks/txn_verification.py --set off --bootstrap 127.0.0.1:19092
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from weir.bench_measures import percentile
from weir.core.config import BrokerSettings, load_settings
from weir.topics._aiokafka import add_to_transaction
from weir.topics.admin import TopicAdmin
from weir.topics.broker import LocalBroker, free_port_pair
from weir.topics.names import TopicSpec

FLAG = "transaction.partition.verification.enable"
MEASURES = ("produce", "commit", "plain")


def start_broker() -> LocalBroker:
    """A throw-away single-node broker."""
    broker = LocalBroker(
        load_settings(broker=BrokerSettings(port=free_port_pair())),
        state_dir=Path(tempfile.mkdtemp(prefix="weir-txnv-")),
    )
    broker.start()
    return broker


async def clients(bootstrap: str) -> tuple[AIOKafkaProducer, AIOKafkaProducer]:
    async with TopicAdmin(load_settings(kafka_bootstrap=bootstrap)) as admin:
        await admin.ensure([TopicSpec("r", 4, 1), TopicSpec("c", 4, 1)])
    tx = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"txnv-{bootstrap}",
        enable_idempotence=True,
        acks="all",
        linger_ms=0,
        transaction_timeout_ms=60_000,
    )
    plain = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=0
    )
    await tx.start()
    await plain.start()
    return tx, plain


async def block(
    tx: AIOKafkaProducer, plain: AIOKafkaProducer, n: int, out: dict[str, list[float]]
) -> None:
    for _ in range(n):
        await tx.begin_transaction()
        add_to_transaction(tx, [TopicPartition("r", 0), TopicPartition("c", 0)])
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        acks = [
            await tx.send("r", b"v" * 200, key=b"k", partition=0),
            await tx.send("c", b"1", key=b"k", partition=0),
        ]
        await asyncio.gather(*acks)
        t1 = time.perf_counter()
        await tx.commit_transaction()
        t2 = time.perf_counter()
        await asyncio.sleep(0.005)
        t3 = time.perf_counter()
        await (await plain.send("r", b"v" * 200, key=b"k", partition=1))
        t4 = time.perf_counter()
        out["produce"].append((t1 - t0) * 1000)
        out["commit"].append((t2 - t1) * 1000)
        out["plain"].append((t4 - t3) * 1000)
        await asyncio.sleep(0.005)


async def compare(rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    brokers = {"verification on": start_broker()}
    brokers["verification off"] = start_broker()
    try:
        await set_flag(brokers["verification off"].bootstrap, on=False)
        pairs = {name: await clients(b.bootstrap) for name, b in brokers.items()}
        samples: dict[str, dict[str, list[float]]] = {
            name: {m: [] for m in MEASURES} for name in brokers
        }
        for pair in pairs.values():
            await block(*pair, 100, {m: [] for m in MEASURES})
        names = list(pairs)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                await block(*pairs[name], 50, samples[name])
        for tx, plain in pairs.values():
            await tx.stop()
            await plain.stop()
    finally:
        for b in brokers.values():
            b.stop()
    return {
        name: {
            m: {"p50_ms": statistics.median(v), "p90_ms": percentile(v, 90), "n": len(v)}
            for m, v in measured.items()
        }
        for name, measured in samples.items()
    }


async def set_flag(bootstrap: str, *, on: bool) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        nodes = [b["node_id"] for b in (await admin.describe_cluster())["brokers"]]
        await admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.BROKER, str(n), {FLAG: str(on).lower()})
                for n in nodes
            ]
        )
    finally:
        await admin.close()
    return nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="blocks of 50 per broker")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--set", choices=("on", "off"), help="set the flag on a running cluster")
    parser.add_argument("--bootstrap", help="the cluster for --set")
    args = parser.parse_args()
    if args.set:
        if not args.bootstrap:
            parser.error("--set needs --bootstrap")
        nodes = asyncio.run(set_flag(args.bootstrap, on=args.set == "on"))
        print(f"{FLAG}={args.set == 'on'} on brokers {nodes}")
        return
    results = asyncio.run(compare(args.rounds))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'ms':<18}" + "".join(f"{m + ' p50 / p90':>22}" for m in MEASURES))
    for name, measured in results.items():
        cells = "".join(
            f"{measured[m]['p50_ms']:>13.2f} / {measured[m]['p90_ms']:>5.2f}" for m in MEASURES
        )
        print(f"{name:<18}{cells}   (n={measured['produce']['n']})")


if __name__ == "__main__":
    main()
