"""Audit transport of the engine: non-blocking emitter, write-ahead spool, forward client."""

from engine.transport.emitter import AuditEmitter, EmitterStats
from engine.transport.forward import DeliveryError, ForwardDelivery, HandshakeError
from engine.transport.spool import (
    Spool,
    SpoolAlarm,
    SpoolFullError,
    SpoolPosition,
    SpoolUsage,
)

__all__ = [
    "AuditEmitter",
    "DeliveryError",
    "EmitterStats",
    "ForwardDelivery",
    "HandshakeError",
    "Spool",
    "SpoolAlarm",
    "SpoolFullError",
    "SpoolPosition",
    "SpoolUsage",
]
