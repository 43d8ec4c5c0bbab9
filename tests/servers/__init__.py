"""Helper servers for tests: a toy OpenAI-compatible server and a fault-injecting proxy."""
