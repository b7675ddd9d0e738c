"""images of airflow-mlops."""
