"""The Faust worker's app: patient events in, escalations and dead letters out (DESIGN §1, §2, §6).

How a record flows:

1. ``build(settings)`` makes the Faust app: the three topics, the ``patients`` table (RocksDB,
   compacted changelog) holding each patient's engine state, and one agent with
   ``concurrency=1`` (faust #606: with more, a commit can pass an event still in flight).
2. The agent takes the records in batches (``faust_patches.take_batches``) and hands each
   batch to :class:`~streams.worker.pipeline.Monitor`, which decodes every record (or
   dead-letters it with its reason), runs it through its partition's
   :class:`~streams.clinical.partition.PartitionEngine` (the same engine as ``stepcare
   replay``), publishes the escalations and, once per batch, makes the outputs safe and writes
   the changed states (at least once or exactly once: see :mod:`streams.worker.pipeline`).
3. With ``clock = "wall"`` a timer appends a ``CLOCK_TICK`` with the wall time to every
   input partition this worker owns, so timers fire in order with the events, as in a replay.

:func:`streams.worker.runner.run` runs the app in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.types import TP
from faust.types.auth import CredentialsT
from faust.web.drivers import aiohttp as faust_aiohttp
from prometheus_client import REGISTRY

from streams.clinical.policy import Policy, resolve_policy
from streams.kafka.registry import Framing, framing_for
from streams.kafka.settings import Settings
from streams.worker import faust_patches
from streams.worker.metrics import WorkerMetrics
from streams.worker.outputs import DeliveredOutputs, Outputs, TransactionalOutputs
from streams.worker.pipeline import Monitor
from streams.worker.probes import CatchUp, LagProbe, SubscriberLagProbe, Ticker
from streams.worker.states import TABLE

LAG_INTERVAL = 5.0  # seconds between consumer-lag measurements
CATCH_UP_INTERVAL = 1.0  # seconds between checks of a replay run's committed offsets
# Seconds after a wall-clock tick before the lag is measured. The tick appends one record per
# partition, which the worker commits within the commit interval (1 s); measured at once (both
# timers fire together: 60 s is 12 x 5 s) the gauge read 1 per partition every minute while
# Kafka's tools, asked a second later, said 0.
TICK_SETTLE = 2.5


def build(
    settings: Settings,
    policy: Policy | None = None,
    framing: Framing | None = None,
    *,
    web: bool = True,
    catch_up: CatchUp | None = None,
) -> faust.App:
    """The worker's Faust app, configured from ``settings``. ``framing``: how escalations are
    written and registry-framed input read (default: as the settings say; with the registry
    framing that registers the schemas, ``streams.kafka.registry.framing_for``). ``web``:
    serve /metrics, /health and /ready (False: no web server, a replay run's default).
    ``catch_up``: stop the worker (cleanly, as on SIGTERM) once it says the run caught up."""
    policy = policy or resolve_policy(settings.policy)
    if framing is None:
        framing = framing_for(
            settings,
            events_topic=settings.input_topic,
            escalations_topic=settings.escalations_topic,
        )
    faust_patches.apply()  # faust 0.15.3 can lose an event waiting while a table recovers
    app = App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store=settings.store,
        datadir=str(settings.data_dir),
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        web_enabled=web,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # faust's own views (tables, router, stats, graph, /): off. MetricsOnlyWeb serves none
        # of them whatever these say; they keep faust's log and its `app.conf` truthful.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
    )
    app.stepcare_web = (settings.web_host, settings.web_port)
    events = app.topic(settings.input_topic, key_type=bytes, value_type=bytes)
    escalations = app.topic(settings.escalations_topic, key_type=bytes, value_type=bytes)
    dead_letters = app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes)
    patients = app.Table(
        TABLE,
        key_type=bytes,  # the patient id as UTF-8, as on the input topic
        value_type=bytes,  # streams.formats.state bytes
        partitions=settings.partitions,
        help="Each patient's engine state, and each partition's clock.",
    )
    metrics = WorkerMetrics(REGISTRY, policy)
    metrics.last_processed.set(time.time())  # "not since it started", rather than "since 1970"
    outputs: Outputs = (
        DeliveredOutputs(settings)
        if settings.processing_guarantee == "at_least_once"
        else TransactionalOutputs(app)
    )
    monitor = Monitor(
        settings, policy, patients, escalations, dead_letters, metrics, outputs, framing
    )
    monitor.flowing = app.flow_control.is_active

    if settings.processing_guarantee == "at_least_once":

        @app.task
        async def acknowledge() -> None:
            await monitor.acknowledge_in_order()

    # exactly_once: no transaction commits half-way through an event (worker/faust_patches.py).
    exclusive = (
        faust_patches.commit_lock(app)
        if settings.processing_guarantee == "exactly_once"
        else contextlib.nullcontext()
    )

    batch_size, linger = settings.batch_size, settings.batch_linger_ms / 1000

    @app.agent(events, concurrency=1)
    async def monitor_patients(stream: faust.StreamT) -> None:
        # Where faust's table writes the changelog (exactly_once; the memory store): each batch
        # writes its touched patients' states at once, up to a batch of them and the clocks.
        # faust's producer buffer warns "producer buffer full" (and makes the streams wait)
        # above 100 records: every batch of more than 100 patients did, on a clean start too.
        # Its bound is the batch's: it still ebbs between batches.
        app.producer.buffer.max_messages = max(
            app.producer.buffer.max_messages, batch_size + settings.partitions
        )
        # Acknowledged by the monitor, batch by batch, once the batch's outputs are safe.
        async for batch in faust_patches.take_batches(stream, batch_size, linger):
            async with exclusive:  # exactly_once: no transaction cuts a batch
                await monitor.handle_batch(batch)

    @app.on_partitions_assigned.connect
    async def forget_engines(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        monitor.reset()

    def input_partitions() -> list[TP]:
        return sorted(tp for tp in app.consumer.assignment() if tp.topic == settings.input_topic)

    lag_probe = LagProbe(settings)
    last_tick = [float("-inf")]  # the event loop's time of the last wall-clock tick

    @app.timer(LAG_INTERVAL, on_leader=False)
    async def measure_lag() -> None:
        loop = asyncio.get_running_loop()
        while True:
            settle = last_tick[0] + TICK_SETTLE - loop.time()
            if settle > 0:  # ticks just appended: measured once the worker has committed them
                await asyncio.sleep(settle)
            ticked = last_tick[0]
            owned = [tp.partition for tp in input_partitions()]
            lags = await loop.run_in_executor(None, lag_probe.measure, owned)
            if last_tick[0] == ticked:  # else a tick came meanwhile: measure again after it
                break
        for partition in range(settings.partitions):
            metrics.consumer_lag.labels(str(partition)).set(lags.get(partition, 0))

    subscribers = settings.subscribers()
    if subscribers:
        subscriber_probe = SubscriberLagProbe(settings, subscribers)

        @app.timer(float(settings.subscriber_lag_interval), on_leader=False)
        async def measure_subscriber_lag() -> None:
            loop = asyncio.get_running_loop()
            lags = await loop.run_in_executor(None, subscriber_probe.measure)
            for group, lag in lags.items():
                for partition, records in lag.records.items():
                    metrics.subscriber_lag.labels(group, str(partition)).set(records)
                metrics.subscriber_lag_seconds.labels(group).set(lag.seconds)

    if catch_up is not None:
        stopping = asyncio.Event()

        @app.timer(CATCH_UP_INTERVAL, on_leader=False)
        async def until_caught_up() -> None:
            if stopping.is_set():
                return
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(None, catch_up.check):
                stopping.set()
                catch_up.close()
                os.kill(os.getpid(), signal.SIGTERM)  # the clean stop of SIGTERM: exit 0

    if settings.clock == "wall":
        ticker = Ticker(settings)

        @app.timer(float(settings.tick_interval), on_leader=False)
        async def tick() -> None:
            ticker.tick([tp.partition for tp in input_partitions()])  # only the ones it owns
            last_tick[0] = asyncio.get_running_loop().time()

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        """The process is alive and its event loop answers."""
        return web.json({"status": "alive"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        """Partitions assigned and tables recovered: the worker is watching its patients."""
        owned = [tp.partition for tp in input_partitions()] if app.consumer else []
        recovered = app.tables.recovery.completed.is_set()
        body = {"ready": bool(owned) and recovered, "partitions": owned, "recovered": recovered}
        return web.json(body, status=200 if body["ready"] else 503)

    # /metrics on the web port: stepcare's metrics (streams/worker/metrics.py) and Faust's own.
    setup_prometheus_sensors(
        app, pattern="/metrics", registry=REGISTRY, name_prefix="stepcare_faust"
    )
    return app


class MetricsOnlyWeb(faust_aiohttp.Web):
    """faust's aiohttp web server with none of faust's views, bound where the settings say.

    faust 0.15.3 (``faust/web/base.py`` ``Web._enabled_blueprints``) mounts blueprints by
    default: ``/table/<name>/<key>/`` serves any key of any table (here: any patient's state),
    ``/router/`` the cluster's topology, ``/`` a status or statistics page, ``/graph/`` the
    service tree. Each has an app setting, but faust's settings read environment variables
    *over* the values given to ``faust.App`` (``APP_WEB_TABLES_ENABLED``, ``WEB_BIND``, ...;
    ``faust/types/settings/base.py`` ``_init_settings``): so no blueprint at all here, and the
    socket is bound to STEPCARE_WEB_HOST:STEPCARE_WEB_PORT, not to ``conf.web_bind`` (whose
    default is 0.0.0.0). The worker's own pages (/metrics, /health, /ready) are added by
    :func:`build` with ``app.page``.
    """

    default_blueprints = ()
    production_blueprints = ()
    debug_blueprints = ()
    optional_blueprints = ()

    def _new_transport_tcp(self) -> Any:
        host, port = self.app.stepcare_web  # type: ignore[attr-defined]
        return faust_aiohttp.TCPSite(
            self._runner, host, port, ssl_context=self.app.conf.web_ssl_context
        )


class App(faust.App):
    """faust's App, with the web server of :class:`MetricsOnlyWeb`."""

    stepcare_web: tuple[str, int] = ("127.0.0.1", 6066)  # (host, port), set by build()

    def _new_web(self) -> Any:  # faust 0.15.3: ``App.web`` is ``_new_web()``, cached
        return MetricsOnlyWeb(self)


def _credentials(settings: Settings) -> CredentialsT | None:
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = settings.ssl_context()  # SettingsError naming the file's variable
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_secret(),
        ssl_context=context,
        mechanism=settings.sasl_mechanism,
    )
