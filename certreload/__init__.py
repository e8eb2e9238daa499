"""certreload keeps a PostgreSQL server's TLS certificate current and correct."""

__version__ = "0.1.0"
