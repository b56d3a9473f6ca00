"""Verifiable exports: an auditor's selection of records, checkable offline by anyone.

`write_export` writes a bundle (docs/record-spec.md §10); `verify_export` checks one with
nothing but the bundle and the service's public key (and, to require the transparency
log's witnesses, their tlog-policy). From format v3 a bundle carries each exported record's
inclusion proof in its stream's transparency log (audit.exports.tlog).
"""

from __future__ import annotations

from audit.exports.bundle import FORMAT, ExportResult, write_export
from audit.exports.chain import (
    ExportFailure,
    ExportFailureKind,
    Finding,
    FindingKind,
    LogReport,
    RangeReport,
)
from audit.exports.tlog import LogProof, StreamLog
from audit.exports.verify import ExportReport, verify_export

__all__ = [
    "FORMAT",
    "ExportFailure",
    "ExportFailureKind",
    "ExportReport",
    "ExportResult",
    "Finding",
    "FindingKind",
    "LogProof",
    "LogReport",
    "RangeReport",
    "StreamLog",
    "verify_export",
    "write_export",
]
