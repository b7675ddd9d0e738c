"""hooks of airflow-mlops."""
