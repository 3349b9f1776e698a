"""Sub-command modules; each exposes register(subparsers)."""
