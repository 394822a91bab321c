"""facescan's queue contract: the PostgreSQL schema, its state machine and a thin client.

The operator (control plane) and the detector (data plane) both import this package and
never each other: they meet in PostgreSQL, through the functions defined in
``schema.sql`` and the named queries in ``queries.sql``.
"""
