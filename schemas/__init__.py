"""Wire formats and internal messages as msgspec structs. No I/O lives here."""
