"""One module per tab; each exposes ``TITLE`` and ``build(services) -> None`` and wires its own events."""
