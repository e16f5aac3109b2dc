"""The storage room: everything the service keeps on disk and how it is written.

`names` (UIDs as file names), `durable` (fsync'd atomic writes), `spool` (received instances, written
before the listener answers Success), `outbox` (result objects until every destination stored them).
The listener and the worker both use it; neither imports the other.
"""
