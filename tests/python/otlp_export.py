"""Ship logs to logstream with the OpenTelemetry Python SDK and its OTLP/HTTP exporter
(protobuf), the way an instrumented service would: standard `logging` calls through the
SDK's LoggingHandler. Exits non-zero if the export failed.

Usage: python3 otlp_export.py BASE_URL INGEST_KEY [gzip]

With `gzip`, the exporter compresses its requests (`Content-Encoding: gzip`, as the
Collector's otlphttp exporter does by default) and the logs come from device
`otel-device-gzip`.
"""

import logging
import sys

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource


def main() -> int:
    base, key = sys.argv[1], sys.argv[2]
    gzip = len(sys.argv) > 3 and sys.argv[3] == "gzip"
    device = "otel-device-gzip" if gzip else "otel-device-1"
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "checkout", "device.id": device})
    )
    exporter = OTLPLogExporter(
        endpoint=f"{base}/v1/logs",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
        compression=Compression.Gzip if gzip else Compression.NoCompression,
    )
    results = []

    class Recording(SimpleLogRecordProcessor):
        def on_emit(self, log_data):
            # Export synchronously and keep the exporter's verdict.
            results.append(self._exporter.export([log_data]))

    provider.add_log_record_processor(Recording(exporter))
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    log = logging.getLogger("otlp-test")
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    log.propagate = False

    log.info("order placed", extra={"order_id": 42})
    log.warning("payment slow", extra={"tags": ["payments", "latency"]})
    log.error("disk full", extra={"path": "/var"})
    provider.force_flush()
    provider.shutdown()
    ok = all(getattr(r, "name", str(r)) == "SUCCESS" for r in results)
    print(f"exports: {[getattr(r, 'name', str(r)) for r in results]}")
    return 0 if ok and len(results) == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
