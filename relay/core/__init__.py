"""The sans-IO core: failover policy and machine, mapping, HTTP framing, flow control, buffers.

Nothing here imports config, pydantic, asyncio, sockets or SQLite: bytes and time in, actions out.
"""
