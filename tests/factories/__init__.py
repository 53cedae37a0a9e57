"""Plain async factory functions, one module per domain."""
