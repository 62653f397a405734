"""Kafka connection options (TLS, SASL) and topic administration, from Settings."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from imgdedup.config import Settings

log = logging.getLogger("imgdedup.kafka")


def connection_options(settings: Settings) -> dict[str, Any]:
    """Options every aiokafka client of this service shares."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile or None,
            certfile=settings.kafka_ssl_certfile or None,
            keyfile=settings.kafka_ssl_keyfile or None,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


async def ensure_topics(settings: Settings, *, partitions: int = 3, replication: int = 1) -> None:
    """Create the input, decisions and DLQ topics if missing (demo, tests, first deploy)."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=partitions, replication_factor=replication)
            for name in (settings.kafka_input_topic, settings.kafka_decisions_topic, settings.kafka_dlq_topic)
            if name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics", extra={"topics": [t.name for t in wanted]})
    finally:
        await admin.close()
