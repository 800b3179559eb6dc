"""Importers: TSV triples, CoDEx, the Debian package graph -> the canonical graph format.

Each builds its graph with :class:`kg_ops.graph.builder.GraphBuilder`, sends unusable rows to
:class:`kg_ops.graph.validate.BadRows`, and ends in ``common.finish_import`` inside a ``Stage``.
"""
