"""The sans-I/O core: topics, subscriptions, sequence numbers, history, outboxes.

Nothing in this package performs I/O, reads a clock, defines a coroutine or imports a web
framework, a socket library or a broker client; ``tests/unit/test_core_imports.py`` checks
it. Adapters (``agentcast.gateway``, ``agentcast.transports``, ``agentcast.brokers``) feed it
bytes, times and publications, and carry out the frames and close decisions it returns.
"""
