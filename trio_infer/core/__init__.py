"""The service's core: jobs, errors, batch formation, the batcher, the service facade and the lifecycle.

Imports nothing from the HTTP or runtime layers, nor quart or hypercorn (checked by `make lint`).
"""
