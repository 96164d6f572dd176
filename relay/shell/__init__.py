"""The I/O shell: asyncio Protocols and the objects that carry out the core's actions."""
