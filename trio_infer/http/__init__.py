"""The HTTP layer: the quart-trio app, its routes, schemas and request pipeline.

Drives the core through `EmbeddingService`; never imports the runtime layer.
"""
