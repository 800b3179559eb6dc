"""kg_ops: knowledge-graph embedding pipelines on Airflow 3 + Ray."""
__version__ = "0.1.0"
