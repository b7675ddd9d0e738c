-- One PostgreSQL server, two databases: Airflow's metadata and MLflow's registry.
CREATE DATABASE mlflow OWNER airflow;
