"""Turns `ScanOptions` into a `ScanSetup`: validated options, the service settings, the
parsed source and the opened checkpoint, which every phase reads and none changes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgdedup.config import ConfigError, Settings
from imgdedup.decisions.rules import Policy
from imgdedup.errors import InputError
from imgdedup.fingerprint import ImageLimits
from imgdedup.records import validate_namespace
from imgdedup.scan.checkpoint import Checkpoint, CheckpointMismatch, compatibility
from imgdedup.scan.cluster import parse_keeper
from imgdedup.scan.options import ScanError, ScanOptions
from imgdedup.scan.sources import SourceError, SourceSpec, parse_source


@dataclass(frozen=True, slots=True)
class ScanSetup:
    options: ScanOptions
    settings: Settings
    limits: ImageLimits
    policy: Policy
    criteria: tuple[str, ...]  # keeper rules, in priority order
    workers: int
    spec: SourceSpec
    out: Path
    checkpoint: Checkpoint


def configure(options: ScanOptions) -> ScanSetup:
    """Raises `ScanError` for anything that stops the scan before it starts."""
    o = options
    try:
        settings = o.settings or Settings.from_env()
    except ConfigError as exc:
        raise ScanError(str(exc)) from None
    try:
        criteria = parse_keeper(o.keeper)
    except ValueError as exc:
        raise ScanError(str(exc)) from None
    if o.price_min < 0 or o.price_max < o.price_min:
        raise ScanError("need 0 <= --price-min <= --price-max")
    if o.register:
        try:
            validate_namespace(o.namespace)
        except InputError as exc:
            raise ScanError(f"--namespace: {exc.detail}") from None
    try:
        spec = parse_source(
            o.source, endpoint_url=o.s3_endpoint_url, region=o.s3_region,
            allow_private_urls=o.allow_private_urls, fetch_timeout_s=settings.url_fetch_timeout_s,
        )
    except SourceError as exc:
        raise ScanError(str(exc)) from None
    limits = settings.image_limits
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        checkpoint = Checkpoint(
            out / "checkpoint.sqlite", source=spec.location, compat=compatibility(limits), fresh=o.fresh
        )
    except CheckpointMismatch as exc:
        raise ScanError(str(exc)) from None
    return ScanSetup(
        options=o, settings=settings, limits=limits, policy=settings.policy, criteria=criteria,
        workers=o.workers or settings.effective_hash_workers, spec=spec, out=out, checkpoint=checkpoint,
    )
