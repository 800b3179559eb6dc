"""Graph data model: schema, canonical Parquet format, importers, validation."""
