# Two images from one file, kg_ops installed in both:
#   docker build --target airflow -t kg-ops-airflow .   (api-server, scheduler, dag-processor, triggerer)
#   docker build --target ray     -t kg-ops-ray .       (Ray head and workers: the stages run here)
# torch comes from the CPU wheel index so neither image pulls CUDA.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu

FROM ${AIRFLOW_IMAGE} AS airflow
COPY --chown=airflow:0 pyproject.toml README.md /opt/kg_ops/
COPY --chown=airflow:0 kg_ops /opt/kg_ops/kg_ops
# The Airflow side only needs the light part; the [ray] extra is not installed here on purpose:
# DAG files never import torch, and the stages run on the Ray cluster.
RUN pip install --no-cache-dir "apache-airflow==3.3.2" "/opt/kg_ops[airflow]"
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins

FROM ${RAY_IMAGE} AS ray
COPY pyproject.toml README.md /opt/kg_ops/
COPY kg_ops /opt/kg_ops/kg_ops
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir "/opt/kg_ops[ray]"
