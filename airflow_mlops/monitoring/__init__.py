"""monitoring of airflow-mlops."""
